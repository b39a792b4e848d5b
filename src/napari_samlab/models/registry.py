"""Which family a checkpoint belongs to, and building the engine for it.

``load_model`` is the one entry point the CLI, the widgets and scripts use::

    load_model("medsam_vit_b.pth", family="medsam")
    load_model(family="classic")

What each family is (names, detection, build, capabilities) is declared in
its module under ``models/families/``; this module only asks the registry.
Detection uses the state dict's keys and shapes: each family's detector is
asked, specific layouts first (``Family.detect_rank``).  When two families
claim the same layout (MedSAM is a fine-tuned SAM ViT-B with the same keys)
the file is reported as ``"sam-or-medsam"`` and the user must choose.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..errors import NEUTRAL_NAMES, InputError, SamlabError, phrase
from .backends import ENCODER_BACKENDS, requested_backend  # noqa: F401 - ENCODER_BACKENDS re-exported
from .base import SegmentationModel
from .families import families, family_names, find_family, get_family
from .families.sam_layout import vit_label

AMBIGUOUS_JOIN = "-or-"


@dataclass
class FamilyInfo:
    """What a state dict is.

    Attributes
    ----------
    family : str
        A family name, or names joined by ``-or-`` when several families
        share the layout (``"sam-or-medsam"``).
    backbone : str
        ``vit_b``/``vit_l``/``vit_h``, ``vit_t`` (MobileSAM), ``tinyvit``
        (LiteMedSAM), or ``vit_<dim>x<depth>`` for non-standard ViTs.
    image_size : int
        Model input side in pixels.
    num_classes : int
        Output classes (1 for prompt families).
    lora_rank : int or None
        SAMed only.
    num_parameters : int
        Elements in all tensors of the file.
    details : dict
        Anything else the detector found (MSA generation, SAMed variant...).
    candidates : tuple of str
        The families that claim the file (one unless ambiguous).
    """

    family: str
    backbone: str = ""
    image_size: int = 0
    num_classes: int = 1
    lora_rank: Optional[int] = None
    num_parameters: int = 0
    details: dict = field(default_factory=dict)
    candidates: tuple = ()


def normalize_family(name: Optional[str]) -> Optional[str]:
    """Canonical family name for what the user typed (case, aliases).

    Examples
    --------
    >>> normalize_family("Lite_MedSAM")
    'litemedsam'
    """
    return None if name is None else get_family(name).name


def _nparams(sd: dict) -> int:
    return int(sum(t.numel() for t in sd.values()))


def detect_family(state_dict: dict) -> FamilyInfo:
    """Name the checkpoint family of a bare state dict.

    Parameters
    ----------
    state_dict : dict of str to Tensor
        As :func:`napari_samlab.models.checkpoint.load_checkpoint_file` returns it.

    Returns
    -------
    FamilyInfo

    Raises
    ------
    SamlabError
        When the keys match no registered family.

    Examples
    --------
    >>> info = detect_family(load_checkpoint_file("lite_medsam.pth"))   # doctest: +SKIP
    >>> info.family, info.image_size                                   # doctest: +SKIP
    ('litemedsam', 256)
    """
    sd = state_dict
    detectors = sorted((f for f in families() if f.detect is not None), key=lambda f: f.detect_rank)
    claims, rank = [], None
    for fam in detectors:
        if rank is not None and fam.detect_rank > rank:
            break
        found = fam.detect(sd)
        if found is not None:
            claims.append((fam.name, found))
            rank = fam.detect_rank
    if not claims:
        sample = ", ".join(list(sd)[:4])
        kinds = ", ".join(f.pretty for f in detectors)
        raise SamlabError(f"the checkpoint's weights match no supported model (keys like {sample}): give a {kinds} checkpoint")
    names = tuple(n for n, _ in claims)
    d = dict(claims[0][1])
    return FamilyInfo(
        family=AMBIGUOUS_JOIN.join(names),
        backbone=str(d.pop("backbone", "") or ""),
        image_size=int(d.pop("image_size", 0) or 0),
        num_classes=int(d.pop("num_classes", 1) or 1),
        lora_rank=d.pop("lora_rank", None),
        num_parameters=_nparams(sd),
        details=d,
        candidates=names,
    )


def _what_file_is(info: FamilyInfo) -> str:
    if len(info.candidates) > 1:
        return f"a {vit_label(info.backbone)} state dict of the {'/'.join(get_family(n).pretty for n in info.candidates)} layout"
    if info.backbone == "vit_t":
        return "a MobileSAM (vit_t) checkpoint"
    return f"a {get_family(info.family).pretty} checkpoint"


def _choose(name: str, info: FamilyInfo, family: Optional[str]) -> str:
    """The family to build: the user's choice if the file allows it."""
    choices = " or ".join(f"{{model:{n}}}" for n in info.candidates)
    if family is None:
        if len(info.candidates) > 1:
            pretty = " and ".join(get_family(n).pretty for n in info.candidates)
            raise InputError(f"{name} is a {vit_label(info.backbone)} state dict; {pretty} share this layout: "
                             f"choose {choices}", field="model")
        return info.candidates[0]
    if family in info.candidates:
        return family
    if not get_family(family).needs_checkpoint:
        raise InputError(f"the {family} engine needs no checkpoint, but {name} was given: "
                         f"leave out {{checkpoint}} or choose {choices}", field="checkpoint")
    raise InputError(f"{name} is {_what_file_is(info)}, not {get_family(family).pretty}: choose {choices}", field="model")


