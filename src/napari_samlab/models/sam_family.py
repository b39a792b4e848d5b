"""Segment Anything (ViT-B/L/H, MobileSAM) and MedSAM, as upstream runs them.

Models are built from segment_anything's own classes (``ImageEncoderViT``,
``PromptEncoder``, ``MaskDecoder``, ``TwoWayTransformer``, ``Sam``) with the
architecture read from the state dict, so both the released files and
small test models with the same key layout load strictly.

Two pipelines share the decoder code:

* ``sam`` (:class:`SamModel`): ``SamPredictor`` semantics: resize the
  longest side to 1024 (``ResizeLongestSide``), ImageNet mean/std, pad;
  points, boxes and mask input; masks upsampled to 1024, cropped, resized
  to (H, W), logits > 0.  With ``Prompt.multimask`` (and, as the SAM
  authors recommend, for a lone point without box or mask) the three
  multimask outputs are computed and the one with the highest predicted IoU
  is returned.
* ``medsam`` (:class:`MedSAMModel`): ``MedSAM_Inference.py``: grey to 3
  channels, ``skimage.transform.resize`` to 1024×1024 (order 3,
  preserve_range, anti_aliasing), ``astype(uint8)``, min-max to [0, 1], no
  mean/std; box only, scaled x·1024/W, y·1024/H; ``multimask_output=False``;
  sigmoid of the 256×256 logits, bilinear (align_corners=False) to (H, W),
  > 0.5.

Box convention (both): ``(x0, y0, x1, y1)`` array indices with inclusive
corners are passed to the prompt encoder as they are (no +1): SAM's prompt
encoder adds 0.5 to every coordinate, so a box corner lands on the centre
of the pixel it names, and MedSAM_Inference.py passes the user's box
unchanged too.
"""
from __future__ import annotations

import hashlib
import weakref
from functools import partial
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PromptError, SamlabError
from .base import Prediction, Prompt, SegmentationModel, embedding_tensor

VIT_NAMES = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_VIT_HEADS = {768: 12, 1024: 16, 1280: 16}


