"""The Propagate section of the segmentation panel under a real napari viewer (Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest tests/test_widget_propagation.py -q

The widget must give exactly what the napari-free core gives; the oracle
segmenter (true tumour component inside the prompt) makes re-propagation
results exact.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip("napari needs a display: run the widget tests under xvfb-run", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from widget_helpers import SlowClassic, add_layers, sample_layers  # noqa: E402

from napari_samlab.errors import SamlabError  # noqa: E402
from napari_samlab.models.base import Prompt  # noqa: E402
from napari_samlab.models.classic import ClassicModel  # noqa: E402
from napari_samlab.predict.predictor import SlicePredictor  # noqa: E402
from napari_samlab.propagate import (  # noqa: E402
    PropagationResult, PropagationSettings, dice, interpolate_slices, propagate_volume,
)
from napari_samlab.propagate.oracle import OracleModel  # noqa: E402
from napari_samlab.widgets import SegmentationWidget  # noqa: E402
from napari_samlab.widgets._session import session_for  # noqa: E402

Z0, BOX = 20, (319, 337, 383, 393)  # tumour on slices 15-25
Y0, X0 = 300, 280  # the crop: rows 300..429, columns 280..419
CBOX = (BOX[0] - X0, BOX[1] - Y0, BOX[2] - X0, BOX[3] - Y0)


@pytest.fixture(scope="module")
def ct_data():
    return sample_layers("ct_chest")


@pytest.fixture(scope="module")
def crop(ct_data):
    """(volume, truth, layer kwargs) of a 61 x 130 x 140 crop around the tumour."""
    sl = (slice(None), slice(Y0, Y0 + 130), slice(X0, X0 + 140))
    vol = np.ascontiguousarray(ct_data[0][0][sl])
    truth = np.ascontiguousarray(ct_data[1][0][sl] > 0)
    kw = {"name": "CT crop", "scale": ct_data[0][1]["scale"], "metadata": copy.deepcopy(ct_data[0][1].get("metadata", {}))}
    return vol, truth, kw


def _panel(make_napari_viewer, layer_data, model=None, prefetch=False):
    viewer = make_napari_viewer()
    layers = add_layers(viewer, layer_data)
    viewer.layers.selection.active = layers[0]
    seg = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment", area="right")
    seg.set_image_layer(layers[0])
    if model is not None:
        session_for(viewer).set_model(model, getattr(model, "family", "model"))
    seg.propagation.prefetch_check.setChecked(prefetch)  # encoder counts stay deterministic unless tested
    return viewer, seg, layers


def _crop_panel(make_napari_viewer, crop, model=None, prefetch=False):
    vol, truth, kw = crop
    return _panel(make_napari_viewer, [(vol, kw, "image")], model, prefetch)


def _paint(layer, z, mask2d, value=1):
    """Paint ``mask2d`` into axial slice ``z`` the way napari's brush does (undo history, paint event)."""
    ys, xs = np.nonzero(mask2d)
    layer.data_setitem((np.full(ys.size, z), ys, xs), value)


