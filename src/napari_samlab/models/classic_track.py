"""The classic engine's propagation step: one object followed slice by slice.

A 2D box prompt always finds *something*, so box+mask propagation never
stops once the object has ended.  This step instead follows the object with
two models that it learns from the object itself:

* **Appearance.**  Histograms of the object's interior and of a ring of
  local background around it (64 bins of the feature; colour is projected
  onto the object/background discriminant first) give a log-likelihood
  ratio ``L`` per pixel.  Learned on the prompted slice, updated on every
  kept slice as half the prompted slice's model and half the last slice's,
  so a bias field or a changing neighbourhood is followed without drifting
  away from what the user pointed at.  Histograms need no polarity: bright
  and dark objects, CT and MRI, inverted contrast are one case.
* **Shape and position.**  The previous slice's mask, as a saturating
  signed-distance prior ``prior_weight * tanh(sdf / tau)``: pixels where the
  intensity is ambiguous follow the previous outline; strong intensity
  evidence overrules it.  ``tau`` and the reach (how far the object may
  move) are fractions of the object's radius, and they loosen with the
  *observed* slice-to-slice change of the object (1 - IoU of the last two
  masks, and how far the image itself changed around the object): on
  6.5 mm slices an object changes much more than on 1 mm slices, whatever
  the header says.

**Slice spacing.**  Propagation passes ``slice_ratio`` (slice spacing over
pixel size, ``PropagationSettings.spacing``): on thick slices the reach and
``tau`` grow to the distance an outline sloping at 45 degrees moves in one
step (``track_thick`` x (ratio - 1) pixels, at most half the object's radius
beyond the thin-slice reach).  There the previous outline is a weak prior:
a second outline with the prior weighed 1 / ratio (the appearance decides
within the reach, the object may be much larger or smaller) replaces the
tight one when the object stands out more from its band there (mean ``L``
inside minus mean ``L`` 2-4 px outside); the stop rules judge the tight one.
Where that outline runs on to the reach, the object may have moved or grown
past it: the same outline ``WIDE_REACH`` radii further (at most that many
45-degree reaches) is kept when it closes within that, adds a piece of
object past the reach, has an edge of its own and stands out more still.

**Calibrated level.**  Each slice's stats keep the likelihood-ratio level at
which that slice's own mask is reproduced (``_calibrate``); the next step
thresholds ``track_calibrate`` (0.5) of the way to it instead of at 0, so a
partial-volume rim the object owns is not shaved off on every slice.

A new slice's mask is ``L - level + prior > 0``, smoothed, opened (cuts bridges),
kept where it overlaps the previous mask, closed and hole-filled; parts
that run on to the reach limit are leaks and are cut.

**Stopping on evidence.**  The step returns an empty mask (score 0,
``extra["ended"]`` says why) when the object has ended:

* *evidence collapsed*: the mean likelihood ratio inside the new mask fell
  below ``track_evidence`` x the object's own (measured on the prompted
  slice with the same model): what is there looks like the surrounding
  tissue, not like the object;
* *vanished*: less than ``track_min_fraction`` of the previous area is left;
* *no edge of its own*: more than ``track_open`` of a band just outside the
  new mask is object-like (and clearly more than around the object on the
  prompted slice): it has become part of a larger structure.  Not on thick
  slices (``slice_ratio`` > 1) while the contrast between the inside and
  that band (mean ``L`` inside minus mean ``L`` in the band) keeps
  ``track_edge`` (1/3) of the prompted object's: there the band is a
  partial-volume ramp of the object's own sloping edge (kept, flagged
  ``track_weak``); a merged object has no contrast left.

**Objects without an outline of their own.**  Where the prompted object
barely stands apart from its surroundings (``has_outline``: its interior
hardly more likely object than its ring, and the band just outside it
object-like), no cue says where it ends: deep grey structures on T1 run on
into tissue of their own intensity.  Such a run ends (``"depth limit"``) once
it is ``track_depth`` (0.3) of the object's in-plane length from the
prompted slice, in physical distance (``slice_ratio``); the user prompts a
slice further on to go on.

**Unsure slices** are kept but flagged (``extra["flags"]``, which
propagation copies to the slice's record): ``"track_jump"`` (area changed
by more than ``track_flag_area`` x), ``"track_overlap"`` (IoU with the
previous mask below 0.5), ``"track_weak"`` (evidence below twice the stop
level, or a thick slice's blurred edge), ``"track_leak"`` (a leak was cut).

How every parameter was chosen is in ``docs/classic_engine.md`` (measured
with ``benchmarks/eval_propagation.py --suite`` on real, perturbed and
synthetic cases).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from .classic_ops import (best_threshold, crop_box, dist_inside, dist_outside, fill_holes, follow_motion, grow, histogram,
                          keep_overlapping, log_ratio, project_with, shrink)

# the previous outline follows the image motion only where the prompted
# object stands apart from its surroundings (Youden J of inside vs ring):
# below ~1/3 the prompted mask is mostly not the object (a box around two
# ventricle horns: 0.29) and the moved outline tracks a region no stop rule
# can judge; every other suite object is at 0.41 or more (docs/classic_engine.md)
MOTION_MIN_SEP = 1.0 / 3.0

# thick slices: a wide outline may reach this many times the object's radius
# or the 45-degree reach, whichever is less, beyond the reach (3-5 give the
# same masks on all 27 thick suite cases, perturbed ones included; 2.5 and 2
# leave brain tumour 1 at 0.685 and 0.525; without the 45-degree cap a
# large object's crop spans the slice: the 512 x 512 lung took 14 % longer)
# and must add this share of the previous area past the reach (the tumours'
# accepted outlines add 0.24-1.6, a vessel's tip on the 5 mm lung tumour
# 0.02-0.03)
WIDE_REACH = 4.0
WIDE_MIN_GAIN = 0.1

# an object has an outline of its own (``has_outline``) unless both hold on
# the prompted slice; measured on the 47 suite cases: the twelve AAL deep grey
# structures, the ventricle box and brain tumour 2 have evidence 0.28-1.28
# and an object-like band of 0.17-0.60; every other object has evidence
# 1.68 or more, or a band of 0.04 or less.  Both limits lie mid-gap
# (docs/classic_engine.md)
OUTLINE_EVIDENCE = 1.5
OUTLINE_OPEN = 0.1


def _rings(m: np.ndarray, rad: float):
    """The object's interior and a ring of local background around it."""
    rb = int(np.clip(round(0.3 * rad), 3, 12))
    rim = grow(m, 1)
    ring = grow(m, rb + 1) & ~rim
    # the interior sample stays clear of the outline (partial-volume rim, a
    # sliver of neighbour the mask took in): 1 px, up to 4 for large objects
    inner = shrink(m, int(np.clip(round(0.05 * rad), 1, 4)))
    if inner.sum() < 4:
        inner = shrink(m, 1)
    band = grow(m, 4) & ~rim
    return (inner if inner.sum() >= 4 else m), ring, band


