"""MedSAM2 in the napari Segment panel under a real viewer (Xvfb): load, Propagate, Cancel, correct, commit, undo.

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest tests/test_widget_memory_propagation.py -q

A tiny random-weight SAM 2.1 net in MedSAM2's file format (``test_medsam2``'s
helpers); the panel must give what MedSAM2's pipeline gives.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip("napari needs a display: run the widget tests under xvfb-run", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_medsam2 import BOX, KEY, blob_volume, test_archs, write_checkpoint  # noqa: E402,F401

from napari_samlab.models.base import Prompt  # noqa: E402
from napari_samlab.propagate.memory import segment_with_memory  # noqa: E402
from napari_samlab.widgets import ModelWidget, SegmentationWidget  # noqa: E402


def test_medsam2_propagate_cancel_correct_commit(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtCore import Qt

    ckpt = write_checkpoint(tmp_path / "MedSAM2_test.pt")
    vol = blob_volume()
    viewer = make_napari_viewer()
    img = viewer.add_image(vol, name="blob")
    mw = ModelWidget(viewer)
    viewer.window.add_dock_widget(mw, name="Model", area="right")
    assert mw.family.findText("medsam2") >= 0 and mw.family.findText("sam2") >= 0  # offered from the registry
    assert mw.load(family="medsam2", checkpoint=str(ckpt), wait=True) is True
    model = mw.model
    assert model.family == "medsam2" and model.memory_propagation
    seg = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment", area="right")
    seg.set_image_layer(img)
    assert seg.session.model is model
    seg.set_window("none")
    panel = seg.propagation

    # Propagate: MedSAM2's recipe, per-slice progress, results in the preview and the QC table
    seg.set_slice(KEY)
    seg.set_box(*BOX)
    seen = []
    panel.progress.valueChanged.connect(lambda v: seen.append((v, panel.progress.maximum())))
    res = seg.propagate(wait=True)
    ref = segment_with_memory(model, vol, KEY, Prompt(box=BOX), window="none")
    assert np.array_equal(res.mask, ref) and res.strategy == "memory" and not res.cancelled
    assert np.array_equal(seg.preview_layer.data > 0, ref)
    steps = [v for v, m in seen if m > 1]
    assert len(set(steps)) >= 4, "progress must move slice by slice"
    assert panel.table.rowCount() == len(res.records) >= 4
    assert f"{len(res.records)} slices" in panel.summary.text()

    # a correction on slice 5 re-tracks from there with the same memory
    first_memory = res.memory
    fixed = np.zeros(vol.shape[1:], bool)
    fixed[20:28, 22:34] = True
    ys, xs = np.nonzero(seg.preview_layer.data[5] > 0)
    seg.preview_layer.data_setitem((np.full(ys.size, 5), ys, xs), 0)
    ys, xs = np.nonzero(fixed)
    seg.preview_layer.data_setitem((np.full(ys.size, 5), ys, xs), 1)
    before = (seg.preview_layer.data > 0).copy()
    res2 = seg.repropagate_from(5, wait=True)
    assert res2.memory is first_memory and 5 in res2.anchors
    after = seg.preview_layer.data > 0
    assert np.array_equal(after[:5], before[:5]) and np.array_equal(after, res2.mask)
    assert res2.encoder_calls <= vol.shape[0] - 5

    # commit and undo, as for every engine
    out = seg.commit(name="blob", label=1)
    assert out["written"] == int(after.sum()) and np.array_equal(seg.target_layer.data == 1, after)
    assert seg.propagation_result is None
    seg.undo()
    assert not (seg.target_layer.data == 1).any()

    # Cancel part way: slow the encoder down so the button is pressed mid-propagation
    gate = threading.Event()
    real = model.net.forward_image
    encodes = []

    def slow(x):
        encodes.append(1)
        if len(encodes) > 2:
            gate.wait(10)
        return real(x)

    model.net.forward_image = slow
    try:
        seg.clear_prompts()
        seg.set_slice(KEY)
        seg.set_box(*BOX)
        seg.propagate()
        qtbot.waitUntil(lambda: len(encodes) > 2, timeout=30000)
        assert panel.running and panel.cancel_button.isEnabled()
        qtbot.mouseClick(panel.cancel_button, Qt.LeftButton)
        gate.set()
        qtbot.waitUntil(lambda: not panel.running, timeout=30000)
    finally:
        gate.set()
        model.net.forward_image = real
    res3 = seg.propagation_result
    assert res3.cancelled and len(res3.records) < len(res.records)
    assert np.array_equal(seg.preview_layer.data > 0, res3.mask)
    assert "cancelled" in panel.summary.text() and not panel.cancel_button.isEnabled()
