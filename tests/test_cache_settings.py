"""The model panel's "Memory" group and encoder choice, under a real napari viewer (Xvfb)."""
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
from widget_helpers import add_layers, direct, sample_layers  # noqa: E402

from napari_samlab.models.classic import ClassicModel  # noqa: E402
from napari_samlab.predict.cache import DEFAULT_MEMORY_MB  # noqa: E402
from napari_samlab.widgets import ModelWidget, SegmentationWidget  # noqa: E402

BOX = (100, 80, 200, 180)


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "samlab-cache"
    monkeypatch.setenv("SAMLAB_CACHE_DIR", str(root))
    return root


def _panels(make_napari_viewer):
    viewer = make_napari_viewer()
    (img,) = add_layers(viewer, sample_layers("histology"))
    seg = SegmentationWidget(viewer)
    seg.set_image_layer(img)
    mw = ModelWidget(viewer)
    viewer.window.add_dock_widget(mw, name="Model", area="right")
    return viewer, seg, mw, img


def test_memory_settings_reach_the_predictor(make_napari_viewer, qtbot, cache_root):
    viewer, seg, mw, img = _panels(make_napari_viewer)
    p = mw.predictor
    assert mw.memory_mb.value() == DEFAULT_MEMORY_MB and not mw.half_precision.isChecked() and not mw.keep_on_disk.isChecked()
    assert (p.memory_mb, p.memory_dtype, p.cache_dir) == (DEFAULT_MEMORY_MB, "float32", None)
    assert mw.disk_folder.text() == str(cache_root / "embeddings")

    seg.set_box(*BOX)
    exact = seg.segment(wait=True)
    assert np.array_equal(exact, direct(ClassicModel(), np.asarray(img.data), None, {"box": BOX}))
    full = p.memory_nbytes
    assert p.memory_entries == 1 and full > 0

    mw.memory_mb.setValue(256)  # as typing a value and leaving the box
    mw.half_precision.setChecked(True)
    assert mw.predictor is p and mw.model is p.model  # applied in place: model and predictor kept
    assert (p.memory_mb, p.memory_dtype) == (256, "float16")
    assert p.memory_entries == 1 and p.memory_nbytes < 0.51 * full  # the held slice was halved at once

    folder = cache_root / "embeddings"
    mw.keep_on_disk.click()  # as the user does
    assert mw.keep_on_disk.isChecked() and p.cache_dir == folder
    seg.set_box(110, 90, 190, 170)  # another prompt, same slice: memory hit, nothing new on disk
    seg.segment(wait=True)
    assert p.memory_hits >= 1 and not list(folder.glob("*/*.zarr"))
    p.clear_cache()
    seg.set_box(*BOX)
    half = seg.segment(wait=True)  # encoded again: now also written to disk
    assert len(list(folder.glob("*/*.zarr"))) == 1
    mw.refresh_disk_usage()
    assert "embeddings 0 B (0)" not in mw.disk_usage.text() and "(1)" in mw.disk_usage.text()
    assert np.sum(half != exact) <= 0.01 * exact.size  # float16 features: close to the exact mask

    # a newly loaded model gets the same settings
    assert mw.load(family="classic", checkpoint=None, wait=True) is True
    q = mw.predictor
    assert q is not p and (q.memory_mb, q.memory_dtype, q.cache_dir) == (256, "float16", folder)
    mw.set_memory(half_precision=False, keep_on_disk=False)
    assert (q.memory_dtype, q.cache_dir) == ("float32", None)

    # a value the core refuses: one notification, the controls show what is in effect
    blocker = cache_root / "file"
    blocker.write_text("x")
    mw.set_memory(keep_on_disk=True, folder=blocker / "sub")
    assert mw.notes.messages[-1][0] == "error" and "cannot use" in mw.notes.last
    assert not mw.keep_on_disk.isChecked() and q.cache_dir is None


def test_encoder_choice_is_passed_to_load_model(make_napari_viewer, qtbot, tmp_path, cache_root):
    from napari_samlab.models import registry
    from napari_samlab.widgets._compat import avoid_triton_llvm_clash

    viewer, seg, mw, img = _panels(make_napari_viewer)
    labels = [mw.encoder.itemText(i) for i in range(mw.encoder.count())]
    assert labels[0] == "auto (default)" and mw.encoder.currentIndex() == 0
    assert {mw.encoder.itemData(i) for i in range(1, mw.encoder.count())} == set(registry.ENCODER_BACKENDS) - {"auto"}
    assert "onnxruntime-int8 (approximate)" in labels and "openvino" in labels and "torch" in labels

    avoid_triton_llvm_clash()
    pytest.importorskip("torch")
    import checkpoint_factory as cf

    path = cf.save(cf.litemedsam_state_dict(seed=2), tmp_path / "lite_medsam.pth")
    mw.set_memory(memory_mb=64, half_precision=True)
    mw.encoder.setCurrentIndex(mw.encoder.findText("torch"))
    assert mw.load(family="litemedsam", checkpoint=str(path), wait=True) is True
    assert mw.model.family == "litemedsam" and mw.model.encoder_backend == "torch"
    assert "torch encoder" in mw.status.text()
    assert (mw.predictor.memory_mb, mw.predictor.memory_dtype) == (64, "float16")
    assert mw.load(encoder="auto", wait=True) is True  # auto: load_model's own default
    assert mw.model.encoder_backend == "auto"


def test_clear_button_empties_the_disk_caches(make_napari_viewer, qtbot, cache_root):
    viewer, seg, mw, img = _panels(make_napari_viewer)
    mw.set_memory(keep_on_disk=True)
    folder = cache_root / "embeddings"
    seg.set_box(*BOX)
    seg.segment(wait=True)  # encoded in the panel's worker, written to disk
    other = np.asarray(img.data)[::-1].copy()
    with mw.session.lock:
        mw.predictor.set_image(other, window=None)  # a second slice
    assert len(list(folder.glob("*/*.zarr"))) == 2
    # an exported encoder in models/accel.py's layout
    enc = cache_root / "encoders" / "openvino-0123456789abcdef01234567"
    enc.mkdir(parents=True)
    (enc / "model.bin").write_bytes(b"\0" * 2048)
    (enc / "meta.json").write_text("{}")
    (cache_root / "encoders" / "notes.txt").write_text("not ours")  # makes the encoder folder foreign
    mw.refresh_disk_usage()
    assert "not a napari-samlab exported-encoder cache" in mw.disk_usage.text()
    mw.clear_disk_button.click()
    assert any(level == "error" and "notes.txt" in text for level, text in mw.notes.messages)
    assert enc.exists() and not list(folder.glob("*/*.zarr"))  # the embeddings were cleared, the foreign folder not
    assert "2 embeddings" in mw.notes.last

    (cache_root / "encoders" / "notes.txt").unlink()
    mw.refresh_disk_usage()
    assert "encoders 2.0 kB (1)" in mw.disk_usage.text()
    mw.clear_disk_button.click()
    assert not enc.exists()
    assert mw.notes.messages[-1][0] == "info" and "2.0 kB freed" in mw.notes.last and "1 exported encoders" in mw.notes.last
    assert mw.disk_usage.text() == "embeddings 0 B (0) · encoders 0 B (0)"
    # the predictor keeps working with the emptied cache
    mw.predictor.clear_cache()
    mw.predictor.set_image(other, window=None)
    assert len(list(folder.glob("*/*.zarr"))) == 1
