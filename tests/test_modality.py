"""CT/MR recognition for the "auto" window: metadata first, intensities as a tolerant fallback (issue 12.7)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from napari_samlab.io.readers import read_image
from napari_samlab.base.windowing import (ModalityGuess, apply_window, ct_window, default_auto_window, describe_window,
                                          detect_modality, modality_from_metadata, resolve_window)


def _ct(seed=0, shape=(6, 48, 48)):
    """A synthetic CT in HU: air outside, fat ring, soft tissue, a bone."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    r = np.hypot(y - shape[1] / 2, x - shape[2] / 2)
    v = np.full(shape, -1000.0)
    v[r < 20] = -100  # fat
    v[r < 16] = 40  # soft tissue
    v[(r < 4)] = 900  # bone
    return (v + rng.normal(0, 15, shape)).astype(np.int16)


def test_metadata_wins_over_intensities(tmp_path):
    mr_like = np.random.default_rng(0).integers(0, 400, (5, 32, 32)).astype(np.int16)
    assert detect_modality(mr_like).kind == "MR"
    assert detect_modality(mr_like, metadata={"modality": "CT"}) == ModalityGuess("CT", "DICOM Modality", 0.0)
    assert modality_from_metadata({"header_text": "descrip: T1 MPRAGE"}) == ("MR", "header description")
    assert modality_from_metadata({"header_text": "descrip: CT abdomen"}) == ("CT", "header description")
    assert modality_from_metadata({"header_text": "descrip: spm - algebra"}) == (None, "")
    # a NIfTI whose header says CT: the reader keeps descrip, the detection reads it
    import nibabel as nib

    nii = nib.Nifti1Image(mr_like.T, np.eye(4))
    nii.header["descrip"] = b"CT chest 5mm"
    nib.save(nii, str(tmp_path / "said_ct.nii.gz"))
    img = sitk.GetImageFromArray(mr_like)
    img.SetMetaData("NRRD_content", "MR T1")
    sitk.WriteImage(img, str(tmp_path / "said_mr.nrrd"))
    for name, kind in (("said_ct.nii.gz", "CT"), ("said_mr.nrrd", "MR")):
        image = read_image(tmp_path / name)
        guess = detect_modality(image.array, metadata=image.metadata)
        assert (guess.kind, guess.source) == (kind, "header description"), image.metadata


def test_intensity_fallback_tolerates_cropped_and_shifted_ct():
    ct = _ct()
    assert detect_modality(ct).kind == "CT"
    cropped = ct[:, 10:38, 10:38]  # inside the body: no air, fat and tissue remain
    assert cropped.min() > -500
    g = detect_modality(cropped)
    assert g.kind == "CT" and "cropped" in g.source
    shifted = (ct.astype(np.int32) + 1024).astype(np.uint16)  # stored as HU + 1024
    g = detect_modality(shifted)
    assert g.kind == "CT" and g.hu_offset == 1024
    # the auto window follows the stored values: same uint8 image as the HU volume gives
    w_hu, w_sh = default_auto_window(ct), default_auto_window(shifted)
    assert (w_sh.lo - w_hu.lo, w_sh.hi - w_hu.hi) == (1024, 1024)
    # so do the classic engine's own window and the HU presets (the classic
    # window ignored the offset: lung2 tumour 3D Dice 0.885 -> 0.020)
    from napari_samlab.models.classic import ClassicModel

    hu = np.clip(ct, -1024, None)  # unsigned storage holds nothing below -1024 HU
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)
    for model, window in ((ClassicModel(), "auto"), (None, "ct-lung"), (None, "ct-abdomen")):
        w_hu, w_sh = resolve_window(window, hu, model), resolve_window(window, stored, model)
        np.testing.assert_allclose(apply_window(stored, w_sh), apply_window(hu, w_hu), atol=1e-6)
    # not CT: an MR volume with a background of zeros, and a z-scored MR with small negatives
    mr = np.random.default_rng(1).gamma(4.0, 120.0, (5, 32, 32)).astype(np.uint16)
    mr[:, :4] = 0
    assert detect_modality(mr).kind == "MR"
    z = np.random.default_rng(2).normal(0, 1, (5, 32, 32)).astype(np.float32)
    assert detect_modality(z).kind == "MR"
    assert detect_modality(np.zeros((32, 32, 3), np.uint8)).kind == "natural"


def test_describe_window_says_what_and_why():
    w = default_auto_window(_ct())
    line = describe_window(w, detect_modality(_ct()))
    assert "level" in line and "width" in line and "CT" in line and "\n" not in line


def _mr(seed=0, shape=(12, 48, 48)):
    """A synthetic T1-like head: tissue ~300 with a brighter 'lesion', 0 outside."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    head = np.hypot(y - 24, x - 24) < 20
    lesion = np.hypot(np.hypot(y - 22, x - 26), 3 * (z - 6)) < 8
    v = np.where(head, 300.0, 0.0) + np.where(lesion, 250.0, 0.0) + np.where(head, rng.normal(0, 12, shape), 0.0)
    return v.astype(np.float32), head, lesion


def test_nan_marks_voxels_without_data():
    """NaN outside the brain or the field of view (SPM, FSL): statistics skip it, windows map it to black.

    A NaN in the sample made every percentile NaN: the window was (nan, nan)
    and the classic engine found nothing (Colin27 brain 0.975 -> 0.0).
    """
    from napari_samlab.models.base import Prompt
    from napari_samlab.models.classic import ClassicModel
    from napari_samlab.predict.predictor import SlicePredictor
    from napari_samlab.propagate import propagate_from_prompt

    mr, head, lesion = _mr()
    mr_nan = np.where(head, mr, np.nan).astype(np.float32)
    ct = _ct().astype(np.float32)
    ct_nan = np.where(ct < -900, np.nan, ct).astype(np.float32)  # no data outside the body
    assert detect_modality(ct_nan).kind == "CT" and detect_modality(mr_nan).kind == "MR"
    model = ClassicModel()
    # MR: NaN where the head has 0 gives the same windows and the same slices
    assert default_auto_window(mr_nan) == default_auto_window(mr)
    assert model.auto_window(mr_nan) == model.auto_window(mr)
    assert np.array_equal(apply_window(mr_nan, default_auto_window(mr_nan)), apply_window(mr, default_auto_window(mr)))
    # CT: the windows of the voxels that hold data; NaN shows as the window's bottom
    body = ct_nan[np.isfinite(ct_nan)]
    assert default_auto_window(ct_nan) == ct_window(body, 40.0, 400.0, "uint8", "ct-abdomen")
    assert model.auto_window(ct_nan) == ct_window(body, -300.0, 1400.0, "unit", "ct-classic")
    for w in (default_auto_window(ct_nan), model.auto_window(ct_nan)):
        shown = apply_window(ct_nan, w)
        assert np.isfinite(w.lo) and np.isfinite(w.hi) and np.all(np.isfinite(shown))
        assert np.all(shown[np.isnan(ct_nan)] == 0) and shown.max() > 0
    # the engine sees the same slices, so it finds the same object
    box = Prompt(box=(15, 11, 37, 33))
    a = propagate_from_prompt(SlicePredictor(ClassicModel()), mr_nan, 6, box, modality="MR")
    b = propagate_from_prompt(SlicePredictor(ClassicModel()), mr, 6, box, modality="MR")
    assert a.mask.any() and np.array_equal(a.mask, b.mask)
    assert (a.mask & lesion).sum() >= 0.7 * lesion.sum()