# --------------------------------------------------------------------------
def test_propagate_ct_review_and_commit_all_slices(make_napari_viewer, qtbot, ct_data):
    """Classic engine on the CT sample: core result in the preview, quality table, next flagged, commit."""
    viewer, seg, (ct, truth) = _panel(make_napari_viewer, ct_data)
    # the panel starts from the core's defaults
    d, s = PropagationSettings(), seg.propagation.settings()
    assert (s.z_min, s.z_max, s.stop_slices, s.max_empty, s.stop_min_iou, s.stop_area_factor, s.stop_min_score) == \
        (None, None, set(), d.max_empty, d.stop_min_iou, d.stop_area_factor, d.stop_min_score)

    seg.set_view("axial")
    seg.set_slice(Z0)
    seg.set_box(*BOX)
    seg.propagation.z_from.setValue(10)  # limits typed into the panel
    seg.propagation.z_to.setValue(30)
    res = seg.propagate(wait=True)
    assert isinstance(res, PropagationResult) and res is seg.propagation_result and not res.cancelled

    # exactly what the core gives for the same prompt, window and settings
    ref = propagate_volume(SlicePredictor(ClassicModel()), np.asarray(ct.data), {Z0: Prompt(box=BOX)},
                           window=seg.window, settings=PropagationSettings(z_min=10, z_max=30),
                           spacing=tuple(np.asarray(ct.scale)))  # the widget passes the layer's scale (5 mm slices)
    assert np.array_equal(res.mask, ref.mask) and sorted(res.records) == sorted(ref.records)
    pv = seg.preview_layer.data
    assert np.array_equal(pv > 0, res.mask)  # every slice, not only the prompted one
    assert len(np.flatnonzero(pv.any(axis=(1, 2)))) >= 8
    assert not pv[:10].any() and not pv[31:].any()
    tz = truth.data > 0
    assert dice(res.mask[15:26], tz[15:26]) > 0.6
    # the summary says why each outer run ended, with the engine's own reason
    panel = seg.propagation
    assert res.stop_details  # the classic engine ends the object itself
    for k, v in res.stop_reasons.items():
        why = res.stop_details.get(k)
        assert f"{k}: {v}" + (f" ({why})" if why else "") in panel.summary.text()

    # quality table: one row per record, flagged rows highlighted
    assert panel.table.rowCount() == len(res.records)
    zs = sorted(res.records)
    assert [int(panel.table.item(r, 0).text()) for r in range(panel.table.rowCount())] == zs
    assert [zs[r] for r in panel.flagged_rows()] == res.flagged_slices() and res.flagged_slices()
    # clicking a row goes to its slice
    row = zs.index(res.flagged_slices()[0])
    from qtpy.QtCore import Qt

    panel.table.scrollToItem(panel.table.item(row, 0))
    rect = panel.table.visualItemRect(panel.table.item(row, 0))
    qtbot.mouseClick(panel.table.viewport(), Qt.LeftButton, pos=rect.center())
    assert seg.current_plane().index == ((0, zs[row]),)
    # next flagged slice: method, button and Shift+F
    seg.set_slice(Z0)
    nxt = seg.next_flagged()
    assert nxt == res.next_flagged(Z0) and seg.current_plane().index == ((0, nxt),)
    qtbot.mouseClick(panel.next_button, Qt.LeftButton)
    assert seg.current_plane().index == ((0, res.next_flagged(nxt)),)
    handler = next(f for k, f in viewer.keymap.items() if str(k) == "Shift+F")
    before = seg.current_plane().index[0][1]
    handler(viewer)
    assert seg.current_plane().index[0][1] == res.next_flagged(before)
    assert "Shift+F" in seg.toolTip()

    # commit writes every slice of the preview
    expected = pv > 0
    out = seg.commit(name="tumour", label=1)
    assert out["written"] == int(expected.sum())
    assert np.array_equal(seg.target_layer.data == 1, expected)
    assert seg.segments[0]["voxels"] == int(expected.sum())
    assert seg.propagation_result is None and panel.table.rowCount() == 0 and not seg.preview_layer.data.any()


def test_cancel_part_way_with_progress(make_napari_viewer, qtbot, crop):
    from qtpy.QtCore import Qt

    slow = SlowClassic(delay=0.25)
    viewer, seg, (img,) = _crop_panel(make_napari_viewer, crop, slow)
    seg.set_slice(Z0)
    seg.set_box(*CBOX)
    seg.propagate()  # returns at once: the work runs in a worker
    panel = seg.propagation
    assert panel.running and seg.busy and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: panel.progress.maximum() > 0 and panel.progress.value() >= 3, timeout=30000)
    qtbot.mouseClick(panel.cancel_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not panel.running, timeout=30000)
    res = seg.propagation_result
    assert res.cancelled and 3 <= len(res.records) < 20
    assert slow.encodes < 22
    assert np.array_equal(seg.preview_layer.data > 0, res.mask)
    assert "cancelled" in panel.summary.text() and not panel.cancel_button.isEnabled()


