"""Issue 17: what a new user met in the GUI, each under a real napari viewer (Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest tests/test_widgets_new_user.py -q

Each test repeats the user's steps and checks what the user sees: the
Image box, the colours the Points layer draws (and the rendered pixels),
the progress bar, the preview after fill between, the plane shown.
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
from widget_helpers import sample_layers  # noqa: E402

from napari_samlab.propagate.oracle import OracleModel  # noqa: E402
from napari_samlab.widgets import ModelWidget, SegmentationWidget  # noqa: E402
from napari_samlab.widgets._session import session_for  # noqa: E402

GREEN, RED = (0.1, 0.85, 0.2), (0.95, 0.15, 0.15)


def _dock(viewer):
    seg = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment", area="right")
    return seg


def test_image_box_shows_what_is_bound_from_the_first_moment(make_napari_viewer, qtbot):
    """Item 2: after Open Sample and docking, the first Box click works; the box follows add/remove/rename."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    viewer.open_sample("napari-samlab", "ct_chest")  # the truth labels layer ends up selected, not the CT
    assert viewer.layers.selection.active.name != "CT chest"
    seg = _dock(viewer)
    assert seg.image_layer is viewer.layers["CT chest"]
    assert seg.image_combo.currentText() == "CT chest"
    qtbot.mouseClick(seg.box_button, Qt.LeftButton)  # the first Box click
    assert not [m for m in seg.notes.messages if m[0] == "error"], seg.notes.messages
    assert viewer.layers.selection.active is seg.boxes_layer and seg.boxes_layer.mode == "add_rectangle"

    ct = viewer.layers["CT chest"]
    ct.name = "chest"  # renamed: the box shows the new name
    assert seg.image_combo.currentText() == "chest" and seg.image_layer is ct
    other = viewer.add_image(np.zeros((8, 32, 32), np.float32), name="other")  # added and selected: bound
    assert seg.image_layer is other and seg.image_combo.currentText() == "other"
    assert [seg.image_combo.itemText(i) for i in range(seg.image_combo.count())] == ["chest", "other"]
    viewer.layers.remove(other)  # the bound one removed: another image is bound and shown
    assert seg.image_layer is ct and seg.image_combo.currentText() == "chest"
    viewer.layers.remove(ct)
    assert seg.image_layer is None and seg.image_combo.currentText() == ""


def test_points_are_green_and_red_as_drawn(make_napari_viewer, qtbot):
    """Item 4: object points are green and background points red, in the layer and on screen."""
    viewer = make_napari_viewer(show=True)
    img = viewer.add_image(np.full((120, 160), 100, np.uint8), name="grey", colormap="gray")
    seg = _dock(viewer)
    seg.live_check.setChecked(False)
    seg.start_points()
    pts = seg.points_layer
    pts.add([40, 50])  # a click in add mode: object
    seg.toggle_polarity()
    pts.add([80, 110])  # background
    seg.add_point(30, 90, positive=False)  # the scripted way
    assert pts.features["positive"].tolist() == [True, False, False]
    np.testing.assert_allclose(pts.face_color[:, :3], [GREEN, RED, RED], atol=0.01)

    viewer.layers.selection.active = img
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)

    def near(rgb):
        return int((np.abs(shot - np.array(rgb) * 255).max(axis=-1) < 40).sum())

    assert near(GREEN) > 30 and near(RED) > 60  # one green disc, two red ones
    assert near((1, 1, 1)) < near(RED)  # not white discs


def _crop(volume_and_truth=None):
    ct, lab = sample_layers("ct_chest")
    sl = (slice(None), slice(300, 430), slice(280, 420))
    vol = np.ascontiguousarray(ct[0][sl])
    truth = np.ascontiguousarray(lab[0][sl] > 0)
    return vol, truth, {"name": "CT crop", "scale": ct[1]["scale"]}


