"""The review dock under a real napari viewer (Xvfb)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gui

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip("napari needs a display: run the widget tests under xvfb-run", allow_module_level=True)

from napari_samlab.cohort.compare import compare_labels, disagreement_map  # noqa: E402
from napari_samlab.widgets.review_widget import DISAGREEMENT, ReviewWidget  # noqa: E402


@pytest.fixture()
def truth_and_test(samples):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(samples / "ct_chest_lung2_tumour.nrrd"))
    truth = (sitk.GetArrayFromImage(img) > 0).astype(np.uint8)
    # a crop around the tumour keeps the viewer light
    z, y, x = np.nonzero(truth)
    truth = truth[max(z.min() - 3, 0):z.max() + 4, y.min() - 20:y.max() + 20, x.min() - 20:x.max() + 20].copy()
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    test = truth.copy()
    test[zs[-3]] = 0  # a slice the test misses entirely: the largest disagreement
    test[zs[0], :5, :5] = 2  # a label only the test has
    return truth, test, tuple(reversed(img.GetSpacing())), int(zs[-3])


def test_review_dock_table_navigation_and_disagreement_layer(make_napari_viewer, qtbot, truth_and_test):
    truth, test, scale, worst = truth_and_test
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros(truth.shape, np.float32), name="CT", scale=scale)
    viewer.add_labels(truth, name="truth", scale=scale)
    viewer.add_labels(test, name="samlab", scale=scale)
    dock = ReviewWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Review", area="right")
    assert (dock.reference_box.currentText(), dock.test_box.currentText()) == ("truth", "samlab")

    dock.compare()
    qtbot.waitUntil(lambda: not dock.busy, timeout=30000)
    expected = compare_labels(truth, test, scale)
    assert dock.rows == expected and [r["label"] for r in expected] == [1, 2]
    assert dock.table.rowCount() == 2
    assert dock.table.item(0, 1).text() == f"{expected[0]['dice']:.4f}"
    assert dock.table.item(1, 2).text() == "–"  # label 2 is absent from the reference: no HD95
    layer = viewer.layers[DISAGREEMENT]
    np.testing.assert_array_equal(layer.data, disagreement_map(truth, test))
    assert tuple(layer.scale) == pytest.approx(scale)
    assert DISAGREEMENT not in [dock.reference_box.itemText(i) for i in range(dock.reference_box.count())]

    # clicking label 1's row goes to the slice the test missed
    rect = dock.table.visualItemRect(dock.table.item(0, 0))
    from qtpy.QtCore import Qt

    qtbot.mouseClick(dock.table.viewport(), Qt.LeftButton, pos=rect.center())
    assert viewer.dims.current_step[0] == worst

    # a second comparison updates the same layer; bad choices are one clear message, no crash
    dock.set_layers("samlab", "truth")
    dock.compare()
    qtbot.waitUntil(lambda: not dock.busy, timeout=30000)
    assert [ly.name for ly in viewer.layers].count(DISAGREEMENT) == 1
    dock.set_layers("truth", "truth")
    dock.compare()
    assert "same layer" in dock.status.text() and not dock.busy
    viewer.add_labels(truth[:-1], name="short", scale=scale)
    dock.set_layers("truth", "short")
    dock.compare()
    assert "shape" in dock.status.text()
