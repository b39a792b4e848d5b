"""Reading DICOM series: sorting, geometry, pixel values and refusals."""
from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, RLELossless

sys.path.insert(0, str(Path(__file__).parent))
import dicom_helpers as h  # noqa: E402

from napari_samlab.errors import SamlabError  # noqa: E402
from napari_samlab.io.dicom import find_dicom_series, is_dicom_file, read_dicom_series  # noqa: E402

CT5N = h.pydicom_test_dir("dicomdirtests/98892001/CT5N")
CT2 = h.pydicom_test_dir("dicomdirtests/77654033/CT2")
MR700 = h.pydicom_test_dir("dicomdirtests/98892003/MR700")


def assert_same_as_sitk(img, ref: sitk.Image, atol=1e-6):
    arr = sitk.GetArrayFromImage(ref)
    assert img.array.dtype == arr.dtype
    np.testing.assert_array_equal(img.array, arr)
    np.testing.assert_allclose(img.spacing, ref.GetSpacing(), atol=atol)
    np.testing.assert_allclose(img.origin, ref.GetOrigin(), atol=atol)
    np.testing.assert_allclose(img.direction, ref.GetDirection(), atol=atol)


def test_ct5n_sorted_along_normal_not_by_name():
    (img,) = read_dicom_series(CT5N)
    files = img.metadata["dicom_files"]
    names = [Path(f).name for f in files]
    # file names run opposite to the slice order in this series
    assert names == sorted(names, reverse=True)
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z)
    assert img.array.shape == (5, 16, 16)
    assert img.origin[2] == pytest.approx(min(z))
    assert img.spacing[2] == pytest.approx(2.5)
    assert_same_as_sitk(img, h.sitk_read_sorted(files))
    gdcm_order = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(CT5N))
    assert [Path(f).name for f in gdcm_order] == names
    md = img.metadata
    assert md["format"] == "dicom" and md["modality"] == "CT"
    assert md["name"] == md["series_description"] == "SmartScore - Gated 0.5 sec"
    assert md["series_uid"] == "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
    assert md["study_uid"] and Path(md["path"]) == CT5N


def test_gap_in_spacing_is_refused_with_positions():
    with pytest.raises(SamlabError) as err:
        read_dicom_series(CT2)
    msg = str(err.value)
    assert "uneven slice spacing" in msg
    assert "202.500 mm" in msg and "-99.480" in msg and "103.020" in msg
    assert "1.250 mm is expected" in msg
    assert "\n" not in msg


def test_mixed_orientations_refused():
    with pytest.raises(SamlabError, match=r"mixes 7 orientations .*; it cannot be stacked into one volume: "):
        read_dicom_series(MR700)


