"""DICOM SEG writing and reading (highdicom), checked with pydicom and dciodvfy."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
import dicom_helpers as h  # noqa: E402

from napari_samlab.errors import SamlabError  # noqa: E402
from napari_samlab.io.dicom import read_dicom_series  # noqa: E402
from napari_samlab.io.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from napari_samlab.io.image import Image  # noqa: E402

CT5N = h.pydicom_test_dir("dicomdirtests/98892001/CT5N")


def dciodvfy_errors(path) -> list:
    """Lines dciodvfy reports as errors (empty if it is not installed: then skip)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        return []
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if "Error" in ln]


def check_with_pydicom(path, labels, source, names=None):
    """Independent check of frames ↔ source slices and pixels with plain pydicom."""
    seg = pydicom.dcmread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    src = [pydicom.dcmread(f, stop_before_pixels=True) for f in source.metadata["dicom_files"]]
    uid_to_z = {str(ds.SOPInstanceUID): z for z, ds in enumerate(src)}
    refs = {str(i.ReferencedSOPInstanceUID)
            for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert refs == set(uid_to_z)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.metadata["series_uid"]
    assert seg.StudyInstanceUID == source.metadata["study_uid"]
    assert seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    values = [int(v) for v in np.unique(labels) if v > 0]
    seg_value = {}
    for item in seg.SegmentSequence:
        value = int(item.TrackingID.rsplit(" ", 1)[1])
        seg_value[int(item.SegmentNumber)] = value
        assert item.SegmentAlgorithmType == "SEMIAUTOMATIC"
        assert item.SegmentAlgorithmName == "napari-samlab"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
        if names and value in names:
            assert item.SegmentLabel == names[value]
    assert sorted(seg_value.values()) == values
    frames = seg.pixel_array.reshape(-1, *labels.shape[1:])
    rebuilt = np.zeros(labels.shape, labels.dtype)
    for frame, fg in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = str(fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        ident = fg if "SegmentIdentificationSequence" in fg else seg.SharedFunctionalGroupsSequence[0]
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        z = uid_to_z[uid]
        # the frame sits where its source slice is
        np.testing.assert_allclose(
            [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in src[z].ImagePositionPatient], atol=1e-3)
        rebuilt[z][frame > 0] = seg_value[number]
    np.testing.assert_array_equal(rebuilt, labels)


def test_seg_roundtrip_ct5n(tmp_path):
    (ct,) = read_dicom_series(CT5N)
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[1:4, 3:9, 4:12] = 3
    labels[2, 10:14, 2:5] = 7
    labels[4, 0, 0] = 3
    out = tmp_path / "seg.dcm"
    names = {3: "Brain", 7: "Lesion A"}
    write_dicom_seg(labels, ct, out, segment_names=names)
    np.testing.assert_array_equal(read_dicom_seg(out, ct), labels)
    check_with_pydicom(out, labels, ct, names)
    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 2
    assert [str(item.SegmentLabel) for item in seg.SegmentSequence] == ["Brain", "Lesion A"]
    assert seg.SeriesDescription == "napari-samlab"
    assert dciodvfy_errors(out) == []
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]  # no partial files left


def test_seg_lung2_tumour(tmp_path):
    # real CT with its real hand-drawn tumour label, as a SimpleITK-written series
    label = sitk.ReadImage(str(h.LUNG2_LABEL))
    zs = np.flatnonzero(sitk.GetArrayViewFromImage(label).reshape(label.GetDepth(), -1).any(1))
    z0, z1 = int(zs[0]) - 2, int(zs[-1]) + 3
    vol = h.lung2_volume(z0, z1, step=2)
    files = h.write_sitk_series(vol, tmp_path / "ct")
    (ct,) = read_dicom_series(tmp_path / "ct")
    assert ct.metadata["dicom_files"] == [str(f) for f in files]
    labels = sitk.GetArrayFromImage(label[::2, ::2, z0:z1]).astype(np.uint8)
    assert labels.shape == ct.array.shape and labels.any()
    out = tmp_path / "tumour.seg.dcm"
    write_dicom_seg(labels, ct, out, {1: "Lung tumour"}, description="lung2 tumour")
    np.testing.assert_array_equal(read_dicom_seg(out, ct), labels)
    check_with_pydicom(out, labels, ct, {1: "Lung tumour"})
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(out))
    assert seg.SeriesDescription == "lung2 tumour"
    # empty slices are omitted: only slices with tumour have frames
    assert int(seg.NumberOfFrames) == int(labels.reshape(len(labels), -1).any(1).sum())
    assert dciodvfy_errors(out) == []


def test_seg_on_multiframe_source(tmp_path):
    (ref,) = read_dicom_series(CT5N)
    legacy = [pydicom.dcmread(f) for f in sorted(CT5N.iterdir())]
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy, series_instance_uid=hd.UID(), series_number=9,
        sop_instance_uid=hd.UID(), instance_number=1)
    (tmp_path / "mf").mkdir()
    mf.save_as(tmp_path / "mf" / "enhanced.dcm")
    (ct,) = read_dicom_series(tmp_path / "mf")
    labels = np.zeros(ct.array.shape, np.uint16)
    labels[0, 2:5, 2:5] = 300  # > 255: uint16 segment values survive
    labels[3, 8:, 8:] = 2
    out = tmp_path / "seg.dcm"
    write_dicom_seg(labels, ct, out)
    np.testing.assert_array_equal(read_dicom_seg(out, ct), labels)
    assert dciodvfy_errors(out) == []


def test_seg_refusals_leave_no_file(tmp_path):
    (ct,) = read_dicom_series(CT5N)
    out = tmp_path / "seg.dcm"
    nifti = Image(np.zeros((5, 16, 16), np.int16), metadata={"format": "nifti", "path": "x.nii.gz"})
    with pytest.raises(SamlabError, match=r"DICOM SEG needs a DICOM source series: save as "
                                          r"\.nii\.gz/\.nrrd instead, or open the DICOM series"):
        write_dicom_seg(np.ones((5, 16, 16), np.uint8), nifti, out)
    with pytest.raises(SamlabError, match=r"shape \(4, 16, 16\) does not match the DICOM series' "
                                          r"shape \(5, 16, 16\)"):
        write_dicom_seg(np.ones((4, 16, 16), np.uint8), ct, out)
    with pytest.raises(SamlabError, match=r"label volume is empty .* needs at least one segment"):
        write_dicom_seg(np.zeros((5, 16, 16), np.uint8), ct, out)
    with pytest.raises(SamlabError, match="negative"):
        write_dicom_seg(-np.ones((5, 16, 16), np.int16), ct, out)
    assert list(tmp_path.iterdir()) == []
    # a failure inside the writer also leaves nothing behind, old file untouched
    out.write_bytes(b"old")
    moved = ct.with_array(ct.array)
    moved.metadata["dicom_files"] = [str(tmp_path / "gone.dcm")] * 5
    with pytest.raises(SamlabError, match="is gone"):
        write_dicom_seg(np.ones((5, 16, 16), np.uint8), moved, out)
    assert out.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_read_dicom_seg_rejects_non_seg(tmp_path):
    (ct,) = read_dicom_series(CT5N)
    with pytest.raises(SamlabError, match="is not a readable DICOM SEG"):
        read_dicom_seg(ct.metadata["dicom_files"][0], ct)
