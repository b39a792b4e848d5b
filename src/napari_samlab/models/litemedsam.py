"""LiteMedSAM (TinyViT encoder at 256 px), as CVPR24_LiteMedSAM_infer.py runs it.

Pipeline (MedSAM repository, branch ``LiteMedSAM``):

* grey to 3 channels; resize the longest side to 256 with
  ``cv2.resize(..., interpolation=cv2.INTER_AREA)`` to
  ``(int(w·s + 0.5), int(h·s + 0.5))``, s = 256 / max(H, W); min-max to
  [0, 1]; zero-pad bottom/right to 256×256;
* box: each coordinate ``int(v · 256 / max(H, W))``;
* ``multimask_output=False``; crop the 256×256 logits to the resized extent,
  bilinear (align_corners=False) to (H, W), sigmoid, > 0.5.

Needs ``opencv-python-headless`` (``cv2``) for the INTER_AREA resize, which
no other library reproduces exactly.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, PromptError, SamlabError
from .base import Prediction, Prompt
from .sam_family import (SamFamilyModel, build_prompt_decoder, decoder_config_from_state_dict, load_strict,
                         tinyvit_config_from_state_dict, to_uint8_rgb)

LITEMEDSAM_TINYVIT = {
    "img_size": 256, "patch_kernel": 1, "embed_dims": (64, 128, 160, 320), "depths": (2, 2, 6, 2),
    "num_heads": (2, 4, 5, 10), "window_sizes": (7, 7, 14, 7), "mlp_ratio": 4.0, "mbconv_expand_ratio": 4.0,
    "head_classes": 0, "out_chans": 256,
}


class LiteMedSAMNet(nn.Module):
    """``image_encoder`` (TinyViT), ``prompt_encoder``, ``mask_decoder``: the 435-key layout.

    Parameters
    ----------
    tcfg : dict
        TinyViT keyword arguments (:data:`LITEMEDSAM_TINYVIT` for the release).
    dec : dict
        Decoder shape (``sam_family.default_decoder_config()`` for the release).

    Examples
    --------
    >>> from napari_samlab.models.sam_family import default_decoder_config
    >>> net = LiteMedSAMNet(LITEMEDSAM_TINYVIT, default_decoder_config())   # doctest: +SKIP
    >>> len(net.state_dict())                                               # doctest: +SKIP
    435
    """

    def __init__(self, tcfg: dict, dec: dict):
        super().__init__()
        from .tinyvit import TinyViT

        self.image_encoder = TinyViT(**tcfg)
        grid = self.image_encoder.out_res
        self.prompt_encoder, self.mask_decoder = build_prompt_decoder(tcfg["img_size"], grid, dec)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise SamlabError("LiteMedSAM needs OpenCV for its exact resize: pip install opencv-python-headless") from None
    return cv2


def resize_longest_side(image: np.ndarray, target: int = 256) -> np.ndarray:
    """Upstream ``resize_longest_side``: cv2 INTER_AREA to ``int(x + 0.5)`` sizes.

    Parameters
    ----------
    image : ndarray
        (H, W) or (H, W, C).
    target : int

    Returns
    -------
    ndarray

    Examples
    --------
    >>> resize_longest_side(np.zeros((300, 500, 3), np.uint8)).shape
    (154, 256, 3)
    """
    cv2 = _cv2()
    oldh, oldw = image.shape[0], image.shape[1]
    scale = target * 1.0 / max(oldh, oldw)
    newh, neww = oldh * scale, oldw * scale
    neww, newh = int(neww + 0.5), int(newh + 0.5)
    return cv2.resize(image, (neww, newh), interpolation=cv2.INTER_AREA)


def box_to_256(box, original_size, target: int = 256) -> np.ndarray:
    """Upstream ``resize_box_to_256``: ``int(v * 256 / max(H, W))`` per coordinate.

    Examples
    --------
    >>> box_to_256(np.array([10, 20, 300, 400]), (512, 512))
    array([  5,  10, 150, 200])
    """
    box = np.asarray(box)
    new_box = np.zeros_like(box)
    ratio = target / max(original_size)
    for i in range(len(box)):
        new_box[i] = int(box[i] * ratio)
    return new_box


class LiteMedSAMModel(SamFamilyModel):
    """LiteMedSAM: box-prompted, 256 px TinyViT distilled from MedSAM.

    Parameters
    ----------
    net : LiteMedSAMNet
        With weights loaded (``.eval()`` is called here, after loading).
    weights_fp, config, device, source
        As :class:`napari_samlab.models.sam_family.SamModel`.

    Examples
    --------
    >>> model = load_model("lite_medsam.pth", family="litemedsam")   # doctest: +SKIP
    >>> model.decode(model.encode(img), Prompt(box=(30, 40, 90, 120))).mask.shape   # doctest: +SKIP
    """

    family = "litemedsam"
    supports_points = False
    supports_boxes = True

    def encode(self, image: np.ndarray) -> dict:
        img_3c = to_uint8_rgb(image, self.family)
        h, w = img_3c.shape[:2]
        s = self.image_size
        img = resize_longest_side(img_3c, s)
        newh, neww = img.shape[:2]
        img = (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)
        img = np.pad(img, ((0, s - newh), (0, s - neww), (0, 0)))
        with torch.inference_mode():
            x = torch.tensor(img).float().permute(2, 0, 1).unsqueeze(0).to(self.device)
            feats = self.run_encoder(self.net.image_encoder, x)
        return {"features": feats.float().cpu().numpy(), "original_size": np.array([h, w]),
                "input_size": np.array([newh, neww])}

    def decode(self, embedding: dict, prompt: Prompt) -> Prediction:
        if prompt.box is None:
            raise PromptError("litemedsam was trained with boxes only", "box", "draw {box} around the object")
        h, w = self._sizes(embedding)
        newh, neww = (int(v) for v in embedding["input_size"])
        box256 = box_to_256(np.asarray(prompt.box), (h, w), self.image_size)
        with torch.inference_mode():
            box_t = torch.as_tensor(box256[None, None, ...], dtype=torch.float, device=self.device)
            low_res, iou = self._run_decoder(self._features(embedding), None, box_t, None, False)
            m = low_res[..., :newh, :neww]
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            mask = (torch.sigmoid(m)[0, 0] > 0.5).cpu().numpy()
            score = float(iou[0, 0])
            lr = low_res[0, 0].float().cpu().numpy()
        return Prediction(mask=mask, score=score, low_res_logits=lr)


def build_litemedsam(state_dict: dict, weights_fp: str, device: str = "cpu", source: str = "") -> LiteMedSAMModel:
    """LiteMedSAM model from its 435-key state dict (or a smaller one of the same layout).

    Parameters
    ----------
    state_dict : dict of str to Tensor
    weights_fp : str
    device : str
    source : str

    Returns
    -------
    LiteMedSAMModel

    Examples
    --------
    >>> model = build_litemedsam(sd, weights_fingerprint(sd))   # doctest: +SKIP
    """
    tcfg = tinyvit_config_from_state_dict(state_dict)
    if tcfg["patch_kernel"] != 1:
        raise InputError("this TinyViT checkpoint has 3×3 stride-2 patch embedding (MobileSAM), not LiteMedSAM: choose {model:sam}", "model")
    dec = decoder_config_from_state_dict(state_dict)
    net = LiteMedSAMNet(tcfg, dec)
    load_strict(net, state_dict, "LiteMedSAM", source or "the checkpoint")
    net.eval()  # after loading: upstream TinyViT caches attention biases in eval()
    return LiteMedSAMModel(net, weights_fp, {"backbone": "tinyvit", **tcfg, **dec}, device, source)
