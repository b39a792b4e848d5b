"""Medical SAM Adapter (MSA, KidsWithTokens/Medical-SAM-Adapter): three code generations.

This is an independent re-implementation from the documented behaviour of
the upstream code (which is GPL-3.0; nothing is copied from it).

A checkpoint is ``{"epoch", "model": <network name>, "state_dict",
"optimizer", "best_tol", "path_helper"}``; the weights are under
``"state_dict"``.  The network is SAM with three adapters in every ViT block
(``MLP_Adapter``, ``Space_Adapter``, ``Depth_Adapter``; each ``D_fc1``
dim -> dim/4, GELU, ``D_fc2`` dim/4 -> dim; only ``Space_Adapter`` adds its
input back).  A block, in order::

    shortcut = x
    x = window_partition(x)            # zero padding, *before* norm1 (SAM: after)
    x = Space_Adapter(attn(norm1(x)))
    x = shortcut + window_unpartition(x)
    x = x + mlp(norm2(x)) + 0.5 * MLP_Adapter(norm2(x))

``Depth_Adapter`` only runs on 3D volumes and is loaded but unused here.

Generations, told apart by the keys:

* **A** (2023 paper code): ``attn.rel_pos_h`` names, SAM's own two-way
  decoder (``mlp.lin1``), image size 1024, ``pos_embed`` 64x64 added as is.
* **B** (January 2024): ``rel_pos_h`` names, decoder two-way blocks in the
  EfficientSAM style (``mlp.layers.0.0`` / ``mlp.fc``; the self-attention
  always keeps its residual and, after the first block, attends with the
  positional embedding added to queries, keys *and* values and carries it on
  in the residual; attention scaled by multiplying with 1/sqrt(d)).
  ``pos_embed`` is stored 64x64 and resized bicubically
  (``align_corners=False``) to the token grid at run time.
* **C** (current): as B with ``attn.rel_h`` / ``attn.rel_w`` names.

The image size S is read from the global blocks' relative-position tables
(2*S/16 - 1 rows).  Files from the weeks when those tables were always 127
rows long are taken as S = 1024 unless ``image_size`` is given; tables of a
different length than the grid needs are linearly resampled at run time, as
upstream (and SAM) do.

Inference, as upstream's 2D validation: RGB resized to S x S with
torchvision's bilinear ``Resize`` on the PIL image, ``ToTensor`` ([0, 1], no
mean/std); one positive click whose coordinates were given as (row, col) in
the S x S frame; decoder token 0 (the first of ``[0:n]``); logits > 0 after
bilinear upsampling to the slice size.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError, PromptError, SamlabError
from .base import Prediction, Prompt, SegmentationModel, embedding_tensor
from .checkpoint import plain_state_dict
from .msa_net import PATCH_SIZE, WINDOW_SIZE  # the network itself: msa_net.py, built lazily
from .msa_net import modules as _modules

DEFAULT_IMAGE_SIZE = 1024
_BACKBONES = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_ENC = "image_encoder."
_DEC = "mask_decoder.transformer."


def _block_ids(sd: dict) -> list:
    return sorted({int(m.group(1)) for k in sd for m in [re.match(r"^image_encoder\.blocks\.(\d+)\.", k)] if m})


def _rel_names(sd: dict) -> tuple:
    if f"{_ENC}blocks.0.attn.rel_h" in sd:
        return ("rel_h", "rel_w")
    return ("rel_pos_h", "rel_pos_w")


def default_num_outputs(mask_tokens: Optional[int]) -> int:
    """How many output masks (classes) an MSA decoder with ``mask_tokens`` tokens gives.

    SAM's decoder has 4 mask tokens whatever MSA was trained for, and
    upstream then uses token 0 (one class) or, with ``-multimask_output N``,
    tokens ``[0:N]``: a 4-token file cannot tell N, so it is 1 unless the
    user says otherwise (``num_outputs``).  A decoder built with another
    token count was built for ``tokens - 1`` classes (upstream's
    ``num_mask_tokens = num_multimask_outputs + 1``): all of them are kept.

    Examples
    --------
    >>> default_num_outputs(4), default_num_outputs(3), default_num_outputs(None)
    (1, 2, 1)
    """
    if mask_tokens is None or mask_tokens == 4 or mask_tokens < 2:
        return 1
    return int(mask_tokens) - 1


def detect_msa(state_dict) -> Optional[dict]:
    """Tell whether a state dict is a Medical SAM Adapter checkpoint, and which generation.

    Parameters
    ----------
    state_dict : dict
        The checkpoint's tensors, or the whole MSA file dict
        (``{"state_dict": ..., "model": "sam", ...}``).

    Returns
    -------
    dict or None
        None if it is not MSA; else ``{"family": "msa", "generation":
        "A" | "B" | "C", "image_size": S, "backbone": "vit_b" | ...,
        "num_classes": 1, "embed_dim", "depth", "global_blocks",
        "mask_tokens", "decoder": "sam" | "efficientsam",
        "image_size_from": "rel_pos" | "generation A" | "unknown"}``.
        ``"unknown"``: the tables are 127 rows, which fits 1024 px but was
        also written for other sizes; :func:`build_msa` then needs
        ``image_size``.  ``num_classes``: see :func:`default_num_outputs`.

    Examples
    --------
    >>> info = detect_msa(torch.load("msa_isic.pth", weights_only=True)["state_dict"])   # doctest: +SKIP
    >>> info["generation"], info["image_size"]                                           # doctest: +SKIP
    ('C', 256)
    """
    sd = plain_state_dict(state_dict)
    if not any(k.startswith(_ENC) and ".Space_Adapter.D_fc1.weight" in k for k in sd):
        return None
    patch = sd.get(f"{_ENC}patch_embed.proj.weight")
    if patch is None or patch.ndim != 4:
        return None
    width = int(patch.shape[0])
    blocks = _block_ids(sd)
    rel_h, _ = _rel_names(sd)
    efficient = f"{_DEC}layers.0.mlp.layers.0.0.weight" in sd or f"{_DEC}layers.0.mlp.fc.weight" in sd
    if rel_h == "rel_h":
        generation = "C"
    elif efficient:
        generation = "B"
    else:
        generation = "A"
    window_rows = 2 * WINDOW_SIZE - 1
    rows = {i: int(sd[f"{_ENC}blocks.{i}.attn.{rel_h}"].shape[0]) for i in blocks
            if f"{_ENC}blocks.{i}.attn.{rel_h}" in sd}
    global_blocks = [i for i, r in rows.items() if r != window_rows]
    if generation == "A":
        size, source = DEFAULT_IMAGE_SIZE, "generation A"  # built for 1024 px only
    elif global_blocks and rows[global_blocks[0]] == 2 * (DEFAULT_IMAGE_SIZE // PATCH_SIZE) - 1:
        # 127 rows: right for 1024 px, but MSA also wrote 127-row tables for every
        # image size for a while: the file does not say, the user must (image_size)
        size, source = DEFAULT_IMAGE_SIZE, "unknown"
    elif global_blocks:
        size, source = (rows[global_blocks[0]] + 1) // 2 * PATCH_SIZE, "rel_pos"
    else:
        # every table is a 14-token window's: a 224-px model (global == window attention there)
        size, source = WINDOW_SIZE * PATCH_SIZE, "rel_pos"
    tokens = sd.get("mask_decoder.mask_tokens.weight")
    n_tokens = int(tokens.shape[0]) if tokens is not None and tokens.ndim == 2 else None
    return {
        "family": "msa",
        "generation": generation,
        "image_size": int(size),
        "image_size_from": source,
        "backbone": _BACKBONES.get(width, f"vit_{width}"),
        "num_classes": default_num_outputs(n_tokens),
        "embed_dim": width,
        "depth": len(blocks),
        "global_blocks": global_blocks,
        "mask_tokens": n_tokens,
        "decoder": "efficientsam" if efficient else "sam",
    }


def _config(sd: dict, info: dict, image_size: int) -> dict:
    dim, depth = info["embed_dim"], info["depth"]
    rel_names = _rel_names(sd)
    rel_rows, head_dim = {}, None
    for i in range(depth):
        key = f"{_ENC}blocks.{i}.attn.{rel_names[0]}"
        if key not in sd:
            raise SamlabError(f"the MSA checkpoint lacks {key}: the file is incomplete, download or re-save it")
        rel_rows[i] = int(sd[key].shape[0])
        head_dim = int(sd[key].shape[1])
    if not head_dim or dim % head_dim:
        raise SamlabError("the MSA checkpoint's relative-position tables do not fit its width: the file is not a SAM adapter model")
    fc1 = sd[f"{_ENC}blocks.0.Space_Adapter.D_fc1.weight"]
    if int(fc1.shape[1]) != dim:
        raise SamlabError(f"the MSA adapters are {int(fc1.shape[1])} wide but the encoder is {dim} wide: "
                          "checkpoints trained with -mid_dim are not supported")
    pos = sd.get(f"{_ENC}pos_embed")
    if pos is None or pos.ndim != 4:
        raise SamlabError("the MSA checkpoint has no image_encoder.pos_embed: the file is incomplete")
    global_blocks = list(info["global_blocks"])
    if not global_blocks and image_size // PATCH_SIZE > WINDOW_SIZE:
        raise SamlabError("the MSA checkpoint has no global-attention blocks: its image size cannot be told, give it explicitly")
    return {
        "embed_dim": dim, "depth": depth, "heads": dim // head_dim, "image_size": image_size,
        "pos_grid": int(pos.shape[1]), "rel_rows": rel_rows, "rel_names": rel_names,
        "global_blocks": global_blocks,
        "mlp_dim": int(sd[f"{_ENC}blocks.0.mlp.lin1.weight"].shape[0]),
        "adapter_dim": int(fc1.shape[0]),
        "out_chans": int(sd[f"{_ENC}neck.0.weight"].shape[0]),
    }


def build_msa(state_dict, device: str = "cpu", image_size: Optional[int] = None,
              fingerprint: Optional[str] = None, num_outputs: Optional[int] = None,
              name: str = "the MSA checkpoint") -> "MsaModel":
    """Build an MSA network of any generation from its checkpoint.

    Parameters
    ----------
    state_dict : dict
        The tensors under the file's ``"state_dict"`` (the whole file dict is
        accepted too).
    device : str
        ``"cpu"`` or ``"cuda"``.
    image_size : int, optional
        Input side S the model was trained at (upstream ``-image_size``);
        read from the relative-position tables when omitted.  Required for
        files whose tables do not tell (127-row tables of generations B/C).
    fingerprint : str, optional
        Cache key of the weights; computed from the tensors when omitted.
    num_outputs : int, optional
        Output masks to keep (upstream ``-multimask_output``): tokens
        ``[0:n]``, class k written as label value k (1..n, a later class wins
        where two overlap).  Default: :func:`default_num_outputs`.
    name : str
        File name for messages.

    Returns
    -------
    MsaModel

    Raises
    ------
    SamlabError
        Not an MSA checkpoint, or an incomplete / unsupported one.

    Examples
    --------
    >>> sd = load_checkpoint_file("Melanoma_Photo_SAM_1024.pth")   # doctest: +SKIP
    >>> model = build_msa(sd)                                      # doctest: +SKIP
    >>> model.generation, model.image_size                         # doctest: +SKIP
    ('A', 1024)
    """
    import torch
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    sd = plain_state_dict(state_dict)
    info = detect_msa(sd)
    if info is None:
        raise SamlabError("the checkpoint is not a Medical SAM Adapter model (it has no image_encoder ...Space_Adapter weights): "
                          "use --model to pick its family")
    if image_size is None and info["image_size_from"] == "unknown":
        safe = str(name).replace("{", "{{").replace("}", "}}")  # a template: braces in a file name are literal
        raise InputError(f"{safe} does not record the image size it was trained at (its 127-row position tables "
                         "fit 1024 px but MSA wrote them for every size for a while): give the size it was trained at "
                         "(MSA's -image_size, e.g. 1024 or 256) with {image_size}", field="image_size")
    size = int(image_size or info["image_size"])
    if size <= 0 or size % PATCH_SIZE:
        raise InputError(f"MSA image size {size} is not a positive multiple of {PATCH_SIZE}: give the size the model "
                         "was trained at with {image_size}", field="image_size")
    info = dict(info, image_size=size)
    cfg = _config(sd, info, size)
    need = ("mask_decoder.mask_tokens.weight", "mask_decoder.iou_token.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
    for key in need:
        if key not in sd:
            raise SamlabError(f"the MSA checkpoint lacks {key}: the file is incomplete, download or re-save it")
    prompt_dim = int(sd["mask_decoder.iou_token.weight"].shape[1])
    n_tokens = int(sd["mask_decoder.mask_tokens.weight"].shape[0])
    n_out = int(num_outputs) if num_outputs is not None else default_num_outputs(n_tokens)
    if not 1 <= n_out <= n_tokens:
        raise SamlabError(f"{name} has {n_tokens} mask tokens: it can give 1 to {n_tokens} output masks, not {n_out}")
    info = dict(info, num_classes=n_out)
    dec_depth = len({int(m.group(1)) for k in sd for m in [re.match(r"^mask_decoder\.transformer\.layers\.(\d+)\.", k)] if m})
    efficient = info["decoder"] == "efficientsam"
    mlp_key = f"{_DEC}layers.0.mlp.layers.0.0.weight" if efficient else f"{_DEC}layers.0.mlp.lin1.weight"
    if mlp_key not in sd:
        raise SamlabError(f"the MSA checkpoint lacks {mlp_key}: the file is incomplete, download or re-save it")
    dec_mlp = int(sd[mlp_key].shape[0])
    mask_chans = sd.get("prompt_encoder.mask_downscaling.3.weight")
    grid = size // PATCH_SIZE
    mods = _modules()
    with torch.device("meta"):  # no random init of ~100 M parameters
        if efficient:
            transformer = mods["EfficientTwoWayTransformer"](dec_depth, prompt_dim, 8, dec_mlp)
        else:
            transformer = TwoWayTransformer(depth=dec_depth, embedding_dim=prompt_dim, mlp_dim=dec_mlp, num_heads=8)
        net = mods["MsaNet"](
            mods["ImageEncoder"](cfg),
            PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid), input_image_size=(size, size),
                          mask_in_chans=int(mask_chans.shape[0]) if mask_chans is not None else 16),
            MaskDecoder(num_multimask_outputs=n_tokens - 1, transformer=transformer, transformer_dim=prompt_dim,
                        iou_head_depth=3, iou_head_hidden_dim=256),
        )
    want = net.state_dict()
    from .checkpoint import check_state_dict_keys

    # some MSA versions save SAM's pixel_mean/std buffers: constants MSA's [0, 1] input never uses
    unused = {k for k in ("pixel_mean", "pixel_std") if k in sd}
    check_state_dict_keys(set(want) | unused, sd, f"MSA generation {info['generation']} ({info['backbone']})", name)
    for k, v in want.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise SamlabError(f"MSA tensor {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}: unknown MSA variant")
    net.load_state_dict({k: sd[k].detach().to(torch.float32).contiguous() for k in want}, strict=True, assign=True)
    if fingerprint is None:
        fingerprint = _fingerprint(sd)
    return MsaModel(net, info, fingerprint, device)


def _fingerprint(sd: dict) -> str:
    import hashlib

    try:
        from .checkpoint import weights_fingerprint

        return weights_fingerprint(sd)
    except ImportError:  # pragma: no cover
        h = hashlib.sha1(b"msa|")
        for k in sorted(sd):
            h.update(f"{k}{tuple(sd[k].shape)}{float(sd[k].double().sum())!r}".encode())
        return h.hexdigest()


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 as the upstream loaders' ``Image.open(...).convert("RGB")`` gives.

    8-bit input is used as is; [0, 1] floats are scaled by 255; other ranges
    are min-max scaled to 0-255.  Grey is repeated to 3 channels, alpha dropped.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise SamlabError(f"MSA segments 2D grey or RGB slices, got an array of shape {img.shape}: give one (y, x) or (y, x, 3) slice")
    if img.dtype != np.uint8:
        x = img.astype(np.float64)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            x = x * 255.0
        elif hi > lo:
            x = (x - lo) / (hi - lo) * 255.0
        else:
            x = np.zeros_like(x)
        img = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img)


class MsaModel(SegmentationModel):
    """A Medical SAM Adapter network behind the :class:`SegmentationModel` interface.

    Takes clicks (trained with one positive click); boxes are not used by
    upstream's validation, so they are refused.

    Parameters
    ----------
    net : torch.nn.Module
        With ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``.
    info : dict
        :func:`detect_msa`'s result (with the image size used).
    fingerprint : str
        Cache key of the weights.
    device : str
        ``"cpu"`` or ``"cuda"``.

    Examples
    --------
    >>> model = build_msa(sd)                                            # doctest: +SKIP
    >>> pred = model.decode(model.encode(rgb), Prompt(points=[(120, 80)], point_labels=[1]))   # doctest: +SKIP
    >>> pred.mask.shape == rgb.shape[:2]                                 # doctest: +SKIP
    True
    """

    family = "msa"
    needs_prompt = True
    supports_points = True
    supports_boxes = False
    supports_mask_input = False
    num_classes = 1

    def __init__(self, net, info: dict, fingerprint: str, device: str = "cpu"):
        self.info = dict(info)
        self.generation = info["generation"]
        self.backbone = info["backbone"]
        self.image_size = int(info["image_size"])
        self.num_classes = int(info.get("num_classes", 1) or 1)
        self.device = str(device)
        self._fingerprint = fingerprint
        self.net = net.to(self.device).eval()

    def fingerprint(self) -> str:
        return f"msa:{self.generation}:{self.image_size}:{self._fingerprint}"

    def preprocess(self, image: np.ndarray):
        """(1, 3, S, S) float tensor: PIL bilinear resize to S x S, then [0, 1].

        Parameters
        ----------
        image : ndarray
            (H, W) or (H, W, 3) slice.

        Returns
        -------
        torch.Tensor

        Examples
        --------
        >>> model.preprocess(np.zeros((300, 200, 3), np.uint8)).shape   # doctest: +SKIP
        torch.Size([1, 3, 256, 256])
        """
        from PIL import Image
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        pil = Image.fromarray(_to_uint8_rgb(image))  # (H, W, 3) uint8 -> "RGB"
        # transforms.Resize((S, S)) + ToTensor() on the PIL image, as the 2D loaders do
        pil = TF.resize(pil, [self.image_size, self.image_size], interpolation=InterpolationMode.BILINEAR)
        return TF.to_tensor(pil)[None]

    def encode(self, image: np.ndarray) -> dict:
        """Resize to S x S, run the adapter ViT.

        Parameters
        ----------
        image : ndarray
            (H, W) grey or (H, W, 3) RGB slice, 8-bit as the windowing gives it.

        Returns
        -------
        dict
            ``"image_embedding"`` (1, 256, S/16, S/16) float32 and
            ``"original_size"`` ``[H, W]``.

        Examples
        --------
        >>> model.encode(rgb)["image_embedding"].shape   # doctest: +SKIP
        (1, 256, 16, 16)
        """
        import torch

        arr = np.asarray(image)
        h, w = arr.shape[:2]
        x = self.preprocess(arr).to(self.device)
        with torch.no_grad():
            emb = self.run_encoder(self.net.image_encoder, x)
        return {"image_embedding": emb.float().cpu().numpy(), "original_size": np.array([h, w], dtype=np.int64)}

    def point_coords(self, points: Sequence, shape: tuple) -> np.ndarray:
        """Our (x=col, y=row) clicks as MSA's (row, col) in the S x S frame.

        Pixel centres are mapped onto pixel centres:
        ``row_S = (y + 0.5) * S / H - 0.5`` (and the same for columns).

        Parameters
        ----------
        points : sequence of (x, y)
        shape : (H, W)

        Returns
        -------
        ndarray
            (N, 2) float32 ``[row_S, col_S]``.

        Examples
        --------
        >>> model.point_coords([(10, 20)], (256, 256))   # doctest: +SKIP
        array([[20., 10.]], dtype=float32)
        """
        h, w = shape
        s = self.image_size
        out = []
        for p in points:
            x, y = float(p[0]), float(p[1])
            if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
                raise SamlabError(f"point ({x:g}, {y:g}) is outside the {w}x{h} slice: click inside the image")
            out.append(((y + 0.5) * s / h - 0.5, (x + 0.5) * s / w - 0.5))
        return np.asarray(out, dtype=np.float32).reshape(-1, 2)

    def decode(self, embedding: dict, prompt: Prompt) -> Prediction:
        """Mask of the clicked object.

        Parameters
        ----------
        embedding : dict
            From :meth:`encode`.
        prompt : Prompt
            ``points`` (x, y) with ``point_labels`` (1 object, 0 background;
            all 1 when omitted).  MSA was trained with one positive click.

        Returns
        -------
        Prediction
            ``mask`` bool (H, W) = bilinearly upsampled token-0 logits > 0,
            ``score`` the predicted IoU, ``low_res_logits`` (n, S/4, S/4).
            With n > 1 output masks (``num_classes``): ``labels`` holds class
            k (token k-1) as value k, ``mask`` is their union, ``score`` the
            best predicted IoU.

        Examples
        --------
        >>> pred = model.decode(emb, Prompt(points=[(40, 52)], point_labels=[1]))   # doctest: +SKIP
        """
        import torch
        import torch.nn.functional as F

        if prompt is None or not prompt.points:
            raise PromptError("MSA needs a click inside the object", "point", "give {point}")
        if prompt.box is not None:
            raise PromptError("MSA does not take boxes", "box", "give {point} instead")
        h, w = (int(v) for v in np.asarray(embedding["original_size"]).ravel()[:2])
        coords = self.point_coords(prompt.points, (h, w))
        labels = list(prompt.point_labels) if prompt.point_labels is not None else [1] * len(coords)
        if len(labels) != len(coords):
            raise SamlabError(f"{len(coords)} points but {len(labels)} point labels: give one label (1 or 0) per point")
        emb = embedding_tensor(embedding["image_embedding"], self.device)
        pts = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
        lab = torch.as_tensor(np.asarray(labels, dtype=np.int64), dtype=torch.int, device=self.device)[None]
        with torch.no_grad():
            pe = self.net.prompt_encoder
            sparse, dense = pe(points=(pts, lab), boxes=None, masks=None)
            low, iou = self.net.mask_decoder.predict_masks(
                image_embeddings=emb, image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            )
            n = self.num_classes
            low, iou = low[:, 0:n], iou[:, 0:n]  # output tokens [0:n]
            up = F.interpolate(low, (h, w), mode="bilinear", align_corners=False)
        fg = (up[0] > 0).cpu().numpy()
        if n == 1:
            return Prediction(mask=fg[0], score=float(iou[0, 0]), low_res_logits=low[0].cpu().numpy(),
                              extra={"generation": self.generation})
        # one label value per output mask (class k = token k-1); where two overlap
        # (REFUGE: the cup lies inside the disc) the later class is written last
        labels = np.zeros((h, w), np.uint8 if n < 256 else np.uint16)
        for k in range(n):
            labels[fg[k]] = k + 1
        return Prediction(mask=labels > 0, score=float(iou[0].max()), low_res_logits=low[0].cpu().numpy(),
                          labels=labels, extra={"generation": self.generation,
                                                "class_scores": [float(v) for v in iou[0]]})