def test_fill_between_after_repropagate_keeps_model_output_and_progress_ends(make_napari_viewer, qtbot):
    """Items 3 and 5: re-propagate then fill between changes nothing; the bar ends at 100 %, not part way."""
    vol, truth, kw = _crop()
    viewer = make_napari_viewer()
    img = viewer.add_image(vol, **kw)
    seg = _dock(viewer)
    session_for(viewer).set_model(OracleModel(vol, truth), "oracle")
    seg.propagation.prefetch_check.setChecked(False)
    seg.set_slice(20)
    seg.set_box(39, 37, 103, 93)
    res = seg.propagate(wait=True)
    bar = seg.propagation.progress
    assert res.z_extent() == (15, 25) and len(res.records) < vol.shape[0]  # stopped part way through the volume
    assert bar.value() == bar.maximum() > 0  # 100 %, not 12 of 61

    seg.set_slice(24)
    seg.set_box(39, 37, 90, 93)
    seg.segment(wait=True)
    seg.repropagate_from(24, wait=True)
    before = seg.preview_layer.data.copy()
    assert seg.fill_between() == []  # every slice between holds model output: nothing to fill
    assert np.array_equal(seg.preview_layer.data, before)
    assert "nothing to fill" in seg.notes.last
    assert bar.value() == bar.maximum()

    # an emptied slice inside the object is filled, nothing else changes; one undo step takes it back
    seg.preview_layer.data[18] = 0
    gap = seg.preview_layer.data.copy()
    assert seg.fill_between() == [18]
    after = seg.preview_layer.data
    assert after[18].any() and np.array_equal(np.delete(after, 18, 0), np.delete(gap, 18, 0))
    assert seg.undo() == "fill between" and np.array_equal(seg.preview_layer.data, gap)


def test_several_images_views_follow_the_bound_layer(make_napari_viewer, qtbot):
    """Item 6: coronal lands on a slice of the bound volume; a 2D image after it gets 2D controls."""
    viewer = make_napari_viewer()
    big = viewer.add_image(np.zeros((40, 300, 300), np.int16), name="big", scale=(5, 1, 1))
    rng = np.random.default_rng(0)
    small = viewer.add_image(rng.integers(0, 100, (20, 40, 50)).astype(np.int16), name="small",
                             translate=(20, 400, 10))
    seg = _dock(viewer)
    seg.set_image_layer(small)
    assert not seg.source.view_row.isHidden() and not seg.propagation.isHidden()
    seg.set_view("coronal")
    plane = seg.current_plane()
    assert plane.axes == (0, 2)
    y = small.world_to_data(np.asarray(viewer.dims.point))[1]
    assert 0 <= round(y) < 40 and plane.index == ((1, round(y)),)  # on the small volume, not big's edge
    seg.set_box(5, 2, 30, 12)
    assert seg.segment(wait=True).shape == (20, 50)
    seg.set_image_layer(big)
    seg.set_view("sagittal")
    assert 0 <= seg.current_plane().index[0][1] < 300

    # a 2D image with coronal still shown: its own axes, 2D controls, areas in mm²
    flat = viewer.add_image(rng.integers(0, 100, (60, 80)).astype(np.uint8), name="flat")
    assert seg.image_layer is flat
    assert seg.source.view_row.isHidden() and seg.propagation.isHidden()
    seg.set_box(10, 10, 40, 40)
    assert seg.segment(wait=True).shape == (60, 80)
    assert not [m for m in seg.notes.messages if m[0] == "error"], seg.notes.messages
    seg.commit(name="flat thing")
    assert "area_mm2" in seg.segments[0] and seg.table.horizontalHeaderItem(4).text() == "area (mm²)"


def test_model_panel_after_failed_load_shows_what_is_in_use(make_napari_viewer, qtbot, tmp_path):
    """Item 8: the form goes back to the model in use; the failed attempt is named as failed."""
    viewer = make_napari_viewer()
    mw = ModelWidget(viewer)
    viewer.window.add_dock_widget(mw, name="Model", area="right")
    bogus = tmp_path / "broken.pth"
    bogus.write_bytes(b"not a checkpoint")
    assert mw.load(family="medsam", checkpoint=str(bogus), wait=True) is False
    assert mw.family.currentText() == "classic" and mw.checkpoint.text() == ""
    assert mw.model.family == "classic"
    text = mw.status.text()
    assert "failed" in text and "medsam" in text and "in use: classic" in text
    assert mw.load(family="classic", checkpoint=None, wait=True) is True
    assert "failed" not in mw.status.text()
