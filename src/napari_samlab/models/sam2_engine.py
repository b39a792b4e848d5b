"""SAM 2's video predictor, fed from memory, with upstream's GPU post-processing on any device.

MedSAM2's 3D inference (``medsam2_infer_3D_CT.py``) runs the ``sam2/``
folder its repository ships: SAM 2.1 as of October 2024 plus
``SAM2VideoPredictorNPZ``, whose only change is that ``init_state`` takes a
tensor of preprocessed frames instead of a JPEG folder.  The ``sam2``
package (1.1.0) is the same model code; its video predictor was reorganised
to track objects independently, which for one object computes the same
thing (memory of the prompted frame encoded before tracking, then each
frame with the prompted frame + 6 recent frames and object pointers).

:class:`Sam2VideoEngine` subclasses the package's ``SAM2VideoPredictor`` and
changes only what running from a volume needs:

* :meth:`init_state_from_frames`: frames are any sequence whose items are
  ``(3, S, S)`` tensors (our :class:`~napari_samlab.propagate.memory.FrameSource`
  preprocesses a slice when it is asked for it, so a 300-slice volume never
  holds 300 float frames);
* ``fill_hole_area``: upstream fills background holes of at most 8 pixels
  in the 128×128 logits with a CUDA connected-components kernel (``sam2._C``);
  the package skips that step with a warning when the kernel is missing (any
  CPU install).  :func:`fill_small_holes` is the same rule on the CPU
  (8-connected background components of area <= ``max_area`` get logit 0.1),
  so CPU and GPU give upstream's GPU masks;
* an optional replacement image encoder (exported, faster) and a small
  per-session cache of image features for frames visited twice (the
  prompted slice is encoded once for both directions).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import sam2.sam2_video_predictor as _video_module
from scipy import ndimage
from sam2.sam2_video_predictor import SAM2VideoPredictor

# propagate_in_video wraps its loop in a tqdm bar on stderr; our callers report
# progress themselves (CLI summary line, widget progress bar), so the bar is muted
_video_module.tqdm = lambda iterable, *args, **kwargs: iterable

_EIGHT = np.ones((3, 3), dtype=bool)


def fill_small_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """Turn small background holes of mask logits into foreground (logit 0.1).

    The CPU twin of ``sam2.utils.misc.fill_holes_in_mask_scores``: a hole is
    an 8-connected component of pixels with logit <= 0 whose area is at most
    ``max_area`` (components touching the border count too, as in upstream's
    kernel).

    Parameters
    ----------
    logits : torch.Tensor
        ``(N, 1, H, W)`` mask logits.
    max_area : int
        Largest hole (pixels) to fill; <= 0 returns ``logits`` unchanged.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device.

    Examples
    --------
    >>> x = torch.ones(1, 1, 5, 5); x[0, 0, 2, 2] = -1
    >>> float(fill_small_holes(x, 8)[0, 0, 2, 2])
    0.1
    """
    if max_area <= 0:
        return logits
    bg = (logits <= 0).detach().cpu().numpy()
    hole = np.zeros_like(bg)
    for i in range(bg.shape[0]):
        lab, n = ndimage.label(bg[i, 0], structure=_EIGHT)
        if n == 0:
            continue
        area = np.bincount(lab.ravel())
        small = area <= max_area
        small[0] = False  # label 0 is the foreground
        hole[i, 0] = small[lab]
    if not hole.any():
        return logits
    fill = torch.from_numpy(hole).to(logits.device)
    return torch.where(fill, torch.tensor(0.1, dtype=logits.dtype, device=logits.device), logits)


class PackedImageEncoder(torch.nn.Module):
    """``forward_image`` as one tensor out: Hiera + FPN neck + ``conv_s0``/``conv_s1``, flattened and joined.

    Exporters (models/accel.py) take a one-output graph; :meth:`unpack`
    splits the result back into the three feature maps.
    """

    def __init__(self, net):
        super().__init__()
        self.image_encoder = net.image_encoder
        self.conv_s0 = net.sam_mask_decoder.conv_s0
        self.conv_s1 = net.sam_mask_decoder.conv_s1
        s = int(net.image_size)
        self.shapes = [(self.conv_s0.out_channels, s // 4, s // 4), (self.conv_s1.out_channels, s // 8, s // 8),
                       (int(net.hidden_dim), s // 16, s // 16)]

    def forward(self, x):
        fpn = self.image_encoder(x)["backbone_fpn"]
        return torch.cat([self.conv_s0(fpn[0]).flatten(1), self.conv_s1(fpn[1]).flatten(1), fpn[2].flatten(1)], 1)

    def unpack(self, flat: torch.Tensor, batch: int = 1) -> list:
        out, start = [], 0
        for c, h, w in self.shapes:
            n = c * h * w
            out.append(flat[:, start:start + n].reshape(batch, c, h, w))
            start += n
        return out


class Sam2VideoEngine(SAM2VideoPredictor):
    """The package's ``SAM2VideoPredictor`` run from in-memory frames (see module doc).

    Built by :func:`napari_samlab.models.medsam2.build_sam2_network` with
    the package's own config file; ``samlab_hole_area`` is upstream's
    ``fill_hole_area`` (the package's own ``fill_hole_area`` stays 0 so its
    CUDA-only path never runs).
    """

    def __init__(self, samlab_hole_area: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.samlab_hole_area = int(samlab_hole_area)
        # callable(image (1,3,S,S)) -> [fpn0, fpn1, fpn2] after conv_s0/conv_s1, or None (PyTorch)
        self.samlab_encoder: Optional[Callable] = None
        self.samlab_encoder_backend = "torch"

    # -- frames and state ------------------------------------------------
    @torch.inference_mode()
    def init_state_from_frames(self, frames: Sequence, video_height: int, video_width: int,
                               feature_cache: Optional["OrderedDict"] = None) -> dict:
        """An inference state over ``frames`` (what MedSAM2's ``init_state(images, H, W)`` builds).

        Parameters
        ----------
        frames : sequence of torch.Tensor
            ``len(frames)`` slices; ``frames[i]`` is the ``(3, S, S)``
            normalised input of slice ``i``.
        video_height, video_width : int
            Original slice size: masks come back at this size.
        feature_cache : OrderedDict, optional
            Shared between states of one session: image features of pinned
            frames (see :meth:`pin_features`).

        Returns
        -------
        dict
            The package's inference state.
        """
        state = {
            "images": frames, "num_frames": len(frames), "offload_video_to_cpu": False,
            "offload_state_to_cpu": False, "video_height": int(video_height), "video_width": int(video_width),
            "device": self.device, "storage_device": self.device,
            "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": {}, "constants": {},
            "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(), "obj_ids": [],
            "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
            # upstream also encodes frame 0 here as a warm-up; its features are never used
            # unless frame 0 is visited next, where they are recomputed identically
            "samlab_features": feature_cache if feature_cache is not None else OrderedDict(),
        }
        return state

    def pin_features(self, state: dict, frame_idx: int) -> None:
        """Keep ``frame_idx``'s image features for every state sharing the cache."""
        state["samlab_features"].setdefault(("pinned", frame_idx), None)

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        cache = inference_state.get("samlab_features")
        if cache is not None and frame_idx not in inference_state["cached_features"]:
            hit = cache.get(("pinned", frame_idx))
            if hit is not None:
                inference_state["cached_features"] = {frame_idx: hit}
        out = super()._get_image_feature(inference_state, frame_idx, batch_size)
        if cache is not None and ("pinned", frame_idx) in cache and cache[("pinned", frame_idx)] is None:
            cache[("pinned", frame_idx)] = inference_state["cached_features"][frame_idx]
        return out

    # -- encoder ---------------------------------------------------------
    def forward_image(self, img_batch: torch.Tensor):
        if self.samlab_encoder is None:
            return super().forward_image(img_batch)
        fpn = list(self.samlab_encoder(img_batch))
        pe = self.image_encoder.neck.position_encoding
        # the neck's positional encodings depend only on the feature map size
        pos = [pe(torch.zeros(f.shape[0], 1, *f.shape[-2:], device=f.device)).to(f.dtype) for f in fpn]
        return {"vision_features": fpn[-1], "vision_pos_enc": pos, "backbone_fpn": fpn}

    # -- upstream's hole filling on any device ---------------------------
    def _run_single_frame_inference(self, *args, **kwargs):
        compact, masks = super()._run_single_frame_inference(*args, **kwargs)
        if self.samlab_hole_area > 0:
            masks = fill_small_holes(masks, self.samlab_hole_area)
            compact["pred_masks"] = masks.to(compact["pred_masks"].device)
        return compact, masks
