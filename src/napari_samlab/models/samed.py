"""SAMed, SAMed_h and SAMed_s: SAM with LoRA for multi-organ CT (hitachinsk/SAMed).

A SAMed checkpoint holds only the LoRA factors (``w_a_000`` [r, dim],
``w_b_000`` [dim, r], ...; index 2k is block k's q projection, 2k+1 its v),
plus every ``prompt_encoder.*`` and ``mask_decoder.*`` tensor.  The image
encoder comes from the original SAM checkpoint (the *base*), so building a
model needs both files.  SAMed_s also carries decoder LoRA factors (``sa_*``,
``cti_*``, ``cit_*``, ``fati_*``) and takes the decoder transformer from the
base.

What upstream does (``segment_anything/build_sam.py: load_from``,
``sam_lora_image_encoder*.py``, ``utils.py: test_single_volume``), reproduced
here:

* SAM is built for 512 px with ``num_classes`` + 1 mask tokens, pixel mean 0
  and std 1.  The base ``pos_embed`` (64x64) is resized to 32x32 with
  ``F.interpolate(mode="bilinear", align_corners=False)``; the global-attention
  blocks' relative-position tables (127 rows) are resized to 63 rows the
  same way (as a 1x1xLxC image, so only the row axis changes).
* LoRA adds ``B @ A`` to the q rows (``[:dim]``) and the v rows
  (``[-dim:]``) of each block's ``qkv`` output with no scaling and no bias,
  so it is merged into ``qkv.weight`` once at load time.
* Each slice (HU clipped to [-125, 275] and divided into [0, 1]) is zoomed
  to 224x224 and then to 512x512 with ``scipy.ndimage.zoom(order=3)``,
  repeated to 3 channels and encoded without a prompt.  The decoder keeps all
  ``num_classes`` + 1 channels (channel 0 is background); the 128x128 logits
  are upsampled bilinearly to 512x512, ``argmax(softmax)`` gives the class
  map, which is zoomed back to the slice shape with ``order=0``.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Optional

import numpy as np

from ..errors import SamlabError
from .base import Prediction, Prompt, SegmentationModel, embedding_tensor
from .checkpoint import plain_state_dict

SAMED_IMAGE_SIZE = 512  # the network's input side (test.py --img_size)
SAMED_INPUT_SIZE = 224  # the training resolution every slice first goes through (--input_size)
PATCH_SIZE = 16
WINDOW_SIZE = 14

# width -> (registry name, depth, file of the original SAM checkpoint, display name)
SAM_BACKBONES = {
    768: ("vit_b", 12, "sam_vit_b_01ec64.pth", "ViT-B"),
    1024: ("vit_l", 24, "sam_vit_l_0b3195.pth", "ViT-L"),
    1280: ("vit_h", 32, "sam_vit_h_4b8939.pth", "ViT-H"),
}
VARIANT_NAMES = {"samed": "SAMed", "samed_h": "SAMed_h", "samed_s": "SAMed_s"}
CLASS_NAMES = {1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "liver", 6: "stomach",
               7: "aorta", 8: "pancreas"}

_WA = re.compile(r"^w_a_(\d{3,})$")
_DECODER_LORA = ("sa_a_", "sa_b_", "cti_a_", "cti_b_", "cit_a_", "cit_b_", "fati_")


def _backbone_of(width: int) -> tuple:
    """(name, depth, base file, display name) of a SAM width; unknown widths get generic names."""
    if width in SAM_BACKBONES:
        return SAM_BACKBONES[width]
    return (f"vit_{width}", None, f"a SAM checkpoint with {width}-wide image encoder", f"ViT ({width} wide)")


def detect_samed(state_dict) -> Optional[dict]:
    """Tell whether a state dict is a SAMed LoRA checkpoint, and which one.

    Parameters
    ----------
    state_dict : dict of str to torch.Tensor
        The checkpoint's tensors (wrappers and ``module.`` prefixes are
        tolerated).

    Returns
    -------
    dict or None
        None if it is not SAMed; else ``{"family": "samed", "variant":
        "samed" | "samed_h" | "samed_s", "backbone": "vit_b" | "vit_h" | ...,
        "lora_rank": r, "num_classes": n, "image_size": 512, "embed_dim":
        dim, "depth": number of LoRA'd encoder blocks, "decoder_lora": bool}``.
        ``num_classes`` is None when the file has no mask decoder.

    Examples
    --------
    >>> import torch
    >>> sd = {"w_a_000": torch.zeros(4, 768), "w_b_000": torch.zeros(768, 4),
    ...       "mask_decoder.mask_tokens.weight": torch.zeros(9, 256)}
    >>> info = detect_samed(sd)
    >>> info["variant"], info["backbone"], info["lora_rank"], info["num_classes"]
    ('samed', 'vit_b', 4, 8)
    """
    sd = plain_state_dict(state_dict)
    a0 = sd.get("w_a_000")
    if a0 is None or a0.ndim != 2:
        return None
    rank, width = (int(s) for s in a0.shape)
    n_a = sum(1 for k in sd if _WA.match(k))
    tokens = sd.get("mask_decoder.mask_tokens.weight")
    num_classes = int(tokens.shape[0]) - 1 if tokens is not None and tokens.ndim == 2 else None
    decoder_lora = any(k.startswith(_DECODER_LORA) for k in sd)
    backbone = _backbone_of(width)[0]
    if decoder_lora:
        variant = "samed_s"
    elif backbone == "vit_h":
        variant = "samed_h"
    else:
        variant = "samed"
    return {
        "family": "samed",
        "variant": variant,
        "backbone": backbone,
        "lora_rank": rank,
        "num_classes": num_classes,
        "image_size": SAMED_IMAGE_SIZE,
        "embed_dim": width,
        "depth": n_a // 2,
        "decoder_lora": decoder_lora,
    }


def merge_class_logits(logits):
    """SAMed's class map from its decoder logits, bit for bit as upstream.

    Upstream (``utils.py: test_single_volume``) computes
    ``torch.argmax(torch.softmax(logits, dim=1), dim=1)`` on float32 logits.
    The argmax is taken on the *softmax output*, not on the logits: two
    channels whose logits differ by less than float32 softmax can resolve
    come out equal, and ``torch.argmax`` then returns the first (lowest
    class index), as it does for exact ties.

    Parameters
    ----------
    logits : torch.Tensor or ndarray
        (N, C, H, W) class logits, channel 0 = background (cast to float32).

    Returns
    -------
    labels : ndarray of int64, (N, H, W)
    prob : torch.Tensor
        The float32 softmax over C.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([0.0, 2e-8, -3.0]).view(1, 3, 1, 1)   # softmax ties channels 0 and 1
    >>> int(merge_class_logits(x)[0][0, 0, 0])
    0
    """
    import torch

    x = torch.as_tensor(logits).to(torch.float32)
    with torch.no_grad():
        prob = torch.softmax(x, dim=1)
        labels = torch.argmax(prob, dim=1)
    return labels.cpu().numpy(), prob


# --------------------------------------------------------------------------
# checks of the base checkpoint
# --------------------------------------------------------------------------
def _encoder_depth(sd: dict) -> int:
    idx = {int(m.group(1)) for k in sd for m in [re.match(r"^image_encoder\.blocks\.(\d+)\.", k)] if m}
    return max(idx) + 1 if idx else 0


def _check_base(info: dict, base: dict) -> None:
    """Raise SamlabError unless ``base`` is the SAM checkpoint the LoRA file was trained on."""
    variant = VARIANT_NAMES.get(info["variant"], "SAMed")
    _, _, want_file, want_name = _backbone_of(info["embed_dim"])
    need = f"{variant} needs the original SAM {want_name} checkpoint ({want_file}) as the base checkpoint"
    if not base:
        raise SamlabError(f"the base checkpoint holds no weight tensors: {need}")
    if "w_a_000" in base:
        raise SamlabError(f"the base checkpoint is a SAMed LoRA file itself, not SAM: {need}")
    if any(".Space_Adapter." in k or ".attn.rel_h" in k for k in base):
        raise SamlabError(f"the base checkpoint is a Medical SAM Adapter checkpoint, not the original SAM: {need}")
    for key in ("image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed",
                "image_encoder.blocks.0.attn.qkv.weight", "image_encoder.blocks.0.attn.rel_pos_h",
                "image_encoder.neck.0.weight"):
        if key not in base:
            raise SamlabError(f"the base checkpoint is not a SAM checkpoint (it has no {key}): {need}")
    width = int(base["image_encoder.patch_embed.proj.weight"].shape[0])
    depth = _encoder_depth(base)
    if width != info["embed_dim"] or depth != info["depth"]:
        given = _backbone_of(width)[3]
        if width in SAM_BACKBONES and depth != SAM_BACKBONES[width][1]:
            given = f"{given}-wide with {depth} blocks"
        raise SamlabError(
            f"{variant} needs the SAM {want_name} base checkpoint ({want_file}); the given base is {given}: "
            "pass the matching --base-checkpoint"
        )
    if info["decoder_lora"] and "mask_decoder.transformer.final_attn_token_to_image.q_proj.weight" not in base:
        raise SamlabError(f"the base checkpoint has no mask decoder transformer, which SAMed_s takes from it: {need}")


# --------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------
def _resize_base_encoder(base: dict, global_idx: list, token_size: int) -> dict:
    """Base image-encoder tensors resized to ``token_size`` as upstream's ``load_from`` does."""
    import torch
    import torch.nn.functional as F

    enc = {k: v.detach().to(torch.float32) for k, v in base.items() if k.startswith("image_encoder.")}
    pos = enc["image_encoder.pos_embed"]
    if pos.shape[1] != token_size:
        p = pos.permute(0, 3, 1, 2)  # [b, c, h, w]
        p = F.interpolate(p, (token_size, token_size), mode="bilinear", align_corners=False)
        enc["image_encoder.pos_embed"] = p.permute(0, 2, 3, 1).contiguous()
        # only the global blocks' tables depend on the grid; window blocks keep 2*14-1 rows
        for i in global_idx:
            for axis in ("h", "w"):
                key = f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
                rel = enc[key]
                _, cols = rel.shape
                rel = F.interpolate(rel[None, None], (token_size * 2 - 1, cols), mode="bilinear", align_corners=False)
                enc[key] = rel[0, 0].contiguous()
    return enc


def _lora_delta(sd: dict, a_key: str, b_key: str, rows: int, cols: int):
    """``B @ A`` in float64 (then rounded once), checked against the layer it belongs to."""
    import torch

    if a_key not in sd or b_key not in sd:
        raise SamlabError(f"the SAMed checkpoint lacks {a_key if a_key not in sd else b_key}: the file is incomplete, download it again")
    a, b = sd[a_key], sd[b_key]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != cols or b.shape[0] != rows or a.shape[0] != b.shape[1]:
        raise SamlabError(
            f"the SAMed LoRA factors {a_key} {tuple(a.shape)} / {b_key} {tuple(b.shape)} do not fit a "
            f"{rows}x{cols} layer: the LoRA file does not belong to this base checkpoint"
        )
    return b.detach().to(torch.float64) @ a.detach().to(torch.float64)


def _merge(weight, delta):
    import torch

    return (weight.detach().to(torch.float64) + delta).to(torch.float32)


def _merged_state_dict(info: dict, lora: dict, base: dict, global_idx: list, dec_depth: int) -> dict:
    """Everything the 512-px SAM needs, with every LoRA factor merged into its weight."""
    import torch

    token_size = SAMED_IMAGE_SIZE // PATCH_SIZE
    out = _resize_base_encoder(base, global_idx, token_size)
    dim = info["embed_dim"]
    for k in range(info["depth"]):
        key = f"image_encoder.blocks.{k}.attn.qkv.weight"
        w = out[key].to(torch.float64).clone()
        # _LoRA_qkv: qkv[..., :dim] += B_q A_q x ; qkv[..., -dim:] += B_v A_v x  (bias untouched)
        w[:dim] += _lora_delta(lora, f"w_a_{2 * k:03d}", f"w_b_{2 * k:03d}", dim, dim)
        w[-dim:] += _lora_delta(lora, f"w_a_{2 * k + 1:03d}", f"w_b_{2 * k + 1:03d}", dim, dim)
        out[key] = w.to(torch.float32)

    for k, v in lora.items():
        if k.startswith(("prompt_encoder.", "mask_decoder.")):
            out[k] = v.detach().to(torch.float32)
    if info["decoder_lora"]:
        # SAMed_s saves the decoder without its transformer: that comes from the base
        for k, v in base.items():
            if k.startswith("mask_decoder.transformer.") and k not in out:
                out[k] = v.detach().to(torch.float32)
        t = "mask_decoder.transformer."
        groups = (("sa", "self_attn"), ("cti", "cross_attn_token_to_image"), ("cit", "cross_attn_image_to_token"))
        for layer in range(dec_depth):
            for short, name in groups:
                for j, proj in enumerate(("q_proj", "v_proj")):
                    key = f"{t}layers.{layer}.{name}.{proj}.weight"
                    rows, cols = out[key].shape
                    i = 2 * layer + j
                    out[key] = _merge(out[key], _lora_delta(lora, f"{short}_a_{i:03d}", f"{short}_b_{i:03d}", rows, cols))
        for proj, tag in (("q_proj", "q"), ("v_proj", "v")):
            key = f"{t}final_attn_token_to_image.{proj}.weight"
            rows, cols = out[key].shape
            out[key] = _merge(out[key], _lora_delta(lora, f"fati_{tag}a", f"fati_{tag}b", rows, cols))
    return out


def _check_file_keys(info: dict, lora: dict, base: dict, want: dict, dec_depth: int) -> None:
    """Both files hold exactly what the 512-px SAMed network takes from them (nothing silently dropped).

    The LoRA file: ``w_a/w_b`` for every q and v of the encoder, the prompt
    encoder and mask decoder (SAMed_s: its decoder LoRA factors, and the
    decoder transformer may be absent: it then comes from the base).  The
    base: the SAM image encoder of the same depth, plus SAM's own prompt
    encoder and mask decoder (present in every SAM file, unused by SAMed).
    """
    from .checkpoint import check_state_dict_keys

    n = 2 * info["depth"]
    expected = {f"w_{ab}_{i:03d}" for ab in "ab" for i in range(n)}
    expected |= {k for k in want if k.startswith(("prompt_encoder.", "mask_decoder."))}
    if info["decoder_lora"]:
        expected = {k for k in expected if not k.startswith("mask_decoder.transformer.")}
        expected |= {f"{g}_{ab}_{i:03d}" for g in ("sa", "cti", "cit") for ab in "ab" for i in range(2 * dec_depth)}
        expected |= {"fati_qa", "fati_qb", "fati_va", "fati_vb"}
        expected |= {k for k in lora if k.startswith("mask_decoder.transformer.") and k in want}
    variant = VARIANT_NAMES.get(info["variant"], "SAMed")
    check_state_dict_keys(expected, lora, f"{variant} (LoRA rank {info['lora_rank']}, {info['depth']} blocks)",
                          "the SAMed checkpoint")
    encoder = {k for k in want if k.startswith("image_encoder.")}
    sam_heads = {k for k in base if k.startswith(("prompt_encoder.", "mask_decoder."))}
    _, _, base_file, base_name = _backbone_of(info["embed_dim"])
    check_state_dict_keys(encoder | sam_heads, base, f"SAM {base_name} base ({base_file})", "the base checkpoint")


def _global_indexes(base: dict, depth: int) -> list:
    """Blocks with global attention: their tables span the whole grid, not a 14-token window."""
    idx = [i for i in range(depth)
           if int(base[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) != 2 * WINDOW_SIZE - 1]
    return idx


def build_samed(state_dict, base_state_dict, device: str = "cpu", fingerprint: Optional[str] = None) -> "SamedModel":
    """Build a SAMed / SAMed_h / SAMed_s model with its LoRA merged.

    Parameters
    ----------
    state_dict : dict of str to torch.Tensor
        The SAMed LoRA checkpoint (``w_a_*``, ``w_b_*``, ``prompt_encoder.*``,
        ``mask_decoder.*``; SAMed_s also ``sa_*``, ``cti_*``, ``cit_*``,
        ``fati_*``).
    base_state_dict : dict of str to torch.Tensor
        The original SAM checkpoint the LoRA was trained on
        (``sam_vit_b_01ec64.pth`` for SAMed/SAMed_s, ``sam_vit_h_4b8939.pth``
        for SAMed_h).
    device : str
        ``"cpu"`` or ``"cuda"``.
    fingerprint : str, optional
        Cache key of the weights (e.g. file hashes); computed from the
        tensors when omitted.

    Returns
    -------
    SamedModel

    Raises
    ------
    SamlabError
        Not a SAMed file; base missing, not SAM, or of the wrong backbone.

    Examples
    --------
    >>> lora = load_checkpoint_file("epoch_159.pth")            # doctest: +SKIP
    >>> base = load_checkpoint_file("sam_vit_b_01ec64.pth")     # doctest: +SKIP
    >>> model = build_samed(lora, base)                         # doctest: +SKIP
    >>> pred = model.decode(model.encode(ct_slice_unit), Prompt())   # doctest: +SKIP
    >>> pred.labels.max() <= 8                                  # doctest: +SKIP
    True
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    lora = plain_state_dict(state_dict)
    info = detect_samed(lora)
    if info is None:
        raise SamlabError("the checkpoint is not a SAMed LoRA file (it has no w_a_000 tensor): use --model to pick its family")
    if info["num_classes"] is None or info["num_classes"] < 1:
        raise SamlabError("the SAMed checkpoint has no mask_decoder.mask_tokens.weight: the file is incomplete, download it again")
    if base_state_dict is None:
        _, _, f, n = _backbone_of(info["embed_dim"])
        raise SamlabError(f"{VARIANT_NAMES[info['variant']]} needs the original SAM {n} checkpoint ({f}): pass it with --base-checkpoint")
    base = plain_state_dict(base_state_dict)
    _check_base(info, base)

    dim, depth = info["embed_dim"], info["depth"]
    head_dim = int(base["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
    if head_dim <= 0 or dim % head_dim:
        raise SamlabError("the base checkpoint's relative-position tables do not fit its width: it is not a SAM checkpoint")
    global_idx = _global_indexes(base, depth)
    mlp_dim = int(base["image_encoder.blocks.0.mlp.lin1.weight"].shape[0])
    out_chans = int(base["image_encoder.neck.0.weight"].shape[0])
    prompt_dim = int(lora["mask_decoder.iou_token.weight"].shape[1]) if "mask_decoder.iou_token.weight" in lora else 256
    dec_src = base if info["decoder_lora"] else lora
    dec_depth = len({int(m.group(1)) for k in dec_src
                     for m in [re.match(r"^mask_decoder\.transformer\.layers\.(\d+)\.", k)] if m}) or 2
    dec_mlp = dec_src.get("mask_decoder.transformer.layers.0.mlp.lin1.weight")
    dec_mlp_dim = int(dec_mlp.shape[0]) if dec_mlp is not None else 2048
    mask_chans = lora.get("prompt_encoder.mask_downscaling.3.weight")
    mask_in_chans = int(mask_chans.shape[0]) if mask_chans is not None else 16
    token_size = SAMED_IMAGE_SIZE // PATCH_SIZE

    # building on the meta device skips the random init of ~100-600 M parameters
    with torch.device("meta"):
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=depth, embed_dim=dim, img_size=SAMED_IMAGE_SIZE, mlp_ratio=mlp_dim / dim,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=dim // head_dim,
                patch_size=PATCH_SIZE, qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_idx,
                window_size=WINDOW_SIZE, out_chans=out_chans,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim, image_embedding_size=(token_size, token_size),
                input_image_size=(SAMED_IMAGE_SIZE, SAMED_IMAGE_SIZE), mask_in_chans=mask_in_chans,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=info["num_classes"],
                transformer=TwoWayTransformer(depth=dec_depth, embedding_dim=prompt_dim, mlp_dim=dec_mlp_dim, num_heads=8),
                transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256,
            ),
            pixel_mean=[0.0, 0.0, 0.0],
            pixel_std=[1.0, 1.0, 1.0],
        )
    want = sam.state_dict()
    _check_file_keys(info, lora, base, want, dec_depth)
    merged = _merged_state_dict(info, lora, base, global_idx, dec_depth)
    missing = [k for k in want if k not in merged]
    if missing:
        where = "base checkpoint" if missing[0].startswith("image_encoder.") else "SAMed checkpoint"
        raise SamlabError(f"the {where} lacks {missing[0]} ({len(missing)} tensors missing): the file is incomplete or not the right one")
    for k, v in want.items():
        if tuple(merged[k].shape) != tuple(v.shape):
            raise SamlabError(
                f"{k} has shape {tuple(merged[k].shape)} but SAMed needs {tuple(v.shape)}: "
                "the SAMed file and the base checkpoint do not belong together"
            )
    sam.load_state_dict({k: merged[k].contiguous() for k in want}, strict=True, assign=True)
    # non-persistent buffers are not in any state dict: give them real values (upstream: mean 0, std 1)
    sam.pixel_mean = torch.zeros(3, 1, 1)
    sam.pixel_std = torch.ones(3, 1, 1)
    if fingerprint is None:
        fingerprint = _fingerprint(lora, base)
    return SamedModel(sam, info, fingerprint, device)


def _fingerprint(lora: dict, base: dict) -> str:
    import hashlib

    try:
        from .checkpoint import weights_fingerprint
    except ImportError:  # pragma: no cover - checkpoint.py is part of the package
        weights_fingerprint = None
    h = hashlib.sha1(b"samed|")
    for sd in (lora, base):
        if weights_fingerprint is not None:
            h.update(weights_fingerprint(sd).encode())
        else:
            for k in sorted(sd):
                h.update(f"{k}{tuple(sd[k].shape)}{float(sd[k].double().sum())!r}".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------
def _as_unit_slice(image: np.ndarray) -> np.ndarray:
    """The slice as SAMed's float32 [0, 1] grey image.

    The predictor's auto window already gives [0, 1] floats for CT; 8-bit
    windows (other presets) are divided by 255; colour images are averaged to
    grey (SAMed repeats one grey channel three times).
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3]
        img = img[..., 0] if (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])) \
            else img.astype(np.float64).mean(axis=-1)
    if img.ndim != 2:
        raise SamlabError(f"SAMed segments 2D slices, got an array of shape {img.shape}: give one (y, x) slice")
    if img.dtype == np.uint8:
        return (img.astype(np.float32) / np.float32(255.0))
    if img.dtype == bool:
        return img.astype(np.float32)
    return img.astype(np.float32, copy=False)