def load_model(checkpoint: Union[str, os.PathLike, None] = None, family: Optional[str] = None,
               base_checkpoint: Union[str, os.PathLike, None] = None, device: str = "cpu",
               encoder_backend: Optional[str] = None, **options) -> SegmentationModel:
    """Build a segmentation engine from a checkpoint (or the classic engine).

    Parameters
    ----------
    checkpoint : path, optional
        Weights file; omit for families without weights (``classic``, the
        default without one).
    family : str, optional
        A registered family (``classic``, ``sam``, ``medsam``,
        ``litemedsam``, ``samed``, ``msa``, ...; see
        :func:`napari_samlab.models.families.family_names`); detected from
        the file when omitted (SAM ViT and MedSAM cannot be told apart: that
        case asks for it).
    base_checkpoint : path, optional
        The original SAM weights that SAMed's LoRA file builds on.
    device : str
        ``"cpu"`` or ``"cuda"``.
    encoder_backend : str, optional
        ``"torch"`` (upstream PyTorch fp32, bit for bit), ``"auto"``
        (fastest exported fp32 backend, ONNX Runtime or OpenVINO, whose
        output was checked against PyTorch when it was exported: max
        relative error 1e-3 allowed, about 1e-6 measured; else torch),
        ``"openvino"``, ``"onnxruntime"`` (``"onnx"``), or the approximate
        ``"openvino-int8"`` / ``"onnxruntime-int8"`` / ``"torch-autocast"``
        (PyTorch autocast: float16 on CUDA, bfloat16 on CPU).  Exports run on
        the CPU: on CUDA every choice but ``"torch-autocast"`` runs PyTorch
        fp32.  Default: the ``SAMLAB_ENCODER_BACKEND`` environment variable,
        else ``"auto"`` for families declared with ``exported_encoder``
        (SAM, MedSAM, LiteMedSAM, SAMed, MSA) and ``"torch"`` otherwise.
        ``model.last_encoder_backend`` and ``encoder_report(model)`` say
        what really ran.
    **options
        Family-specific build options, passed to the family's ``build``
        (declared in its ``build_options``).  MSA: ``image_size`` (the input
        side the model was trained at, for files that do not record it: the
        error says when it is needed) and ``num_outputs`` (output masks to
        keep; class k = label value k).

    Returns
    -------
    SegmentationModel

    Raises
    ------
    SamlabError
        Unreadable or unknown checkpoint, family that does not fit the file,
        missing base checkpoint, CUDA requested without a GPU.

    Examples
    --------
    >>> model = load_model("medsam_vit_b.pth", family="medsam")   # doctest: +SKIP
    >>> model = load_model(family="classic")                      # doctest: +SKIP
    """
    fam = get_family(family) if family is not None else None
    if checkpoint is None and (fam is None or not fam.needs_checkpoint):
        fam = fam or get_family("classic")
        if fam.make is None:
            raise InputError(f"{fam.pretty} needs its weights: pass {{checkpoint}}", field="checkpoint")
        return fam.make()
    if checkpoint is not None:
        from .checkpoint import check_checkpoint_file

        check_checkpoint_file(checkpoint)  # a wrong file is refused from its header, before torch is imported
    backend = requested_backend(encoder_backend)
    if checkpoint is None:
        example = f" ({fam.example_checkpoint})" if fam.example_checkpoint else ""
        raise InputError(f"{{model:{fam.name}}} needs its weights: pass {{checkpoint}}{example}", field="checkpoint")
    from .checkpoint import load_checkpoint

    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    model = model_from_state_dict(ckpt.state_dict, family, path.name, base_checkpoint, device, **options)
    from ..base.digest import file_sha256

    # the files' content, for cache keys: weights_fingerprint samples the tensors
    digests = [file_sha256(path)] + ([file_sha256(base_checkpoint)] if base_checkpoint is not None else [])
    try:
        model.checkpoint_sha256 = "+".join(digests)
    except AttributeError:
        pass
    built = find_family(model.family)
    model.encoder_backend = backend or ("auto" if built is not None and built.exported_encoder else "torch")
    return model