def has_outline(anchor: dict) -> bool:
    """Whether the prompted object stood apart from its surroundings.

    Without an outline of its own, the object's interior is barely more
    likely object than its ring (mean log-likelihood ratio below
    ``OUTLINE_EVIDENCE``) *and* more than ``OUTLINE_OPEN`` of the band just
    outside it looks like the object.  Then no intensity cue says where it
    ends (deep grey structures on T1 run on into the brainstem or the
    lentiform nucleus), and the run stops at ``track_depth`` of its length.
    The band's fraction is a count over few pixels on a small object (a
    7 x 8 px tumour has 122), so it counts as below the limit only when it
    is by more than its binomial standard error: where the measurement
    cannot tell, the object is treated as unsure.
    """
    p, n = anchor["open"], max(int(anchor.get("open_n", 0)), 1)
    return anchor["evidence"] >= OUTLINE_EVIDENCE or p + np.sqrt(p * (1.0 - p) / n) <= OUTLINE_OPEN


def _length(m: np.ndarray) -> float:
    """The mask's in-plane length: the major axis of the ellipse with its
    second moments (``skimage.measure.regionprops``' ``axis_major_length``),
    whatever its orientation."""
    yx = np.argwhere(m).astype(np.float64)
    return float(4.0 * np.sqrt(max(np.linalg.eigvalsh(np.cov(yx.T, bias=True))[-1], 0.0)))