class SamedModel(SegmentationModel):
    """A SAMed network (LoRA merged) behind the :class:`SegmentationModel` interface.

    No prompt: every slice gets the model's organ classes.  ``decode``
    returns a :class:`Prediction` whose ``labels`` is the uint8 class map (for
    Synapse: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 liver,
    6 stomach, 7 aorta, 8 pancreas), ``mask`` is ``labels > 0`` and ``score``
    the mean over the 512x512 grid of the winning class probability.

    Parameters
    ----------
    sam : segment_anything.modeling.Sam
        The 512-px SAM with merged weights (see :func:`build_samed`).
    info : dict
        :func:`detect_samed`'s result.
    fingerprint : str
        Cache key of the weights.
    device : str
        ``"cpu"`` or ``"cuda"``.

    Examples
    --------
    >>> model = build_samed(lora_sd, base_sd)            # doctest: +SKIP
    >>> emb = model.encode(windowed_slice)               # doctest: +SKIP
    >>> model.decode(emb, Prompt()).labels.shape         # doctest: +SKIP
    (512, 512)
    """

    family = "samed"
    needs_prompt = False
    supports_points = False
    supports_boxes = False
    supports_mask_input = False

    def __init__(self, sam, info: dict, fingerprint: str, device: str = "cpu"):
        self.info = dict(info)
        self.variant = info["variant"]
        self.backbone = info["backbone"]
        self.lora_rank = info["lora_rank"]
        self.num_classes = int(info["num_classes"])
        self.image_size = SAMED_IMAGE_SIZE
        self.input_size = SAMED_INPUT_SIZE
        self.device = str(device)
        self.class_names = dict(CLASS_NAMES) if self.num_classes == 8 else {}
        self._fingerprint = fingerprint
        self.sam = sam.to(self.device).eval()

    def fingerprint(self) -> str:
        return f"samed:{self.variant}:{self._fingerprint}"

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The 512x512 float32 grey slice the encoder sees (test_single_volume's zooms).

        Parameters
        ----------
        image : ndarray
            (H, W) windowed slice, [0, 1] floats.

        Returns
        -------
        ndarray
            (512, 512) float32.

        Examples
        --------
        >>> model.preprocess(np.zeros((300, 260), np.float32)).shape   # doctest: +SKIP
        (512, 512)
        """
        from scipy.ndimage import zoom

        x = _as_unit_slice(image)
        h, w = x.shape
        if h != self.input_size or w != self.input_size:
            x = zoom(x, (self.input_size / h, self.input_size / w), order=3)
        nh, nw = x.shape
        if nh != self.image_size or nw != self.image_size:
            x = zoom(x, (self.image_size / nh, self.image_size / nw), order=3)
        return np.ascontiguousarray(x, dtype=np.float32)

    def encode(self, image: np.ndarray) -> dict:
        """Zoom the slice to 224 then 512, repeat to 3 channels, run the image encoder.

        Parameters
        ----------
        image : ndarray
            (H, W) slice as the windowing produced it (HU clipped to
            [-125, 275] mapped to [0, 1] for CT).

        Returns
        -------
        dict
            ``"image_embedding"`` (1, 256, 32, 32) float32 and
            ``"original_size"`` ``[H, W]``.

        Examples
        --------
        >>> emb = model.encode(np.random.rand(512, 512).astype(np.float32))   # doctest: +SKIP
        >>> emb["image_embedding"].shape                                    # doctest: +SKIP
        (1, 256, 32, 32)
        """
        import torch

        arr = np.asarray(image)
        h, w = arr.shape[:2]
        x = self.preprocess(arr)
        t = torch.from_numpy(x)[None, None].repeat(1, 3, 1, 1).to(self.device)
        with torch.no_grad():
            # Sam.preprocess with mean 0 / std 1 and no padding at 512 leaves the input as it is
            emb = self.run_encoder(self.sam.image_encoder, t)
        return {"image_embedding": emb.float().cpu().numpy(), "original_size": np.array([h, w], dtype=np.int64)}

    def class_logits(self, embedding: dict):
        """All ``num_classes`` + 1 decoder channels at 512x512 (channel 0 = background).

        Parameters
        ----------
        embedding : dict
            From :meth:`encode`.

        Returns
        -------
        torch.Tensor
            (1, num_classes + 1, 512, 512) logits.

        Examples
        --------
        >>> model.class_logits(model.encode(s)).shape   # doctest: +SKIP
        torch.Size([1, 9, 512, 512])
        """
        import torch
        import torch.nn.functional as F

        emb = embedding_tensor(embedding["image_embedding"], self.device)
        with torch.no_grad():
            pe = self.sam.prompt_encoder
            sparse, dense = pe(points=None, boxes=None, masks=None)
            # predict_masks keeps channel 0 (background); MaskDecoder.forward would drop it
            low, _ = self.sam.mask_decoder.predict_masks(
                image_embeddings=emb, image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            )
            size = self.image_size
            # Sam.postprocess_masks(input_size=original_size=(512, 512))
            masks = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
            masks = masks[..., :size, :size]
            masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        return masks

    def decode(self, embedding: dict, prompt: Optional[Prompt] = None) -> Prediction:
        """Class map of the slice (the prompt is ignored: SAMed takes none).

        Parameters
        ----------
        embedding : dict
            From :meth:`encode`.
        prompt : Prompt, optional
            Ignored.

        Returns
        -------
        Prediction
            ``labels`` uint8 (H, W) class map, ``mask = labels > 0``,
            ``score`` mean winning-class probability, ``extra["probabilities"]``
            the per-class mean probability at 512x512.

        Examples
        --------
        >>> pred = model.decode(model.encode(ct_slice), Prompt())   # doctest: +SKIP
        >>> sorted(np.unique(pred.labels))                          # doctest: +SKIP
        [0, 1, 5, 6]
        """
        import torch
        from scipy.ndimage import zoom

        h, w = (int(v) for v in np.asarray(embedding["original_size"]).ravel()[:2])
        masks = self.class_logits(embedding)
        out, prob = merge_class_logits(masks)
        with torch.no_grad():
            score = float(prob.max(dim=1).values.mean())
            mean_prob = prob.mean(dim=(0, 2, 3)).cpu().numpy()
        out = out[0]
        out_h, out_w = out.shape
        if h != out_h or w != out_w:
            out = zoom(out, (h / out_h, w / out_w), order=0)
        labels = out.astype(np.uint8)
        return Prediction(mask=labels > 0, score=score, low_res_logits=None, labels=labels,
                          extra={"probabilities": mean_prob, "class_names": self.class_names})
