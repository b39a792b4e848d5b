"""The stepping engine shared by propagate_volume and repropagate: runs, one slice per step, stop rules and flags.

A *run* goes from an anchor slice outward in one direction; each step
prompts the next slice from the previous result (see :mod:`.strategy`),
checks the stop rules of :class:`~.settings.PropagationSettings` and
records the slice (:class:`~.quality.SliceRecord`).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ..base.prompts import Prompt
from ..errors import Cancelled
from ..models.base import Prediction
from .plan import RunSpec
from .quality import SliceRecord, StopInfo, bbox, deepest_points, iou, slice_flags
from .strategy import OWN, mask_prompt, parse_strategy

#: stop reasons that are rules (the run ended on a bad slice, not a limit)
RULES = ("empty", "low_iou", "area_jump", "low_score", "intensity")


def _contained(mask: np.ndarray, ref: np.ndarray, tol: int = 2, fraction: float = 0.9) -> bool:
    """True when ``fraction`` of ``mask`` lies within ``tol`` pixels of ``ref``."""
    from scipy import ndimage as ndi

    box = bbox(mask | ref, tol)
    if box is None:
        return True  # both empty
    # only the pixels within ``tol`` of either mask matter: dilate that crop
    x0, y0, x1, y1 = box
    grown = ndi.binary_dilation(ref[y0:y1 + 1, x0:x1 + 1], iterations=tol)
    return float(np.logical_and(mask[y0:y1 + 1, x0:x1 + 1], grown).sum()) >= fraction * float(mask.sum())


def _takes(fn, name: str) -> bool:
    """Whether ``fn`` accepts keyword ``name`` (a plug-in family's step may predate it)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class RunState:
    """Mutable state of one run while it advances."""

    def __init__(self, spec: RunSpec, mask: np.ndarray, logits, fallback_box, fallback_points):
        self.spec = spec
        self.cur = spec.start
        self.prev = mask  # the last kept mask (as written, locked voxels included)
        self.ref = mask  # the last non-empty kept mask (IoU / area reference)
        self.logits = logits
        self.fallback_box = fallback_box
        self.fallback_points = fallback_points
        self.ref_mean = None  # mean windowed intensity inside ``ref``
        self.stats = None  # the model's own description of ``ref`` ("track" strategy)
        self.max_area = int(mask.sum()) if mask is not None else 0
        self.empty_run = []  # consecutive empty slices kept so far
        self.last_kept = spec.start
        self.active = True
        self.ahead = None  # (z, future) of a track step started beside another run's (Engine.run_all)


class Engine:
    """Shared machinery of propagate_volume and repropagate."""

    def __init__(self, predictor, volume, settings, window, strategy, out, locked, old, cancel, progress):
        self.p = predictor
        self.model = predictor.model
        self.volume = volume
        self.s = settings
        self.win = window
        self.parts = parse_strategy(strategy, self.model)
        self.out = out
        self.base = out.copy()  # what a slice returns to when its result is dropped
        self.locked = locked
        self.old = old
        self.cancel = cancel
        self.progress = progress
        self.records: Dict[int, SliceRecord] = {}
        self.stops = []
        self.visited = set()
        self.done = 0
        self.total = 0
        self.cancelled = False
        self.shape2d = volume.shape[1:3]
        self._range = None
        self.track = bool(self.parts & set(OWN))
        self.anchor_stats = {}
        self.slice_ratio = settings.slice_ratio()
        self._step_takes_ratio = self.track and _takes(self.model.propagate_step, "slice_ratio")
        # the track path never prompts with the previous logits: a step that
        # can skip them (two distance transforms a slice for classic) does
        self._step_takes_logits = self.track and _takes(self.model.propagate_step, "logits")
        # a step that limits how far it follows an unsure object is told which
        # runs go between two anchors (the user has said the object goes on)
        self._step_takes_outward = self.track and _takes(self.model.propagate_step, "outward")

    # -- helpers ------------------------------------------------------
    def write(self, z: int, mask: np.ndarray) -> np.ndarray:
        if self.locked is not None and self.locked[z].any():
            mask = np.where(self.locked[z], self.old[z], mask)
        self.out[z] = mask
        return self.out[z]

    def segment(self, z: int, prompt: Prompt) -> Prediction:
        self.p.set_image(self.volume[z], window=self.win)
        return self.p.predict_prompt(prompt)

    def tick(self, z):
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done), z)

    def check_cancel(self) -> bool:
        if not self.cancelled and self.cancel is not None and self.cancel():
            self.cancelled = True
        return self.cancelled

    def mean_intensity(self, z: int, mask: np.ndarray) -> Optional[float]:
        """Mean windowed intensity inside ``mask``, about 0..1 (None if empty)."""
        if not mask.any():
            return None
        vals = self.volume[z][mask].astype(np.float64)
        if vals.ndim > 1:  # RGB stacks: mean over channels
            vals = vals.mean(-1)
        lo, hi = self.intensity_range()
        vals = np.clip(np.nan_to_num(vals, nan=lo), lo, hi)  # NaN (no data) as the window does: its bottom
        return float((vals.mean() - lo) / (hi - lo)) if hi > lo else 0.0

    def intensity_range(self) -> tuple:
        # the window the model sees; without one, robust limits of the volume
        if self._range is None:
            if self.win is not None:
                self._range = (float(self.win.lo), float(self.win.hi))
            else:
                sample = np.asarray(self.volume[:: max(1, self.volume.shape[0] // 16)], np.float64)
                self._range = tuple(float(v) for v in np.nanpercentile(sample, [1, 99]))
        return self._range

    def _clean(self, mask) -> np.ndarray:
        m = np.asarray(mask, bool)
        if self.s.min_area and int(m.sum()) < self.s.min_area:
            return np.zeros_like(m)
        return m

    # -- anchors ------------------------------------------------------
    def anchor_state(self, z: int, anchor, write: bool):
        """Segment (or take) an anchor slice; returns its run-start state."""
        if isinstance(anchor, Prompt):
            pred = self.segment(z, anchor)
            mask, score, logits = self._clean(pred.mask), float(pred.score), pred.low_res_logits
            self.anchor_stats[z] = (pred.extra or {}).get("stats")
            fb_box = tuple(int(round(v)) for v in anchor.box) if anchor.box is not None else None
            pos = [tuple(pt) for pt, lab in zip(anchor.points or [], anchor.point_labels or [1] * len(anchor.points or []))
                   if int(lab) == 1]
            fb_pts = pos or None
        else:
            mask, score, logits = np.asarray(anchor, bool), 1.0, None
            fb_box, fb_pts = None, None
        if write:
            mask = self.write(z, mask)
            self.records[z] = SliceRecord(z, score, None, int(mask.sum()), None, "anchor", set(), z)
            self.visited.add(z)
            self.tick(z)
        else:
            mask = self.out[z]
        if logits is None:
            logits = mask_prompt(self.model, mask)
        if fb_box is None:
            fb_box = bbox(mask, self.s.box_margin, self.shape2d)
        else:
            x0, y0, x1, y1 = fb_box
            H, W = self.shape2d
            fb_box = (max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1))
        if fb_pts is None:
            fb_pts = deepest_points(mask, self.s.n_points) or None
        return mask, logits, fb_box, fb_pts

    # -- prompting -----------------------------------------------------
    def next_prompt(self, run: RunState) -> Optional[Prompt]:
        prev = run.prev
        have = prev is not None and prev.any()
        box = pts = mask_in = None
        if have:
            if "box" in self.parts:
                box = bbox(prev, self.s.box_margin, self.shape2d)
            if "points" in self.parts:
                pts = deepest_points(prev, self.s.n_points)
            if "mask" in self.parts and run.logits is not None:
                mask_in = run.logits
            if box is None and not pts:
                pts = deepest_points(prev, 1)
        else:
            # MedSAM's fallback: an empty previous slice is prompted with the anchor's own prompt
            if "box" in self.parts or not run.fallback_points:
                box = run.fallback_box
            if "points" in self.parts or box is None:
                pts = run.fallback_points
            if box is not None and not getattr(self.model, "supports_boxes", True):
                box = None
            if pts and not getattr(self.model, "supports_points", True):
                pts = None
        if box is None and not pts:
            return None
        return Prompt(box=box, points=pts or None, point_labels=[1] * len(pts) if pts else None,
                      mask_input=mask_in)

    # -- one step --------------------------------------------------------
    def stop(self, run: RunState, reason: str, z=None, value=None, detail=None):
        run.active = False
        if reason in RULES or reason == "cancelled":
            # trailing empty slices are where the object ended, not slices to keep
            for ze in run.empty_run:
                self.records.pop(ze, None)
                self.visited.discard(ze)
                self.out[ze] = self.base[ze]
            if run.empty_run:
                run.last_kept = run.empty_run[0] - run.spec.step
            run.empty_run = []
        rec = self.records.get(run.last_kept)
        if rec is not None and reason != "cancelled":
            if reason in RULES:
                rec.flags.add("stopped_here")
            elif reason in ("volume_end", "z_limit") and rec.area > 0:
                rec.flags.add("edge")
        self.stops.append(StopInfo(run.spec.direction, run.spec.start, reason, z, value, run.last_kept, detail))

    def step(self, run: RunState):
        s = self.s
        spec = run.spec
        z = run.cur + spec.step
        if (spec.step < 0 and z < spec.bound) or (spec.step > 0 and z > spec.bound):
            return self.stop(run, spec.limit_reason, z if 0 <= z < self.volume.shape[0] else None)
        if z in s.stop_slices:
            return self.stop(run, "stop_slice", z)
        if z in self.visited:
            # met the run from the other end: check that the two agree
            if run.prev is not None and run.prev.any() and self.out[z].any():
                i = iou(run.prev, self.out[z])
                if i < s.flag_min_iou:
                    for zz in (run.cur, z):
                        if zz in self.records:
                            self.records[zz].flags.add("seam")
            return self.stop(run, "anchor", z)
        if self.track:
            # the model's own step: the last non-empty mask and what it looked like
            prior = self.track_prior(run)
            if prior is None:
                return self.stop(run, "empty", z, 0.0)
            ahead, run.ahead = run.ahead, None
            if ahead is not None and ahead[0] == z:
                pred = ahead[1].result()  # computed beside the other run's step (run_all)
            else:
                self.p.set_image(self.volume[z], window=self.win)
                pred = self.track_step(self.p.embedding, prior, run.stats, spec.kind == "outward")
        else:
            prompt = self.next_prompt(run)
            if prompt is None:
                return self.stop(run, "empty", z, 0.0)
            pred = self.segment(z, prompt)
        mask = self._clean(pred.mask)
        score = float(pred.score)
        area = int(mask.sum())
        self.tick(z)
        if area == 0:
            if len(run.empty_run) + 1 >= s.max_empty:
                return self.stop(run, "empty", z, float(len(run.empty_run) + 1), (pred.extra or {}).get("ended"))
            written = self.write(z, mask)
            self.visited.add(z)
            self.records[z] = SliceRecord(z, score, 0.0, int(written.sum()), 0.0, "propagated", {"empty"}, spec.start)
            run.empty_run.append(z)
            run.prev, run.logits, run.cur, run.last_kept = written, None, z, z
            return None
        ref = run.ref
        ref_area = int(ref.sum()) if ref is not None else 0
        i = iou(mask, ref) if ref_area else None
        ratio = area / ref_area if ref_area else None
        if s.stop_min_score > 0 and score < s.stop_min_score:
            return self.stop(run, "low_score", z, score)
        # an object that shrinks inside its previous outline is ending, not
        # jumping: the IoU and shrink rules only judge masks with new area
        shrinking = ratio is not None and ratio < 1.0 and _contained(mask, ref)
        # a model that measured the change as the object's own (the classic
        # engine's wide outline on thick slices) is not judged by these rules
        own = shrinking or bool((pred.extra or {}).get("own_change"))
        if i is not None and i < s.stop_min_iou and not own:
            return self.stop(run, "low_iou", z, i)
        if ratio is not None and max(ratio, 1.0 / ratio) > s.stop_area_factor and not own:
            return self.stop(run, "area_jump", z, ratio)
        if s.stop_growth_factor > 0 and run.max_area and area > s.stop_growth_factor * run.max_area:
            return self.stop(run, "area_jump", z, area / run.max_area)
        mean = self.mean_intensity(z, mask)
        change = abs(mean - run.ref_mean) if run.ref_mean is not None else None
        if s.stop_intensity_change > 0 and change is not None and change > s.stop_intensity_change:
            return self.stop(run, "intensity", z, change)
        flags = slice_flags(s, score, i, ratio)
        if s.flag_intensity_change > 0 and change is not None and change > s.flag_intensity_change:
            flags.add("intensity")
        # the model's own doubts about this slice (classic "track": leak cut, weak evidence...)
        flags |= set((pred.extra or {}).get("flags") or ())
        written = self.write(z, mask)
        self.visited.add(z)
        self.records[z] = SliceRecord(z, score, i, int(written.sum()), ratio, "propagated", flags, spec.start, mean)
        run.empty_run = []
        run.ref_mean = mean
        run.max_area = max(run.max_area, int(written.sum()))
        run.prev = run.ref = written
        run.stats = (pred.extra or {}).get("stats") if np.array_equal(written, mask) else None
        # (only next_prompt reads them, and the track path does not prompt)
        run.logits = (pred.low_res_logits if pred.low_res_logits is not None or self.track
                      else mask_prompt(self.model, written))
        run.cur = run.last_kept = z
        return None

    # -- the model's own step ("track") ---------------------------------
    @staticmethod
    def track_prior(run: RunState) -> Optional[np.ndarray]:
        """The mask the next track step follows: the last non-empty kept one."""
        prior = run.prev if run.prev is not None and run.prev.any() else run.ref
        return prior if prior is not None and prior.any() else None

    def track_step(self, embedding: dict, prior: np.ndarray, stats, outward: bool = True) -> Prediction:
        extra = {"slice_ratio": self.slice_ratio} if self._step_takes_ratio else {}
        if self._step_takes_logits:
            extra["logits"] = False
        if self._step_takes_outward:
            extra["outward"] = outward
        return self.model.propagate_step(embedding, prior, stats, **extra)

    def _steps_ahead(self, pool, runs) -> None:
        """Start every active run's next track step at once (one per thread).

        Each step reads only its own run's state, which the other runs of
        the round leave alone, so its result is what :meth:`step` would
        compute; a step the round's bookkeeping no longer takes (the other
        run got there first, a stop slice) is dropped.  Each thread also
        encodes its slice (:meth:`SlicePredictor.embedding_for`, the same
        cached embedding :meth:`~SlicePredictor.set_image` gives).
        """
        s = self.s
        todo = []
        for r in runs:
            z = r.cur + r.spec.step
            prior = self.track_prior(r) if r.active else None
            if (prior is None or (r.spec.step < 0 and z < r.spec.bound) or (r.spec.step > 0 and z > r.spec.bound)
                    or z in s.stop_slices or z in self.visited or any(z == t[1] for t in todo)):
                continue  # (two runs meeting on one slice: the first takes it, the second stops there)
            todo.append((r, z, prior))
        if len(todo) < 2:
            return  # nothing to overlap: step() computes it as usual
        for r, z, prior in todo:
            r.ahead = (z, pool.submit(self._encode_and_step, z, prior, r.stats, r.spec.kind == "outward"))

    def _encode_and_step(self, z: int, prior: np.ndarray, stats, outward: bool = True) -> Prediction:
        emb, _, _ = self.p.embedding_for(self.volume[z], window=self.win)
        return self.track_step(emb, prior, stats, outward)

    def _pool(self, runs):
        import os
        from concurrent.futures import ThreadPoolExecutor

        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            cpus = os.cpu_count() or 1
        if not (self.track and getattr(self.model, "parallel_steps", False)) or len(runs) < 2 or cpus < 2:
            return None
        return ThreadPoolExecutor(max_workers=min(len(runs), cpus), thread_name_prefix="samlab-step")

    def run_all(self, runs):
        pool = self._pool(runs)
        try:
            self._run_rounds(runs, pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            for r in runs:
                r.ahead = None

    def _run_rounds(self, runs, pool):
        while any(r.active for r in runs):
            if pool is not None and not self.check_cancel():
                try:
                    self._steps_ahead(pool, runs)
                except Cancelled:  # stopped mid-encode: the loop below stops the runs
                    self.cancelled = True
            for r in runs:
                if not r.active:
                    continue
                if not self.check_cancel():
                    try:
                        self.step(r)
                        continue
                    except Cancelled:  # stopped mid-encode: set_image failed before this slice left any state
                        self.cancelled = True
                for rr in runs:
                    if rr.active:
                        self.stop(rr, "cancelled")
                if self.records.get(r.last_kept) is not None:
                    self.records[r.last_kept].flags.add("cancelled")
                return
