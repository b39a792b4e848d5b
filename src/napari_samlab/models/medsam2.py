"""MedSAM2 and Meta's SAM 2 / 2.1: the ``medsam2`` and ``sam2`` families.

Files: ``{"model": state_dict}`` (MedSAM2_latest.pt, MedSAM2_2411.pt,
MedSAM2_CTLesion.pt, ..., Meta's ``sam2.1_hiera_{tiny,small,base_plus,large}.pt``
and the SAM 2.0 ``sam2_hiera_*.pt``).  The network is built from the
``sam2`` package's own config files (``sam2/configs/sam2.1/*.yaml``, read
with OmegaConf from the installed package: no hydra search path, no
download) and loaded strictly.

What the weights tell and what they do not:

* the Hiera size from ``patch_embed`` width and the blocks where the width
  changes (tiny 96/[1,2,7,2], small 96/[1,2,11,2], base_plus
  112/[2,3,16,3], large 144/[2,6,36,4]);
* SAM 2.1 from ``no_obj_embed_spatial`` / ``obj_ptr_tpos_proj`` (absent in
  SAM 2.0);
* not the image size: MedSAM2 is SAM 2.1 hiera-tiny fine-tuned at 512 px
  (its ``sam2.1_hiera_t512.yaml`` differs from the package's
  ``sam2.1_hiera_t.yaml`` only in ``image_size: 512`` and the RoPE
  ``feat_sizes: [32, 32]``), Meta's files run at 1024.  A hiera-tiny
  SAM 2.1 file is therefore either; the user says which (``--model``).

Upstream's predictor settings (``build_sam2_video_predictor_npz`` with
``apply_postprocessing=True``): dynamic multimask via stability (delta
0.05, threshold 0.98), binarised masks from prompts for the memory encoder,
``fill_hole_area=8`` (models/sam2_engine.py does it on the CPU too).

Registry entries: ``models/families/medsam2.py`` and ``models/families/sam2.py``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import SamlabError
from .base import Prediction, Prompt, SegmentationModel, embedding_tensor

# Known Hiera trunks: signature (embed_dim, blocks per stage) -> architecture.
# ``config`` is the sam2 package's file (SAM 2.1; ``config_v20`` for SAM 2.0);
# ``overrides`` are dotted OmegaConf keys applied on top (tests register
# small trunks here); ``image_size`` pins the input size (None: the family's).
ARCHITECTURES = {
    "tiny": {"signature": (96, (1, 2, 7, 2)), "config": "configs/sam2.1/sam2.1_hiera_t.yaml",
             "config_v20": "configs/sam2/sam2_hiera_t.yaml", "label": "hiera-tiny"},
    "small": {"signature": (96, (1, 2, 11, 2)), "config": "configs/sam2.1/sam2.1_hiera_s.yaml",
              "config_v20": "configs/sam2/sam2_hiera_s.yaml", "label": "hiera-small"},
    "base_plus": {"signature": (112, (2, 3, 16, 3)), "config": "configs/sam2.1/sam2.1_hiera_b+.yaml",
                  "config_v20": "configs/sam2/sam2_hiera_b+.yaml", "label": "hiera-base_plus"},
    "large": {"signature": (144, (2, 6, 36, 4)), "config": "configs/sam2.1/sam2.1_hiera_l.yaml",
              "config_v20": "configs/sam2/sam2_hiera_l.yaml", "label": "hiera-large"},
}
IMAGE_SIZES = {"medsam2": 512, "sam2": 1024}
MEDSAM2_ARCH = "tiny"
# build_sam2_video_predictor_npz(apply_postprocessing=True) in MedSAM2's sam2/build_sam.py
HOLE_AREA = 8
_STABILITY = {"dynamic_multimask_via_stability": True, "dynamic_multimask_stability_delta": 0.05,
              "dynamic_multimask_stability_thresh": 0.98}
_MARKERS = ("image_encoder.trunk.patch_embed.proj.weight", "memory_attention.layers.0.self_attn.q_proj.weight",
            "sam_mask_decoder.iou_token.weight", "maskmem_tpos_enc")
PRETTY = {"medsam2": "MedSAM2", "sam2": "SAM 2", "sam2-or-medsam2": "SAM 2.1 hiera-tiny / MedSAM2"}


# ----------------------------------------------------------------------
# detection
def hiera_signature(sd: dict) -> tuple:
    """``(embed_dim, blocks per stage)`` of a SAM 2 state dict's Hiera trunk.

    A stage starts where a block changes width (it then has ``proj`` weights).

    Examples
    --------
    >>> hiera_signature(sam2_tiny_state_dict)   # doctest: +SKIP
    (96, (1, 2, 7, 2))
    """
    pre = "image_encoder.trunk.blocks."
    n = 0
    while f"{pre}{n}.norm1.weight" in sd:
        n += 1
    stages, count = [], 0
    for i in range(n):
        if i > 0 and f"{pre}{i}.proj.weight" in sd:
            stages.append(count)
            count = 0
        count += 1
    if count:
        stages.append(count)
    return int(sd["image_encoder.trunk.patch_embed.proj.weight"].shape[0]), tuple(stages)


def detect_sam2(sd: dict) -> Optional[dict]:
    """What a SAM 2 state dict is, or None when it is not SAM 2.

    Returns
    -------
    dict or None
        ``family`` (``sam2`` or ``sam2-or-medsam2`` for a SAM 2.1
        hiera-tiny), ``backbone`` (e.g. ``hiera-tiny``), ``arch`` (key of
        :data:`ARCHITECTURES`, None if unknown), ``version`` (``"2.1"`` or
        ``"2.0"``), ``image_size`` (0 when it depends on the family),
        ``embed_dim``, ``stages``.

    Examples
    --------
    >>> detect_sam2({"w": torch.zeros(1)}) is None   # doctest: +SKIP
    True
    """
    if not all(k in sd for k in _MARKERS):
        return None
    sig = hiera_signature(sd)
    arch = next((name for name, a in ARCHITECTURES.items() if tuple(a["signature"]) == sig), None)
    version = "2.1" if "no_obj_embed_spatial" in sd else "2.0"
    label = ARCHITECTURES[arch]["label"] if arch else f"hiera-{sig[0]}x{'-'.join(map(str, sig[1]))}"
    pinned = ARCHITECTURES[arch].get("image_size") if arch else None
    # MedSAM2 is SAM 2.1 hiera-tiny (tests register small trunks with medsam2_compatible)
    tiny_like = arch == MEDSAM2_ARCH or (arch is not None and ARCHITECTURES[arch].get("medsam2_compatible", False))
    family = "sam2-or-medsam2" if tiny_like and version == "2.1" else "sam2"
    size = pinned or (IMAGE_SIZES["sam2"] if family == "sam2" else 0)
    return {"family": family, "backbone": label, "arch": arch, "version": version, "image_size": int(size),
            "embed_dim": sig[0], "stages": list(sig[1])}


def check_family_fits(name: str, found: dict, family: Optional[str]) -> str:
    """The family to build for a detected SAM 2 file (``family`` = user's choice or None).

    Raises SamlabError when the file does not fit: MedSAM2 is SAM 2.1
    hiera-tiny, so another size (or SAM 2.0) with ``--model medsam2`` is a
    size/config mismatch; a hiera-tiny SAM 2.1 without ``--model`` is
    ambiguous.
    """
    what = f"a SAM {found['version']} {found['backbone']} checkpoint"
    if found["arch"] is None:
        raise SamlabError(f"{name} is a SAM 2 checkpoint with an unknown Hiera trunk (width {found['embed_dim']}, "
                          f"stages {found['stages']}): give a SAM 2.1 tiny/small/base_plus/large or MedSAM2 file")
    if family is None:
        if found["family"] == "sam2-or-medsam2":
            raise SamlabError(f"{name} is {what}: MedSAM2 (512 px) and Meta's SAM 2.1 tiny (1024 px) share this layout: "
                              "pass --model medsam2 or --model sam2")
        return "sam2"
    if family == "medsam2" and found["family"] != "sam2-or-medsam2":
        raise SamlabError(f"{name} is {what}, but MedSAM2 is SAM 2.1 hiera-tiny (config sam2.1_hiera_t512): "
                          "use --model sam2 for this file, or give a MedSAM2 checkpoint")
    if family not in ("medsam2", "sam2"):
        raise SamlabError(f"{name} is {what}, not a {family} checkpoint: use --model sam2 (or --model medsam2 for MedSAM2 files)")
    return family


# ----------------------------------------------------------------------
# building
def _package_config(path: str):
    import importlib.resources

    from omegaconf import OmegaConf

    res = importlib.resources.files("sam2").joinpath(path)
    if not res.is_file():
        raise SamlabError(f"the installed sam2 package has no {path}: reinstall it with "
                          "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0")
    return OmegaConf.load(str(res))


def network_config(arch: str, version: str, image_size: int):
    """The OmegaConf model config (package file + image size + upstream predictor settings).

    Examples
    --------
    >>> network_config("tiny", "2.1", 512).image_size   # doctest: +SKIP
    512
    """
    from omegaconf import OmegaConf

    a = ARCHITECTURES[arch]
    cfg = _package_config(a["config"] if version == "2.1" else a["config_v20"]).model
    for key, value in a.get("overrides", {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    cfg._target_ = "napari_samlab.models.sam2_engine.Sam2VideoEngine"
    cfg.image_size = int(image_size)
    feat = int(image_size) // 16  # stride-16 features: RoPE table size (t512.yaml: [32, 32])
    for part in ("self_attention", "cross_attention"):
        cfg.memory_attention.layer[part].feat_sizes = [feat, feat]
    cfg.sam_mask_decoder_extra_args = dict(_STABILITY)
    cfg.binarize_mask_from_pts_for_mem_enc = True
    # a prompt on an already tracked slice (a correction) stays a conditioning frame, so
    # re-propagating from it keeps it; upstream's recipe never prompts a tracked slice
    cfg.add_all_frames_to_correct_as_cond = True
    cfg.fill_hole_area = 0  # the package's CUDA-only path; ours: samlab_hole_area
    cfg.samlab_hole_area = HOLE_AREA
    return cfg


def build_sam2_network(sd: dict, arch: str, version: str, image_size: int, name: str, device: str = "cpu"):
    """A :class:`~napari_samlab.models.sam2_engine.Sam2VideoEngine` with ``sd`` loaded strictly.

    Raises SamlabError on missing/unexpected keys or shape mismatches (a
    file of another size than ``arch``).
    """
    from hydra.utils import instantiate

    cfg = network_config(arch, version, image_size)
    net = instantiate(cfg, _recursive_=True)
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as err:
        first = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), str(err).splitlines()[0])
        raise SamlabError(f"{name} does not fit the SAM {version} {ARCHITECTURES[arch]['label']} config ({first[:160]}): "
                          "the checkpoint is another size; let the size be detected or give the matching file") from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise SamlabError(f"{name} does not load strictly into SAM {version} {ARCHITECTURES[arch]['label']}: "
                          f"{', '.join(parts)} keys: the file is incomplete or from another model")
    return net.to(device).eval()


@dataclass
class Sam2Options:
    """Per-model settings of the memory pipeline (see propagate/memory.py)."""

    largest_component: bool = True  # upstream: getLargestCC (26-connected) on the merged volume
    extra: dict = field(default_factory=dict)


class Sam2Model(SegmentationModel):
    """A SAM 2 / MedSAM2 network with SAM 2's video memory.

    ``memory_propagation`` is True: volumes are segmented by
    :class:`napari_samlab.propagate.memory.MemorySession` (the video
    predictor's memory), not slice by slice; ``propagate_volume`` reaches it
    through :mod:`napari_samlab.propagate.memory_result`.  ``encode``/``decode`` give the
    2D path (one slice, as the video predictor answers a prompt on an
    un-tracked frame) so that :class:`~napari_samlab.predict.predictor.SlicePredictor`
    works too.

    Attributes
    ----------
    net : Sam2VideoEngine
    arch, version : str
        Key of :data:`ARCHITECTURES`; ``"2.1"`` or ``"2.0"``.
    options : Sam2Options
    """

    supports_points = True
    supports_boxes = True
    memory_propagation = True

    def __init__(self, net, family: str, arch: str, version: str, fingerprint: str, source: str = "", device: str = "cpu"):
        self.net = net
        self.family = family
        self.arch = arch
        self.version = version
        self.image_size = int(net.image_size)
        self.device = device
        self.source = source
        self.options = Sam2Options()
        self._fingerprint = fingerprint

    def fingerprint(self) -> str:
        return hashlib.sha1(f"{self._fingerprint}|{self.family}|{self.image_size}|{self.version}".encode()).hexdigest()

    def auto_window(self, image: np.ndarray, modality: Optional[str] = None):
        from ..base.windowing import default_auto_window

        # MedSAM2's scripts: CT clipped to a window then min-max to 0-255 (level 40 /
        # width 400 as the MedSAM family's default CT window), MR 0.5-99.5 percentiles
        return default_auto_window(image, modality=modality)

    def describe(self) -> str:
        return f"{PRETTY.get(self.family, self.family)} ({ARCHITECTURES[self.arch]['label']}, SAM {self.version}, {self.image_size} px)"

    # -- image encoder backend -------------------------------------------
    def prepare_encoder(self) -> str:
        """Route the image encoder through ``encoder_backend`` (models/accel.py); returns the backend in use.

        ``"torch"`` keeps the package's module.  Other backends export the
        Hiera trunk + FPN neck + the decoder's two high-resolution
        projections as one graph (cached on disk, checked against PyTorch
        when exported); ``"auto"`` falls back to torch when no export
        matches.  Exports run on the CPU only.
        """
        backend = self.encoder_backend if self.device == "cpu" else "torch"
        if backend == "torch":
            self.net.samlab_encoder, self.net.samlab_encoder_backend = None, "torch"
            return "torch"
        if self.net.samlab_encoder is not None and self.net.samlab_encoder_backend == backend:
            return backend
        from .accel import accelerated_encoder
        from .sam2_engine import PackedImageEncoder

        packed = PackedImageEncoder(self.net)
        size = self.image_size
        import torch

        # as many threads as PyTorch uses (OMP_NUM_THREADS, torch.set_num_threads): like for like
        accel = accelerated_encoder(packed, (1, 3, size, size), backend=backend, weights_key=self.fingerprint(),
                                    threads=torch.get_num_threads())
        if accel.backend == "torch":
            self.net.samlab_encoder, self.net.samlab_encoder_backend = None, "torch"
            return "torch"
        self.net.samlab_encoder = lambda x: packed.unpack(accel(x.contiguous()), x.shape[0])
        self.net.samlab_encoder_backend = backend
        self.last_encoder_backend = accel.backend
        return accel.backend

    # -- 2D path ---------------------------------------------------------
    def encode(self, image: np.ndarray) -> dict:
        """Image features of one windowed slice (uint8 (H, W) or (H, W, 3))."""
        import torch

        from .sam2_inputs import frame_tensor

        x = frame_tensor(image, self.image_size).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            out = self.net.forward_image(x)
        emb = {f"fpn{i}": f.cpu().numpy() for i, f in enumerate(out["backbone_fpn"])}
        emb["original_size"] = np.array(image.shape[:2])
        return emb

    def decode(self, embedding: dict, prompt: Prompt) -> Prediction:
        """Mask of one prompted slice: the video predictor's answer on an un-tracked frame."""
        import torch

        from .sam2_inputs import prompt_tensors

        h, w = (int(v) for v in embedding["original_size"])
        fpn = [embedding_tensor(embedding[f"fpn{i}"], self.device) for i in range(3)]
        net = self.net
        pe = net.image_encoder.neck.position_encoding
        feats = {"vision_features": fpn[-1], "backbone_fpn": fpn,
                 "vision_pos_enc": [pe(torch.zeros(1, 1, *f.shape[-2:], device=f.device)).to(f.dtype) for f in fpn]}
        state = net.init_state_from_frames(_NoFrames(), h, w)
        state["cached_features"] = {0: (torch.zeros(1, 3, 1, 1, device=self.device), feats)}
        points, labels, box = prompt_tensors(prompt)
        with torch.inference_mode():
            _, _, masks = net.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=points, labels=labels, box=box)
            out = state["temp_output_dict_per_obj"][0]["cond_frame_outputs"][0]
            score = float(torch.sigmoid(out["object_score_logits"]).flatten()[0])
        logits = masks[0, 0].float().cpu().numpy()
        return Prediction(mask=logits > 0, score=score, low_res_logits=out["pred_masks"][0, 0].float().cpu().numpy())


class _NoFrames:
    """One frame whose features are already cached (the 2D path)."""

    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise IndexError("features are cached; no frame to load")


def build_sam2_family(sd: dict, family: str, name: str, fingerprint: str, device: str = "cpu") -> Sam2Model:
    """Build a ``medsam2`` or ``sam2`` engine from a state dict (family already checked).

    Examples
    --------
    >>> model = build_sam2_family(sd, "medsam2", "MedSAM2_latest.pt", fp)   # doctest: +SKIP
    >>> model.image_size
    512
    """
    found = detect_sam2(sd)
    if found is None:
        raise SamlabError(f"{name} is not a SAM 2 / MedSAM2 checkpoint (no Hiera image encoder or memory keys): "
                          "give a MedSAM2 or sam2.1_hiera_*.pt file, or choose the model that matches the file")
    family = check_family_fits(name, found, family)
    arch = found["arch"]
    size = ARCHITECTURES[arch].get("image_size") or IMAGE_SIZES[family]
    net = build_sam2_network(sd, arch, found["version"], size, name, device)
    return Sam2Model(net, family, arch, found["version"], fingerprint, name, device)