def test_limits_and_stop_slices(make_napari_viewer, qtbot, crop):
    from qtpy.QtCore import Qt

    vol, truth, _ = crop
    viewer, seg, (img,) = _crop_panel(make_napari_viewer, crop, OracleModel(vol, truth))
    seg.set_slice(17)
    qtbot.mouseClick(seg.propagation.stop_button, Qt.LeftButton)  # "stop here"
    seg.set_slice(Z0)
    seg.set_box(*CBOX)
    res = seg.propagate(wait=True, z_max=23)
    assert res.settings.stop_slices == {17} and res.settings.z_max == 23
    assert seg.propagation.stop_edit.text() == "17" and seg.propagation.z_to.value() == 23
    assert sorted(res.records) == list(range(18, 24))
    assert res.stop_reasons == {"down": "stop_slice", "up": "z_limit"}
    pv = seg.preview_layer.data > 0
    ref = propagate_volume(SlicePredictor(OracleModel(vol, truth)), vol, {Z0: Prompt(box=CBOX)}, window=None,
                           settings=PropagationSettings(z_max=23, stop_slices={17}))
    assert np.array_equal(pv, ref.mask) and not pv[:18].any() and not pv[24:].any()
    assert dice(pv[18:24], truth[18:24]) > 0.99


def test_repropagate_after_corrections_keeps_edits_and_locked(make_napari_viewer, qtbot, crop):
    """Only the range from the corrected slice changes; paint edits and locked segments survive; no re-encoding."""
    vol, truth, _ = crop
    oracle = OracleModel(vol, truth)
    viewer, seg, (img,) = _crop_panel(make_napari_viewer, crop, oracle)
    predictor = seg.session.predictor

    # a locked segment on slice 22 (part of the tumour)
    seg.set_slice(22)
    seg.set_box(CBOX[0], CBOX[1], CBOX[0] + 30, CBOX[3])
    part = seg.segment(wait=True)
    assert part.any()
    seg.commit(name="locked part", label=5, state="locked")
    locked = seg.target_layer.data == 5
    assert locked[22].any() and seg.label_spin.value() == 6

    seg.set_slice(Z0)
    seg.set_box(*CBOX)
    res = seg.propagate(wait=True)
    pv = seg.preview_layer.data
    assert not (pv[locked] > 0).any()  # committed voxels are never written
    assert dice(pv > 0, truth & ~locked) > 0.97
    assert sorted(res.records) == list(range(15, 26))
    assert len(oracle.encoded) == len(set(oracle.encoded))

    # a manual paint edit on slice 17 and a correction on slice 23
    erase = np.zeros(pv.shape[1:], bool)
    ys, xs = np.nonzero(pv[17])
    erase[ys.min():ys.min() + 6, :] = True
    erase &= pv[17] > 0
    _paint(seg.preview_layer, 17, erase, 0)
    seg.set_slice(23)
    wrong = pv[23] > 0
    cut = wrong.copy()
    cut[:, : int(np.median(np.nonzero(wrong)[1]))] = False  # keep the right half only
    _paint(seg.preview_layer, 23, wrong & ~cut, 0)
    before = (pv > 0).copy()
    calls, encoded = predictor.encoder_calls, list(oracle.encoded)

    res2 = seg.repropagate_from(wait=True)  # the displayed slice, 23
    after = seg.preview_layer.data > 0
    # slices below the range (anchor 20 and everything under it) are unchanged, paint edit included
    assert np.array_equal(after[:21], before[:21])
    assert not after[17][erase].any() and 17 in res2.anchors
    assert np.array_equal(after[23], cut)  # the correction is used as it is
    assert not (after & locked).any()
    assert {z: r.area for z, r in res2.records.items() if z < 21} == {z: r.area for z, r in res.records.items() if z < 21}
    # every slice came from the cache
    assert predictor.encoder_calls == calls and oracle.encoded == encoded
    assert res2 is seg.propagation_result

    # a correction made with a new prompt on slice 24, then segment
    seg.set_slice(24)
    seg.set_box(CBOX[0], CBOX[1], CBOX[0] + 35, CBOX[3])
    fixed = seg.segment(wait=True).copy()
    before = (seg.preview_layer.data > 0).copy()
    res3 = seg.repropagate_from(24, wait=True)
    after = seg.preview_layer.data > 0
    assert np.array_equal(after[24], fixed & ~locked[24])
    assert np.array_equal(after[:24], before[:24])  # 23 is an anchor now: the range is 24 and up
    assert predictor.encoder_calls == calls and len(oracle.encoded) == len(set(oracle.encoded))

    # commit writes all slices under the new label; the locked segment is intact
    out = seg.commit(name="tumour", label=6)
    assert np.array_equal(seg.target_layer.data == 6, after & ~locked) and out["skipped"] == 0
    assert np.array_equal(seg.target_layer.data == 5, locked)
    assert res3.encoder_calls == 0


