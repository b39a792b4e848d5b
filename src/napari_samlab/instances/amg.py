"""SAM's automatic mask generator recipe on this project's SAM models.

A grid of single-point prompts is decoded in batches against one cached
image embedding (three candidate masks per point, as SAM's
``SamAutomaticMaskGenerator`` does); candidates are kept when the model's
predicted IoU and the mask's stability (IoU of the mask thresholded at
logit +1 and -1) are high; overlapping candidates are reduced by
non-maximum suppression on their boxes; small regions are dropped; the
survivors are painted into one label image (higher scores on top).

Only families trained with point prompts can do this (``sam``, including
MobileSAM).  MedSAM and LiteMedSAM were trained with boxes only, SAMed
takes no prompt at all and MSA's decoder answers one click at a time:
they get a clear error (:func:`check_family`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import Cancelled, SamlabError

__all__ = ["AmgSettings", "check_family", "sam_instances"]


@dataclass(frozen=True)
class AmgSettings:
    """SAM's published defaults (points_per_side 32, pred_iou_thresh 0.88, stability 0.95, box NMS 0.7)."""

    points_per_side: int = 32
    points_per_batch: int = 32
    pred_iou_thresh: float = 0.88
    stability_thresh: float = 0.95
    stability_offset: float = 1.0
    box_nms_thresh: float = 0.7
    max_area_fraction: float = 0.5


def check_family(model) -> None:
    """Raise SamlabError unless ``model`` can segment everything from a point grid.

    Examples
    --------
    >>> class M: family = "samed"
    >>> check_family(M())
    Traceback (most recent call last):
    ...
    napari_samlab.errors.SamlabError: samed cannot segment everything: ...
    """
    fam = getattr(model, "family", "?")
    if fam == "sam" and hasattr(model, "net") and hasattr(model, "transform"):
        return
    why = {
        "medsam": "it was trained with boxes only, and a grid of points is what finds objects",
        "litemedsam": "it was trained with boxes only, and a grid of points is what finds objects",
        "samed": "it has no prompts (it segments its fixed organ classes)",
        "msa": "its adapter decoder answers one click at a time, not a grid of points",
        "medsam2": "its video predictor tracks one prompted object",
        "sam2": "its video predictor tracks one prompted object",
    }.get(fam, "it does not take point prompts")
    raise SamlabError(f"{fam} cannot segment everything: {why}; use the classic engine (--model classic) "
                      "or a SAM checkpoint (--model sam)")