def model_from_state_dict(state_dict: dict, family: Optional[str] = None, name: str = "the checkpoint",
                          base_checkpoint: Union[str, os.PathLike, None] = None, device: str = "cpu",
                          **options) -> SegmentationModel:
    """:func:`load_model` for a state dict already in memory.

    Parameters
    ----------
    state_dict : dict of str to Tensor
    family : str, optional
    name : str
        Shown in messages in place of a file name.
    base_checkpoint : path, optional
    device : str
    **options
        Family-specific build options.

    Returns
    -------
    SegmentationModel

    Examples
    --------
    >>> model = model_from_state_dict(sam.state_dict(), "sam")   # doctest: +SKIP
    """
    from .checkpoint import load_checkpoint_file
    from .families.spec import BuildContext
    from .sam_family import check_device

    family = normalize_family(family)
    device = check_device(device)
    info = detect_family(state_dict)
    fam = get_family(_choose(name, info, family))
    given = sorted(k for k, v in options.items() if v is not None)
    foreign = [k for k in given if k not in fam.build_options]
    if foreign:
        raise InputError(f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not an option of {fam.pretty}; "
                         f"{name} is {_what_file_is(info)}: leave {'it' if len(foreign) == 1 else 'them'} out",
                         field=foreign[0])
    options = {k: options[k] for k in given}
    base = None
    if fam.needs_base_checkpoint:
        if base_checkpoint is None:
            raise InputError(f"{name} is a {fam.pretty} checkpoint that needs {fam.base_hint or 'a base checkpoint'}: "
                             "pass it with {base_checkpoint}", field="base_checkpoint")
        base = load_checkpoint_file(base_checkpoint)
    model = fam.build(state_dict, BuildContext(name, device, base, info, dict(options)))
    if not getattr(model, "source", ""):
        try:
            model.source = name
        except AttributeError:
            pass
    return model