def test_fill_between_painted_and_committed_slices(make_napari_viewer, qtbot, crop):
    vol, truth, _ = crop
    viewer, seg, (img,) = _crop_panel(make_napari_viewer, crop)
    calls = seg.session.predictor.encoder_calls
    seg.set_slice(16)
    pv_layer = seg.ensure_preview()
    _paint(pv_layer, 16, truth[16])
    _paint(pv_layer, 24, truth[24])
    ann = np.zeros_like(truth)
    ann[[16, 24]] = truth[[16, 24]]
    ref = interpolate_slices(ann, [16, 24])

    assert seg.fill_between() == list(range(17, 24))
    pv = seg.preview_layer.data > 0
    assert np.array_equal(pv, ref)
    assert dice(pv[17:24], truth[17:24]) > 0.7  # shapes, not intensities, across 40 mm: still close

    # from committed slices: commit only 16 and 24, then fill into the preview and commit again
    pv_layer.data[...] = 0
    _paint(pv_layer, 16, truth[16])
    _paint(pv_layer, 24, truth[24])
    seg.commit(name="tumour", label=1)
    assert sorted(np.flatnonzero((seg.target_layer.data == 1).any(axis=(1, 2)))) == [16, 24]
    seg.label_spin.setValue(1)
    assert seg.fill_between() == list(range(17, 24))
    assert np.array_equal(seg.preview_layer.data > 0, ref)
    seg.commit(label=1)
    assert np.array_equal(seg.target_layer.data == 1, ref)
    assert seg.session.predictor.encoder_calls == calls  # model-free

    # too few annotated slices: a notification, not an exception
    seg.preview_layer.data[...] = 0
    seg.label_spin.setValue(2)
    seg.guard(seg.fill_between, "filling between slices")
    assert seg.notes.messages[-1][0] == "error" and "two" in seg.notes.last