def test_multi_series_folder(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(-1000, 1000, (4, 12, 10)).astype(np.int16)
    b = rng.integers(0, 500, (3, 8, 8)).astype(np.int16)
    study = pydicom.uid.generate_uid()
    h.write_pydicom_series(tmp_path, a, description="Axial A", study_uid=study,
                           file_names=[f"a{i}.dcm" for i in range(4)])
    h.write_pydicom_series(tmp_path / "sub", b, description="Axial B", study_uid=study,
                           spacing=(1.0, 1.0, 3.0), file_names=[f"b{i}.dcm" for i in range(3)])
    (tmp_path / "notes.txt").write_text("not dicom")
    series = find_dicom_series(tmp_path)
    assert sorted((s.name, s.n_files, s.modality) for s in series) == [
        ("Axial A", 4, "CT"), ("Axial B", 3, "CT")]
    imgs = {im.metadata["name"]: im for im in read_dicom_series(tmp_path)}
    assert set(imgs) == {"Axial A", "Axial B"}
    np.testing.assert_array_equal(imgs["Axial A"].array, a)
    np.testing.assert_array_equal(imgs["Axial B"].array, b)
    assert imgs["Axial B"].spacing == (1.0, 1.0, 3.0)
    uid_b = imgs["Axial B"].metadata["series_uid"]
    (only_b,) = read_dicom_series(tmp_path, series_uid=uid_b)
    np.testing.assert_array_equal(only_b.array, b)
    with pytest.raises(SamlabError, match="has no series 1.2.3"):
        read_dicom_series(tmp_path, series_uid="1.2.3")


def test_oblique_series_matches_simpleitk(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 2000, (6, 10, 12)).astype(np.int16)
    direction = h.rotation_direction()
    # names chosen so that name order is not slice order
    names = [f"img_{k}.dcm" for k in (3, 0, 5, 1, 4, 2)]
    files = h.write_pydicom_series(tmp_path, vol, spacing=(0.7, 0.8, 1.5),
                                   origin=(10.0, -20.0, 30.0), direction=direction,
                                   intercept=-1024, file_names=names)
    (img,) = read_dicom_series(tmp_path)
    assert img.metadata["dicom_files"] == [str(f) for f in files]
    np.testing.assert_allclose(img.direction, direction, atol=1e-6)
    assert_same_as_sitk(img, h.sitk_read_sorted(files))
    np.testing.assert_array_equal(img.array, vol.astype(np.int32) - 1024)


def test_compressed_series_rle_and_jpeg2000(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.integers(-1024, 3000, (3, 64, 72)).astype(np.int16)  # J2K needs >= 32 px per side
    ref_files = h.write_pydicom_series(tmp_path / "raw", vol, intercept=-1024)
    (ref,) = read_dicom_series(tmp_path / "raw")
    for ts in (RLELossless, JPEG2000Lossless):
        files = h.write_pydicom_series(tmp_path / ts.name.replace(" ", "_"), vol,
                                       intercept=-1024, transfer_syntax=ts)
        assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == ts
        (img,) = read_dicom_series(files[0].parent)
        np.testing.assert_array_equal(img.array, ref.array)
        assert_same_as_sitk(img, h.sitk_read_sorted(files))
    assert_same_as_sitk(ref, h.sitk_read_sorted(ref_files))


def test_pydicom_compressed_single_files():
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        path = h.pydicom_test_dir(name)
        (img,) = read_dicom_series(path)
        assert_same_as_sitk(img, sitk.ReadImage(str(path)))
    (plain,) = read_dicom_series(h.pydicom_test_dir("MR_small.dcm"))
    np.testing.assert_array_equal(plain.array, img.array)


def test_lung2_series_written_by_simpleitk(tmp_path):
    vol = h.lung2_volume(20, 32, step=4)
    files = h.write_sitk_series(vol, tmp_path, pattern="z{:02d}.dcm")
    # scramble names: sorting must use positions only
    for i, f in enumerate(files):
        f.rename(tmp_path / f"file_{(7 * i) % len(files):02d}_.dcm")
    (img,) = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(img.array, sitk.GetArrayFromImage(vol))
    np.testing.assert_allclose(img.spacing, vol.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(img.origin, vol.GetOrigin(), atol=1e-4)
    ref = h.sitk_read_sorted(img.metadata["dicom_files"])
    assert_same_as_sitk(img, ref)
    gdcm = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path))
    assert list(gdcm) == img.metadata["dicom_files"]
    assert img.metadata["name"] == "lung2 CT"


@pytest.mark.parametrize("slope,intercept,modality", [
    (1, -1024, "CT"), (2, -1000, "CT"), (0.5, 1.5, "CT"), (3, 7, "MR"), (1, 0, "CT")])
def test_rescale_applied_like_simpleitk(tmp_path, slope, intercept, modality):
    vol = np.arange(2 * 6 * 5, dtype=np.int16).reshape(2, 6, 5) * 37 - 400
    files = h.write_pydicom_series(tmp_path, vol, slope=slope, intercept=intercept,
                                   modality=modality)
    (img,) = read_dicom_series(tmp_path)
    expected = vol.astype(np.float64) * slope + intercept
    np.testing.assert_array_equal(img.array, expected)
    assert_same_as_sitk(img, h.sitk_read_sorted(files))


def test_single_file_gives_one_slice_volume():
    path = h.pydicom_test_dir("CT_small.dcm")
    (img,) = read_dicom_series(path)
    assert img.array.shape == (1, 128, 128)
    assert_same_as_sitk(img, sitk.ReadImage(str(path)))


def test_multiframe_enhanced_ct(tmp_path):
    import highdicom as hd

    (ref,) = read_dicom_series(CT5N)
    legacy = [pydicom.dcmread(f) for f in sorted(CT5N.iterdir())]
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy, series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1)
    mf.save_as(tmp_path / "enhanced.dcm")
    (img,) = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(img.array, ref.array)
    np.testing.assert_allclose(img.spacing, ref.spacing, atol=1e-6)
    np.testing.assert_allclose(img.origin, ref.origin, atol=1e-6)
    np.testing.assert_allclose(img.direction, ref.direction, atol=1e-6)
    assert len(img.metadata["dicom_frames"]) == 5


