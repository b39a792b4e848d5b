"""What a model family declares about itself: :class:`Family`.

A family module (``models/families/<name>.py``) holds one ``FAMILY =
Family(...)``; the registry (``models/families/__init__.py``) lists the
built-in ones once.  Everything outside the family's own engine code reads
this record: the CLI's ``--model`` choices, the widget's family list,
checkpoint detection and ``samlab info``, ``load_model``, the default
encoder backend, the ``auto`` window and propagation.  Nothing here imports
torch: family records are read at start-up (CLI parser, widget import).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import numpy as np

PROMPT_KINDS = ("box", "points", "mask")


@dataclass
class BuildContext:
    """What :attr:`Family.build` gets besides the state dict.

    Attributes
    ----------
    name : str
        The checkpoint's file name, for messages.
    device : str
        ``"cpu"`` or ``"cuda"`` (already checked).
    base_state_dict : dict or None
        The base checkpoint's tensors, for families with
        ``needs_base_checkpoint``.
    info : FamilyInfo
        What detection found in the file.
    options : dict
        Family-specific options passed to ``load_model`` (e.g. ``image_size``).
    """

    name: str
    device: str
    base_state_dict: Optional[dict]
    info: object
    options: dict = field(default_factory=dict)

    def fingerprint(self, state_dict: dict) -> str:
        """:func:`napari_samlab.models.checkpoint.weights_fingerprint` of ``state_dict``."""
        from ..checkpoint import weights_fingerprint

        return weights_fingerprint(state_dict)


@dataclass(frozen=True)
class Family:
    """One model family: its names, how its files look, how it is built, what it can do.

    Parameters
    ----------
    name : str
        Canonical name (``--model NAME``), lower case.
    pretty : str
        Name shown to users (``"MedSAM"``).
    aliases : tuple of str
        Other spellings accepted for ``name`` (lower case).
    build : callable, optional
        ``build(state_dict, ctx: BuildContext) -> SegmentationModel``;
        import heavy modules (torch) inside it.
    make : callable, optional
        ``make() -> SegmentationModel`` for families that need no weights.
    detect : callable, optional
        ``detect(state_dict) -> dict or None``: None when the file is not
        this family's; else what it found (``backbone``, ``image_size``,
        ``num_classes``, ``lora_rank`` and any details).  Several families
        may claim one layout (SAM and MedSAM): the user then chooses.
    detect_rank : int
        Detectors run from low to high rank; the first rank with a claim
        wins, so a specific layout (LoRA keys, adapters) is checked before
        a general one (a plain SAM ViT).
    needs_checkpoint : bool
        False for engines without weights (classic).
    needs_base_checkpoint : bool
        The file builds on another one (SAMed's LoRA on SAM); ``base_hint``
        names it.
    needs_prompt : bool
        False for families that segment without a prompt (SAMed).
    prompts : tuple of str
        Prompt kinds the family takes: ``"box"``, ``"points"``, ``"mask"``.
    exported_encoder : bool
        The family's faithfulness tests pass with an exported fp32 encoder
        (ONNX Runtime/OpenVINO), so ``encoder_backend="auto"`` is its default.
    memory_propagation : bool
        The engine propagates with its own memory (SAM2-style): propagation
        hands the volume to
        :func:`napari_samlab.propagate.memory_result.propagate_with_memory`
        (a :class:`~napari_samlab.propagate.memory.MemorySession` behind the
        usual ``PropagationResult``); the model needs ``net`` with SAM 2's
        video-predictor API.
    everything : bool
        The engine can segment every object without a prompt.
    propagation_strategy : str, optional
        How propagation prompts the next slice (``"box"``, ``"points"``,
        ``"box+mask"``, ``"track"``...); None: derived from ``prompts``.
    auto_window : callable, optional
        ``auto_window(image, modality) -> Window or None``, the family's own
        intensity preprocessing for ``window="auto"``; None: the shared
        default (:func:`napari_samlab.base.windowing.default_auto_window`).
    mask_prompt : callable, optional
        ``mask_prompt(mask) -> ndarray``: a painted mask as the family's
        dense prompt (propagation anchors); None: the family has none.
    build_options : tuple of str
        Family-specific ``load_model`` keyword options its ``build`` takes
        (MSA: ``image_size``, ``num_outputs``); others are refused.
    example_checkpoint : str
        A file name users know (``medsam_vit_b.pth``), for messages.
    base_hint : str
        What the base checkpoint is (``the original SAM ViT-B weights, e.g.
        sam_vit_b_01ec64.pth``).
    note : callable, optional
        ``note(info) -> str``: a remark ``samlab info`` prints.

    Examples
    --------
    >>> Family("toy", "Toy", make=lambda: None, needs_checkpoint=False).accepts("box")
    True
    """

    name: str
    pretty: str
    aliases: Tuple[str, ...] = ()
    build: Optional[Callable] = None
    make: Optional[Callable] = None
    detect: Optional[Callable[[dict], Optional[dict]]] = None
    detect_rank: int = 100
    needs_checkpoint: bool = True
    needs_base_checkpoint: bool = False
    needs_prompt: bool = True
    prompts: Tuple[str, ...] = ("box", "points")
    exported_encoder: bool = False
    memory_propagation: bool = False
    everything: bool = False
    propagation_strategy: Optional[str] = None
    auto_window: Optional[Callable] = None
    mask_prompt: Optional[Callable[[np.ndarray], np.ndarray]] = None
    build_options: Tuple[str, ...] = ()
    example_checkpoint: str = ""
    base_hint: str = ""
    note: Optional[Callable] = None

    def __post_init__(self):
        if not self.name or self.name != self.name.strip().lower():
            raise ValueError(f"family name {self.name!r} must be lower case without spaces")
        bad = set(self.prompts) - set(PROMPT_KINDS)
        if bad:
            raise ValueError(f"family {self.name}: unknown prompt kinds {sorted(bad)} (use {PROMPT_KINDS})")
        if self.build is None and self.make is None:
            raise ValueError(f"family {self.name} needs build (from weights) or make (no weights)")

    def accepts(self, kind: str) -> bool:
        """Whether the family takes prompts of ``kind`` (``"box"``, ``"points"``, ``"mask"``)."""
        return kind in self.prompts