# ----------------------------------------------------------------------
# architecture from a state dict
def _count(sd: dict, prefix: str) -> int:
    """Number of consecutive indexed children ``prefix{i}.`` present."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in sd):
        n += 1
    return n


def decoder_config_from_state_dict(sd: dict, prefix: str = "") -> dict:
    """Prompt-encoder and mask-decoder hyper-parameters read from the weights.

    Parameters
    ----------
    sd : dict of str to Tensor
    prefix : str
        Key prefix before ``mask_decoder.`` (normally empty).

    Returns
    -------
    dict
        ``transformer_dim``, ``num_multimask_outputs``, ``transformer_depth``,
        ``transformer_mlp_dim``, ``iou_head_depth``, ``iou_head_hidden_dim``,
        ``mask_in_chans``.

    Examples
    --------
    >>> decoder_config_from_state_dict(sam.state_dict())["num_multimask_outputs"]   # doctest: +SKIP
    3
    """
    md = prefix + "mask_decoder."
    try:
        return {
            "transformer_dim": int(sd[md + "iou_token.weight"].shape[1]),
            "num_multimask_outputs": int(sd[md + "mask_tokens.weight"].shape[0]) - 1,
            "transformer_depth": _count(sd, md + "transformer.layers."),
            "transformer_mlp_dim": int(sd[md + "transformer.layers.0.mlp.lin1.weight"].shape[0]),
            "iou_head_depth": _count(sd, md + "iou_prediction_head.layers."),
            "iou_head_hidden_dim": int(sd[md + "iou_prediction_head.layers.0.weight"].shape[0]),
            "mask_in_chans": int(sd[prefix + "prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        }
    except KeyError as err:
        raise SamlabError(f"the checkpoint has no SAM prompt encoder/mask decoder (missing {err.args[0]}): it is not a SAM-family file") from None


def vit_config_from_state_dict(sd: dict) -> dict:
    """ViT image-encoder hyper-parameters of a SAM-layout state dict.

    Heads come from the relative-position tables (their width is the head
    dimension), global-attention blocks from the table length (2·grid − 1
    rows) and the window size from the other blocks' tables.

    Parameters
    ----------
    sd : dict of str to Tensor

    Returns
    -------
    dict
        ``embed_dim``, ``depth``, ``num_heads``, ``img_size``,
        ``patch_size``, ``window_size``, ``global_attn_indexes``,
        ``mlp_ratio``, ``out_chans``, ``use_rel_pos``, ``backbone``.

    Examples
    --------
    >>> cfg = vit_config_from_state_dict(sam_vit_b_state_dict)   # doctest: +SKIP
    >>> cfg["backbone"], cfg["global_attn_indexes"]              # doctest: +SKIP
    ('vit_b', (2, 5, 8, 11))
    """
    p = "image_encoder."
    w = sd[p + "patch_embed.proj.weight"]
    embed_dim, patch = int(w.shape[0]), int(w.shape[2])
    grid = int(sd[p + "pos_embed"].shape[1]) if p + "pos_embed" in sd else 64
    depth = _count(sd, p + "blocks.")
    use_rel = p + "blocks.0.attn.rel_pos_h" in sd
    glob, window, head_dim = [], 14, None
    if use_rel:
        for i in range(depth):
            rows, head_dim = sd[f"{p}blocks.{i}.attn.rel_pos_h"].shape
            if rows == 2 * grid - 1:
                glob.append(i)
            else:
                window = (int(rows) + 1) // 2
    num_heads = embed_dim // int(head_dim) if head_dim else _VIT_HEADS.get(embed_dim, 12)
    return {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "img_size": grid * patch,
        "patch_size": patch,
        "window_size": window,
        "global_attn_indexes": tuple(glob),
        "mlp_ratio": float(sd[p + "blocks.0.mlp.lin1.weight"].shape[0]) / embed_dim,
        "out_chans": int(sd[p + "neck.0.weight"].shape[0]),
        "use_rel_pos": use_rel,
        "backbone": VIT_NAMES.get(embed_dim, f"vit_{embed_dim}x{depth}"),
    }


def tinyvit_config_from_state_dict(sd: dict) -> dict:
    """TinyViT hyper-parameters (LiteMedSAM, MobileSAM) read from the weights.

    Parameters
    ----------
    sd : dict of str to Tensor

    Returns
    -------
    dict
        Keyword arguments of :class:`napari_samlab.models.tinyvit.TinyViT`.

    Examples
    --------
    >>> tinyvit_config_from_state_dict(lite_sd)["patch_kernel"]   # doctest: +SKIP
    1
    """
    p = "image_encoder."
    kernel = int(sd[p + "patch_embed.seq.0.c.weight"].shape[2])
    n = _count(sd, p + "layers.")
    dims = [int(sd[p + "layers.0.blocks.0.conv1.c.weight"].shape[1])]
    for i in range(n - 1):
        dims.append(int(sd[f"{p}layers.{i}.downsample.conv1.c.weight"].shape[0]))
    depths = [_count(sd, f"{p}layers.{i}.blocks.") for i in range(n)]
    heads, windows = [1], [7]
    for i in range(1, n):
        ab = sd[f"{p}layers.{i}.blocks.0.attn.attention_biases"]
        heads.append(int(ab.shape[0]))
        windows.append(int(round(float(ab.shape[1]) ** 0.5)))
    head = sd.get(p + "head.weight")
    return {
        "img_size": 256 if kernel == 1 else 1024,
        "patch_kernel": kernel,
        "embed_dims": tuple(dims),
        "depths": tuple(depths),
        "num_heads": tuple(heads),
        "window_sizes": tuple(windows),
        "mlp_ratio": float(sd[p + "layers.1.blocks.0.mlp.fc1.weight"].shape[0]) / dims[1] if n > 1 else 4.0,
        "mbconv_expand_ratio": float(sd[p + "layers.0.blocks.0.conv1.c.weight"].shape[0]) / dims[0],
        "head_classes": int(head.shape[0]) if head is not None else 0,
        "out_chans": int(sd[p + "neck.0.weight"].shape[0]),
    }


def build_prompt_decoder(img_size: int, grid: int, dec: dict):
    """SAM's PromptEncoder and MaskDecoder for an image of ``img_size`` px."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    dim = dec["transformer_dim"]
    prompt_encoder = PromptEncoder(
        embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size),
        mask_in_chans=dec["mask_in_chans"],
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=dec["num_multimask_outputs"],
        transformer=TwoWayTransformer(depth=dec["transformer_depth"], embedding_dim=dim,
                                      mlp_dim=dec["transformer_mlp_dim"], num_heads=8),
        transformer_dim=dim, iou_head_depth=dec["iou_head_depth"], iou_head_hidden_dim=dec["iou_head_hidden_dim"],
    )
    return prompt_encoder, mask_decoder