def test_empty_and_non_dicom_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SamlabError, match="is empty: choose the folder that contains"):
        read_dicom_series(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("hello")
    sitk.WriteImage(sitk.Image(4, 4, sitk.sitkUInt8), str(other / "b.png"))
    sitk.WriteImage(sitk.Image(4, 4, 2, sitk.sitkInt16), str(other / "c.nii.gz"))
    assert not any(is_dicom_file(p) for p in other.iterdir())
    with pytest.raises(SamlabError, match=r"holds no DICOM files: choose the folder"):
        read_dicom_series(other)
    with pytest.raises(SamlabError, match="does not exist"):
        read_dicom_series(tmp_path / "missing")


def test_truncated_files_are_named(tmp_path):
    shutil.copytree(CT5N, tmp_path / "a")
    victim = tmp_path / "a" / "2693"
    h.truncate(victim, 0.8)  # inside the pixel data
    with pytest.raises(SamlabError, match=r"2693 (is truncated \(its pixel data holds|.*probably truncated)"):
        read_dicom_series(tmp_path / "a")
    shutil.copytree(CT5N, tmp_path / "b")
    h.truncate(tmp_path / "b" / "2392", 0.3)  # inside the header
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported directly, not as a skipped series
        with pytest.raises(SamlabError, match=r"2392 is a DICOM file that cannot be read.*probably truncated or damaged"):
            read_dicom_series(tmp_path / "b")


def test_duplicate_positions_refused(tmp_path):
    vol = np.zeros((3, 4, 4), np.int16)
    h.write_pydicom_series(tmp_path, vol, positions=[(0, 0, 0), (0, 0, 2), (0, 0, 2)])
    with pytest.raises(SamlabError, match=r"has 2 slices at the same position \(2.000 mm"):
        read_dicom_series(tmp_path)


def test_different_sizes_refused(tmp_path):
    uid = pydicom.uid.generate_uid()
    h.write_pydicom_series(tmp_path, np.zeros((2, 4, 4), np.int16), series_uid=uid)
    h.write_pydicom_series(tmp_path, np.zeros((1, 6, 4), np.int16), series_uid=uid,
                           origin=(0, 0, 4.0), file_names=["x.dcm"])
    with pytest.raises(SamlabError, match=r"slices of different sizes \(4×4 in 2 slices, 4×6 in 1"):
        read_dicom_series(tmp_path)


def test_missing_position_refused(tmp_path):
    h.write_pydicom_series(tmp_path, np.zeros((3, 4, 4), np.int16), skip_position=(1,))
    with pytest.raises(SamlabError, match=r"1 of 3 slices have no ImagePositionPatient \(e.g. s001.dcm\)"):
        read_dicom_series(tmp_path)


def test_non_image_series_skipped_and_dicomdir_ignored():
    series = find_dicom_series(h.pydicom_test_dir("dicomdirtests"))
    assert all("DICOMDIR" not in str(f) for s in series for f in s.files)
    names = {s.name for s in series if s.is_image}
    assert "SmartScore - Gated 0.5 sec" in names


def test_broken_series_beside_good_one_is_skipped_with_warning(tmp_path):
    shutil.copytree(CT5N, tmp_path / "ct5n")
    shutil.copytree(CT2, tmp_path / "ct2")
    with pytest.warns(UserWarning, match=r"skipped a series: .*uneven slice spacing"):
        images = read_dicom_series(tmp_path)
    assert [im.metadata["name"] for im in images] == ["SmartScore - Gated 0.5 sec"]
    # asking for the broken series explicitly raises its error
    uid = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"
    with pytest.raises(SamlabError, match="uneven slice spacing"):
        read_dicom_series(tmp_path, series_uid=uid)


def test_is_dicom_file_accepts_files_without_preamble(tmp_path):
    assert is_dicom_file(h.pydicom_test_dir("ExplVR_LitEndNoMeta.dcm"))
    assert is_dicom_file(h.pydicom_test_dir("CT_small.dcm"))
    (tmp_path / "x.dcm").write_bytes(b"\x00" * 300)
    assert not is_dicom_file(tmp_path / "x.dcm")
    assert not is_dicom_file(tmp_path / "missing.dcm")
