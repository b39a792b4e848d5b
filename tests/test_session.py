"""The napari-free session (napari_samlab.session): no Qt, no viewer.

The oracle segmenter (true object inside the prompt) makes results exact;
the sample CT checks the classic engine end to end.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_samlab.errors import Cancelled, SamlabError
from napari_samlab.models.base import Prompt, raise_if_cancelled
from napari_samlab.models.classic import ClassicModel
from napari_samlab.predict.predictor import SlicePredictor
from napari_samlab.propagate import PropagationSettings, propagate_volume
from napari_samlab.propagate.oracle import OracleModel
from napari_samlab.session import (
    Hook, ModelSession, Prefetcher, Session, SegmentStore, fill_gaps,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blob():
    """(volume, truth): 20 noisy 40 x 40 slices with a disc on slices 5..14 whose radius varies."""
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 200, (20, 40, 40)).astype(np.int16)
    yy, xx = np.mgrid[:40, :40]
    truth = np.zeros(vol.shape, bool)
    for z in range(5, 15):
        truth[z] = (yy - 20) ** 2 + (xx - 19) ** 2 < (5 + abs(z - 9)) ** 2
    vol[truth] += 800
    return vol, truth


BOX = (4, 4, 35, 35)


def test_core_session_imports_no_qt():
    code = ("import sys; import napari_samlab.session as s; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": ""})
    assert out.returncode == 0, out.stdout + out.stderr


def test_segment_commit_undo_redo(blob):
    vol, truth = blob
    s = Session(vol, OracleModel(vol, truth), window="none")
    s.add_box(9, BOX)
    mask = s.segment(9)
    assert np.array_equal(mask, truth[9]) and np.array_equal(s.preview[9] > 0, truth[9])
    out = s.commit(name="disc", label=2, color=(1, 0, 0, 1))
    assert out == {"label": 2, "written": int(truth[9].sum()), "skipped": 0}
    assert np.array_equal(s.labels == 2, np.isin(np.arange(20), [9])[:, None, None] & truth)
    assert s.segments[0]["name"] == "disc" and s.segments[0]["color"] == (1.0, 0.0, 0.0, 1.0)
    assert not s.preview.any() and s.prompts == {}  # ready for the next object
    assert s.undo() == "commit 2"
    assert not s.labels.any() and s.segments == [] and s.preview[9].any() and 9 in s.prompts
    assert s.undo() == "box" and s.prompts == {}
    assert s.redo() == "box" and s.redo() == "commit 2"
    assert int((s.labels == 2).sum()) == int(truth[9].sum()) and s.redo() is None


def test_points_negative_and_bad_prompts(blob):
    vol, truth = blob
    s = Session(vol, OracleModel(vol, truth), window="none")
    with pytest.raises(SamlabError, match="outside"):
        s.add_point(9, (100, 3))
    with pytest.raises(SamlabError, match="outside the volume"):
        s.add_box(25, BOX)
    with pytest.raises(SamlabError, match="nothing to segment"):
        s.segment(9)
    s.add_point(9, (5, 5), positive=False)  # background only: still nothing that marks the object
    with pytest.raises(SamlabError, match="nothing to segment"):
        s.segment(9)
    s.add_point(9, (19, 20))
    assert s.prompts[9].labels == [0, 1]
    assert s.segment(9).any()
    with pytest.raises(SamlabError, match="nothing to commit"):
        Session(vol).commit()


def test_propagate_matches_core_and_respects_locked(blob):
    vol, truth = blob
    s = Session(vol, OracleModel(vol, truth), window="none")
    s.add_box(9, BOX)
    res = s.propagate(z_max=16)
    ref = propagate_volume(SlicePredictor(OracleModel(vol, truth)), vol, {9: Prompt(box=BOX)}, window=None,
                           settings=PropagationSettings(z_max=16))
    assert np.array_equal(res.mask, ref.mask) and np.array_equal(s.preview > 0, truth)
    assert sorted(res.records) == sorted(ref.records)
    # lock slice 12's part as its own segment, then propagate a new object over it
    s.commit(name="first", label=1, state="locked")
    s.add_box(9, BOX)
    s.propagate()
    assert not s.preview[truth].any()  # the locked voxels are never written
    assert s.next_flagged(0) == (s.propagation.result.next_flagged(0))


def test_repropagate_then_fill_between_never_replaces_model_output(blob):
    """Issue 17 item 3: fill between after re-propagation fills nothing, and changes no voxel."""
    vol, truth = blob
    s = Session(vol, OracleModel(vol, truth), window="none")
    s.add_box(9, BOX)
    s.propagate()
    s.add_box(12, BOX)
    s.segment(12)
    s.repropagate_from(12)
    before = s.preview.copy()
    assert s.fill_between() == []
    assert np.array_equal(s.preview, before)
    # an empty gap is filled, the rest kept; one undo step takes it back
    s.preview[10:12] = 0
    gap = s.preview.copy()
    assert s.fill_between() == [10, 11]
    assert np.array_equal(s.preview[:10], gap[:10]) and np.array_equal(s.preview[12:], gap[12:])
    assert s.preview[10].any() and s.preview[11].any()
    assert s.undo() == "fill between" and np.array_equal(s.preview, gap)


def test_fill_gaps_with_source_and_locked():
    pv = np.zeros((5, 9, 9), np.uint8)
    src = np.zeros((5, 9, 9), bool)
    src[0, 3:6, 3:6] = True
    src[4, 1:8, 1:8] = True
    locked = np.zeros_like(src)
    locked[2, 4, 4] = True
    filled, old = fill_gaps(pv, source=src, locked=locked)
    assert filled == [1, 2, 3] and sorted(old) == [0, 1, 2, 3, 4]
    assert pv[2, 4, 4] == 0 and pv[2].sum() > 9 and np.array_equal(pv[0] > 0, src[0])
    with pytest.raises(SamlabError, match="two"):
        fill_gaps(np.zeros((3, 4, 4), np.uint8))


def test_store_apply_result_is_one_undo_step():
    store = SegmentStore(np.zeros((2, 6, 6), np.uint16), voxel_mm3=2.0)
    a = np.zeros((2, 6, 6), bool)
    a[0, :2] = True
    store.commit(a, 1, "kept", state="locked")
    result = np.zeros((2, 6, 6), np.int32)
    result[0, :3, :3] = 1  # overlaps the locked segment
    result[1, 4:, 4:] = 7
    out = store.apply_result(result, name="object")
    assert out["labels"] == [2, 3] and out["skipped"] == 6
    assert [r["name"] for r in store.rows()] == ["kept", "object 1", "object 2"]
    assert store.rows()[0]["volume_ml"] == pytest.approx(12 * 2.0 / 1000)
    assert (store.labels == 1).sum() == 12 and (store.labels == 3).sum() == 4
    assert store.undo().text == "apply object"
    assert (store.labels == 1).sum() == 12 and not np.isin(store.labels, [2, 3]).any()
    with pytest.raises(SamlabError, match="locked"):
        store.commit(a, 1)


def test_2d_image_session():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 50, (30, 40)).astype(np.uint8)
    img[10:20, 10:25] = 200
    s = Session(img)  # classic engine
    assert s.is2d and s.model.family == "classic"
    s.add_box(None, (8, 8, 27, 22))
    assert s.segment().any()
    s.commit(name="square")
    assert "area_mm2" in s.segments[0] and "volume_ml" not in s.segments[0]
    with pytest.raises(SamlabError, match="3D volume"):
        s.propagate()
    with pytest.raises(SamlabError, match="2D image"):
        s.add_box(3, (1, 1, 5, 5))


def test_sample_ct_with_classic_engine():
    from napari_samlab import read_image

    image = read_image(REPO / "sample_data" / "ct_chest_lung2.nrrd")
    s = Session(image)
    s.set_window("ct-lung")
    assert (s.window.lo, s.window.hi) == (-1350.0, 150.0)
    s.add_box(20, (319, 337, 383, 393))
    assert s.segment(20).sum() > 500
    res = s.propagate(z_min=18, z_max=22)
    assert res.z_extent() is not None and 20 in res.records
    s.commit(name="tumour", label=1)
    row = s.segments[0]
    assert row["voxels"] == int((s.labels == 1).sum()) > 1500
    assert row["volume_ml"] == pytest.approx(row["voxels"] * np.prod(image.spacing) / 1000)


class _Slow(OracleModel):
    """Encodes wait on an event (no clock) and stop when cancelled, as exported encoders do."""

    def __init__(self, vol, truth):
        super().__init__(vol, truth)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.started = []

    def fingerprint(self) -> str:
        return super().fingerprint() + "-slow"

    def encode(self, image):
        self.started.append(self._by_hash.get(self._hash(np.asarray(image))))
        self.entered.set()
        while not self.release.wait(0.005):
            raise_if_cancelled()
        return super().encode(image)


def test_prefetcher_encodes_in_order_and_stops_mid_encode(blob):
    vol, truth = blob
    model = _Slow(vol, truth)
    models = ModelSession(model)
    pf = Prefetcher(models)
    model.release.set()
    pf.start(vol, [5, 4, 6], window=None)
    pf.join()
    assert pf.encoded == [5, 4, 6] and not pf.running
    assert model.encoded == [5, 4, 6]
    # a blocked encode is stopped by stop(); the lock is free again
    model.release.clear()
    model.entered.clear()
    pf.start(vol, [10, 11], window=None)
    assert model.entered.wait(30)
    pf.stop()
    pf.join()
    assert not pf.running and pf.encoded == [] and model.started[-1] == 10
    assert models.lock.acquire(timeout=5)
    models.lock.release()
    # keep=(axis, z) of the slice being encoded: that encode finishes, then the run ends
    model.entered.clear()
    pf.start(vol, [12, 13], window=None, axis=0)
    assert model.entered.wait(30)
    pf.stop(keep=(0, 12))
    model.release.set()
    pf.join()
    assert pf.encoded == [12] and 13 not in model.started


def test_cancel_from_another_thread(blob):
    vol, truth = blob
    model = _Slow(vol, truth)
    s = Session(vol, model, window="none")
    model.release.set()
    s.add_box(9, BOX)
    s.segment(9)
    model.release.clear()
    model.entered.clear()
    out = {}

    def run():
        try:
            out["res"] = s.propagate()
        except Cancelled as exc:
            out["exc"] = exc

    t = threading.Thread(target=run)
    t.start()
    assert model.entered.wait(30)
    s.cancel()
    t.join(30)
    assert not t.is_alive()
    assert "exc" in out or out["res"].cancelled


def test_hook_drops_listeners_that_are_gone():
    h = Hook()
    seen = []

    class Listener:
        def on(self, v):
            seen.append(v)

    obj = Listener()
    h.connect(obj.on)
    h.emit(1)
    del obj
    h.emit(2)
    assert seen == [1]


def test_model_session_changes_generation_and_classic_default():
    ms = ModelSession()
    assert ms.ensure_model().family == "classic" and ms.generation == 1
    calls = []
    ms.changed.connect(lambda m: calls.append(m.generation))
    ms.set_model(ClassicModel(), "again")
    assert calls == [2] and ms.description == "again" and ms.takes_prompts