def build_sam_vit(vit: dict, dec: Optional[dict] = None):
    """A segment_anything ``Sam`` with a ViT encoder of the given shape.

    Parameters
    ----------
    vit : dict
        From :func:`vit_config_from_state_dict` (or written by hand:
        ``embed_dim``, ``depth``, ``num_heads``, ``global_attn_indexes``,
        optional ``img_size`` 1024, ``window_size`` 14, ``mlp_ratio`` 4,
        ``out_chans`` 256, ``patch_size`` 16).
    dec : dict, optional
        From :func:`decoder_config_from_state_dict`; SAM's defaults if None.

    Returns
    -------
    segment_anything.modeling.Sam
        Randomly initialised, in train mode.

    Examples
    --------
    >>> sam = build_sam_vit({"embed_dim": 768, "depth": 12, "num_heads": 12,
    ...                      "global_attn_indexes": (2, 5, 8, 11)})   # doctest: +SKIP
    >>> len(sam.state_dict())                                       # doctest: +SKIP
    314
    """
    from segment_anything.modeling import ImageEncoderViT, Sam

    img = int(vit.get("img_size", 1024))
    patch = int(vit.get("patch_size", 16))
    out = int(vit.get("out_chans", 256))
    dec = dec or default_decoder_config(out)
    encoder = ImageEncoderViT(
        depth=vit["depth"], embed_dim=vit["embed_dim"], img_size=img, mlp_ratio=vit.get("mlp_ratio", 4.0),
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=vit["num_heads"], patch_size=patch,
        qkv_bias=True, use_rel_pos=vit.get("use_rel_pos", True), global_attn_indexes=tuple(vit["global_attn_indexes"]),
        window_size=vit.get("window_size", 14), out_chans=out,
    )
    pe, md = build_prompt_decoder(img, img // patch, dec)
    return Sam(image_encoder=encoder, prompt_encoder=pe, mask_decoder=md,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def default_decoder_config(dim: int = 256) -> dict:
    """SAM's released prompt-encoder/mask-decoder shape."""
    return {"transformer_dim": dim, "num_multimask_outputs": 3, "transformer_depth": 2, "transformer_mlp_dim": 2048,
            "iou_head_depth": 3, "iou_head_hidden_dim": 256, "mask_in_chans": 16}


class SamTinyViT(nn.Module):
    """MobileSAM (``vit_t``): TinyViT encoder + SAM decoder, SAM preprocessing."""

    def __init__(self, tcfg: dict, dec: dict):
        super().__init__()
        from .tinyvit import TinyViT

        self.image_encoder = TinyViT(**tcfg)
        self.prompt_encoder, self.mask_decoder = build_prompt_decoder(tcfg["img_size"], 64, dec)
        self.register_buffer("pixel_mean", torch.Tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.Tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)

    def preprocess(self, x):
        from segment_anything.modeling import Sam

        return Sam.preprocess(self, x)


def load_strict(module: nn.Module, sd: dict, what: str, name: str = "the checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a one-line SamlabError.

    Unexpected or missing keys are named (up to five each) with what the file
    seems to be (:func:`~napari_samlab.models.checkpoint.check_state_dict_keys`);
    a shape mismatch names the tensor.
    """
    from .checkpoint import check_state_dict_keys

    check_state_dict_keys(module.state_dict().keys(), sd, what, name)
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
        raise SamlabError(f"the checkpoint does not fit the {what} layout ({first.strip()[:160]}): "
                          "check that --model matches the file") from None


# ----------------------------------------------------------------------
# image helpers
def to_uint8_rgb(image: np.ndarray, family: str = "sam") -> np.ndarray:
    """(H, W) or (H, W, C) slice as (H, W, 3) uint8, as the upstream scripts expect.

    Grey is repeated to 3 channels; RGBA loses alpha.  Upstream feeds uint8
    images: other dtypes (a slice with ``window="none"``, a 0–1 window) are
    min-max scaled to 0–255 first.

    Parameters
    ----------
    image : ndarray
    family : str
        For the error message.

    Returns
    -------
    ndarray
        (H, W, 3) uint8.

    Examples
    --------
    >>> to_uint8_rgb(np.zeros((4, 5), np.uint8)).shape
    (4, 5, 3)
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise SamlabError(f"{family} takes a grey or RGB 2D slice, not an array of shape {img.shape}: pass one slice (y, x) or (y, x, 3)")
    if img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        x = img.astype(np.float64)
        lo, hi = float(np.min(x)), float(np.max(x))
        img = ((x - lo) / max(hi - lo, 1e-8) * 255.0).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=-1)
    return img


def check_device(device: str) -> str:
    """``"cpu"`` or a CUDA device name that really exists, else SamlabError.

    Examples
    --------
    >>> check_device("cpu")
    'cpu'
    """
    dev = str(device or "cpu").lower()
    if dev == "cpu":
        return dev
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SamlabError(f"--device {device} was asked for but this machine has no usable CUDA GPU: use --device cpu")
        return dev
    raise SamlabError(f"unknown device {device!r}: use --device cpu or --device cuda")


# ----------------------------------------------------------------------
class SamFamilyModel(SegmentationModel):
    """Shared decoder side of every SAM-style family (SAM, MedSAM, LiteMedSAM).

    Subclasses set ``family`` and implement ``encode`` and ``decode``; this
    class holds the network, the cached dense positional encoding and the
    decoder call.
    """

    supports_mask_input = False

    def __init__(self, net: nn.Module, weights_fp: str, config: dict, device: str = "cpu", source: str = ""):
        self.device = check_device(device)
        self.net = net.to(self.device).eval()
        self.config = dict(config)
        self.source = source
        self.image_size = int(net.image_encoder.img_size)
        h = hashlib.sha1(f"{self.family}|{sorted(self.config.items())!r}|{weights_fp}".encode())
        self._fingerprint = h.hexdigest()
        with torch.inference_mode():
            # get_dense_pe recomputes a 64×64 Fourier encoding on every call upstream
            self._dense_pe = self.net.prompt_encoder.get_dense_pe().clone()
        # lean re-execution of the same prompt encoder + mask decoder (see fast_decoder.py);
        # None when the decoder is not segment_anything's standard one
        from .fast_decoder import fast_decoder_for

        self._fast = fast_decoder_for(self.net.prompt_encoder, self.net.mask_decoder, self._dense_pe)
        self._feat_memo = None

    def fingerprint(self) -> str:
        return self._fingerprint

    # -- helpers ---------------------------------------------------------
    def _features(self, embedding: dict) -> torch.Tensor:
        arr = embedding["features"]
        memo = self._feat_memo
        if memo is not None and memo[0]() is arr:
            return memo[1]
        feats = embedding_tensor(arr, self.device)
        try:
            self._feat_memo = (weakref.ref(arr), feats)
        except TypeError:
            pass
        return feats

    def _embedding_key(self, features):
        """The embedding array ``features`` was made from (per-embedding decoder cache key)."""
        memo = self._feat_memo
        if memo is not None and memo[1] is features:
            return memo[0]()
        return None

    def _run_decoder(self, features, points=None, boxes=None, masks=None, multimask=False):
        """prompt_encoder + mask_decoder; returns (low_res_logits (1,C,h,w), iou (1,C))."""
        if self._fast is not None and features.shape[0] == 1:
            r = self._fast.decode(features, points, boxes, masks, multimask, select_best=False,
                                  key_obj=self._embedding_key(features))
            return r.low_res, r.iou
        pe = self.net.prompt_encoder
        sparse, dense = pe(points=points, boxes=boxes, masks=masks)
        return self.net.mask_decoder(
            image_embeddings=features, image_pe=self._dense_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=multimask,
        )

    def _decode_best(self, features, points=None, boxes=None, masks=None, multimask=False):
        """Only the returned mask: (low_res_logits (1,1,h,w), iou (1,C), index of the mask in iou).

        With ``multimask`` the output with the highest predicted IoU (SamPredictor users' choice).
        """
        if self._fast is not None and features.shape[0] == 1:
            r = self._fast.decode(features, points, boxes, masks, multimask, select_best=True,
                                  key_obj=self._embedding_key(features))
            return r.low_res, r.iou, r.index
        low_res, iou = self._run_decoder(features, points, boxes, masks, multimask)
        k = int(torch.argmax(iou[0])) if multimask else 0
        return low_res[:, k:k + 1], iou, k

    @staticmethod
    def _sizes(embedding: dict):
        h, w = (int(v) for v in embedding["original_size"])
        return h, w


class SamModel(SamFamilyModel):
    """Plain Segment Anything (ViT-B/L/H or MobileSAM's TinyViT) with SamPredictor semantics.

    Parameters
    ----------
    net : segment_anything Sam or :class:`SamTinyViT`
        With weights loaded.
    weights_fp : str
        :func:`napari_samlab.models.checkpoint.weights_fingerprint` of the weights.
    config : dict
        Architecture (goes into the fingerprint).
    device : str

    Examples
    --------
    >>> model = load_model("sam_vit_b_01ec64.pth", family="sam")    # doctest: +SKIP
    >>> emb = model.encode(rgb_uint8)                               # doctest: +SKIP
    >>> model.decode(emb, Prompt(points=[(40, 60)], point_labels=[1])).mask.shape   # doctest: +SKIP
    """

    family = "sam"
    supports_points = True
    supports_boxes = True
    supports_mask_input = True

    def __init__(self, net, weights_fp, config, device="cpu", source=""):
        super().__init__(net, weights_fp, config, device, source)
        from segment_anything.utils.transforms import ResizeLongestSide

        self.transform = ResizeLongestSide(self.image_size)
        self.mask_threshold = 0.0

    def encode(self, image: np.ndarray) -> dict:
        img = to_uint8_rgb(image, self.family)
        h, w = img.shape[:2]
        resized = self.transform.apply_image(img)  # PIL bilinear, as SamPredictor.set_image
        with torch.inference_mode():
            x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            feats = self.run_encoder(self.net.image_encoder, self.net.preprocess(x))
        return {
            "features": feats.float().cpu().numpy(),
            "original_size": np.array([h, w]),
            "input_size": np.array(resized.shape[:2]),
        }

    def decode(self, embedding: dict, prompt: Prompt) -> Prediction:
        h, w = self._sizes(embedding)
        ih, iw = (int(v) for v in embedding["input_size"])
        points = boxes = masks = None
        with torch.inference_mode():
            if prompt.points is not None and len(prompt.points):
                pts = np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2)
                labels = np.ones(len(pts)) if prompt.point_labels is None else np.asarray(prompt.point_labels)
                coords = self.transform.apply_coords(pts, (h, w))
                points = (torch.as_tensor(coords, dtype=torch.float, device=self.device)[None],
                          torch.as_tensor(labels, dtype=torch.int, device=self.device)[None])
            if prompt.box is not None:
                box = self.transform.apply_boxes(np.asarray(prompt.box, dtype=np.float64).reshape(1, 4), (h, w))
                boxes = torch.as_tensor(box, dtype=torch.float, device=self.device)
            if prompt.mask_input is not None:
                m = np.asarray(prompt.mask_input, dtype=np.float32)
                masks = torch.as_tensor(m.reshape(1, 1, *m.shape[-2:]), device=self.device)
            lone_point = points is not None and points[0].shape[1] == 1 and boxes is None and masks is None
            multimask = bool(prompt.multimask) or lone_point
            logits, iou, k = self._decode_best(self._features(embedding), points, boxes, masks, multimask)
            # Sam.postprocess_masks, for the chosen mask only
            up = F.interpolate(logits, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
            if (ih, iw) != (self.image_size, self.image_size):
                up = up[..., :ih, :iw]
            up = F.interpolate(up, (h, w), mode="bilinear", align_corners=False)
            mask = (up[0, 0] > self.mask_threshold).cpu().numpy()
            score = float(iou[0, k])
            lr = logits[0, 0].float().cpu().numpy()
        return Prediction(mask=mask, score=score, low_res_logits=lr, extra={"multimask_index": k})


class MedSAMModel(SamFamilyModel):
    """MedSAM (SAM ViT-B fine-tuned on medical boxes), as MedSAM_Inference.py runs it.

    Parameters
    ----------
    net : segment_anything Sam
        With MedSAM weights loaded.
    weights_fp, config, device, source
        As :class:`SamModel`.

    Examples
    --------
    >>> model = load_model("medsam_vit_b.pth", family="medsam")    # doctest: +SKIP
    >>> pred = model.decode(model.encode(ct_uint8), Prompt(box=(95, 255, 190, 350)))   # doctest: +SKIP
    """

    family = "medsam"
    supports_points = False
    supports_boxes = True

    def encode(self, image: np.ndarray) -> dict:
        from skimage import transform

        img_3c = to_uint8_rgb(image, self.family)
        h, w = img_3c.shape[:2]
        s = self.image_size
        img = transform.resize(img_3c, (s, s), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
        img = (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)
        with torch.inference_mode():
            x = torch.tensor(img).float().permute(2, 0, 1).unsqueeze(0).to(self.device)
            feats = self.run_encoder(self.net.image_encoder, x)
        return {"features": feats.float().cpu().numpy(), "original_size": np.array([h, w])}

    def decode(self, embedding: dict, prompt: Prompt) -> Prediction:
        if prompt.box is None:
            raise PromptError("medsam was trained with boxes only", "box", "draw {box} around the object")
        h, w = self._sizes(embedding)
        s = self.image_size
        box_1024 = np.asarray(prompt.box, dtype=np.float64).reshape(1, 4) / np.array([w, h, w, h]) * s
        with torch.inference_mode():
            box_t = torch.as_tensor(box_1024, dtype=torch.float, device=self.device)[:, None, :]
            low_res, iou, _ = self._decode_best(self._features(embedding), None, box_t, None, False)
            prob = torch.sigmoid(low_res)
            prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
            mask = (prob[0, 0] > 0.5).cpu().numpy()
            score = float(iou[0, 0])
            lr = low_res[0, 0].float().cpu().numpy()
        return Prediction(mask=mask, score=score, low_res_logits=lr)


def build_sam_family(state_dict: dict, family: str, weights_fp: str, device: str = "cpu", source: str = ""):
    """Build a ``sam`` or ``medsam`` model from a SAM-layout state dict.

    Parameters
    ----------
    state_dict : dict of str to Tensor
        Bare SAM state dict (ViT or MobileSAM TinyViT encoder).
    family : {"sam", "medsam"}
    weights_fp : str
        Fingerprint of ``state_dict``.
    device : str
    source : str
        File name, for messages.

    Returns
    -------
    SamModel or MedSAMModel

    Examples
    --------
    >>> model = build_sam_family(sd, "medsam", weights_fingerprint(sd))   # doctest: +SKIP
    """
    dec = decoder_config_from_state_dict(state_dict)
    if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:
        tcfg = tinyvit_config_from_state_dict(state_dict)
        net = SamTinyViT(tcfg, dec)
        load_strict(net, state_dict, "MobileSAM (vit_t)", source or "the checkpoint")
        config = {"backbone": "vit_t", **tcfg, **dec}
    else:
        vit = vit_config_from_state_dict(state_dict)
        net = build_sam_vit(vit, dec)
        load_strict(net, state_dict, f"SAM {vit['backbone']}", source or "the checkpoint")
        config = {**vit, **dec}
    cls = MedSAMModel if family == "medsam" else SamModel
    return cls(net, weights_fp, config, device, source)
