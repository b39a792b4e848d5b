"""Model panel and Segment panel: what the engine really runs, the window in use, MSA options (real viewer, Xvfb)."""
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
import checkpoint_factory as factory  # noqa: E402
from conftest import _fast_backends  # noqa: E402

from napari_samlab.widgets import ModelWidget, SegmentationWidget  # noqa: E402
from napari_samlab.widgets.model_widget import encoder_choices  # noqa: E402


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    return factory.save(factory.sam_state_dict(seed=3), tmp_path_factory.mktemp("sam") / "tiny_sam.pth")


def test_encoder_box_uses_backend_names():
    from napari_samlab.models.backends import APPROX_BACKENDS, EXACT_BACKENDS

    pairs = encoder_choices()
    assert pairs[0] == ("auto (default)", None)
    names = [b for _, b in pairs[1:]]
    assert set(names[:len(EXACT_BACKENDS)]) == set(EXACT_BACKENDS)  # exact ones first
    assert set(names[len(EXACT_BACKENDS):]) == set(APPROX_BACKENDS)
    for label, backend in pairs[1:]:
        assert label.endswith("(approximate)") == (backend in APPROX_BACKENDS)


def test_status_names_backend_precision_and_disk_storage(make_napari_viewer, sam_file, tmp_path, monkeypatch):
    monkeypatch.delenv("SAMLAB_ENCODER_BACKEND", raising=False)
    viewer = make_napari_viewer()
    mw = ModelWidget(viewer)
    assert "encoder: none (classic engine" in mw.status.text()
    assert mw.load(family="sam", checkpoint=str(sam_file), encoder="torch", wait=True) is True
    assert mw.model.encoder_backend == "torch"
    text = mw.status.text()
    assert "encoder: torch fp32 on cpu (upstream PyTorch)" in text and "disk cache: off" in text
    fast = _fast_backends()
    if fast:  # an exported encoder: checked against PyTorch at load, reported as such
        assert mw.load(encoder=fast[0], wait=True) is True
        assert mw.model.encoder_backend == fast[0]
        assert f"encoder: {fast[0]} fp32 on cpu (exported, checked against PyTorch fp32" in mw.status.text()
    # disk storage: float32 by default, float16 on request, shown in the status and given to the predictor
    assert mw.disk_storage.currentData() == "float32"
    mw.set_memory(keep_on_disk=True, folder=tmp_path / "emb", disk_dtype="float16")
    assert mw.predictor.disk_dtype == "float16" and mw.session.predictor_settings["disk_dtype"] == "float16"
    assert "disk cache: float16 storage" in mw.status.text()
    mw.disk_storage.setCurrentIndex(mw.disk_storage.findData("float32"))  # as a user picks it
    assert mw.predictor.disk_dtype == "float32" and "disk cache: float32 storage" in mw.status.text()


def test_window_line_follows_image_model_and_presets(make_napari_viewer):
    from napari_samlab.base.windowing import CT_PRESETS

    viewer = make_napari_viewer()
    ct = np.full((4, 48, 48), -1000, np.int16)  # air around a soft-tissue block and a bone rim: CT in HU
    ct[:, 10:38, 10:38] = 40
    ct[:, 10:12, 10:38] = 900
    layer = viewer.add_image(ct, name="ct", metadata={"samlab": {"modality": "CT"}})
    seg = SegmentationWidget(viewer)
    line = seg.source.window_line
    assert line.text().startswith("model classic") and "image taken as CT (DICOM Modality)" in line.text()
    assert "[auto]" in line.text()
    level, width = CT_PRESETS["ct-lung"]
    seg.source.set_window("ct-lung")
    assert f"window ct-lung: level {level:g}, width {width:g}" in line.text() and "[chosen]" in line.text()
    assert tuple(layer.contrast_limits) == (level - width / 2, level + width / 2)
    seg.source.set_window(level=50, width=300)  # the user's own window always wins
    assert "window L50/W300: level 50, width 300 (values clipped to [-100, 200])" in line.text()
    seg.source.set_window("none")
    assert "window none: pixel values as they are" in line.text()
    seg.session.set_model(seg.session.model, "classic again")  # another model: the line names it
    assert line.text().startswith("model classic again")
    mr = viewer.add_image(np.random.default_rng(0).integers(0, 900, (4, 48, 48)).astype(np.int16), name="mr")
    seg.set_image_layer(mr)
    assert "image taken as MR (intensities" in line.text()


def test_msa_without_image_size_asks_for_the_field(make_napari_viewer, tmp_path, monkeypatch):
    from test_msa import write_msa

    monkeypatch.setenv("SAMLAB_ENCODER_BACKEND", "torch")
    path = write_msa(tmp_path, "B", image_size=256, global_rows=127, depth=2, global_idx=(1,), seed=5)
    viewer = make_napari_viewer()
    mw = ModelWidget(viewer)
    assert mw.msa.isHidden()
    mw.set_family("msa")
    assert not mw.msa.isHidden()  # MSA's own fields show for MSA only
    assert mw.load(checkpoint=str(path), wait=True) is False
    assert "Image size field" in mw.failed and "--" not in mw.failed
    assert mw.notes.last in mw.failed and mw.model.family == "classic"
    mw.set_family("msa")  # the form went back to the model in use
    assert mw.load(checkpoint=str(path), image_size=256, num_outputs=2, wait=True) is True
    assert (mw.model.family, mw.model.image_size, mw.model.num_classes) == ("msa", 256, 2)
    assert mw.failed is None and "encoder: torch fp32" in mw.status.text()
    mw.set_family("sam")
    assert mw.msa.isHidden()
