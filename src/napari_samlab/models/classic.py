"""The "classic" engine: prompt-driven 2D segmentation with no weights.

Everything here is plain scikit-image / SciPy image analysis, tuned on the
real CT, MRI and microscopy data in ``shared/data`` (see
``benchmarks/bench_classic_quality.py``).  The recipe, per prompt:

1. **Region of interest.**  A box gives its own ROI plus a margin ring (the
   ring is the background sample, as in GrabCut).  Points without a box grow
   a window around each click until the clicked object fits inside it.
   A previous mask (``mask_input``) gives a box and samples of its own.
2. **One feature.**  Grey images use their windowed intensity.  RGB images
   project CIE-Lab colour onto the direction that best separates the object
   sample from the background sample (Fisher's linear discriminant), so
   the rest of the recipe is the same for H&E as for CT.
3. **Threshold.**  Box: the intensity that best separates the box's central
   ellipse from the ring (maximum Youden index), re-estimated once from the
   first mask (GrabCut-style).  The polarity is the one whose mask stands
   apart from the tissue along its own outline (an object between darker
   and brighter surroundings fools the samples).  Click:
   half-way between the clicked intensity and the local background.
4. **Shape.**  Keep the component(s) holding the object (opening first cuts
   thin bridges: scalp, vessels), close small gaps, fill holes, restrict to
   the box; move the edge to a fixed level between the object and the
   background just beyond it (partial-volume rims), cut off parts far
   beyond the object's own intensity (bone beside a tumour).  A click fills
   only holes smaller than its object (not a lung); its rays stop where they
   climb into a neighbour, a watershed splits a clump.  Negative clicks split
   the mask by a seeded watershed on the gradient and remove their share.
5. **Faint objects.**  Where the result's score (separability x edge
   contrast) is low, a box prompt's own shape decides more: likelihood plus
   a superellipse prior inscribed in the box (deep grey matter on T1).

Quality on the real data in ``shared/data`` (benchmarks/bench_classic_quality.py):
Colin27 brain, box per axial slice, mean Dice 0.93; lung2 tumour, box per
slice, 0.91; nuclei, one click at each centre, 0.87.

``Prediction.low_res_logits`` is a float32 (H, W) signed distance map in
pixels (positive inside, clipped to +-32).  Given back as
``Prompt.mask_input`` (any float/bool map where ``> 0`` is the object, at the
slice's resolution) it acts as a prompt of its own: it supplies the box (if
none was given) and the object/background samples, which is how a mask is
carried from one slice to the next.

**Propagation** (:meth:`ClassicModel.propagate_step`, the ``"track"``
strategy of ``napari_samlab.propagate``): the object's appearance
(object / local-background histograms learned on the prompted slice,
updated slice by slice) and the previous mask as a shape prior, loosened by
the object's observed slice-to-slice change; it stops on evidence that the
object has ended and flags the slices it is unsure of.  See
:mod:`napari_samlab.models.classic_track` and ``docs/classic_engine.md``.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from ..errors import SamlabError
from .base import Prediction, Prompt, SegmentationModel
from .classic_ops import (best_threshold, box_prior_mask, crop_box, cut_negatives, dilate_disk, edge_contrast, erode_disk,
                          fill_holes, project, ring_separation, signed_distance)
from . import classic_track
from .classic_click import segment_click

__all__ = ["ClassicModel"]

# Bumped whenever an algorithmic change alters results (part of cache keys).
ALGORITHM_VERSION = "8"
TINY = 4  # boxes narrower than this are returned filled

class ClassicModel(SegmentationModel):
    """Weight-free promptable segmentation (scikit-image / SciPy).

    Parameters
    ----------
    smoothing : float
        Gaussian sigma (pixels) of the intensity feature; suppresses noise
        before thresholding.
    margin : float
        Width of the background ring around a box, as a fraction of the box
        side (at least 3 pixels).
    iterations : int
        Threshold re-estimations from the current mask (GrabCut-style).
    core : float
        Semi-axes of the central ellipse of the box used as the object
        sample, as a fraction of the box sides.
    keep_fraction : float
        Components at least this fraction of the main one's area are kept
        (one box may hold several parts of one object).
    close_fraction : float
        Closing radius (fraction of the shorter box side, at most 8 px) that
        fills sulci and gaps in the outline.
    grow, edge_level : float
        Edge refinement: the edge may move out by ``grow`` x box side (2-6
        px) to the level ``edge_level`` of the way from the adjacent
        background to the object (0.5 = half maximum).
    refine_steps : int
        How often the edge refinement runs.
    shrink : int
        The refinement may also move the edge in by this many pixels where
        the first threshold overshot (loose boxes, blurred edges).
    trim : float
        Parts brighter (for a dark background) than the object by more than
        ``trim`` x its contrast are cut off (bone beside a tumour).
    click_level : float
        Clicks without a box: the object is what is brighter (darker) than
        this fraction of the way from the local background to the clicked
        intensity.
    click_background : float
        Percentile of the click window taken as the background level.
    split_h, split_sigma, split_dist : float
        Splitting touching blobs after a click: h-maxima height, blur and
        weight of the distance transform of the watershed landscape.
    ray_rise : float
        Rays from a click stop where the intensity rises again by this much
        (relative to the clicked contrast) after falling: a touching neighbour.
    track_tau : float
        :meth:`propagate_step`: width of the shape prior (``tanh(sdf /
        tau)``), as a fraction of the object's radius (equivalent disk).
    track_reach : float
        How far (fraction of the radius) the object may move or grow from
        one slice to the next; parts that run on to this limit are leaks.
        Both ``tau`` and the reach are multiplied by ``1 + 2 x change``,
        the object's observed slice-to-slice change (1 - IoU, at most 0.6).
    track_change0 : float
        The change assumed for the first step (no history yet).
    track_prior : float
        Weight of the shape prior in log-likelihood units: intensity
        evidence stronger than this overrules the previous outline.
    track_prior_out : float
        The same outside the previous outline; above the likelihood cap (4)
        growth per slice is bounded by about ``tau`` whatever the evidence.
    track_smooth : float
        Gaussian sigma (pixels) of the log-likelihood map.
    track_evidence : float
        The object has ended when the mean log-likelihood ratio inside the
        new mask falls below this fraction of the object's own on the
        prompted slice.
    track_open : float
        The object has ended when more than this fraction of a band 2-4 px
        outside the new mask is object-like (and 0.25 more than around the
        prompted object): no edge of its own.  On thick slices (``slice_ratio``
        > 1) not while the inside-minus-band contrast keeps ``track_edge``
        of the prompted object's (a partial-volume edge, flagged).
    track_min_fraction : float
        The object has ended when less than this fraction of the previous area is left.
    track_flag_area, track_depth : float
        A kept slice whose area changed by more than this factor is flagged.  An object without an
        outline of its own (``classic_track.has_outline``) is followed at most ``track_depth`` of its length each way.
    track_motion : float
        On slices up to this thick (slice spacing over pixel size) the
        previous outline first moves with the image content (optical flow,
        :func:`~.classic_ops.follow_motion`) before it serves as the shape
        prior; 0 switches this off.
    box_prior, box_power, box_width : float
        A box prompt on a faint object: the box's own shape (a superellipse
        inscribed in it) joins the intensity likelihood with weight
        ``box_prior x (1 - score) ** box_power`` (not below 0.5), over a
        transition ``box_width`` wide (:func:`~.classic_ops.box_prior_mask`).
        Propagation starts from the intensity's mask, not this outline.

    Every value and how it was chosen: ``docs/classic_engine.md``.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((64, 64), np.uint8); img[20:40, 15:45] = 200
    >>> model = ClassicModel()
    >>> pred = model.decode(model.encode(img), Prompt(box=(10, 15, 50, 45)))
    >>> bool(pred.mask[20:40, 15:45].all()), int(pred.mask[:18].sum() + pred.mask[42:].sum())
    (True, 0)
    """

    family = "classic"
    needs_prompt = True
    supports_points = True
    supports_boxes = True
    supports_mask_input = True
    parallel_steps = True  # propagate_step reads only its arguments (SciPy releases the GIL)
    num_classes = 1
    image_size = 0
    device = "cpu"

    def __init__(self, smoothing: float = 1.0, margin: float = 0.1, iterations: int = 1,
                 core: float = 0.45, keep_fraction: float = 0.15, close_fraction: float = 0.03,
                 grow: float = 0.05, edge_level: float = 0.3, refine_steps: int = 1, shrink: int = 1, trim: float = 0.5,
                 click_level: float = 0.5, click_background: float = 10.0, split_h: float = 0.05,
                 split_sigma: float = 2.0, split_dist: float = 0.5, ray_rise: float = 0.25,
                 track_tau: float = 0.2, track_reach: float = 0.25, track_change0: float = 0.2,
                 track_prior: float = 2.5, track_prior_out: float = 5.0, track_smooth: float = 0.5,
                 track_evidence: float = 0.35, track_open: float = 0.5, track_min_fraction: float = 0.02, track_flag_area: float = 1.6,
                 track_thick: float = 1.0, track_calibrate: float = 0.5, track_edge: float = 0.33, track_motion: float = 1.5,
                 track_depth: float = 0.3, box_prior: float = 8.0, box_power: float = 3.0, box_width: float = 0.3):
        # 2D values tuned with benchmarks/bench_classic_quality.py; track_*
        # with benchmarks/eval_propagation.py --suite (docs/classic_engine.md)
        self.params = dict(
            smoothing=float(smoothing), margin=float(margin), iterations=int(iterations),
            core=float(core), keep_fraction=float(keep_fraction), close_fraction=float(close_fraction),
            grow=float(grow), edge_level=float(edge_level), shrink=int(shrink), refine_steps=int(refine_steps), trim=float(trim),
            click_level=float(click_level), click_background=float(click_background),
            split_h=float(split_h), split_sigma=float(split_sigma), split_dist=float(split_dist),
            ray_rise=float(ray_rise), track_tau=float(track_tau), track_reach=float(track_reach), track_change0=float(track_change0),
            track_prior=float(track_prior), track_prior_out=float(track_prior_out), track_smooth=float(track_smooth),
            track_evidence=float(track_evidence), track_open=float(track_open),
            track_min_fraction=float(track_min_fraction), track_flag_area=float(track_flag_area),
            track_thick=float(track_thick), track_calibrate=float(track_calibrate), track_edge=float(track_edge),
            track_motion=float(track_motion), track_depth=float(track_depth), box_prior=float(box_prior),
            box_power=float(box_power), box_width=float(box_width),
        )
        for k, v in self.params.items():
            setattr(self, k, v)

    # ------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Algorithm version and parameters, e.g. ``"classic-v1-1a2b3c4d"``.

        Examples
        --------
        >>> ClassicModel().fingerprint() != ClassicModel(smoothing=2).fingerprint()
        True
        """
        text = f"classic:{ALGORITHM_VERSION}:" + ",".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"classic-v{ALGORITHM_VERSION}-" + hashlib.sha1(text.encode()).hexdigest()[:8]

    def auto_window(self, image: np.ndarray, modality: Optional[str] = None):
        """Windows that keep the contrast this engine relies on, as floats.

        CT: -1000 to 400 HU (air to dense soft tissue; shifted for CT
        stored as HU + 1024); MR: 0.5-99.5 percentiles of the voxels that
        are neither 0 nor the volume's minimum (its background; normalised
        MRI is half negative); 8-bit photographs as they are; other images
        (16-bit microscopy) the 0.5-99.9 percentiles.  All map to float32
        in [0, 1] so no contrast is lost to 8-bit rounding.

        Examples
        --------
        >>> w = ClassicModel().auto_window(np.array([[-1024, 0], [40, 900]], np.int16))
        >>> (w.lo, w.hi, w.out)
        (-1000.0, 400.0, 'unit')
        """
        from ..base.windowing import Window, ct_window, detect_modality, percentile_window

        guess = detect_modality(image, modality)
        if guess.kind == "CT":
            # from air to dense soft tissue: keeps the partial-volume rim of
            # lesions in lung that a soft-tissue window would clip to black
            return ct_window(image, -300.0 + guess.hu_offset, 1400.0, "unit", "ct-classic")
        if guess.kind == "MR":
            # the non-background voxels, negative ones too (MRI normalised to
            # zero mean): the positive ones alone would clip half the tissue
            return percentile_window(image, 0.5, 99.5, "unit", keep_zero=True, signed=True)
        if image.dtype == np.uint8:
            return None
        w = percentile_window(image, 0.5, 99.9, "unit", keep_zero=False)
        return Window(w.lo, w.hi, "unit", False, "percentile")

    # ------------------------------------------------------------------
    def encode(self, image: np.ndarray) -> dict:
        """Precompute the per-slice features.

        Parameters
        ----------
        image : ndarray
            (H, W) grey (any numeric dtype) or (H, W, 3|4) RGB(A), as the
            windowing step produced it.

        Returns
        -------
        dict
            ``"feature"``: float32 (H, W, C) smoothed features scaled to
            about [0, 1] (C = 1 grey, 3 for CIE-Lab); ``"gradient"``:
            float32 (H, W) gradient magnitude of the first feature;
            ``"original_size"``: ``[H, W]``.

        Examples
        --------
        >>> emb = ClassicModel().encode(np.zeros((8, 9), np.uint8))
        >>> emb["feature"].shape, emb["original_size"].tolist()
        ((8, 9, 1), [8, 9])
        """
        img = np.asarray(image)
        if img.ndim == 3 and img.shape[-1] in (3, 4):
            from skimage.color import rgb2lab

            rgb = img[..., :3].astype(np.float64)
            if np.issubdtype(img.dtype, np.integer):
                rgb /= float(np.iinfo(img.dtype).max)
            else:
                rgb = np.clip(rgb / max(float(rgb.max()), 1.0), 0, 1) if rgb.max() > 1 else np.clip(rgb, 0, 1)
            lab = rgb2lab(rgb)
            feat = np.stack([lab[..., 0] / 100.0, (lab[..., 1] + 128) / 255.0, (lab[..., 2] + 128) / 255.0], -1)
        elif img.ndim == 2:
            x = img.astype(np.float64)
            if img.dtype == np.uint8:
                x /= 255.0
            elif not (np.issubdtype(img.dtype, np.floating) and x.size and x.min() >= 0 and x.max() <= 1):
                # un-windowed input: robust rescale so parameters stay meaningful
                lo, hi = np.percentile(x, [0.5, 99.5]) if x.size else (0.0, 1.0)
                x = np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)
            feat = x[..., None]
        else:
            raise SamlabError(f"the classic engine takes a 2D slice (H, W) or RGB (H, W, 3), not an array of shape {img.shape}")
        if self.smoothing > 0:
            feat = ndi.gaussian_filter(feat, (self.smoothing, self.smoothing, 0))
        grad = ndi.gaussian_gradient_magnitude(feat[..., 0], max(self.smoothing, 0.5))
        return {
            "feature": feat.astype(np.float32),
            "gradient": grad.astype(np.float32),
            "original_size": np.array(img.shape[:2], np.int64),
        }

    # ------------------------------------------------------------------
    def decode(self, embedding: dict, prompt: Prompt) -> Prediction:
        """Segment the object that ``prompt`` names.

        Parameters
        ----------
        embedding : dict
            From :meth:`encode`.
        prompt : Prompt
            A box ``(x0, y0, x1, y1)`` (inclusive), points ``(x, y)`` with
            labels 1 (object) / 0 (background), and/or a previous
            ``mask_input`` (see the module docstring).

        Returns
        -------
        Prediction
            ``mask`` bool (H, W); ``score`` in [0, 1], the separability of
            object and background intensities times the boundary contrast;
            ``low_res_logits`` the signed distance map of the mask.

        Examples
        --------
        >>> yy, xx = np.mgrid[:40, :40]
        >>> img = np.where((yy - 15) ** 2 + (xx - 20) ** 2 <= 36, 200, 10).astype(np.uint8)
        >>> m = ClassicModel(); e = m.encode(img)
        >>> pred = m.decode(e, Prompt(points=[(20, 15)], point_labels=[1]))
        >>> int((pred.mask != (img > 100)).sum()) <= 8, 0.0 <= pred.score <= 1.0
        (True, True)
        """
        H, W = (int(v) for v in embedding["original_size"])
        feat = embedding["feature"]
        pos, neg = _split_points(prompt, H, W)
        box = _check_box(prompt.box, H, W) if prompt.box is not None else None
        prior = None
        if prompt.mask_input is not None:
            prior = _check_mask_input(prompt.mask_input, H, W)
            if box is None and prior.any():
                ys, xs = np.nonzero(prior)
                pad = max(2, int(0.1 * max(np.ptp(ys), np.ptp(xs))))
                box = (max(xs.min() - pad, 0), max(ys.min() - pad, 0), min(xs.max() + pad, W - 1), min(ys.max() + pad, H - 1))
        if box is None and not pos:
            if prior is not None:
                raise SamlabError("mask_input is empty and there is no box or positive point: give a box or click inside the object")
            raise SamlabError("the classic engine needs a box or at least one positive point inside the object")

        if box is not None:
            mask, score, seed = self._segment_box(feat, embedding["gradient"], box, pos, neg, prior)
        else:
            mask = np.zeros((H, W), bool)
            scores = []
            for p in pos:
                m, s = segment_click(feat, embedding["gradient"], p, pos, neg, self.params)
                mask |= m
                scores.append(s)
            score = float(np.mean(scores)) if scores else 0.0
            seed = None
        # what the object looks like here: the next slice's propagate_step
        # compares with it.  Propagation starts from what the intensity says
        # is the object ("seed"), not from the box-shape prior's outline: the
        # prior's guess on this slice is no evidence for the next one.
        stats = self.object_stats(embedding, mask if seed is None else seed)
        if stats is not None and seed is not None:
            stats["seed"] = seed
        return Prediction(mask=mask, score=float(np.clip(score, 0, 1)), low_res_logits=signed_distance(mask),
                          extra={"stats": stats})

    # ------------------------------------------------------------------
    # ------------------------------------------------------------------
    def object_stats(self, embedding: dict, mask: np.ndarray, prev: Optional[dict] = None) -> Optional[dict]:
        """What an object looks like on this slice, for :meth:`propagate_step`.

        See :func:`napari_samlab.models.classic_track.object_stats`: the
        object / local-background histograms, the prompted slice's reference
        (``anchor``), the evidence and the area history; None for masks of
        fewer than 4 pixels.
        """
        return classic_track.object_stats(embedding, mask, prev)

    def propagate_step(self, embedding: dict, prev_mask: np.ndarray, prev_stats: Optional[dict] = None,
                       slice_ratio: float = 1.0, logits: bool = True, outward: bool = True) -> Prediction:
        """The object of ``prev_mask`` (the neighbouring slice's result) on this slice.

        The object's appearance (learned on the prompted slice, updated
        slice by slice) and the previous mask as a shape prior give the new
        mask; it is empty (score 0) once the evidence says the object has
        ended (see :mod:`napari_samlab.models.classic_track`).

        Parameters
        ----------
        embedding : dict
            From :meth:`encode`, for the new slice.
        prev_mask : ndarray of bool (H, W)
            The previous slice's mask.
        prev_stats : dict, optional
            :meth:`object_stats` of the previous slice (``extra["stats"]`` of the previous prediction);
            None estimates them from ``prev_mask``.
        slice_ratio : float
            Slice spacing over pixel size (``PropagationSettings.slice_ratio``): on thick slices the
            object may move and grow further.
        logits, outward : bool
            False: ``low_res_logits`` None (propagation never reads it there); the run goes between two
            prompted slices, where the user has said the object goes on (no ``track_depth`` limit).

        Returns
        -------
        Prediction
            ``extra`` holds ``"stats"`` (for the next step), ``"ended"``
            (None, or why the object has ended), ``"flags"`` (why this slice
            is uncertain; propagation copies them to the slice's record),
            ``"evidence"``, ``"open"`` and ``"area"``.

        Examples
        --------
        >>> yy, xx = np.mgrid[:60, :60]
        >>> m = ClassicModel()
        >>> a = m.encode(np.where((yy - 30) ** 2 + (xx - 30) ** 2 <= 144, 200, 20).astype(np.uint8))
        >>> b = m.encode(np.where((yy - 31) ** 2 + (xx - 30) ** 2 <= 100, 200, 20).astype(np.uint8))
        >>> first = m.decode(a, Prompt(box=(16, 16, 44, 44)))
        >>> nxt = m.propagate_step(b, first.mask, first.extra["stats"])
        >>> abs(int(nxt.mask.sum()) - 317) < 40, nxt.extra["ended"]
        (True, None)
        """
        H, W = (int(v) for v in embedding["original_size"])
        P = _check_mask_input(prev_mask, H, W)
        empty = np.zeros((H, W), bool)

        def ended(why, **info):
            return Prediction(mask=empty, score=0.0, low_res_logits=signed_distance(empty) if logits else None,
                              extra=dict(info, stats=None, ended=why, flags=set(info.get("flags", ()))))

        seed = (prev_stats or {}).get("seed")
        if seed is not None and np.shape(seed) == P.shape:
            P = np.asarray(seed, bool)  # the prompted slice's intensity mask (decode)
        st = (None if int(P.sum()) < 4 else prev_stats if prev_stats is not None and "anchor" in prev_stats
              else self.object_stats(embedding, P))
        if st is None:
            return ended("no previous mask")
        full, info = classic_track.propagate_step(self.params, embedding, P, st, slice_ratio, outward)
        if full is None:
            return ended(info.pop("ended"), **info)
        stats = self.object_stats(embedding, full, prev=dict(st, _change=info.get("change", 0.0)))
        (r0, r1, c0, c1), m = crop_box(full, 2)
        e_con = edge_contrast(embedding["gradient"][r0:r1, c0:c1], m)
        score = float(np.clip((stats["sep"] if stats else 0.0) * e_con, 0, 1))
        return Prediction(mask=full, score=score, low_res_logits=signed_distance(full) if logits else None,
                          extra=dict(info, stats=stats, ended=None))
    def _segment_box(self, feat, grad, box, pos, neg, prior):
        H, W = feat.shape[:2]
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        if min(bw, bh) < TINY:
            # too few pixels to tell object from background: the box is the answer
            full = np.zeros((H, W), bool)
            full[y0:y1 + 1, x0:x1 + 1] = True
            return full, 0.0, None
        m = max(3, int(round(self.margin * max(bw, bh))))
        r0, r1, c0, c1 = max(y0 - m, 0), min(y1 + m + 1, H), max(x0 - m, 0), min(x1 + m + 1, W)
        f = feat[r0:r1, c0:c1]
        inbox = np.zeros(f.shape[:2], bool)
        inbox[y0 - r0:y1 - r0 + 1, x0 - c0:x1 - c0 + 1] = True
        lpos = [(y - r0, x - c0) for x, y in pos]
        lneg = [(y - r0, x - c0) for x, y in neg if r0 <= y < r1 and c0 <= x < c1]
        pr = prior[r0:r1, c0:c1] if prior is not None else None

        # samples: object = box interior (or the prior / clicks), background = ring
        bg = ~inbox
        # object sample: the central ellipse of the box (a tight box's corners
        # and edges hold background, its centre the object)
        yy, xx = np.indices(inbox.shape)
        fg = (((yy - (y0 + y1) / 2 + r0) / (self.core * bh)) ** 2 + ((xx - (x0 + x1) / 2 + c0) / (self.core * bw)) ** 2) <= 1
        fg &= inbox
        if pr is not None and pr.any():
            fg = ndi.binary_erosion(pr, iterations=2) if ndi.binary_erosion(pr, iterations=2).any() else pr
            bg = bg | (inbox & ~ndi.binary_dilation(pr, iterations=3))
        seeds = np.zeros(f.shape[:2], bool)
        for (y, x) in lpos:
            seeds[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = True
        # negative clicks are not sampled: they often mark a *neighbour* that
        # looks just like the object (another nucleus); the cut handles them
        if lpos:
            fg = seeds & inbox if (seeds & inbox).any() else fg
        if not bg.any():  # box covers the whole image: use its border band
            bg = inbox & ~ndi.binary_erosion(inbox, iterations=2, border_value=0)
        g = project(f, fg, bg)
        box_only = not lpos and (pr is None or not pr.any())  # no click, no previous mask

        mask = None
        sep, flipped = 0.0, False
        for it in range(self.iterations + 1):
            # the polarity chosen on the first pass is kept: the re-estimate
            # refines the level, it does not turn the object inside out
            t, sign, sep = best_threshold(g[fg], g[bg], sign=None if it == 0 else sign)
            mask = self._threshold_box(g, t, sign, inbox, lpos, lneg, pr)
            if it == 0 and box_only:
                # polarity by the mask, not the samples (a T2-like brain lies
                # between bright CSF and dark air): the other polarity's mask
                # wins if it holds as much of the box's centre (within 5 %),
                # at least half, and stands apart better along its own outline
                # (docs/classic_engine.md, "polarity by the mask")
                ga = grad[r0:r1, c0:c1]
                t2, sign2, sep2 = best_threshold(g[fg], g[bg], sign=-sign)
                other = self._threshold_box(g, t2, sign2, inbox, lpos, lneg, pr)
                held = int((other & fg).sum())
                if (held >= 0.5 * fg.sum() and held >= (mask & fg).sum() - 0.05 * fg.sum()
                        and ring_separation(g, other) * edge_contrast(ga, other)
                        > ring_separation(g, mask) * edge_contrast(ga, mask)):
                    t, sign, sep, mask, flipped = t2, sign2, sep2, other, True
            if it < self.iterations and mask.any():
                fg = ndi.binary_erosion(mask, iterations=1) & mask
                fg = fg if fg.any() else mask
                bg = (~inbox) | (inbox & ~ndi.binary_dilation(mask, iterations=2))
                if lpos:
                    fg = fg | (seeds & inbox)
        if flipped:
            # the samples favoured the other polarity: their separability
            # says nothing about this mask, its own ring does
            sep = ring_separation(g, mask)
        score = sep * edge_contrast(grad[r0:r1, c0:c1], mask)
        # a faint object (low score): lean on the box's own shape (box_prior_mask)
        # seed: the intensity's own mask, where the prior changed it (decode)
        weight = self.box_prior * (1.0 - score) ** self.box_power
        seed = None
        if weight >= 0.5 and box_only:
            shaped = cut_negatives(box_prior_mask(g, mask, inbox, weight, self.box_width), lpos, lneg, sign * g)
            if not np.array_equal(shaped, mask):
                seed = np.zeros((H, W), bool)
                seed[r0:r1, c0:c1] = mask
                mask, score = shaped, sep * edge_contrast(grad[r0:r1, c0:c1], shaped)
        full = np.zeros((H, W), bool)
        full[r0:r1, c0:c1] = mask
        return full, score, seed

    def _threshold_box(self, g, t, sign, inbox, lpos, lneg, pr):
        """The box's mask at level ``t``: threshold, shape, edge, far side."""
        obj = (sign * (g - t) > 0) & inbox
        mask = self._shape_box(obj, inbox, lpos, lneg, pr, g, sign)
        for _ in range(self.refine_steps):
            new = self._refine_edge(g, sign, mask, inbox, lneg)
            if np.array_equal(new, mask):
                break
            mask = new
        return self._trim_far_side(g, sign, t, mask, inbox, lpos, lneg, pr)

    def _trim_far_side(self, g, sign, t, mask, inbox, lpos, lneg, prior):
        """Drop parts far *beyond* the object's own intensity (bone next to a
        tumour, scalp fat next to brain): the threshold only bounds one side.
        """
        if self.trim <= 0 or not mask.any():
            return mask
        core = erode_disk(mask, 2)
        if core.sum() < 20:
            return mask
        v = sign * g[core]
        lo, med, hi = np.percentile(v, [25, 50, 95])
        limit = hi + self.trim * max(med - sign * t, 1e-6)
        far = (sign * g > limit) & mask
        if not far.any():
            return mask
        trimmed = self._shape_box(mask & ~far, inbox, lpos, lneg, prior, g, sign)
        return trimmed if trimmed.any() else mask

    def _refine_edge(self, g, sign, mask, inbox, lneg):
        """Move the edge to half-way between object and adjacent background.

        The sample threshold separates the object from *all* background (e.g.
        a tumour from chest-wall muscle), which cuts through the object's
        partial-volume rim where it borders air; the local half-way level
        puts the edge where the intensity really changes.
        """
        if not mask.any() or self.grow <= 0:
            return mask
        side = min(inbox.any(1).sum(), inbox.any(0).sum())
        r = int(np.clip(round(self.grow * side), 2, 6))
        near = dilate_disk(mask, r) & ~mask
        # background level from beyond the partial-volume rim
        far = dilate_disk(mask, 2 * r + 2) & ~(near | mask)
        far = far if far.any() else near
        if not near.any() or not far.any():
            return mask
        inner = erode_disk(mask, 2)
        inner = inner if inner.any() else mask
        g_far = float(np.median(g[far]))
        t_mid = g_far + self.edge_level * (float(np.median(g[inner])) - g_far)
        cand = (sign * (g - t_mid) > 0) & (mask | near) & inbox
        for y, x in lneg:
            cand[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = False
        lab, n = ndi.label(cand | mask)
        if n == 0:
            return mask
        ids = np.unique(lab[mask])
        grown = np.isin(lab, ids[ids > 0]) & (cand | mask)
        if self.shrink > 0:
            # and back in where the first threshold overshot into the background
            rim = mask & ~erode_disk(mask, self.shrink)
            grown &= ~(rim & (sign * (g - t_mid) <= 0))
        return fill_holes(grown)

    def _shape_box(self, obj, inbox, lpos, lneg, prior, g=None, sign=1.0):
        bh = inbox.any(1).sum()
        bw = inbox.any(0).sum()
        side = min(bh, bw)
        r_open = int(np.clip(round(0.02 * side), 1, 4))
        o = dilate_disk(erode_disk(obj, r_open), r_open)
        o = o if o.any() else obj
        lab, n = ndi.label(o)
        if n == 0:
            return o
        keep = set()
        for (y, x) in lpos:
            if 0 <= y < o.shape[0] and 0 <= x < o.shape[1] and lab[y, x]:
                keep.add(int(lab[y, x]))
        if prior is not None and prior.any():
            ids, cnt = np.unique(lab[prior & (lab > 0)], return_counts=True)
            keep.update(int(i) for i, c in zip(ids, cnt) if c > 0.2 * cnt.max())
        if not keep:
            # the box names the object: every sizeable component in it (a
            # brain slice may hold both temporal lobes and the cerebellum);
            # the main one is the one that best covers the box centre
            cy, cx = np.nonzero(inbox)
            ym, xm = cy.mean(), cx.mean()
            yy, xx = np.indices(o.shape)
            wgt = np.exp(-(((yy - ym) / (0.35 * bh)) ** 2 + ((xx - xm) / (0.35 * bw)) ** 2))
            sums = ndi.sum(wgt, lab, index=np.arange(1, n + 1))
            areas = ndi.sum(np.ones_like(wgt), lab, index=np.arange(1, n + 1))
            main = int(np.argmax(sums))
            keep.add(main + 1)
            keep.update(int(i) + 1 for i in np.nonzero(areas >= self.keep_fraction * areas[main])[0])
        mask = np.isin(lab, list(keep))
        # reconstruct what the opening shaved off the kept part (edges, not bridges)
        mask = obj & dilate_disk(mask, r_open)
        r_close = int(np.clip(round(self.close_fraction * side), 0, 8))
        if r_close:
            # close sulci / spiculation gaps; pad so the box edge does not erode it
            pad = r_close + 1
            mp = np.pad(mask, pad)
            mask = erode_disk(dilate_disk(mp, r_close), r_close)[pad:-pad, pad:-pad]
        mask = fill_holes(mask)
        mask = cut_negatives(mask, lpos, lneg, None if g is None else sign * g)
        return mask & inbox


# ----------------------------------------------------------------------
def _split_points(prompt: Prompt, H: int, W: int):
    pos, neg = [], []
    if not prompt.points:
        return pos, neg
    pts = np.asarray(prompt.points, dtype=float).reshape(-1, 2)
    labels = np.ones(len(pts), int) if prompt.point_labels is None else np.asarray(prompt.point_labels).ravel()
    if len(labels) != len(pts):
        raise SamlabError(f"got {len(pts)} points but {len(labels)} point labels: give one label (1 object, 0 background) per point")
    if not np.all(np.isfinite(pts)):
        raise SamlabError("a point has non-finite coordinates: give X Y as pixel indices")
    for (x, y), lab in zip(pts, labels):
        if int(lab) < 0:  # SAM-style padding point
            continue
        xi, yi = int(round(x)), int(round(y))
        if not (0 <= xi < W and 0 <= yi < H):
            raise SamlabError(f"point ({x:g}, {y:g}) is outside the image ({W}x{H}): give x in 0..{W - 1} and y in 0..{H - 1}")
        (pos if int(lab) == 1 else neg).append((xi, yi))
    return pos, neg


def _check_box(box, H: int, W: int):
    try:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=float).ravel())
    except (TypeError, ValueError):
        raise SamlabError(f"box {box!r} is not four numbers: give X0 Y0 X1 Y1") from None
    if not np.all(np.isfinite([x0, y0, x1, y1])):
        raise SamlabError(f"box {box!r} has non-finite corners: give X0 Y0 X1 Y1 as pixel indices")
    if x1 < x0 or y1 < y0:
        raise SamlabError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty: X1 must be >= X0 and Y1 >= Y0")
    # corners round to the pixels they name (a drawn box may say 511.3)
    r = [int(round(v)) for v in (x0, y0, x1, y1)]
    if r[0] < 0 or r[1] < 0 or r[2] > W - 1 or r[3] > H - 1:
        raise SamlabError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the image ({W}x{H}): give corners with x in 0..{W - 1}, y in 0..{H - 1}")
    return tuple(r)


def _check_mask_input(mask_input, H: int, W: int) -> np.ndarray:
    m = np.asarray(mask_input)
    m = np.squeeze(m)
    if m.shape != (H, W):
        raise SamlabError(f"mask_input has shape {m.shape} but the slice is {(H, W)}: pass the previous result of the classic engine for a slice of the same size")
    return m > 0