def _grid(n: int, h: int, w: int) -> np.ndarray:
    """n×n point centres in (x, y) pixel coordinates of an (h, w) image, as SAM's build_point_grid."""
    off = 1.0 / (2 * n)
    side = np.linspace(off, 1 - off, n)
    xs, ys = np.meshgrid(side * w, side * h)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def sam_instances(predictor, image2d: np.ndarray, window="auto", min_size: float = 0.0,
                  points_per_side: Optional[int] = None, settings: AmgSettings = AmgSettings(),
                  progress: Optional[Callable[[int, int], None]] = None, cancel: Optional[threading.Event] = None):
    """Instance labels of one 2D image by SAM's automatic-mask-generator recipe.

    Parameters
    ----------
    predictor : SlicePredictor
        Holding a ``sam`` model; its embedding cache is used (a slice seen
        before is not encoded again).
    image2d : ndarray
        (y, x) or (y, x, 3).
    window : str or Window
        As :meth:`SlicePredictor.set_image`.
    min_size : float
        Masks (and their islands) under this many pixels are dropped.
    points_per_side : int, optional
        Grid density; default ``settings.points_per_side``.
    settings : AmgSettings
    progress : callable, optional
        ``progress(done, total)`` per batch.
    cancel : threading.Event, optional

    Returns
    -------
    labels : ndarray of int32
    scores : ndarray of float
        Predicted IoU per object (index label-1).

    Examples
    --------
    >>> labels, scores = sam_instances(SlicePredictor(sam), rgb)   # doctest: +SKIP
    """
    import torch
    import torch.nn.functional as F
    from torchvision.ops import batched_nms

    model = predictor.model
    check_family(model)
    predictor.set_image(image2d, window=window)
    emb = predictor.embedding
    h, w = (int(v) for v in emb["original_size"])
    ih, iw = (int(v) for v in emb["input_size"])
    net = model.net
    dev = model.device
    n = int(points_per_side or settings.points_per_side)
    if not 1 <= n <= 256:
        raise SamlabError(f"points per side {n} is out of range: use 1..256")
    pts = _grid(n, h, w)
    coords_all = model.transform.apply_coords(pts, (h, w))
    feats = torch.from_numpy(np.ascontiguousarray(emb["features"], np.float32)).to(dev)
    masks, scores, boxes = [], [], []
    total = int(np.ceil(len(pts) / settings.points_per_batch))
    with torch.inference_mode():
        dense_pe = net.prompt_encoder.get_dense_pe()
        for b in range(total):
            if cancel is not None and cancel.is_set():
                raise Cancelled("stopped on request")
            sl = slice(b * settings.points_per_batch, (b + 1) * settings.points_per_batch)
            c = torch.as_tensor(coords_all[sl], dtype=torch.float, device=dev)[:, None, :]
            lab = torch.ones(c.shape[:2], dtype=torch.int, device=dev)
            sparse, dense = net.prompt_encoder(points=(c, lab), boxes=None, masks=None)
            low, iou = net.mask_decoder(image_embeddings=feats, image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                                        dense_prompt_embeddings=dense, multimask_output=True)
            low = low.flatten(0, 1)[:, None]
            iou = iou.flatten()
            # the IoU filter first: only its survivors are upsampled, a few at a time (bounded memory)
            cand = torch.nonzero(iou > settings.pred_iou_thresh).flatten()
            for c0 in range(0, len(cand), 8):
                idx = cand[c0:c0 + 8]
                up = F.interpolate(low[idx], (model.image_size, model.image_size), mode="bilinear", align_corners=False)
                up = F.interpolate(up[..., :ih, :iw], (h, w), mode="bilinear", align_corners=False)[:, 0]
                t, o = model.mask_threshold, settings.stability_offset
                inter = (up > t + o).flatten(1).sum(1).float()
                union = (up > t - o).flatten(1).sum(1).float()
                stab = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
                m = up > t
                del up
                area = m.flatten(1).sum(1)
                keep = (stab >= settings.stability_thresh) & (area > max(min_size, 0)) \
                    & (area < settings.max_area_fraction * h * w)
                if not keep.any():
                    continue
                m = m[keep]
                ys = m.any(2)
                xs = m.any(1)
                ar_y = torch.arange(h, device=dev)[None]
                ar_x = torch.arange(w, device=dev)[None]
                y0 = torch.where(ys, ar_y, h).min(1).values
                y1 = torch.where(ys, ar_y, -1).max(1).values
                x0 = torch.where(xs, ar_x, w).min(1).values
                x1 = torch.where(xs, ar_x, -1).max(1).values
                boxes.append(torch.stack([x0, y0, x1, y1], 1).float().cpu())
                masks.append(m.cpu())
                scores.append(iou[idx][keep].cpu())
            if progress is not None:
                progress(b + 1, total)
    if not masks:
        return np.zeros((h, w), np.int32), np.zeros(0)
    masks_t = torch.cat(masks)
    scores_t = torch.cat(scores)
    boxes_t = torch.cat(boxes)
    order = batched_nms(boxes_t, scores_t, torch.zeros(len(scores_t), dtype=torch.long), settings.box_nms_thresh)
    return _paint(masks_t[order].numpy(), scores_t[order].numpy(), min_size)


def _paint(masks: np.ndarray, scores: np.ndarray, min_size: float):
    """Label image from candidate masks: lower scores first, so the best mask wins a shared pixel."""
    from scipy import ndimage as ndi

    h, w = masks.shape[1:]
    out = np.zeros((h, w), np.int32)
    kept_scores = []
    for k in np.argsort(scores, kind="stable"):
        m = masks[k]
        if min_size > 0:  # SAM's small-region removal: islands under min_size go
            lab, nlab = ndi.label(m)
            if nlab > 1:
                sizes = np.bincount(lab.ravel())
                sizes[0] = 0
                m = lab == int(np.argmax(sizes))
        out[m] = len(kept_scores) + 1
        kept_scores.append(float(scores[k]))
    # objects fully covered by better ones disappear: consecutive values, matching scores
    areas = np.bincount(out.ravel(), minlength=len(kept_scores) + 1)
    keep = []
    lut = np.zeros(len(kept_scores) + 1, np.int32)
    for v in np.flatnonzero(areas[1:]) + 1:
        if min_size > 0 and areas[v] < min_size:
            continue
        keep.append(kept_scores[v - 1])
        lut[v] = len(keep)
    return lut[out], np.asarray(keep)