def default_encoder(family: str, encoder_backend: Optional[str] = None) -> dict:
    """The encoder backend and precision ``load_model`` would use for a (detected) family, without building it.

    Parameters
    ----------
    family : str
        A family name, or an ambiguous ``"sam-or-medsam"`` (its first family is used).
    encoder_backend : str, optional
        As for :func:`load_model` (default ``$SAMLAB_ENCODER_BACKEND``, else the family's default).

    Returns
    -------
    dict
        ``requested``, ``backend`` (for ``auto``: the first installed of
        ``openvino``, ``onnxruntime``; the export is checked against
        PyTorch fp32 when it is made and torch is used if it fails),
        ``precision``, ``checked_against_torch`` (relative tolerance, or None).

    Examples
    --------
    >>> default_encoder("classic")["backend"]
    'none'
    """
    from .backends import AUTO_ORDER, EXACT_RTOL, backend_precision

    fam = get_family(family.split(AMBIGUOUS_JOIN)[0])
    if not fam.needs_checkpoint:
        return {"requested": None, "backend": "none", "precision": "none", "checked_against_torch": None}
    requested = requested_backend(encoder_backend) or ("auto" if fam.exported_encoder else "torch")
    backend = requested
    if requested == "auto":
        import importlib.util

        need = {"openvino": ("openvino",), "onnxruntime": ("onnx", "onnxruntime"), "torch": ()}
        backend = next(b for b in AUTO_ORDER if all(importlib.util.find_spec(m) for m in need[b]))
    exported = backend not in ("torch", "torch-autocast")
    return {"requested": requested, "backend": backend, "precision": backend_precision(backend),
            "checked_against_torch": EXACT_RTOL if exported and not backend.endswith("-int8") else None}


def describe_checkpoint(path: Union[str, os.PathLike], names: Optional[dict] = None) -> dict:
    """What ``samlab info`` prints about a checkpoint file.

    Parameters
    ----------
    path : path
    names : mapping, optional
        How the front end names its inputs in ``note``
        (:data:`napari_samlab.errors.CLI_NAMES`, ``GUI_NAMES``; default plain words).

    Returns
    -------
    dict
        ``file``, ``family`` (detected; ``sam-or-medsam`` when it can be
        either), ``family_name`` (readable), ``backbone``, ``image_size``,
        ``num_classes``, ``lora_rank`` (SAMed), ``num_parameters``,
        ``num_tensors``, ``dtypes``, ``wrapper`` and ``prefix`` (training
        checkpoint unwrapping), ``fingerprint``, ``details``, ``note``.

    Examples
    --------
    >>> describe_checkpoint("lite_medsam.pth")["family"]   # doctest: +SKIP
    'litemedsam'
    """
    from .checkpoint import load_checkpoint, weights_fingerprint

    path = Path(path)
    ckpt = load_checkpoint(path)
    info = detect_family(ckpt.state_dict)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in ckpt.state_dict.values()})
    out = asdict(info)
    out.pop("candidates")
    pretty = "/".join(get_family(n).pretty for n in info.candidates)
    out.update({
        "file": str(path),
        "family_name": pretty,
        "num_tensors": len(ckpt.state_dict),
        "dtypes": dtypes,
        "wrapper": ckpt.meta.get("wrapper"),
        "prefix": ckpt.meta.get("prefix"),
        # training bookkeeping beside the weights (optimizer, epoch, MSA's path_helper...): not loaded
        "ignored": ckpt.meta.get("ignored", {}),
        "fingerprint": weights_fingerprint(ckpt.state_dict),
    })
    if len(info.candidates) > 1:
        note = f"{pretty.replace('/', ' and ')} share this layout: choose " + " or ".join(f"{{model:{n}}}" for n in info.candidates)
    else:
        fam = get_family(info.family)
        note = fam.note(info) if fam.note is not None else ""
    out["note"] = phrase(note, names or NEUTRAL_NAMES)
    out["details"] = _jsonable(out["details"])
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        try:
            return obj.item()
        except (ValueError, RuntimeError):  # more than one element
            pass
    return str(obj)


__all__ = ["FamilyInfo", "normalize_family", "detect_family", "load_model", "model_from_state_dict",
           "describe_checkpoint", "family_names", "ENCODER_BACKENDS"]
