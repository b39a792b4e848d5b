"""MedSAM2 / SAM 2 through the generic propagation API (propagate_volume, repropagate, Session).

The memory families must give through ``propagate_volume`` exactly what
MedSAM2's pipeline gives through the CLI (``segment_with_memory``, which
``tests/test_medsam2.py`` compares with MedSAM2's own inference), plus
records, stop reasons, limits, locks, cancel, and corrections that re-track
from the corrected slice with the memory.  Tiny random-weight SAM 2.1 nets
from ``test_medsam2``'s helpers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_medsam2 import BOX, KEY, blob_volume, run_cli, test_archs, write_checkpoint  # noqa: E402,F401

from napari_samlab.models.base import Prompt  # noqa: E402
from napari_samlab.predict.predictor import SlicePredictor  # noqa: E402
from napari_samlab.propagate import PropagationSettings, propagate_volume, repropagate  # noqa: E402
from napari_samlab.propagate.memory import segment_with_memory  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("memory") / "MedSAM2_test.pt")


@pytest.fixture(scope="module")
def model(ckpt):
    """One engine for the module (loading is the slow part); the tests do not change it."""
    from napari_samlab.models import medsam2 as m2
    from napari_samlab.models.registry import load_model
    from test_medsam2 import TEST_ARCH

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(m2.ARCHITECTURES, "test", TEST_ARCH)
        return load_model(str(ckpt), family="medsam2")


@pytest.fixture(scope="module")
def ref(model):
    """MedSAM2's pipeline as the CLI and the API run it (``segment_with_memory``) on the blob volume."""
    return segment_with_memory(model, blob_volume(), KEY, Prompt(box=BOX), window="none")


def _propagate(model, vol, **kw):
    return propagate_volume(SlicePredictor(model), vol, {KEY: Prompt(box=BOX)}, window="none", **kw)


def test_propagate_volume_equals_the_medsam2_pipeline(model, ref, tmp_path, capsys, ckpt):
    vol = blob_volume()
    calls = []
    res = _propagate(model, vol, progress=lambda done, total, z: calls.append((done, total, z)))
    assert np.array_equal(res.mask, ref)
    # and the CLI (MedSAM2's recipe, checked against upstream in test_medsam2) on the same file
    img = tmp_path / "blob.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(img))
    code, err = run_cli(capsys, "segment", img, "-o", tmp_path / "m.nii.gz", "--model", "medsam2", "--checkpoint", ckpt,
                        "--slice", KEY, "--box", *BOX, "--propagate", "--window", "none")
    assert code == 0, err
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.nii.gz"))) > 0, res.mask)
    held = [int(z) for z in np.flatnonzero(res.mask.any(axis=(1, 2)))]
    assert len(held) >= 4 and sorted(res.records) == held
    assert res.strategy == "memory" and res.records[KEY].source == "anchor" and res.records[KEY].iou_prev is None
    for z in held:
        r = res.records[z]
        assert 0.0 <= r.score <= 1.0 and r.area == int(res.mask[z].sum())
        if z != KEY:
            assert r.source == "propagated" and r.iou_prev is not None
    # per-slice progress over both passes; every frame encoded once (the key slice is shared)
    assert [c[0] for c in calls] == list(range(1, len(calls) + 1)) and calls[-1][0] == calls[-1][1]
    assert res.encoder_calls == vol.shape[0]
    assert set(res.stop_reasons) == {"down", "up"}


def test_limits_locks_labels_init_and_cancel(model):
    vol = blob_volume()
    full = _propagate(model, vol)
    init = np.zeros(vol.shape, bool)
    init[6, :4, :4] = True  # outside the z-limit: kept
    init[4, 20:30, 20:30] = True  # locked: kept as it was
    lock = np.zeros(vol.shape, bool)
    lock[4, 20:30, 20:30] = True
    res = propagate_volume(SlicePredictor(model), vol, {KEY: Prompt(box=BOX)}, window="none", labels_init=init,
                           locked=lock, settings=PropagationSettings(z_max=5, stop_slices={1}))
    assert res.stop_reasons["up"] == "z_limit" and res.stop_reasons["down"] in ("stop_slice", "empty")
    assert np.array_equal(res.mask[6], init[6]) and not res.mask[:2].any()
    assert res.mask[4, 20:30, 20:30].all()
    assert np.array_equal(res.mask[2:4], full.mask[2:4])
    ticks = []
    stopped = _propagate(model, vol, cancel=lambda: len(ticks) >= 2, progress=lambda *a: ticks.append(a))
    assert stopped.cancelled and "cancelled" in stopped.stop_reasons.values()
    assert 1 <= len(stopped.records) < len(full.records)
    assert np.array_equal(stopped.mask[KEY], full.mask[KEY])


def test_session_correction_retracks_with_the_memory(model, ref):
    from napari_samlab.session import Session

    vol = blob_volume()
    s = Session(vol, model, window="none")
    s.add_box(KEY, BOX)
    first = s.propagate()
    assert np.array_equal(s.preview > 0, ref)
    s.preview[5] = 0
    s.preview[5, 20:28, 22:34] = 1  # the user's corrected slice 5
    again = s.repropagate_from(5)
    assert again.memory is first.memory, "corrections go to the session's MemorySession"
    assert again.encoder_calls <= vol.shape[0] - 5, "re-tracking starts at the corrected slice, not from scratch"
    assert np.array_equal(again.mask[:5], first.mask[:5])
    assert again.records[5].source == "anchor" and 5 in again.anchors
    # the generic repropagate gives the same as continuing a MemorySession by hand
    fresh = _propagate(model, vol)
    fixed = np.zeros(vol.shape[1:], bool)
    fixed[20:28, 22:34] = True
    via_api = repropagate(SlicePredictor(model), vol, fresh, 5, fixed)
    assert via_api.memory is fresh.memory and np.array_equal(via_api.mask, again.mask)
    assert not np.array_equal(via_api.mask[5:], fresh.mask[5:])


def test_cohort_prompts_file_and_several_anchors(model, ref, tmp_path):
    from napari_samlab.cohort.apply import segment_with_prompts
    from napari_samlab.cohort.prompts import PromptEntry
    from napari_samlab import read_image

    vol = blob_volume()
    path = tmp_path / "blob.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(path))
    labels = segment_with_prompts(read_image(str(path)), model, [PromptEntry(slice=KEY, box=BOX, label=3,
                                                                             propagate=True)], window="none")
    assert np.array_equal(labels == 3, ref) and set(np.unique(labels)) == {0, 3}
    # prompts on two slices: both are conditioning frames, both anchors in the records
    two = propagate_volume(SlicePredictor(model), vol, {2: Prompt(box=BOX), 4: Prompt(box=BOX)}, window="none")
    assert two.records[2].source == two.records[4].source == "anchor"
    assert two.memory.anchor_slices == {2, 4} and two.mask[2:5].any(axis=(1, 2)).all()
