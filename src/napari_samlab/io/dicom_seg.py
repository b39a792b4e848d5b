"""DICOM Segmentation (SEG) objects for label volumes on a DICOM series.

:func:`write_dicom_seg` stores a (z, y, x) integer label volume as a BINARY
Segmentation (highdicom) whose frames reference the source series' slices,
one segment per label value present.  Segment numbers must run 1..n in DICOM,
so each segment carries its original label value in its Tracking ID
(``"napari-samlab label 7"``); :func:`read_dicom_seg` uses it to rebuild the
exact label volume on the source grid.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import SamlabError
from .atomic import atomic_output
from .image import Image

__all__ = ["write_dicom_seg", "read_dicom_seg"]

_TRACKING = "napari-samlab label {}"
_TRACKING_RE = re.compile(r"napari-samlab label (\d+)$")
_ALGORITHM = "napari-samlab"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-samlab")
    except Exception:
        return "0"


def _source_files(source: Image) -> list:
    md = getattr(source, "metadata", None) or {}
    files = md.get("dicom_files")
    if md.get("format") != "dicom" or not files:
        raise SamlabError(
            "DICOM SEG needs a DICOM source series: save as .nii.gz/.nrrd instead, "
            "or open the DICOM series"
        )
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise SamlabError(
            f"the source DICOM file {missing[0]} is gone ({len(missing)} of {len(files)} "
            "missing): a DICOM SEG must reference its source files; open the series "
            "from its current folder again"
        )
    return [Path(f) for f in files]


def _source_datasets(files) -> list:
    import pydicom

    try:
        # highdicom needs the headers only; pixel data would just cost memory
        return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except Exception as err:
        raise SamlabError(
            f"cannot re-read the source DICOM series ({type(err).__name__}: {err}): "
            "open the series again"
        ) from None


def _frame_order(source: Image, datasets) -> list | None:
    """For a multi-frame source: source frame index of each array slice."""
    frames = source.metadata.get("dicom_frames")
    if frames is None or len(datasets) != 1:
        return None
    return [int(f) for f in frames]


def write_dicom_seg(labels: np.ndarray, source: Image, path, segment_names: dict | None = None,
                    description: str = "napari-samlab",
                    algorithm_type: str = "SEMIAUTOMATIC") -> None:
    """Write a label volume as a DICOM Segmentation referencing its source series.

    Parameters
    ----------
    labels : ndarray of int, shape (z, y, x)
        Label volume on the source grid (``source.array``'s shape); 0 is
        background, every other value present becomes one segment.
    source : Image
        The image returned by :func:`napari_samlab.io.dicom.read_dicom_series`;
        ``metadata["dicom_files"]`` lists its files in slice order.
    path : str or Path
        Output ``.dcm`` file, written atomically.
    segment_names : dict of int to str, optional
        Segment label per label value; default ``"Label <value>"``.
    description : str
        SeriesDescription and ContentDescription of the SEG.
    algorithm_type : {"SEMIAUTOMATIC", "AUTOMATIC", "MANUAL"}
        How the labels were made (prompted models: SEMIAUTOMATIC).

    Raises
    ------
    SamlabError
        The source is not a DICOM series, the shapes differ, the labels are
        empty, negative or not integers, or the source files are gone.

    Examples
    --------
    >>> (ct,) = read_dicom_series("CT5N/")                      # doctest: +SKIP
    >>> labels = (ct.array > 0).astype(np.uint8)                 # doctest: +SKIP
    >>> write_dicom_seg(labels, ct, "seg.dcm", {1: "Bone"})      # doctest: +SKIP
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    files = _source_files(source)
    labels = np.asarray(labels)
    shape = tuple(source.spatial_shape)
    if labels.ndim == 2 and len(shape) == 3 and shape[0] == 1:
        labels = labels[None]
    if labels.shape != shape:
        raise SamlabError(
            f"label volume shape {labels.shape} does not match the DICOM series' shape "
            f"{shape}: a DICOM SEG must cover the source slices voxel for voxel"
        )
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise SamlabError("labels must be whole numbers for a DICOM SEG: round or "
                              "threshold the mask first")
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise SamlabError(f"labels of type {labels.dtype} cannot be stored in a DICOM SEG: "
                          "pass an integer label volume")
    values = np.unique(labels)
    if values.size and values[0] < 0:
        raise SamlabError(f"labels hold negative values (e.g. {values[0]}): a DICOM SEG "
                          "needs labels >= 0 with 0 as background")
    values = values[values > 0]
    if values.size == 0:
        raise SamlabError(
            "the label volume is empty (no voxel > 0), and a DICOM SEG needs at least one "
            "segment: draw or predict a label first, or save as .nii.gz"
        )

    datasets = _source_datasets(files)
    if any("FrameOfReferenceUID" not in ds for ds in datasets):
        raise SamlabError(
            "the source series has no FrameOfReferenceUID, which a DICOM SEG must share "
            "with its images: save as .nii.gz/.nrrd instead"
        )

    # segment numbers must be 1..n; remember each original value in the Tracking ID
    seg_numbers = np.searchsorted(values, labels) + 1
    n = values.size
    pixel = np.where(labels > 0, seg_numbers, 0).astype(np.uint8 if n < 256 else np.uint16)
    order = _frame_order(source, datasets)
    if order is not None:
        # multi-frame source: highdicom maps frames by the source's frame order
        unsorted = np.zeros_like(pixel)
        unsorted[order] = pixel
        pixel = unsorted
    elif len(datasets) != pixel.shape[0]:
        raise SamlabError(
            f"the source series has {len(datasets)} files for {pixel.shape[0]} slices: "
            "open the series again before saving a DICOM SEG"
        )

    names = segment_names or {}
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_ALGORITHM, version=_version(), family=codes.cid7162.ArtificialIntelligence)
    try:
        algo_type = hd.seg.SegmentAlgorithmTypeValues[str(algorithm_type).upper()]
    except KeyError:
        raise SamlabError(f"unknown algorithm type {algorithm_type!r}: use SEMIAUTOMATIC, "
                          "AUTOMATIC or MANUAL") from None
    descriptions = []
    for number, value in enumerate(values.tolist(), start=1):
        label = str(names.get(value, f"Label {value}"))[:64] or f"Label {value}"
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=algo_type,
            algorithm_identification=None if algo_type.name == "MANUAL" else algorithm,
            tracking_uid=hd.UID(),
            tracking_id=_TRACKING.format(value),
        ))
    if order is None:
        for ds in datasets:
            if "SliceThickness" not in ds:
                # e.g. series exported by ITK/GDCM; highdicom needs a thickness for
                # the SEG's pixel measures and the slice spacing is the best stand-in
                # (set on the in-memory header copies only)
                ds.SliceThickness = pydicom.valuerep.format_number_as_ds(float(source.spacing[2]))
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=pixel,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=_series_number(datasets[0]),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="napari-samlab",
            manufacturer_model_name="napari-samlab",
            software_versions=_version(),
            device_serial_number="0",
            content_description=str(description)[:64],
            content_label="SEGMENTATION",
            series_description=str(description)[:64],
        )
    except (ValueError, TypeError, AttributeError) as err:
        raise SamlabError(
            f"cannot build a DICOM SEG for this series ({err}): save as .nii.gz/.nrrd instead"
        ) from None
    with atomic_output(path) as tmp:
        seg.save_as(tmp)