def _threshold_stats(g, inner, ring):
    """Youden threshold and polarity (kept for the 2D recipe and scores)."""
    t, sign, sep = best_threshold(g[inner], g[ring])
    v = sign * g[inner].astype(np.float64)
    return dict(t=t, sign=sign, sep=sep, median=float(np.median(v)), upper=float(np.percentile(v, 95)),
                ring=float(np.median(sign * g[ring])))


def object_stats(embedding: dict, mask: np.ndarray, prev: Optional[dict] = None) -> Optional[dict]:
    """What an object looks like on this slice (see the module docstring).

    Parameters
    ----------
    embedding : dict
        ``ClassicModel.encode`` of the slice that ``mask`` belongs to.
    mask : ndarray of bool (H, W)
    prev : dict, optional
        The previous slice's stats: its appearance model is blended in and
        the prompted slice's reference (``anchor``) carried on.

    Returns
    -------
    dict or None
        ``fg``/``bg`` (the histograms the next step uses), ``anchor`` (the
        prompted slice's histograms and evidence), ``evidence`` (mean
        likelihood ratio inside), ``open`` (object-like fraction of a band
        outside), ``w``/``lo``/``hi`` (colour projection), Youden ``t``,
        ``sign``, ``sep``, ``median``, ``upper``, ``ring``, and the area
        history ``area``, ``prev_area``, ``change`` (1 - IoU of the last
        two masks), ``steps``.  None for masks of fewer than 4 pixels.

    Examples
    --------
    >>> from napari_samlab.models.classic import ClassicModel
    >>> yy, xx = np.mgrid[:40, :40]
    >>> m = (yy - 20) ** 2 + (xx - 20) ** 2 <= 64
    >>> st = object_stats(ClassicModel().encode(np.where(m, 200, 30).astype(np.uint8)), m)
    >>> st["evidence"] > 1.0, st["area"] == int(m.sum())
    (True, True)
    """
    feat = embedding["feature"]
    mask = np.asarray(mask, bool)
    area = int(mask.sum())
    if area < 4:
        return None
    rad = float(np.sqrt(area / np.pi))
    (r0, r1, c0, c1), m = crop_box(mask, int(np.clip(round(0.3 * rad), 3, 12)) + 4)
    f = feat[r0:r1, c0:c1]
    inner, ring, band = _rings(m, rad)
    if not ring.any():
        ring = ~m if (~m).any() else m
    w = lo = hi = None
    if prev is not None and prev.get("w") is not None:
        w, lo, hi = prev["w"], prev["lo"], prev["hi"]
    elif f.shape[-1] > 1:
        a, b = f[inner].astype(np.float64), f[ring].astype(np.float64)
        cov = (np.cov(a.T) * len(a) + np.cov(b.T) * len(b)) / max(len(a) + len(b), 1) + 1e-4 * np.eye(f.shape[-1])
        w = np.linalg.solve(cov, a.mean(0) - b.mean(0)).astype(np.float32)
        full = feat @ w
        lo, hi = float(full.min()), float(full.max())
    g = project_with(f, w, lo, hi)
    fg, bg = histogram(g[inner]), histogram(g[ring])
    if prev is not None and prev.get("anchor") is not None:
        anchor = prev["anchor"]
        # half the prompted slice's model, half this slice's: follows slow
        # change (bias field, new neighbours) without drifting off the object
        fg = 0.5 * anchor["fg"] + 0.5 * fg
        bg = 0.5 * anchor["bg"] + 0.5 * bg
    L = log_ratio(g, fg, bg)
    evidence = float(L[m].mean())
    open_frac = _open(L, band)
    edge = evidence - float(L[band].mean()) if band.any() else evidence
    bias = _calibrate(L, m, ring)
    st = _threshold_stats(g, inner, ring)
    if prev is None or prev.get("anchor") is None:
        anchor = dict(fg=fg, bg=bg, evidence=evidence, open=open_frac, open_n=int(band.sum()), area=area, edge=edge,
                      sep=st["sep"], length=_length(m))
    change, prev_area, steps = 0.0, area, 0
    if prev is not None:
        prev_area, steps = int(prev.get("area", area)), int(prev.get("steps", 0)) + 1
        change = float(prev.get("_change", 0.0))
    return dict(w=w, lo=lo, hi=hi, fg=fg, bg=bg, anchor=anchor, evidence=evidence, open=open_frac, bias=bias,
                area=area, prev_area=prev_area, change=change, steps=steps, image=feat[..., 0], **st)


