"""The "Segment all" dock in a real napari viewer (Xvfb): run, table, select, delete, merge."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from napari_samlab.instances import match_instances

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


def test_segment_all_dock(make_napari_viewer, qtbot):
    from napari_samlab.widgets.everything_widget import RESULT_LAYER, EverythingWidget

    img = tifffile.imread(SAMPLES / "nuclei.tif")
    truth = tifffile.imread(SAMPLES / "nuclei_labels.tif")
    viewer = make_napari_viewer()
    viewer.add_image(img, name="nuclei")
    w = EverythingWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment all")
    w.set_image_layer("nuclei")
    w.set_object_size(22)
    layer = w.run(wait=True, timeout=120)
    assert layer is not None and layer.name == RESULT_LAYER
    labels = np.asarray(layer.data)
    n = int(labels.max())
    assert sorted(np.unique(labels)) == list(range(n + 1))
    assert match_instances(truth, labels).f1 > 0.75
    # one table row per object, with area, mean intensity and score
    assert w.table.rowCount() == n == len(w.rows)
    row = w.rows[4]
    assert row["pixels"] == int((labels == row["label"]).sum()) and row["mean_intensity"] > 0 and row["score"] is not None
    # clicking a row selects the object and centres the camera on it
    w.table.selectRow(4)
    assert layer.selected_label == row["label"]
    assert np.allclose(viewer.camera.center[-2:], row["centre"], atol=1.0)
    # delete one, merge two: values stay 1..N and the table follows
    w.delete([row["label"]])
    assert int(layer.data.max()) == n - 1 and w.table.rowCount() == n - 1
    a, b = w.rows[0]["label"], w.rows[1]["label"]
    area = w.rows[0]["pixels"] + w.rows[1]["pixels"]
    w.merge([a, b])
    assert int(layer.data.max()) == n - 2
    assert w.rows[0]["pixels"] == area
    # a bad setting is a notification, not a crash
    w.merge([1])
    assert "at least two" in w.notes.last


def test_segment_all_cancel_leaves_nothing(make_napari_viewer, qtbot):
    from napari_samlab.widgets.everything_widget import EverythingWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((64, 64)).astype(np.float32), name="noise")
    w = EverythingWidget(viewer)
    w.set_image_layer("noise")
    w.cancel()  # nothing running: harmless
    w._cancel = None
    worker = w.run()
    w.cancel()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60000)
    # cancelled before the first step, or finished: never an error message
    assert not any(level == "error" for level, _ in w.notes.messages)


def test_segment_all_bad_engine_is_a_message(make_napari_viewer, qtbot):
    from checkpoint_factory import sam_state_dict

    from napari_samlab.models.registry import model_from_state_dict
    from napari_samlab.widgets._session import session_for
    from napari_samlab.widgets.everything_widget import EverythingWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    session_for(viewer).set_model(model_from_state_dict(sam_state_dict(), family="medsam"), "medsam")
    w = EverythingWidget(viewer)
    w.set_image_layer("img")
    w.set_engine("model")
    w.run(wait=True, timeout=60)
    assert "medsam cannot segment everything" in w.notes.last
    assert w.labels_layer is None
