"""`samlab segment` / `samlab info` per SPEC.md, run as a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import dice

CT_BOX = ["319", "337", "383", "393"]  # the lung tumour on slice 20


def samlab(*args, cwd=None):
    """Run the installed console script (falls back to the module)."""
    exe = os.path.join(os.path.dirname(sys.executable), "samlab")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "napari_samlab.cli"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)


def assert_clean_failure(res, out, pattern):
    assert res.returncode != 0
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert pattern.lower() in err.lower(), err
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".part" in f]


def test_segment_ct_slice_with_classic_default(tmp_path, samples):
    out = tmp_path / "tumour.nii.gz"
    res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, "--slice", 20, "--box", *CT_BOX)
    assert res.returncode == 0, res.stderr
    back = sitk.ReadImage(str(out))
    src = sitk.ReadImage(str(samples / "ct_chest_lung2.nrrd"))
    assert back.GetSize() == src.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), src.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-4)
    labels = sitk.GetArrayFromImage(back)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(samples / "ct_chest_lung2_tumour.nrrd")))
    assert labels[:20].sum() == 0 and labels[21:].sum() == 0  # only the prompted slice
    assert dice(labels[20] > 0, truth[20] > 0) > 0.85
    # the same mask as the Python API with the window the CLI resolves on the volume
    from napari_samlab import SlicePredictor, load_model
    from napari_samlab.models.base import Prompt
    from napari_samlab.base.windowing import resolve_window

    vol = sitk.GetArrayFromImage(src)
    model = load_model(family="classic")
    predictor = SlicePredictor(model)
    predictor.set_image(vol[20], window=resolve_window("auto", vol, model, "CT"))
    api = predictor.predict_prompt(Prompt(box=tuple(float(v) for v in CT_BOX)))
    assert np.array_equal(labels[20] > 0, api.mask)


def test_segment_2d_points_and_label_value(tmp_path, samples):
    out = tmp_path / "nucleus.png"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(samples / "nuclei_labels.tif")))
    ys, xs = np.nonzero(truth == 10)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    res = samlab("segment", samples / "nuclei.tif", "-o", out, "--point", cx, cy, "--label", 7)
    assert res.returncode == 0, res.stderr
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(labels)) == {0, 7}
    assert dice(labels == 7, truth == 10) > 0.5  # one click finds this nucleus


def test_window_options(tmp_path, samples):
    for extra in (["--window", "ct-lung"], ["--window-level", "-600", "1500"], ["--window", "none"]):
        out = tmp_path / f"w{len(os.listdir(tmp_path))}.nrrd"
        res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, "--slice", 20, "--box", *CT_BOX, *extra)
        assert res.returncode == 0, res.stderr
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(out)))[20].sum() > 0


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--slice", "20", "--box", "319", "337", "600", "393"], "outside the image"),
        (["--slice", "20", "--box", "383", "337", "319", "393"], "empty"),
        (["--slice", "99", "--box", *CT_BOX], "outside the volume"),
        (["--box", *CT_BOX], "--slice"),
        (["--slice", "20"], "no prompt"),
        (["--slice", "20", "--point", "-3", "10"], "outside the image"),
        (["--slice", "20", "--box", *CT_BOX, "--model", "medsam"], "--checkpoint"),
        (["--slice", "20", "--box", *CT_BOX, "--window", "ct-liver"], "invalid choice"),
        (["--slice", "20", "--box", *CT_BOX, "--checkpoint", "/nonexistent/medsam.pth"], "does not exist"),
    ],
)
def test_bad_prompts_give_one_line_and_no_output(tmp_path, samples, args, pattern):
    out = tmp_path / "out.nii.gz"
    res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, *args)
    assert_clean_failure(res, str(out), pattern)


def test_bad_images_and_outputs(tmp_path, samples):
    out = tmp_path / "out.nii.gz"
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    assert_clean_failure(samlab("segment", junk, "-o", out, "--box", 1, 1, 5, 5), str(out), "cannot read")
    assert_clean_failure(samlab("segment", tmp_path / "nope.nrrd", "-o", out, "--box", 1, 1, 5, 5), str(out), "does not exist")
    dcm_out = tmp_path / "seg.dcm"
    res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", dcm_out, "--slice", 20, "--box", *CT_BOX)
    assert_clean_failure(res, str(dcm_out), "DICOM series")
    bad_ext = tmp_path / "out.jpg"
    assert_clean_failure(samlab("segment", samples / "nuclei.tif", "-o", bad_ext, "--point", 5, 5), str(bad_ext), "cannot write labels")


def test_not_a_checkpoint(tmp_path, samples):
    fake = tmp_path / "weights.pth"
    fake.write_bytes(os.urandom(4096))
    out = tmp_path / "o.nii.gz"
    res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, "--slice", 20, "--box", *CT_BOX,
                 "--checkpoint", fake, "--model", "medsam")
    assert_clean_failure(res, str(out), "checkpoint")
    res = samlab("info", fake)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_propagate_writes_an_aligned_3d_label(tmp_path, samples):
    out = tmp_path / "tumour3d.nrrd"
    res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, "--slice", 20, "--box", *CT_BOX,
                 "--propagate", "--label", 3)
    assert res.returncode == 0, res.stderr
    back = sitk.ReadImage(str(out))
    src = sitk.ReadImage(str(samples / "ct_chest_lung2.nrrd"))
    assert back.GetSize() == src.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), src.GetDirection(), atol=1e-6)
    labels = sitk.GetArrayFromImage(back)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(samples / "ct_chest_lung2_tumour.nrrd"))) > 0
    assert set(np.unique(labels)) == {0, 3}
    zs = np.flatnonzero(labels.any(axis=(1, 2)))
    assert zs.min() <= 17 and zs.max() >= 23  # reached well beyond the prompted slice
    assert dice(labels > 0, truth) >= 0.8  # eval_propagation.py measures 0.88
    assert "propagated over slices" in res.stderr
    # every flagged slice gets one line saying why, then one line on how to look at them
    flagged = res.stderr.split("check flagged slices", 1)[1].split(":", 1)[0] if "check flagged" in res.stderr else ""
    for z in [int(v) for v in flagged.replace(",", " ").split()]:
        line = [ln for ln in res.stderr.splitlines() if ln.strip().startswith(f"slice {z}:")]
        assert len(line) == 1 and len(line[0]) < 240, res.stderr
        assert any(w in line[0] for w in ("stopped", "area", "overlap", "score", "intensity", "end of the volume", "evidence")), line
    if flagged:
        assert "Next flagged" in res.stderr


def test_propagate_needs_a_volume(tmp_path, samples):
    out = tmp_path / "o.png"
    res = samlab("segment", samples / "nuclei.tif", "-o", out, "--point", 100, 100, "--propagate")
    assert_clean_failure(res, str(out), "volume")


def _one_line_failure(res, pattern):
    assert res.returncode != 0
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert pattern.lower() in err.lower(), err


def test_cache_command_reports_and_clears(tmp_path, samples, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SAMLAB_CACHE_DIR", str(root))
    res = samlab("cache")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"embeddings: {root / 'embeddings'} (empty, not created yet)",
                                       f"encoders: {root / 'encoders'} (empty, not created yet)"]
    out = tmp_path / "t.nii.gz"
    res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, "--slice", 20, "--box", *CT_BOX,
                 "--propagate", "--cache-dir", root / "embeddings")
    assert res.returncode == 0, res.stderr
    n = len(list((root / "embeddings").glob("*/*.zarr")))
    assert n > 5  # one per slice the propagation visited
    # an exported encoder as models/accel.py lays it out (a real export is measured in test_predictor.py)
    entry = root / "encoders" / "onnxruntime-0123456789abcdef01234567"
    entry.mkdir(parents=True)
    (entry / "model.onnx").write_bytes(b"\0" * 4096)
    (entry / "meta.json").write_text("{}")
    res = samlab("cache")
    assert res.returncode == 0, res.stderr
    emb_line, enc_line = res.stdout.splitlines()
    assert emb_line.startswith(f"embeddings: {root / 'embeddings'} ({n} entries, ") and " MB)" in emb_line
    assert enc_line == f"encoders: {root / 'encoders'} (1 entry, 4.0 kB)"

    res = samlab("cache", "--clear")
    assert res.returncode == 0, res.stderr
    assert f"({n} entries, " in res.stdout and "freed" in res.stdout and "(1 entry, 4.0 kB freed)" in res.stdout
    assert not entry.exists() and not list((root / "embeddings").glob("*/*.zarr"))
    res = samlab("cache")
    assert res.stdout.splitlines() == [f"embeddings: {root / 'embeddings'} (0 entries, 0 B)",
                                       f"encoders: {root / 'encoders'} (0 entries, 0 B)"]

    # --cache-dir names the embedding folder, as for segment
    other = tmp_path / "other"
    res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, "--slice", 20, "--box", *CT_BOX, "--cache-dir", other)
    assert res.returncode == 0, res.stderr
    res = samlab("cache", "--cache-dir", other)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith(f"embeddings: {other} (1 entry, ")


def test_cache_command_refuses_bad_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMLAB_CACHE_DIR", str(tmp_path / "cache"))
    mine = tmp_path / "documents"
    (mine / "ab").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    for args in (["cache", "--cache-dir", mine, "--clear"], ["cache", "--cache-dir", mine]):
        _one_line_failure(samlab(*args), "not a napari-samlab embedding cache")
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "ab").is_dir()
    _one_line_failure(samlab("cache", "--cache-dir", tmp_path / "nope"), "does not exist")
    _one_line_failure(samlab("cache", "--cache-dir", mine / "notes.txt"), "not a folder")
    _one_line_failure(samlab("cache", "--cache-dir", tmp_path / "cache" / "encoders"), "does not exist")
    # the encoder folder is checked too, before anything is deleted
    (tmp_path / "cache" / "encoders").mkdir(parents=True)
    (tmp_path / "cache" / "encoders" / "stranger.bin").write_bytes(b"x")
    _one_line_failure(samlab("cache", "--clear"), "not a napari-samlab exported-encoder cache")
    assert (tmp_path / "cache" / "encoders" / "stranger.bin").exists()


def test_version():
    from napari_samlab import __version__

    res = samlab("--version")
    assert res.returncode == 0 and __version__ in res.stdout


def test_window_is_said_and_overridable(tmp_path, samples):
    out = tmp_path / "w.nii.gz"
    res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, "--slice", 20, "--box", *CT_BOX)
    assert res.returncode == 0, res.stderr
    line = [ln for ln in res.stderr.splitlines() if "window" in ln]
    assert len(line) == 1 and "taken as CT" in line[0] and "auto" in line[0], res.stderr
    res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, "--slice", 20, "--box", *CT_BOX,
                 "--window-level", "-600", "1500")
    assert res.returncode == 0, res.stderr
    assert "level -600, width 1500" in res.stderr and "given" in res.stderr


def test_nan_window_is_refused(tmp_path, samples):
    out = tmp_path / "o.nii.gz"
    for lw in (("nan", "nan"), ("40", "inf"), ("40", "0")):
        res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, "--slice", 20, "--box", *CT_BOX,
                     "--window-level", *lw)
        assert_clean_failure(res, str(out), "--window-level")


def test_cuda_is_never_a_silent_cpu_run(tmp_path, samples):
    import torch

    out = tmp_path / "o.nii.gz"
    res = samlab("segment", samples / "ct_chest_lung2.nrrd", "-o", out, "--slice", 20, "--box", *CT_BOX,
                 "--device", "cuda")
    # without CUDA: refused; with CUDA: the classic engine has no GPU code, so refused too (and says so)
    assert_clean_failure(res, str(out), "no usable CUDA" if not torch.cuda.is_available() else "CPU only")


def test_constant_volume_warns_about_the_empty_mask(tmp_path):
    img = sitk.Image(40, 30, 4, sitk.sitkInt16)  # all zero
    path = tmp_path / "zero.nii.gz"
    sitk.WriteImage(img, str(path))
    out = tmp_path / "o.nii.gz"
    res = samlab("segment", path, "-o", out, "--slice", 2, "--box", 5, 5, 20, 20)
    assert res.returncode == 0, res.stderr
    warn = [ln for ln in res.stderr.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "one value" in warn[0] and "empty" in warn[0], res.stderr
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out))).sum() == 0
