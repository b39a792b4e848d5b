"""Build real DICOM series in temporary folders for the DICOM tests and benchmarks.

Two writers: :func:`write_sitk_series` uses SimpleITK's ImageFileWriter (GDCM)
the way scanners' exports look to ITK users, :func:`write_pydicom_series`
builds CT Image Storage files field by field with pydicom so that tests can
bend the geometry (oblique planes, gaps, duplicates, missing positions,
compression).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from conftest import CT_CHEST, CT_TUMOUR

# the repository's chest CT sample (lung2) and its tumour label (uint8, 1 = tumour)
LUNG2 = CT_CHEST
LUNG2_LABEL = CT_TUMOUR


def pydicom_test_dir(sub: str) -> Path:
    """Folder of pydicom's bundled test files, e.g. ``dicomdirtests/98892001/CT5N``."""
    return Path(pydicom.data.__file__).parent / "test_files" / sub


def _ds_str(values) -> str:
    # DS values are at most 16 characters; repr-style floats can be longer
    return "\\".join(pydicom.valuerep.format_number_as_ds(float(v)) for v in values)


def write_sitk_series(image: sitk.Image, folder, description="lung2 CT", modality="CT",
                      intercept=-1024, slope=1, series_uid=None, study_uid=None,
                      pattern="IM{:04d}.dcm") -> list:
    """Write a 3D SimpleITK image as one DICOM file per slice with ImageFileWriter.

    Like many ITK exports the files carry no SliceThickness (readers and the
    SEG writer must cope).  Returns the file paths in slice order (slice 0
    first).  Pixel values are
    written as they are with the given rescale slope/intercept in the header
    (GDCM inverts the rescale when storing).

    Examples
    --------
    >>> files = write_sitk_series(sitk.ReadImage(str(LUNG2)), tmp_path)  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    d = image.GetDirection()
    iop = _ds_str((d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # otherwise GDCM invents new UIDs per file
    files = []
    for i in range(image.GetDepth()):
        s = image[:, :, i]
        tags = {
            "0008|0016": CTImageStorage if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": generate_uid(),
            "0008|0060": modality,
            "0008|103e": description,
            "0010|0010": "Lung2^Phantom",
            "0010|0020": "LUNG2",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0052": frame_uid,
            "0020|1040": "",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0008|0070": "napari-samlab tests",
            "0018|0060": "120",
            "0018|5100": "HFS",
            "0020|0012": "1",
            "0020|0011": "1",
            "0020|0013": str(i + 1),
            "0020|0037": iop,
            "0020|0032": _ds_str(image.TransformIndexToPhysicalPoint((0, 0, i))),
            "0028|1052": str(intercept),
            "0028|1053": str(slope),
            "0028|1054": "HU",
        }
        for k, v in tags.items():
            s.SetMetaData(k, v)
        path = folder / pattern.format(i)
        writer.SetFileName(str(path))
        writer.Execute(s)
        files.append(path)
    return files


def lung2_volume(z0=0, z1=None, step=1) -> sitk.Image:
    """The real lung2 chest CT (int16 HU), optionally cut to slices z0:z1 and
    downsampled in-plane by ``step`` (keeps geometry consistent)."""
    img = sitk.ReadImage(str(LUNG2))
    z1 = img.GetDepth() if z1 is None else z1
    return img[::step, ::step, z0:z1]


def write_pydicom_series(folder, array, spacing=(0.5, 0.5, 2.0), origin=(0.0, 0.0, 0.0),
                         direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), slope=1.0, intercept=0.0,
                         description="test series", series_uid=None, study_uid=None,
                         file_names=None, positions=None, orientations=None,
                         transfer_syntax=None, modality="CT", stored_dtype=np.int16,
                         skip_position=()) -> list:
    """Write ``array`` (z, y, x) as a CT series, one pydicom file per slice.

    Geometry follows SimpleITK: ``spacing``/``origin`` in (x, y, z) and
    ``direction`` row-major with the index axes as columns.  ``array`` holds
    the *stored* values; readers should return ``array * slope + intercept``.
    ``positions``/``orientations`` override the per-slice geometry,
    ``file_names`` the names (default ``s000.dcm``...), ``transfer_syntax``
    compresses each file (e.g. ``pydicom.uid.RLELossless``), ``skip_position``
    lists slice indices written without ImagePositionPatient.

    Returns the paths in slice order.

    Examples
    --------
    >>> files = write_pydicom_series(tmp_path, np.zeros((3, 8, 8), np.int16))  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    D = np.asarray(direction, float).reshape(3, 3)
    row, col, nrm = D[:, 0], D[:, 1], D[:, 2]
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    files = []
    for i, plane in enumerate(array):
        plane = np.ascontiguousarray(plane.astype(stored_dtype))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = "napari-samlab tests"
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = description
        ds.PatientName = "Test^Patient"
        ds.PatientID = "TEST01"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        if orientations is not None:
            ds.ImageOrientationPatient = [float(v) for v in orientations[i]]
        else:
            ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        if i not in skip_position:
            if positions is not None:
                pos = positions[i]
            else:
                pos = np.asarray(origin, float) + i * spacing[2] * nrm
            ds.ImagePositionPatient = [float(v) for v in pos]
        ds.SliceThickness = float(spacing[2])
        ds.KVP = 120
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated = plane.dtype.itemsize * 8
        ds.BitsStored = ds.BitsAllocated
        ds.HighBit = ds.BitsAllocated - 1
        ds.PixelRepresentation = 1 if plane.dtype.kind == "i" else 0
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = "HU"
        ds.PixelData = plane.tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        name = file_names[i] if file_names is not None else f"s{i:03d}.dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def rotation_direction(axis=(0.3, -0.5, 0.8), angle_deg=25.0) -> tuple:
    """An oblique, orthonormal direction matrix (row-major, 9 values)."""
    a = np.asarray(axis, float)
    a /= np.linalg.norm(a)
    t = np.deg2rad(angle_deg)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    R = np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K
    return tuple(R.ravel())


def sitk_read_sorted(files) -> sitk.Image:
    """SimpleITK's ImageSeriesReader on files given in the correct order."""
    r = sitk.ImageSeriesReader()
    r.SetFileNames([str(f) for f in files])
    return r.Execute()


def truncate(path, keep_fraction=0.5) -> None:
    """Cut a file to a fraction of its size (a broken copy)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep_fraction))
