"""Propagation runs the up and down runs' classic steps at once, with the same result.

``ClassicModel.parallel_steps`` lets the engine compute the active runs'
next track steps in threads (SciPy releases the GIL); the bookkeeping stays
in order, so masks, records, flags and stops are those of one step at a
time, also where runs meet between two anchors, at a stop slice and when
the user cancels.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_samlab.models.base import Prompt
from napari_samlab.models.classic import ClassicModel
from napari_samlab.predict.predictor import SlicePredictor
from napari_samlab.propagate import PropagationSettings, propagate_volume
from napari_samlab.propagate.quality import bbox


class OneStepAtATime(ClassicModel):
    parallel_steps = False


class Recording(ClassicModel):
    """The classic engine, noting which thread ran each step."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.threads = []

    def propagate_step(self, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        return super().propagate_step(*args, **kwargs)


@pytest.fixture
def two_cores(monkeypatch):
    # the engine overlaps steps only with 2+ CPUs; CI machines may have one
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)


def _volume():
    """A textured blob that drifts and changes size over 40 slices."""
    rng = np.random.default_rng(5)
    shape = (40, 72, 72)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    cy, cx = 36 + 6 * np.sin(zz / 9), 34 + 0.2 * zz
    r = 14 - 7 * np.abs(zz - 20) / 20
    truth = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    truth[:3] = truth[-3:] = False
    tissue = 0.45 + 0.05 * ndi.gaussian_filter(rng.standard_normal(shape), (0.5, 2, 2)) / 0.2
    vol = np.where(truth, 0.8, tissue) + 0.03 * rng.standard_normal(shape)
    return (np.clip(vol, 0, 1) * 1000).astype(np.uint16), truth


def _summary(res):
    recs = [(r.z, r.score, r.area, r.iou_prev, r.area_ratio, sorted(r.flags), r.source, r.anchor)
            for r in sorted(res.records.values(), key=lambda r: r.z)]
    return res.mask.copy(), recs, [tuple(vars(s).items()) for s in res.stops], res.cancelled, res.encoder_calls


def _run(model, anchors, **kw):
    return propagate_volume(SlicePredictor(model), _volume()[0], anchors, modality="MR", **kw)


def _anchors(zs):
    _, truth = _volume()
    return {z: Prompt(box=bbox(truth[z])) for z in zs}


@pytest.mark.parametrize("zs, settings", [
    ((20,), None),
    ((12, 27), None),  # four runs: two meet between the anchors
    ((12, 28), None),  # ... on one slice (20), which only the first takes
    ((20,), PropagationSettings(stop_slices={16})),  # one run ends at a stop slice, the other goes on
])
def test_same_result_as_one_step_at_a_time(two_cores, zs, settings):
    kw = {} if settings is None else {"settings": settings}
    model = Recording()
    par = _run(model, _anchors(zs), **kw)
    one = _run(OneStepAtATime(), _anchors(zs), **kw)
    a, b = _summary(par), _summary(one)
    assert np.array_equal(a[0], b[0])
    assert a[1:] == b[1:]
    assert len(par.records) >= 12
    # the steps really ran beside each other, off the calling thread
    assert sum(name.startswith("samlab-step") for name in model.threads) >= 6


def test_one_cpu_or_a_family_without_it_steps_one_at_a_time(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    model = Recording()
    _run(model, _anchors((20,)))
    assert model.threads and not any(name.startswith("samlab-step") for name in model.threads)


def test_cancel_while_steps_run_at_once(two_cores):
    def cancel_after(n):
        done = [0]

        def progress(d, total, z):
            done[0] = d

        return dict(cancel=lambda: done[0] >= n, progress=progress)

    par = _run(Recording(), _anchors((20,)), **cancel_after(9))
    one = _run(OneStepAtATime(), _anchors((20,)), **cancel_after(9))
    assert par.cancelled and one.cancelled
    a, b = _summary(par), _summary(one)
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    assert any("cancelled" in r.flags for r in par.records.values())