def _calibrate(L: np.ndarray, m: np.ndarray, ring: np.ndarray, smooth: float = 0.5) -> float:
    """The likelihood-ratio level at which this slice's own mask is reproduced.

    Where object and surroundings differ little (deep grey matter, a soft
    tumour edge), the partial-volume rim has L < 0 although the mask holds
    it; thresholding the next slice at 0 then loses that rim on every step
    and the object shrinks away (Colin27 hippocampus: 15 % of the area per
    slice).  The level that keeps as many pixels of mask + ring above it as
    the mask has is where this object's own outline lies; the next step
    thresholds there instead of at 0.  Clipped to +-1: a clear edge gives
    about 0 and only ambiguous ones move it.
    """
    zone = m | ring
    n = int(zone.sum())
    if n <= int(m.sum()) or int(m.sum()) < 4:
        return 0.0
    Ls = ndi.gaussian_filter(L, smooth)[zone]
    level = float(np.quantile(Ls, 1.0 - m.sum() / n))
    return float(np.clip(level, -1.0, 1.0))


def _band(mask: np.ndarray):
    """The band 2-4 px outside ``mask`` that the stop rules and :func:`_contrast` read."""
    return grow(mask, 4) & ~grow(mask, 1)


def _open(L: np.ndarray, band: np.ndarray) -> float:
    """Object-like fraction of ``band`` (``L`` > 0); 0 for an empty band."""
    return float((L[band] > 0).mean()) if band.any() else 0.0


def _merged(params: dict, anchor: dict, open_frac: float) -> bool:
    """More than ``track_open`` of the band looks like the object, and clearly
    more than around the prompted object: no edge of its own."""
    return open_frac > params["track_open"] and open_frac > anchor["open"] + 0.25


def _contrast(L: np.ndarray, mask: np.ndarray, band: Optional[np.ndarray] = None) -> float:
    """Mean ``L`` inside ``mask`` minus mean ``L`` in a band 2-4 px outside it
    (``band``, when the caller has it already)."""
    if not mask.any():
        return -np.inf
    if band is None:
        band = _band(mask)
    return float(L[mask].mean()) - (float(L[band].mean()) if band.any() else 0.0)


def _maps(params: dict, embedding: dict, P: np.ndarray, st: dict, pad: int):
    """The step's maps on a crop ``pad`` px around ``P``: the crop box, the
    previous mask ``p``, features ``f``, projection ``g``, likelihood ratio
    ``L`` (smoothed), ``Lc`` (thresholded part of the way to where the last
    slice's own outline lay) and the signed distance ``sdf`` to ``p``."""
    box, p = crop_box(P, pad)
    f = embedding["feature"][box[0]:box[1], box[2]:box[3]]
    g = project_with(f, st.get("w"), st.get("lo"), st.get("hi"))
    L = ndi.gaussian_filter(log_ratio(g, st["fg"], st["bg"]), params["track_smooth"])
    Lc = L - params["track_calibrate"] * st.get("bias", 0.0)
    return box, p, f, g, L, Lc, dist_inside(p) - dist_outside(p)


def _cut(post, p, dist, r_reach, side):
    """The new mask where ``post`` > 0 (module docstring): opened, the parts
    overlapping the previous mask ``p``, leaks to the reach limit cut, closed
    and hole-filled.  Returns ``(mask, leaked)``."""
    r_grow = max(2, int(round(0.5 * r_reach)))
    z_reach = dist <= r_reach
    obj = (post > 0) & z_reach
    r_open = int(np.clip(round(0.03 * side), 1, 4))
    o = grow(shrink(obj, r_open), r_open)
    o = o if (o & p).any() else obj
    mask = keep_overlapping(o, p, 0.15)
    mask = obj & grow(mask, r_open)
    leaked = False
    # leaks: parts beyond the growth zone that run on to the reach limit
    out = mask & (dist > r_grow)
    if out.any():
        lab, n = ndi.label(out)
        at_limit = np.unique(lab[out & (dist > r_reach - 1.5)])
        at_limit = at_limit[at_limit > 0]
        if at_limit.size:
            mask &= ~np.isin(lab, at_limit)
            mask = keep_overlapping(mask, p, 0.15)
            leaked = True
    r_close = int(np.clip(round(0.03 * side), 1, 8))
    if mask.any():
        pad = r_close + 1
        closed = shrink(grow(np.pad(mask, pad), r_close), r_close)
        mask = closed[pad:-pad, pad:-pad] & z_reach
    return fill_holes(mask), leaked


