"""Which family a checkpoint belongs to, and building the engine for it.

``load_model`` is the one entry point the CLI, the widgets and scripts use::

    load_model("medsam_vit_b.pth", family="medsam")
    load_model(family="classic")

Detection uses only the state dict's keys and shapes:

* ``w_a_000`` keys: SAMed (``models/samed.py``: ``detect_samed``);
* MSA adapter keys: MSA (``models/msa.py``: ``detect_msa``);
* TinyViT keys with 1×1 patch embedding: LiteMedSAM; with 3×3: MobileSAM
  (loaded as ``sam`` with SAM's preprocessing);
* a SAM ViT layout: ``sam-or-medsam``: MedSAM is a fine-tuned SAM ViT-B
  with the same keys, so the user must say which (``--model``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..errors import SamlabError
from .base import SegmentationModel

FAMILIES = ("classic", "sam", "medsam", "litemedsam", "samed", "msa")
_ALIASES = {
    "lite_medsam": "litemedsam", "medsam-lite": "litemedsam", "medsam_lite": "litemedsam", "lite-medsam": "litemedsam",
    "mobilesam": "sam", "mobile_sam": "sam", "vit_t": "sam", "sam_vit_b": "sam", "sam_vit_l": "sam", "sam_vit_h": "sam",
    "medical-sam-adapter": "msa", "samed_h": "samed", "samed_s": "samed",
}
_PRETTY = {"sam": "SAM", "medsam": "MedSAM", "litemedsam": "LiteMedSAM", "samed": "SAMed", "msa": "MSA (Medical SAM Adapter)",
           "classic": "classic", "sam-or-medsam": "SAM/MedSAM"}


@dataclass
class FamilyInfo:
    """What a state dict is.

    Attributes
    ----------
    family : str
        ``"sam"``, ``"sam-or-medsam"`` (ViT layout shared by SAM and
        MedSAM), ``"litemedsam"``, ``"samed"`` or ``"msa"``.
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
    """

    family: str
    backbone: str = ""
    image_size: int = 0
    num_classes: int = 1
    lora_rank: Optional[int] = None
    num_parameters: int = 0
    details: dict = field(default_factory=dict)


def normalize_family(name: Optional[str]) -> Optional[str]:
    """Canonical family name for what the user typed (case, aliases).

    Examples
    --------
    >>> normalize_family("Lite_MedSAM")
    'litemedsam'
    """
    if name is None:
        return None
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in FAMILIES:
        raise SamlabError(f"unknown model {name!r}: use one of {', '.join(FAMILIES)}")
    return key


def _external_detector(module: str, func: str):
    """``detect_samed``/``detect_msa`` from their modules, None if not installed."""
    import importlib

    try:
        mod = importlib.import_module(f"napari_samlab.models.{module}")
    except ImportError:
        return None
    return getattr(mod, func, None)


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
        When the keys match no supported family.

    Examples
    --------
    >>> info = detect_family(load_checkpoint_file("lite_medsam.pth"))   # doctest: +SKIP
    >>> info.family, info.image_size                                   # doctest: +SKIP
    ('litemedsam', 256)
    """
    sd = state_dict
    n = _nparams(sd)
    keys = list(sd)

    if any(k.startswith("w_a_") for k in keys):
        det = _external_detector("samed", "detect_samed")
        found = det(sd) if det is not None else None
        if found is None:
            w = sd.get("w_a_000")
            found = {"backbone": {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(int(w.shape[1]), "?") if w is not None else "?",
                     "lora_rank": int(w.shape[0]) if w is not None else None}
            if "mask_decoder.mask_tokens.weight" in sd:
                found["num_classes"] = int(sd["mask_decoder.mask_tokens.weight"].shape[0]) - 1
            found["image_size"] = 512
        return _info_from_dict("samed", found, n)

    det = _external_detector("msa", "detect_msa")
    found = det(sd) if det is not None else None
    if found is not None:
        return _info_from_dict("msa", found, n)
    if det is None and any(".MLP_Adapter." in k or ".Space_Adapter." in k for k in keys):
        return FamilyInfo("msa", "vit", 0, 1, None, n, {"note": "MSA support is not installed"})

    if "image_encoder.patch_embed.seq.0.c.weight" in sd:
        from .sam_family import tinyvit_config_from_state_dict

        try:
            tcfg = tinyvit_config_from_state_dict(sd)
        except KeyError as err:
            raise SamlabError(f"TinyViT checkpoint without {err.args[0]}: the file is incomplete or not LiteMedSAM/MobileSAM") from None
        if tcfg["patch_kernel"] == 1:
            return FamilyInfo("litemedsam", "tinyvit", tcfg["img_size"], 1, None, n, {"tinyvit": tcfg})
        return FamilyInfo("sam", "vit_t", tcfg["img_size"], 1, None, n, {"tinyvit": tcfg, "variant": "MobileSAM"})

    if "image_encoder.patch_embed.proj.weight" in sd and "mask_decoder.iou_token.weight" in sd:
        from .sam_family import vit_config_from_state_dict

        try:
            vit = vit_config_from_state_dict(sd)
        except KeyError as err:
            raise SamlabError(f"SAM-layout checkpoint without {err.args[0]}: the file is incomplete") from None
        classes = int(sd["mask_decoder.mask_tokens.weight"].shape[0]) - 1 if "mask_decoder.mask_tokens.weight" in sd else 3
        return FamilyInfo("sam-or-medsam", vit["backbone"], vit["img_size"], 1, None, n,
                          {"vit": vit, "multimask_outputs": classes})

    sample = ", ".join(keys[:4])
    raise SamlabError(f"the checkpoint's weights match no supported model (keys like {sample}): "
                      "give a SAM, MedSAM, LiteMedSAM, SAMed or MSA checkpoint")


def _info_from_dict(family: str, found: dict, n: int) -> FamilyInfo:
    d = dict(found)
    return FamilyInfo(
        family=family,
        backbone=str(d.pop("backbone", "") or ""),
        image_size=int(d.pop("image_size", 0) or 0),
        num_classes=int(d.pop("num_classes", 1) or 1),
        lora_rank=d.pop("lora_rank", None),
        num_parameters=n,
        details=d,
    )


def _what_file_is(info: FamilyInfo) -> str:
    if info.family == "sam-or-medsam":
        return f"a SAM {_vit_label(info.backbone)} / MedSAM checkpoint"
    if info.family == "sam" and info.backbone == "vit_t":
        return "a MobileSAM (vit_t) checkpoint"
    return f"a {_PRETTY.get(info.family, info.family)} checkpoint"


def _vit_label(backbone: str) -> str:
    """``vit_b`` -> ``ViT-B`` for messages."""
    if backbone.startswith("vit_") and len(backbone) == 5:
        return "ViT-" + backbone[4:].upper()
    return backbone


def _flag(family: str) -> str:
    return f"--model {family}"


def _check_compatible(name: str, info: FamilyInfo, family: Optional[str]) -> str:
    """The family to build: the user's choice if the file allows it."""
    det = info.family
    if family is None:
        if det == "sam-or-medsam":
            raise SamlabError(
                f"{name} is a SAM {_vit_label(info.backbone)} state dict; "
                "MedSAM and plain SAM share this layout: pass --model medsam or --model sam"
            )
        return det
    if family == "classic":
        raise SamlabError(f"the classic engine needs no checkpoint, but {name} was given: drop --checkpoint or choose the checkpoint's model")
    ok = {"sam-or-medsam": ("sam", "medsam"), "sam": ("sam",), "litemedsam": ("litemedsam",), "samed": ("samed",), "msa": ("msa",)}
    if family in ok.get(det, (det,)):
        if det == "sam-or-medsam" and family == "medsam" and info.backbone in ("vit_l", "vit_h"):
            raise SamlabError(f"{name} is a SAM {_vit_label(info.backbone)} checkpoint, but MedSAM is a ViT-B: use --model sam, or give medsam_vit_b.pth")
        return family
    suggestion = " or ".join(_flag(f) for f in ok.get(det, (det,)))
    raise SamlabError(f"{name} is {_what_file_is(info)}, not {_PRETTY.get(family, family)}: use {suggestion}")


ENCODER_BACKENDS = ("torch", "auto", "openvino", "onnxruntime", "openvino-int8", "onnxruntime-int8", "torch-autocast")
# Families whose faithfulness tests pass with an exported fp32 encoder (run
# both ways in tests/test_sam_medsam.py, test_litemedsam.py, test_samed.py and
# test_msa.py): they get the fastest exact backend by default; the others
# (classic: no encoder) keep upstream torch.
FAST_ENCODER_FAMILIES = ("sam", "medsam", "litemedsam", "samed", "msa")


def load_model(checkpoint: Union[str, os.PathLike, None] = None, family: Optional[str] = None,
               base_checkpoint: Union[str, os.PathLike, None] = None, device: str = "cpu",
               encoder_backend: Optional[str] = None, image_size: Optional[int] = None,
               num_outputs: Optional[int] = None) -> SegmentationModel:
    """Build a segmentation engine from a checkpoint (or the classic engine).

    Parameters
    ----------
    checkpoint : path, optional
        Weights file; omit for ``family="classic"`` (the default without one).
    family : str, optional
        ``classic``, ``sam``, ``medsam``, ``litemedsam``, ``samed``, ``msa``;
        detected from the file when omitted (SAM ViT and MedSAM cannot be
        told apart: that case asks for it).
    base_checkpoint : path, optional
        The original SAM weights that SAMed's LoRA file builds on.
    device : str
        ``"cpu"`` or ``"cuda"``.
    encoder_backend : str, optional
        ``"torch"`` (upstream PyTorch), ``"auto"`` (fastest exported fp32
        backend whose output matches PyTorch within 1e-3 relative, else
        torch), ``"openvino"``, ``"onnxruntime"``, or the approximate
        ``"openvino-int8"`` / ``"onnxruntime-int8"`` / ``"torch-autocast"``
        (PyTorch autocast: float16 on CUDA, bfloat16 on CPU).  Exports run on
        the CPU: on CUDA every choice but ``"torch-autocast"`` runs PyTorch
        fp32.  Default: the ``SAMLAB_ENCODER_BACKEND`` environment variable,
        else ``"auto"`` for SAM, MedSAM, LiteMedSAM, SAMed and MSA.
    image_size : int, optional
        MSA only: the input side the model was trained at, for files that do
        not record it (the error says when it is needed).
    num_outputs : int, optional
        MSA only: output masks to keep (class k = label value k).

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
    family = normalize_family(family)
    if checkpoint is None and family in (None, "classic"):
        from .classic import ClassicModel  # no torch needed

        return ClassicModel()
    if checkpoint is not None:
        from .checkpoint import check_checkpoint_file

        check_checkpoint_file(checkpoint)  # a wrong file is refused before torch is imported
    from .sam_family import check_device

    device = check_device(device)
    backend = encoder_backend or os.environ.get("SAMLAB_ENCODER_BACKEND") or None
    if backend is not None and backend not in ENCODER_BACKENDS:
        raise SamlabError(f"unknown encoder backend {backend!r}: use one of {', '.join(ENCODER_BACKENDS)}")
    if checkpoint is None:
        names = {"medsam": "medsam_vit_b.pth", "litemedsam": "lite_medsam.pth", "sam": "sam_vit_b_01ec64.pth",
                 "samed": "the SAMed LoRA .pth", "msa": "the MSA .pth"}
        raise SamlabError(f"--model {family} needs its weights: pass --checkpoint {names.get(family, 'FILE')}")
    from .checkpoint import load_checkpoint

    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    model = model_from_state_dict(ckpt.state_dict, family, path.name, base_checkpoint, device,
                                  image_size=image_size, num_outputs=num_outputs)
    model.encoder_backend = backend or ("auto" if model.family in FAST_ENCODER_FAMILIES else "torch")
    return model


def model_from_state_dict(state_dict: dict, family: Optional[str] = None, name: str = "the checkpoint",
                          base_checkpoint: Union[str, os.PathLike, None] = None, device: str = "cpu",
                          image_size: Optional[int] = None, num_outputs: Optional[int] = None) -> SegmentationModel:
    """:func:`load_model` for a state dict already in memory.

    Parameters
    ----------
    state_dict : dict of str to Tensor
    family : str, optional
    name : str
        Shown in messages in place of a file name.
    base_checkpoint : path, optional
    device : str

    Returns
    -------
    SegmentationModel

    Examples
    --------
    >>> model = model_from_state_dict(sam.state_dict(), "sam")   # doctest: +SKIP
    """
    from .checkpoint import load_checkpoint_file, weights_fingerprint
    from .sam_family import check_device

    family = normalize_family(family)
    device = check_device(device)
    info = detect_family(state_dict)
    fam = _check_compatible(name, info, family)
    if fam != "msa" and (image_size is not None or num_outputs is not None):
        raise SamlabError(f"--image-size and --num-outputs are for MSA checkpoints; {name} is {_what_file_is(info)}: leave them out")
    if fam == "samed":
        if base_checkpoint is None:
            raise SamlabError(f"{name} is a SAMed LoRA checkpoint without an image encoder: pass the original SAM "
                              f"{_vit_label(info.backbone)} weights "
                              "with --base-checkpoint (e.g. sam_vit_b_01ec64.pth)")
        from .samed import build_samed

        base = load_checkpoint_file(base_checkpoint)
        model = build_samed(state_dict, base, device=device)
    elif fam == "msa":
        from .msa import build_msa

        model = build_msa(state_dict, device=device, image_size=image_size, num_outputs=num_outputs, name=name)
    elif fam == "litemedsam":
        from .litemedsam import build_litemedsam

        model = build_litemedsam(state_dict, weights_fingerprint(state_dict), device, name)
    else:
        from .sam_family import build_sam_family

        model = build_sam_family(state_dict, fam, weights_fingerprint(state_dict), device, name)
    if not getattr(model, "source", ""):
        try:
            model.source = name
        except AttributeError:
            pass
    return model


def describe_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """What ``samlab info`` prints about a checkpoint file.

    Parameters
    ----------
    path : path

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
    out.update({
        "file": str(path),
        "family_name": _PRETTY.get(info.family, info.family),
        "num_tensors": len(ckpt.state_dict),
        "dtypes": dtypes,
        "wrapper": ckpt.meta.get("wrapper"),
        "prefix": ckpt.meta.get("prefix"),
        # training bookkeeping beside the weights (optimizer, epoch, MSA's path_helper...): not loaded
        "ignored": ckpt.meta.get("ignored", {}),
        "fingerprint": weights_fingerprint(ckpt.state_dict),
    })
    notes = {
        "sam-or-medsam": "SAM and MedSAM share this layout: choose with --model sam or --model medsam",
        "samed": "LoRA weights only: needs the original SAM checkpoint via --base-checkpoint",
    }
    if info.family == "sam" and info.backbone == "vit_t":
        notes["sam"] = "MobileSAM: runs with --model sam (SAM preprocessing)"
    out["note"] = notes.get(info.family, "")
    out["details"] = _jsonable(out["details"])
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    try:
        return obj.item()
    except Exception:
        return str(obj)