def test_background_prefetch(make_napari_viewer, qtbot, crop):
    """After a propagation the next slices are encoded in the background; segmenting one needs no encode."""
    vol, truth, _ = crop
    # a model with an encoder of its own (the classic engine is never prefetched: tests/test_prefetch.py)
    viewer, seg, (img,) = _crop_panel(make_napari_viewer, crop, OracleModel(vol, truth), prefetch=True)
    predictor = seg.session.predictor
    panel = seg.propagation
    seg.set_slice(Z0)
    seg.set_box(*CBOX)
    res = seg.propagate(wait=True)
    qtbot.waitUntil(lambda: bool(panel.prefetched) and not panel.prefetching, timeout=60000)
    assert not set(panel.prefetched) & set(res.records)  # slices propagation had not visited
    zp = panel.prefetched[-1]
    calls = predictor.encoder_calls
    seg.set_slice(zp)
    seg.set_box(*CBOX)
    assert seg.segment(wait=True) is not None
    assert predictor.encoder_calls == calls  # came from the cache

    # moving to a slice while reviewing encodes it and its neighbours once the user is idle (moved up: 51 first)
    assert zp < 50
    seg.set_slice(50)
    # (wait for the outcome: a short prefetch may start and end between two polls)
    qtbot.waitUntil(lambda: panel.prefetched == [50, 51, 49, 52, 48] and not panel.prefetching, timeout=60000)
    calls = predictor.encoder_calls
    seg.set_slice(51)
    seg.set_box(*CBOX)
    seg.segment(wait=True)
    assert predictor.encoder_calls == calls

    # the user's next action stops a prefetch a script started (the classic engine: between slices)
    slow = SlowClassic(delay=0.3)
    session_for(viewer).set_model(slow, "slow")  # the preview's prompted slices are re-segmented with it
    qtbot.waitUntil(lambda: not seg.busy, timeout=30000)
    enc0 = slow.encodes
    panel.prefetch(range(30, 40))
    qtbot.waitUntil(lambda: len(panel.prefetched) >= 1, timeout=30000)
    seg.set_slice(Z0)
    seg.set_box(*CBOX)
    seg.segment(wait=True)
    qtbot.waitUntil(lambda: not panel.prefetching, timeout=30000)
    # what was prefetched, at most one slice in flight when stopped, and the segmented slice
    assert len(panel.prefetched) < 10 and slow.encodes - enc0 <= len(panel.prefetched) + 2


def test_propagate_on_coronal_plane(make_napari_viewer, qtbot, crop):
    """The displayed plane's normal is the propagation axis: coronal slices step along y."""
    vol, truth, _ = crop
    viewer, seg, (img,) = _crop_panel(make_napari_viewer, crop)
    seg.set_view("coronal")
    y = 65
    seg.set_slice(y)
    box = (CBOX[0], 15, CBOX[2], 25)  # x = column, y = row = slice index z on a coronal view
    seg.set_box(*box)
    res = seg.propagate(wait=True, z_min=45, z_max=85)
    assert res.mask.shape == (130, 61, 140)
    # the layer's scale, in the propagation's axis order, reaches the core (thick slices matter there)
    assert res.settings.spacing == pytest.approx(tuple(np.asarray(img.scale)[[1, 0, 2]]))
    ref = propagate_volume(SlicePredictor(ClassicModel()), vol.transpose(1, 0, 2), {y: Prompt(box=box)},
                           window=seg.window, settings=PropagationSettings(z_min=45, z_max=85))
    assert np.array_equal(res.mask, ref.mask) and res.mask[y].any()
    pv = seg.preview_layer.data > 0
    assert np.array_equal(pv.transpose(1, 0, 2), res.mask)
    assert set(np.flatnonzero(pv.any(axis=(0, 2)))) <= set(range(45, 86))
    assert seg.next_flagged() in (None, *res.flagged_slices())
    if res.flagged_slices():
        assert seg.current_plane().axes == (0, 2)  # still coronal


def test_propagation_errors_are_notifications(make_napari_viewer, qtbot, crop):
    viewer, seg, (img,) = _crop_panel(make_napari_viewer, crop)
    seg.guard(seg.propagate, "propagating")  # no prompt yet
    qtbot.waitUntil(lambda: not seg.propagation.running, timeout=10000)
    assert seg.notes.messages[-1][0] == "error" and "prompt" in seg.notes.last
    seg.guard(seg.repropagate_from, "re-propagating")
    assert "Propagate first" in seg.notes.last
    assert seg.next_flagged() is None
    with pytest.raises(SamlabError, match="unknown propagation setting"):
        seg.propagation.set_settings(bogus=1)
    viewer.add_image(np.zeros((32, 32)), name="flat")
    seg.set_image_layer("flat")
    seg.guard(seg.propagate, "propagating")
    assert "3D volume" in seg.notes.last