def _series_number(ds) -> int:
    # a new series next to the source one; SeriesNumber is IS (max 2**31 - 1)
    try:
        return min(int(ds.get("SeriesNumber", 0) or 0) + 1000, 2**31 - 1)
    except (TypeError, ValueError):
        return 1000


def read_dicom_seg(path, source: Image) -> np.ndarray:
    """Rebuild the (z, y, x) label volume of a DICOM SEG on its source grid.

    Parameters
    ----------
    path : str or Path
        A Segmentation written by :func:`write_dicom_seg` (or any SEG
        referencing the source series; then label value = segment number).
    source : Image
        The source series as read by ``read_dicom_series``.

    Returns
    -------
    ndarray
        Labels with ``source.spatial_shape``, dtype uint8/uint16/uint32.

    Raises
    ------
    SamlabError
        The file is not a readable SEG or does not reference the source.

    Examples
    --------
    >>> labels = read_dicom_seg("seg.dcm", ct)          # doctest: +SKIP
    """
    import highdicom as hd

    files = _source_files(source)
    try:
        seg = hd.seg.segread(path)
    except Exception as err:
        raise SamlabError(f"{path} is not a readable DICOM SEG ({type(err).__name__}: {err}): "
                          "choose a DICOM Segmentation file") from None
    datasets = _source_datasets(files)
    value_of = {}
    for item in seg.SegmentSequence:
        m = _TRACKING_RE.match(str(item.get("TrackingID", "")))
        value_of[int(item.SegmentNumber)] = int(m.group(1)) if m else int(item.SegmentNumber)
    top = max(value_of.values())
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    shape = tuple(source.spatial_shape)
    numbers = sorted(value_of)
    try:
        order = _frame_order(source, datasets)
        if order is None:
            uids = [str(ds.SOPInstanceUID) for ds in datasets]
            stack = seg.get_pixels_by_source_instance(
                uids, segment_numbers=numbers, combine_segments=False,
                assert_missing_frames_are_empty=True)
        else:
            stack = seg.get_pixels_by_source_frame(
                str(datasets[0].SOPInstanceUID), [f + 1 for f in order],
                segment_numbers=numbers, combine_segments=False,
                assert_missing_frames_are_empty=True)
    except (ValueError, KeyError, AttributeError) as err:
        raise SamlabError(f"{path} does not match the source series ({err}): open the SEG "
                          "together with the series it was made from") from None
    out = np.zeros(shape, dtype)
    for k, number in enumerate(numbers):
        out[stack[..., k] > 0] = value_of[number]
    return out
