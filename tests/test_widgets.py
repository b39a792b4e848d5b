"""Dock widgets under a real napari viewer (run under Xvfb, see README).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest tests/test_widgets.py -q
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip("napari needs a display: run the widget tests under xvfb-run", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from widget_helpers import (  # noqa: E402
    SlowClassic, add_layers, direct, distinct_colors, sample_layers, volume_window,
)

from napari_samlab.errors import SamlabError  # noqa: E402
from napari_samlab.models.classic import ClassicModel  # noqa: E402
from napari_samlab.widgets import ModelWidget, SegmentationWidget  # noqa: E402
from napari_samlab.widgets._session import session_for  # noqa: E402


@pytest.fixture(scope="module")
def ct_data():
    return sample_layers("ct_chest")


@pytest.fixture(scope="module")
def tumour(ct_data):
    """Tumour slice and its bounding box (x0, y0, x1, y1) on that axial slice."""
    lab = ct_data[1][0]
    z = int(np.argmax((lab > 0).sum(axis=(1, 2))))
    ys, xs = np.nonzero(lab[z])
    return z, (int(xs.min()) - 4, int(ys.min()) - 4, int(xs.max()) + 4, int(ys.max()) + 4)


def _viewer_with(make_napari_viewer, data, dock=True, show=False):
    viewer = make_napari_viewer(show=show)
    layers = add_layers(viewer, data)
    viewer.layers.selection.active = layers[0]
    seg = SegmentationWidget(viewer)
    if dock:
        viewer.window.add_dock_widget(seg, name="Segment", area="right")
    seg.set_image_layer(layers[0])
    return viewer, seg, layers


def _finish(seg, qtbot):
    qtbot.waitUntil(lambda: not seg.busy, timeout=60000)


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2 * (a & b).sum() / s


# --------------------------------------------------------------------------
def test_histology_2d_flow(make_napari_viewer, qtbot):
    """Box -> live preview (debounced, off the Qt thread) -> commit -> listed segment."""
    viewer, seg, (img,) = _viewer_with(make_napari_viewer, sample_layers("histology"))
    assert img.rgb and seg.window is None  # 8-bit RGB goes to the classic engine as it is
    assert ModelWidget(viewer).model is seg.session.model  # one shared engine per viewer
    assert seg.session.model.family == "classic"

    box = (100, 80, 200, 180)
    seg.set_box(*box)
    assert seg.busy  # the update waits for the debounce timer
    qtbot.waitUntil(lambda: seg.preview_layer is not None and seg.preview_layer.data.any(), timeout=30000)
    _finish(seg, qtbot)
    preview = seg.preview_mask()
    expected = direct(ClassicModel(), np.asarray(img.data), None, {"box": box})
    assert np.array_equal(preview, expected)
    assert 0 < preview.sum() < 101 * 101 and not preview[:80].any()

    result = seg.commit(name="gland", label=3)
    assert result == {"label": 3, "written": int(expected.sum()), "skipped": 0}
    rows = seg.segments
    assert [(r["label"], r["name"], r["voxels"], r["state"]) for r in rows] == [(3, "gland", int(expected.sum()), "in progress")]
    assert rows[0]["area_mm2"] == pytest.approx(expected.sum())  # 1 x 1 spacing
    target = seg.target_layer
    assert target.name == "samlab segments" and target.data.shape == img.data.shape[:2]
    assert np.array_equal(target.data == 3, expected)
    np.testing.assert_allclose(target.scale, img.scale)
    # the table widget shows the same
    assert seg.table.rowCount() == 1 and seg.table.item(0, 2).text() == "gland"
    assert seg.table.item(0, 3).text() == str(int(expected.sum()))
    # prompts and preview are cleared for the next object; the next label is offered
    assert len(seg.boxes_layer.data) == 0 and not seg.preview_layer.data.any()
    assert seg.label_spin.value() == 4

    # points: positive and negative, coloured green / red; polarity key toggles
    seg.add_point(150, 130)
    seg.toggle_polarity()
    assert not seg.positive
    seg.start_points()
    seg.points_layer.add([140, 160])  # as a click in add mode: takes the current polarity
    _finish(seg, qtbot)
    feats = seg.points_layer.features["positive"].tolist()
    assert feats == [True, False]
    np.testing.assert_allclose(seg.points_layer.face_color[0][:3], (0.1, 0.85, 0.2), atol=0.01)
    np.testing.assert_allclose(seg.points_layer.face_color[1][:3], (0.95, 0.15, 0.15), atol=0.01)
    expected = direct(ClassicModel(), np.asarray(img.data), None, {"points": [(150, 130), (160, 140)], "point_labels": [1, 0]})
    assert np.array_equal(seg.preview_mask(), expected)


def test_ct_axial_slice_matches_engine(make_napari_viewer, qtbot, ct_data, tumour):
    viewer, seg, (ct, truth) = _viewer_with(make_napari_viewer, ct_data)
    z, box = tumour
    model = ClassicModel()
    win = volume_window(model, ct)
    # what the user sees is what the model sees
    assert seg.window == win
    np.testing.assert_allclose(ct.contrast_limits, (win.lo, win.hi))

    seg.set_view("axial")
    seg.set_slice(z)
    assert seg.current_plane().index == ((0, z),)
    seg.set_box(*box)
    mask = seg.segment(wait=True)
    expected = direct(model, np.asarray(ct.data[z]), win, {"box": box})
    assert np.array_equal(mask, expected)
    assert np.array_equal(seg.preview_layer.data[z] > 0, expected)
    assert not np.delete(seg.preview_layer.data, z, axis=0).any()  # only the prompted slice
    assert _dice(expected, truth.data[z] > 0) > 0.7
    seg.commit(name="tumour", label=1)
    row = seg.segments[0]
    spacing = ct.metadata["samlab"]["spacing"]
    assert row["voxels"] == int(expected.sum())
    assert row["volume_ml"] == pytest.approx(expected.sum() * np.prod(spacing) / 1000)
    assert seg.target_layer.metadata["samlab"]["spacing"] == spacing  # writers line it up with the CT

    # presets set the model window and the contrast limits together
    seg.set_window("ct-lung")
    assert (seg.window.lo, seg.window.hi) == (-1350.0, 150.0)
    np.testing.assert_allclose(ct.contrast_limits, (-1350.0, 150.0))
    seg.set_window(level=50, width=350)
    assert seg.window_combo.currentText() == "manual"
    np.testing.assert_allclose(ct.contrast_limits, (-125.0, 225.0))
    # dragging the contrast slider is a manual window for the model too
    ct.contrast_limits = (-200.0, 200.0)
    assert (seg.window.lo, seg.window.hi) == (-200.0, 200.0)
    seg.set_window("none")
    assert seg.window is None


def test_commit_undo_redo(make_napari_viewer, qtbot):
    viewer, seg, (img,) = _viewer_with(make_napari_viewer, sample_layers("histology"))
    seg.set_box(100, 80, 200, 180)
    first = seg.segment(wait=True).copy()
    seg.commit(name="a", label=1)
    seg.set_box(300, 60, 420, 200)
    second = seg.segment(wait=True).copy()
    seg.commit(name="b", label=2)
    target = seg.target_layer.data
    both = target.copy()
    assert {r["label"] for r in seg.segments} == {1, 2}

    assert seg.undo() == "commit 2"  # the second commit: its prompt comes back with its preview
    assert not (target == 2).any() and (target == 1).sum() == first.sum()
    assert len(seg.boxes_layer.data) == 1 and np.array_equal(seg.preview_mask(), second)
    assert [r["label"] for r in seg.segments] == [1]
    assert seg.undo() == "box"  # the prompt itself
    assert len(seg.boxes_layer.data) == 0
    _finish(seg, qtbot)
    assert not seg.preview_layer.data.any()
    assert seg.undo() == "commit 1"
    assert not target.any() and seg.segments == []
    assert seg.redo() == "commit 1"
    assert seg.redo() == "box"
    _finish(seg, qtbot)
    assert np.array_equal(seg.preview_mask(), second)
    assert seg.redo() == "commit 2"
    assert np.array_equal(target, both)
    assert [(r["label"], r["voxels"]) for r in seg.segments] == [(1, int(first.sum())), (2, int(second.sum()))]
    assert seg.redo() is None  # nothing left: a notification, not an error

    # Ctrl+Z / Ctrl+Shift+Z are bound on the viewer and on our layers
    keys = {str(k) for k in viewer.keymap}
    assert "Ctrl+Z" in keys and any(set(k.split("+")) == {"Ctrl", "Shift", "Z"} for k in keys), keys
    assert "Ctrl+Z" in {str(k) for k in seg.boxes_layer.keymap}  # wins over the layer's own bindings
    shortcuts = seg.shortcuts()
    assert shortcuts["undo"] == "Ctrl+Z" and shortcuts["commit"] == "Shift+C"
    assert all(v in seg.toolTip() for v in shortcuts.values())
    undo_handler = next(f for k, f in viewer.keymap.items() if str(k) == "Ctrl+Z")
    undo_handler(viewer)
    assert not (target == 2).any()


def test_locked_segment_left_intact(make_napari_viewer, qtbot):
    viewer, seg, (img,) = _viewer_with(make_napari_viewer, sample_layers("histology"))
    seg.set_box(100, 80, 200, 180)
    seg.segment(wait=True)
    seg.commit(name="kept", label=1)
    target = seg.target_layer.data
    kept = target == 1
    seg.set_segment_state(1, "locked")
    assert seg.segments[0]["state"] == "locked"

    # a bigger box over the same object: the new mask overlaps the locked one
    seg.set_box(60, 40, 260, 240)
    new = seg.segment(wait=True)
    assert (new & kept).any()
    out = seg.commit(name="later", label=2)
    assert out["skipped"] == int((new & kept).sum()) > 0
    assert np.array_equal(target == 1, kept)  # untouched
    assert np.array_equal(target == 2, new & ~kept)
    assert "locked" in seg.notes.last
    rows = {r["label"]: r for r in seg.segments}
    assert rows[1]["voxels"] == kept.sum() and rows[2]["voxels"] == (new & ~kept).sum()
    # committing into a locked segment is refused with a notification
    seg.set_box(300, 60, 420, 200)
    seg.segment(wait=True)
    assert seg.commit(label=1)["written"] == 0 and "is locked" in seg.notes.last
    # completed segments are protected too, unless "overwrite" is ticked
    seg.set_segment_state(1, "completed")
    seg.clear_prompts()
    seg.set_box(60, 40, 260, 240)
    seg.segment(wait=True)
    again = seg.segment(wait=True)
    assert seg.commit(label=2, overwrite=True)["skipped"] == 0
    assert np.array_equal(target == 1, kept & ~again) and (target == 2)[again].all()
    seg.undo()
    assert np.array_equal(target == 1, kept)


def test_coronal_view(make_napari_viewer, qtbot, ct_data):
    viewer, seg, (ct, truth) = _viewer_with(make_napari_viewer, ct_data)
    seg.set_view("coronal")
    assert tuple(viewer.dims.displayed) == (0, 2)
    y = 365
    seg.set_slice(y)
    plane = seg.current_plane()
    assert plane.axes == (0, 2) and plane.index == ((1, y),) and plane.name == f"coronal slice {y}"
    # on a coronal slice x is the column (x axis) and y the row (slice index z)
    box = (310, 12, 412, 28)
    seg.set_box(*box)
    mask = seg.segment(wait=True)
    win = volume_window(ClassicModel(), ct)
    expected = direct(ClassicModel(), np.asarray(ct.data[:, y, :]), win, {"box": box})
    assert mask.shape == (61, 512) and np.array_equal(mask, expected) and expected.any()
    pv = seg.preview_layer.data
    assert np.array_equal(pv[:, y, :] > 0, expected)
    assert not np.delete(pv, y, axis=1).any()  # nothing outside the coronal plane
    seg.commit(name="tumour", label=1)
    assert np.array_equal(seg.target_layer.data[:, y, :] == 1, expected)
    assert _dice(expected, truth.data[:, y, :] > 0) > 0.5
    # the box remembers its plane: back in the axial view it is no axial prompt
    seg.set_box(*box)
    seg.set_view("axial")
    assert (0, 1, 2) == tuple(viewer.dims.order)
    prompts = seg.layers.collect()
    assert [p.axes for p, _ in prompts.values()] == [(0, 2)]


def test_encoding_keeps_gui_responsive(make_napari_viewer, qtbot, ct_data):
    """The Qt loop keeps running while slices encode; Cancel stops between slices.

    (The longest stall of the Qt loop is measured by benchmarks/bench_gui_latency.py.)
    """
    from qtpy.QtCore import QTimer

    viewer, seg, (ct,) = _viewer_with(make_napari_viewer, ct_data[:1])
    events = []  # Qt timer ticks and the encoder's start/end, in the order they happened
    slow = SlowClassic(delay=1.0, events=events)
    session_for(viewer).set_model(slow, "slow classic")
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: events.append("tick"))
    timer.start()
    try:
        seg.encode_slices([20, 21, 22])
        assert seg.cancel_button.isEnabled()
        qtbot.waitUntil(lambda: not seg.live.encoding, timeout=30000)
    finally:
        timer.stop()
    assert slow.encodes == 3 and seg.progress.value() == 3
    # the Qt loop ran all through every encode (100 steps of 10 ms each):
    # an encode on the GUI thread would leave no tick between its start and end
    starts = [i for i, e in enumerate(events) if e == "encode start"]
    ends = [i for i, e in enumerate(events) if e == "encode end"]
    assert len(starts) == len(ends) == 3
    ticks_during = [events[a:b].count("tick") for a, b in zip(starts, ends)]
    assert min(ticks_during) >= 20, ticks_during
    # cached: prompting an encoded slice needs no new encode
    seg.set_slice(21)
    seg.set_box(300, 320, 410, 410)
    seg.segment(wait=True)
    assert slow.encodes == 3

    seg.encode_slices(range(30, 40))
    qtbot.waitUntil(lambda: seg.progress.value() >= 1, timeout=30000)
    seg.cancel()
    qtbot.waitUntil(lambda: not seg.live.encoding, timeout=30000)
    assert slow.encodes < 3 + 10


def test_slice_change_during_encoding_never_shows_wrong_mask(make_napari_viewer, qtbot, ct_data, tumour):
    viewer, seg, (ct,) = _viewer_with(make_napari_viewer, ct_data[:1])
    slow = SlowClassic(delay=0.6)
    session_for(viewer).set_model(slow, "slow classic")
    z, box = tumour
    win = seg.window
    seg.set_slice(z)
    other = (box[0] + 10, box[1] + 10, box[2] - 10, box[3] - 10)
    seg.set_box(*other)
    seg.segment()  # starts encoding slice z
    qtbot.waitUntil(lambda: seg.live.worker is not None, timeout=5000)
    seg.set_box(*box)  # a newer prompt on z before the first answer: only the newest may show
    seg.segment()
    seg.set_slice(z - 3)  # and move on while z is still encoding
    seg.set_box(*box)
    seg.segment()
    _finish(seg, qtbot)
    assert seg.discarded >= 1
    pv = seg.preview_layer.data
    assert np.array_equal(pv[z] > 0, direct(ClassicModel(), np.asarray(ct.data[z]), win, {"box": box}))
    assert np.array_equal(pv[z - 3] > 0, direct(ClassicModel(), np.asarray(ct.data[z - 3]), win, {"box": box}))
    planes_with_mask = set(np.flatnonzero(pv.any(axis=(1, 2))))
    assert planes_with_mask <= {z, z - 3}


def test_errors_become_notifications(make_napari_viewer, qtbot, tmp_path):
    viewer, seg, (img,) = _viewer_with(make_napari_viewer, sample_layers("histology"))
    mw = ModelWidget(viewer)
    viewer.window.add_dock_widget(mw, name="Model", area="right")
    assert mw.device.itemText(0) == "cpu"
    assert mw.load(family="medsam", checkpoint=None) is False
    assert "needs a checkpoint" in mw.notes.last
    bogus = tmp_path / "broken.pth"
    bogus.write_bytes(b"not a checkpoint")
    mw.set_checkpoint(str(bogus), wait=True)
    assert mw.load(family="medsam", checkpoint=str(bogus), wait=True) is False
    assert mw.notes.messages[-1][0] == "error" and mw.model.family == "classic"
    assert mw.load(family="classic", checkpoint=None, wait=True) is True

    with pytest.raises(SamlabError, match="outside"):
        seg.add_point(10_000, 5)
    # the same through a key binding / button: a notification, no exception
    seg.guard(lambda: seg.set_box(-50, -50, -10, -10), "drawing a box")
    assert seg.notes.messages[-1][0] == "error" and "outside" in seg.notes.last
    # only negative clicks: nothing to segment yet, and no error
    seg.add_point(20, 20, positive=False)
    _finish(seg, qtbot)
    assert not seg.preview_layer or not seg.preview_layer.data.any()
    assert seg.commit()["written"] == 0 and "nothing to commit" in seg.notes.last
    viewer.dims.ndisplay = 3
    with pytest.raises(SamlabError, match="2D"):
        seg.segment(wait=True)
    viewer.dims.ndisplay = 2


def test_composite_of_channel_layers(make_napari_viewer, qtbot):
    data = sample_layers("nuclei")[:1]
    viewer, seg, (nuc,) = _viewer_with(make_napari_viewer, data)
    second = viewer.add_image(np.asarray(nuc.data)[::-1].copy(), name="channel 2", scale=nuc.scale,
                              colormap="magenta", blending="additive")
    seg.set_image_layer(nuc)
    seg.set_source("composite")
    assert seg.window is None  # channels enter as displayed (their own contrast limits)
    req = seg.make_request(seg.current_plane(), None)
    rgb = req.extract()
    assert rgb.shape == nuc.data.shape + (3,) and rgb.dtype == np.float32 and 0 <= rgb.min() and rgb.max() <= 1
    assert second.visible
    ys, xs = np.nonzero(np.asarray(sample_layers("nuclei")[1][0]) > 0)
    seg.add_point(int(xs[0]), int(ys[0]))
    assert seg.segment(wait=True).any()


def test_screenshot_with_docked_widgets(make_napari_viewer, qtbot, artifacts):
    viewer, seg, (img,) = _viewer_with(make_napari_viewer, sample_layers("histology"), show=True)
    mw = ModelWidget(viewer)
    viewer.window.add_dock_widget(mw, name="Model", area="right")
    seg.set_box(100, 80, 200, 180)
    seg.segment(wait=True)
    seg.commit(name="gland", label=1)
    seg.add_point(360, 130)
    seg.set_box(300, 60, 420, 200)
    seg.segment(wait=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.layers.selection.active = img
    viewer.reset_view()
    qtbot.wait(300)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    path = artifacts / "widget_screenshot.png"
    import imageio.v3 as iio

    iio.imwrite(path, shot)
    assert path.stat().st_size > 10_000
    assert shot.shape[0] > 300 and shot.shape[1] > 600
    assert distinct_colors(shot) >= 20  # not blank: image, masks, widgets
    # the committed segment's colour is on screen
    seg_rgb = (np.array(seg.segments[0]["color"][:3]) * 255).astype(int)
    close = np.abs(shot[..., :3].astype(int) - seg_rgb).max(axis=-1) < 60
    assert close.sum() > 200


def test_generated_checkpoint_in_model_panel(make_napari_viewer, qtbot, tmp_path, ct_data, tumour):
    """A checkpoint the test writes: detected in the model panel, loaded off the Qt thread, used live."""
    from napari_samlab.widgets._compat import avoid_triton_llvm_clash

    avoid_triton_llvm_clash()  # torch's lazy triton import segfaults next to Mesa's LLVM
    pytest.importorskip("torch")
    import checkpoint_factory as cf

    from napari_samlab.models.registry import load_model

    path = cf.save(cf.litemedsam_state_dict(seed=2), tmp_path / "lite_medsam.pth")
    viewer, seg, (ct,) = _viewer_with(make_napari_viewer, ct_data[:1])
    mw = ModelWidget(viewer)
    viewer.window.add_dock_widget(mw, name="Model", area="right")
    mw.set_family("auto")
    mw.set_checkpoint(str(path), wait=True)
    assert mw.info["family"] == "litemedsam" and "litemedsam" in mw.detected.text()
    assert mw.family.currentText() == "litemedsam"
    assert mw.load(wait=True) is True
    assert seg.session.model.family == "litemedsam" and mw.model is seg.session.model
    assert "litemedsam" in mw.status.text()

    z, box = tumour
    seg.set_slice(z)
    win = seg.window  # the family's own CT window, also on screen
    np.testing.assert_allclose(ct.contrast_limits, (win.lo, win.hi))
    seg.set_box(*box)
    mask = seg.segment(wait=True)
    expected = direct(load_model(str(path), family="litemedsam"), np.asarray(ct.data[z]), win, {"box": box})
    assert np.array_equal(mask, expected)
    seg.commit(name="tumour")
    assert seg.segments[0]["voxels"] == int(expected.sum())


def test_plane_geometry_helpers():
    """Slices as shown on screen, and mouse-drawn box edges to inclusive pixel indices."""
    from napari_samlab.widgets._plane import Plane, box_on_plane

    vol = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    cor = Plane((0, 2), ((1, 3),), 3)
    assert np.array_equal(cor.extract(vol), vol[:, 3, :])
    swapped = Plane((2, 0), ((1, 3),), 3)  # x down the screen, z across
    assert np.array_equal(swapped.extract(vol), vol[:, 3, :].T)
    out = np.zeros_like(vol)
    swapped.view(out)[1, 2] = 7  # row 1 = x 1, column 2 = z 2
    assert out[2, 3, 1] == 7 and out.sum() == 7
    assert cor.to_xy(cor.data_point(4, 2)) == (4.0, 2.0)
    # drawn along pixel edges (9.5 .. 20.5) or placed on centres (10 .. 20): pixels 10..20
    edges = np.array([[0, 9.5, 9.5], [0, 9.5, 20.5], [0, 20.5, 20.5], [0, 20.5, 9.5]])
    ax = Plane((1, 2), ((0, 0),), 3)
    assert box_on_plane(edges, ax, (64, 64)) == (10, 10, 20, 20)
    assert box_on_plane(edges.round(), ax, (64, 64)) in ((10, 10, 20, 20), (10, 10, 21, 21))
    assert box_on_plane(edges + 100, ax, (64, 64)) is None