def propagate_step(params: dict, embedding: dict, P: np.ndarray, st: dict, slice_ratio: float = 1.0,
                   outward: bool = True):
    """The object of the previous mask ``P`` on this slice (module docstring).

    Returns ``(mask, info)``: ``mask`` bool (H, W), all False when the
    object has ended; ``info`` has ``ended`` (None or why), ``flags``,
    ``evidence``, ``open``, ``area``, ``change``, and ``own_change`` (True)
    where a thick slice's wide outline was kept: its low overlap with the
    previous mask is the object's own change, which propagation's generic
    IoU and area rules then leave to this step's judgement.
    """
    H, W = P.shape
    area0 = int(P.sum())
    anchor = st["anchor"]
    slice_ratio = float(slice_ratio)
    # (between two prompted slices the user has said the object goes on)
    if (outward and params["track_depth"] > 0 and not has_outline(anchor)
            and int(st.get("steps", 0)) * slice_ratio >= params["track_depth"] * anchor.get("length", np.inf)):
        return None, dict(area=0, flags=set(), ended="depth limit")
    rad = float(np.sqrt(area0 / np.pi))
    # how much the object changes between slices, as seen so far (the
    # prompted slice has no history: the thin-slice default of 0.2)
    change = float(st.get("change", 0.0)) if st.get("steps", 0) > 0 else params["track_change0"]
    loose = 1.0 + 2.0 * float(np.clip(change, 0.0, 0.6))
    tau = max(1.5, params["track_tau"] * rad * loose)
    r_reach = max(4, int(round(params["track_reach"] * rad * loose)) + 2)
    # one slice step is ``slice_ratio`` pixels: an outline sloping at up to
    # 45 degrees moves that far; a thick-slice step may reach it (up to
    # half the object's radius beyond the thin-slice reach)
    thick = max(0.0, slice_ratio - 1.0) * params["track_thick"]
    if thick > 0:
        r_reach = max(r_reach, int(round(min(thick, r_reach + 0.5 * rad))))
        tau = max(tau, min(0.5 * thick, tau + 0.25 * rad))
    (r0, r1, c0, c1), p, f, g, L, Lc, sdf = _maps(params, embedding, P, st, r_reach + 6)
    before = st.get("image")
    if (0 < slice_ratio <= params["track_motion"] and before is not None and before.shape == (H, W)
            and anchor.get("sep", 1.0) >= MOTION_MIN_SEP):
        # thin slices: the previous outline moves with the anatomy around it
        moved = follow_motion(before[r0:r1, c0:c1], f[..., 0], sdf)
        if int((moved > 0).sum()) >= 4:
            sdf, p = moved, moved > 0
    dist = np.maximum(-sdf, 0.0)
    side = min(np.ptp(np.nonzero(p)[0]), np.ptp(np.nonzero(p)[1])) + 1
    # inside, strong evidence may overrule the outline (the object shrinks
    # or ends); outside, growth beyond ~tau needs more than any evidence can
    # give (``track_prior_out`` > the likelihood cap): a touching neighbour of
    # the same intensity is not followed faster than the object's own change
    prior = np.tanh(sdf / tau) * np.where(sdf > 0, params["track_prior"], params["track_prior_out"])
    mask, leaked = _cut(Lc + prior, p, dist, r_reach, side)
    flags = {"track_leak"} if leaked else set()
    area = int(mask.sum())
    info = dict(area=area, flags=flags)
    if area < max(4, params["track_min_fraction"] * area0):
        return None, dict(info, ended="vanished")
    evidence = float(L[mask].mean())
    band = _band(mask)
    open_frac = _open(L, band)
    edge = _contrast(L, mask, band)
    info.update(evidence=evidence, open=open_frac, edge=edge)
    ref = max(anchor["evidence"], 0.25)
    if evidence < params["track_evidence"] * ref:
        return None, dict(info, ended="evidence collapsed")
    # judged by the prompted slice's model alone, the tissue under the mask
    # looks more like what surrounded the object there than like the object
    # (mean log-likelihood ratio below 0): the run has slid into another
    # tissue (a ventricle, the scalp) while the blended model followed it
    La = ndi.gaussian_filter(log_ratio(g, anchor["fg"], anchor["bg"]), params["track_smooth"])
    if float(La[mask].mean()) < 0.0:
        return None, dict(info, ended="unlike the prompted object")
    if _merged(params, anchor, open_frac):
        # a thick slice averages the object with what lies above and below
        # its outline: the edge is a partial-volume ramp and the band just
        # outside looks object-like although the object is not merged.  It
        # has an edge of its own while the contrast between inside and band
        # keeps ``track_edge`` of the prompted object's; a merged object has
        # none left (about 0)
        blurred = thick > 0 and edge >= params["track_edge"] * max(anchor.get("edge", 0.0), 0.25)
        if not blurred:
            return None, dict(info, ended="no edge of its own")
        flags.add("track_weak")  # kept, but unsure: the user should look
    if thick > 0:
        # thick slices: the previous outline is a weak prior.  An outline
        # moves ~``slice_ratio`` times farther per step than on 1 px slices
        # and the object may be much larger or smaller on the next slice, so
        # the prior weighs 1 / ``slice_ratio`` of the thin-slice one and the
        # appearance decides within the reach.  That outline is kept only
        # where the object stands out more from its surroundings than at the
        # tight one (inside-minus-band contrast): the object's edge, not a
        # leak into tissue that looks alike nor a bright core.  The stop
        # rules above judged the tight outline: never keeps an ended object.
        w_in, w_out = params["track_prior"] / slice_ratio, params["track_prior_out"] / slice_ratio
        # (a leak cut from this outline is not flagged: the weak prior runs
        # to the reach limit by design, and the tight outline had no leak)
        loose, ran_on = _cut(Lc + np.tanh(sdf / tau) * np.where(sdf > 0, w_in, w_out), p, dist, r_reach, side)
        if loose.sum() >= 4 and _contrast(L, loose) > edge:
            mask, area = loose, int(loose.sum())
            info["area"] = area
        # where that outline ran on to the reach limit, the object may have
        # moved or grown past it (brain tumour 1: the true IoU of two 6.5 mm
        # slices is 0.14): the same outline ``WIDE_REACH`` radii (at most that
        # many 45-degree reaches) further, on a crop of its own, kept only
        # when it closes within that reach (no part runs on to the limit),
        # has an edge of its own (the stop rule's band test) and stands out
        # more than the outline so far
        if ran_on:
            r_wide = int(round(r_reach + WIDE_REACH * min(rad, thick)))
            box_w, p_w, _, _, L_w, Lc_w, sdf_w = _maps(params, embedding, P, st, r_wide + 6)
            dist_w = np.maximum(-sdf_w, 0.0)
            weak_w = Lc_w + np.tanh(sdf_w / tau) * np.where(sdf_w > 0, w_in, w_out)
            wide, leaked_w = _cut(weak_w, p_w, dist_w, r_wide, side)
            if not leaked_w and int((wide & (dist_w > r_reach)).sum()) >= WIDE_MIN_GAIN * area0:
                now = np.zeros_like(wide)
                now[r0 - box_w[0]:r1 - box_w[0], c0 - box_w[2]:c1 - box_w[2]] = mask
                band_w = _band(wide)
                if not _merged(params, anchor, _open(L_w, band_w)) and _contrast(L_w, wide, band_w) > _contrast(L_w, now):
                    (r0, r1, c0, c1), p, mask, area = box_w, p_w, wide, int(wide.sum())
                    info.update(area=area, own_change=True)
    inter = int((mask & p).sum())
    iou = inter / max(int((mask | p).sum()), 1)
    info["change"] = 1.0 - iou
    ratio = area / max(area0, 1)
    if max(ratio, 1 / max(ratio, 1e-9)) > params["track_flag_area"]:
        flags.add("track_jump")
    if iou < 0.5:
        flags.add("track_overlap")
    if evidence < 2 * params["track_evidence"] * ref:
        flags.add("track_weak")
    full = np.zeros((H, W), bool)
    full[r0:r1, c0:c1] = mask
    return full, info
