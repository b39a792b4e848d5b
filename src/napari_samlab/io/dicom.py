"""DICOM series discovery and reading.

A folder is scanned recursively, files are grouped by SeriesInstanceUID and
each image series becomes one :class:`~napari_samlab.io.image.Image` whose
array equals what SimpleITK's ``ImageSeriesReader`` gives for the correctly
sorted files: slices sorted along the slice normal (never by file name or
InstanceNumber), Rescale Slope/Intercept applied with GDCM's choice of output
type, geometry in SimpleITK's (x, y, z) order.

Series that cannot be one regular volume (mixed orientations, uneven slice
spacing, duplicate positions, differing slice sizes, missing positions) are
refused with a :class:`~napari_samlab.errors.SamlabError` instead of being
stacked silently: uneven spacing is *refused*, not resampled, because a gap
usually means missing files and an invented grid would put voxels where the
scanner measured nothing.

Pixels are decoded with pydicom (native data straight from the file buffer;
compressed data through pydicom's decoders: pylibjpeg, pyjpegls, built-in
RLE), falling back to SimpleITK/GDCM for transfer syntaxes pydicom cannot
decode.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SamlabError
from .dicom_pixels import damaged, decode, output_dtype, pixel_bits
from .dicom_slices import check_consistent, slices_of, sort_and_check
from .image import Image

__all__ = ["SeriesInfo", "is_dicom_file", "find_dicom_series", "read_dicom_series"]

# Media Storage Directory (DICOMDIR) and SOP classes that carry no image volume
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
_SEG_UID = "1.2.840.10008.5.1.4.1.1.66.4"
_DEFER = 64 * 1024          # leave pixel data on disk until the series is chosen

_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "MediaStorageSOPClassUID", "Modality",
    "SeriesInstanceUID", "StudyInstanceUID", "SeriesDescription", "SeriesNumber",
    "Rows", "Columns", "NumberOfFrames",
]


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder.

    Parameters
    ----------
    series_uid : str
        SeriesInstanceUID ("" when the files have none).
    description : str
        SeriesDescription ("" when absent).
    modality : str
        Modality, e.g. ``"CT"``, ``"MR"``, ``"SEG"``.
    files : list of Path
        The series' files in path order (not slice order).
    study_uid : str
    series_number : int or None
    is_image : bool
        True when the files carry pixel data that forms an image (False for
        SEG, RTSTRUCT, SR, presentation states ...).
    """

    series_uid: str
    description: str = ""
    modality: str = ""
    files: list = field(default_factory=list, repr=False)
    study_uid: str = ""
    series_number: int | None = None
    is_image: bool = True

    @property
    def n_files(self) -> int:
        """Number of files in the series."""
        return len(self.files)

    @property
    def name(self) -> str:
        """SeriesDescription, or ``"<modality> series <number>"`` without one."""
        if self.description.strip():
            return self.description.strip()
        num = f" {self.series_number}" if self.series_number is not None else ""
        return f"{self.modality or 'DICOM'} series{num}".strip()


# --------------------------------------------------------------------------- discovery
def is_dicom_file(path) -> bool:
    """True when ``path`` looks like a DICOM file.

    Cheap test: ``DICM`` at byte 128 (Part 10 files).  Files without the
    preamble are accepted when they start with a group 0002/0008 element and
    pydicom can parse a header from them (no pixel data is read).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    bool

    Examples
    --------
    >>> is_dicom_file("CT_small.dcm")   # doctest: +SKIP
    True
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    # raw (pre-Part 10) data sets start with a low group number, little endian
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "Modality", "Rows"])
        return any(k in ds for k in ("SOPClassUID", "Modality", "Rows"))
    except Exception:
        return False


def _walk_files(folder: Path) -> list:
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            # hidden files include atomic_output's partial files
            if n.startswith(".") or n.upper() == "DICOMDIR":
                continue
            out.append(Path(root) / n)
    return out


def _read_headers(folder, pixels: bool) -> list:
    """(path, dataset) for every DICOM file under ``folder`` (a file is allowed)."""
    import pydicom

    folder = Path(folder)
    if not folder.exists():
        raise SamlabError(f"{folder} does not exist: check the path")
    files = [folder] if folder.is_file() else _walk_files(folder)
    if not files:
        raise SamlabError(
            f"folder {folder} is empty: choose the folder that contains the series' .dcm files"
        )
    out = []
    for path in files:
        if not is_dicom_file(path):
            continue
        try:
            if pixels:
                ds = pydicom.dcmread(path, force=True, defer_size=_DEFER)
            else:
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=True,
                                     specific_tags=_HEADER_TAGS)
        except Exception as err:  # pydicom raises many types for broken files
            raise damaged(path, err) from None
        sop = str(ds.get("SOPClassUID", "") or "")
        meta_sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        if _DICOMDIR_UID in (sop, meta_sop) or "DirectoryRecordSequence" in ds:
            continue
        if pixels and "SeriesInstanceUID" not in ds and "PixelData" not in ds:
            # the header was cut before the series is named: no series can own it
            import pydicom.uid as _uid

            name = getattr(_uid.UID(meta_sop), "name", "") if meta_sop else ""
            if _is_image_sop(name):
                raise damaged(path, ValueError("its header ends early"))
        out.append((path, ds))
    if not out:
        raise SamlabError(
            f"folder {folder} holds no DICOM files: choose the folder that contains "
            "the series' .dcm files"
        )
    return out


def _is_image_sop(sop_name: str) -> bool:
    return "Image Storage" in sop_name and "Segmentation" not in sop_name


def _group(headers) -> list:
    groups: dict = {}
    for path, ds in headers:
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        info = groups.get(uid)
        if info is None:
            num = ds.get("SeriesNumber", None)
            try:
                num = int(num) if num not in (None, "") else None
            except (TypeError, ValueError):
                num = None
            info = groups[uid] = SeriesInfo(
                series_uid=uid,
                description=str(ds.get("SeriesDescription", "") or ""),
                modality=str(ds.get("Modality", "") or ""),
                study_uid=str(ds.get("StudyInstanceUID", "") or ""),
                series_number=num,
                is_image=False,
            )
        info.files.append(path)
        sop = ds.get("SOPClassUID", None)
        sop_uid = str(sop or "")
        name = getattr(sop, "name", "") if sop is not None else ""
        has_pixels = "Rows" in ds and sop_uid != _SEG_UID
        # an image SOP class without Rows is a damaged file: read it to report it
        if (has_pixels and (not sop_uid or "Dose" in name)) or _is_image_sop(name):
            info.is_image = True
    return sorted(groups.values(), key=lambda s: (s.study_uid, s.series_number or 0, s.name))


def find_dicom_series(folder) -> list:
    """List the DICOM series under ``folder`` (searched recursively).

    Non-DICOM files, hidden files and DICOMDIR are ignored.  Only headers are
    read.

    Parameters
    ----------
    folder : str or Path
        A folder (or a single DICOM file).

    Returns
    -------
    list of SeriesInfo
        One entry per SeriesInstanceUID, ordered by study, SeriesNumber, name.

    Raises
    ------
    SamlabError
        The folder is missing or empty, holds no DICOM file, or a DICOM file
        is damaged.

    Examples
    --------
    >>> for s in find_dicom_series("study/"):          # doctest: +SKIP
    ...     print(s.name, s.modality, s.n_files)
    """
    return _group(_read_headers(folder, pixels=False))


# --------------------------------------------------------------------------- slices
# --------------------------------------------------------------------------- checks
def _series_label(info: SeriesInfo) -> str:
    return f"{info.name!r} ({info.series_uid})" if info.series_uid else repr(info.name)


# --------------------------------------------------------------------------- reading
def _read_one(info: SeriesInfo, datasets: dict) -> Image:
    label = _series_label(info)
    slices = []
    for path in info.files:
        ds = datasets[path]
        sop = ds.get("SOPClassUID", None)
        image_sop = _is_image_sop(getattr(sop, "name", "") if sop is not None else "")
        if "PixelData" not in ds and (image_sop or "Rows" in ds):
            # pydicom stops quietly at the end of a cut-off file
            raise damaged(path, ValueError("it is an image without pixel data"))
        if "Rows" not in ds or "Columns" not in ds:
            continue
        slices.extend(slices_of(path, ds))
    if not slices:
        raise SamlabError(f"series {label} has no image pixels: choose an image series")
    check_consistent(slices, label)

    first = slices[0]
    # one plane, or one multi-frame file without per-frame positions: keep the
    # frame order and take the geometry of the file, as GDCM does
    unplaced = len(slices) == 1 or (
        len(info.files) == 1 and all(s.position is None for s in slices))
    if not unplaced:
        slices, normal, spacing_z = sort_and_check(slices, label)
        iop = slices[0].orientation
        origin = slices[0].position
    else:
        iop = first.orientation
        normal = None if iop is None else np.cross(iop[:3], iop[3:])
        origin = first.position if first.position is not None else np.zeros(3)
        sbs = first.ds.get("SpacingBetweenSlices", None)
        try:
            spacing_z = float(sbs) if sbs not in (None, "") and float(sbs) > 0 else 1.0
        except (TypeError, ValueError):
            spacing_z = 1.0
    if iop is None:
        direction = np.eye(3)
    else:
        direction = np.column_stack([iop[:3], iop[3:], normal])
    ps = first.pixel_spacing or (1.0, 1.0)
    spacing = (float(ps[1]), float(ps[0]), float(spacing_z))  # PixelSpacing is (row, col)

    # decode each file once, in sorted order
    rescales = [(s.slope, s.intercept) for s in slices]
    out_dtype = output_dtype(first.ds, rescales)
    _, _, _, spp = pixel_bits(first.ds)
    shape = (len(slices), first.rows, first.cols) + ((spp,) if spp > 1 else ())
    volume = np.empty(shape, out_dtype)
    cache: dict = {}
    for k, s in enumerate(slices):
        if s.path not in cache:
            cache[s.path] = decode(s.path, s.ds)
            if s.n_frames == 1:
                # single-frame files are used once; keep memory flat
                frames, done = cache.pop(s.path)
            else:
                frames, done = cache[s.path]
        else:
            frames, done = cache[s.path]
        plane = frames[s.frame]
        if done or (s.slope == 1 and s.intercept == 0):
            volume[k] = plane
        elif out_dtype.kind == "f":
            volume[k] = plane.astype(np.float64) * s.slope + s.intercept
        else:
            # exact integer arithmetic, like GDCM's integer rescaler
            if s.slope < 0:
                volume[k] = plane.astype(np.int64) * int(s.slope) + int(s.intercept)
            else:
                v = volume[k]
                v[...] = plane
                if s.slope != 1:
                    v *= out_dtype.type(int(s.slope))
                if s.intercept > 0:
                    v += out_dtype.type(int(s.intercept))
                elif s.intercept < 0:
                    v -= out_dtype.type(-int(s.intercept))

    files, seen = [], set()
    for s in slices:
        if s.path not in seen:
            seen.add(s.path)
            files.append(str(s.path))
    meta = {
        "path": str(Path(files[0]).parent if len(files) > 1 else files[0]),
        "format": "dicom",
        "modality": info.modality,
        "series_uid": info.series_uid,
        "series_description": info.description,
        "study_uid": info.study_uid,
        "dicom_files": files,
        "name": info.name,
    }
    if first.n_frames > 1:
        meta["dicom_frames"] = [s.frame for s in slices]  # source frame per array slice
    wc, ww = first.ds.get("WindowCenter", None), first.ds.get("WindowWidth", None)
    try:
        if wc is not None and ww is not None:
            wc = wc[0] if hasattr(wc, "__len__") and not isinstance(wc, str) else wc
            ww = ww[0] if hasattr(ww, "__len__") and not isinstance(ww, str) else ww
            meta["window"] = (float(wc), float(ww))
    except (TypeError, ValueError, IndexError):
        pass
    channels = spp if spp > 1 else 1
    return Image(volume, spacing, tuple(float(v) for v in origin), tuple(direction.ravel()),
                 channels, meta)


def read_dicom_series(folder, series_uid: str | None = None) -> list:
    """Read the image series under ``folder`` as volumes.

    Files are grouped by SeriesInstanceUID and sorted along the slice normal
    (``ImagePositionPatient · (row × column cosine)``), never by file name or
    InstanceNumber.  The array of each series equals what SimpleITK's
    ``ImageSeriesReader`` gives for the sorted files, Rescale Slope/Intercept
    applied (e.g. int16/int32 HU, float64 for fractional slopes).  A single
    2D file gives a (1, y, x) volume; multi-frame files are split into their
    frames and placed by their per-frame positions.

    Parameters
    ----------
    folder : str or Path
        Folder searched recursively, or a single DICOM file (read alone).
    series_uid : str, optional
        Read only this series.  Without it every image series is read;
        when the folder holds several, series that cannot be read are
        skipped with a warning (an error is raised only if none can be read).

    Returns
    -------
    list of Image
        One per series, with ``metadata`` keys ``path``, ``format`` ("dicom"),
        ``modality``, ``series_uid``, ``series_description``, ``study_uid``,
        ``dicom_files`` (paths in slice order) and ``name``.

    Raises
    ------
    SamlabError
        No DICOM files, damaged files, or a series that is not one regular
        volume (mixed orientations, uneven spacing, duplicate positions,
        differing slice sizes, missing positions).

    Examples
    --------
    >>> (ct,) = read_dicom_series("CT5N/")        # doctest: +SKIP
    >>> ct.array.shape, ct.spacing
    ((5, 16, 16), (0.488281, 0.488281, 2.5))
    """
    headers = _read_headers(folder, pixels=True)
    series = _group(headers)
    datasets = dict(headers)
    if series_uid is not None:
        series = [s for s in series if s.series_uid == series_uid]
        if not series:
            found = ", ".join(s.series_uid for s in _group(headers))
            raise SamlabError(
                f"folder {folder} has no series {series_uid} (found: {found}): "
                "pass one of these series UIDs"
            )
        if not series[0].is_image:
            raise SamlabError(
                f"series {_series_label(series[0])} is a {series[0].modality or 'non-image'} "
                "object, not an image: choose an image series"
            )
        return [_read_one(series[0], datasets)]
    images_info = [s for s in series if s.is_image]
    if not images_info:
        kinds = ", ".join(f"{s.modality or '?'} {s.name!r}" for s in series)
        raise SamlabError(
            f"folder {folder} holds DICOM files but no image series (found {kinds}): "
            "choose the folder that contains the image series"
        )
    # names must tell series apart in napari's layer list
    counts = Counter(s.name for s in images_info)
    numbered = Counter((s.name, s.series_number) for s in images_info)
    images, errors = [], []
    for s in images_info:
        try:
            img = _read_one(s, datasets)
        except SamlabError as err:
            if len(images_info) == 1:
                raise
            errors.append(err)
            warnings.warn(f"skipped a series: {err}", stacklevel=2)
            continue
        if counts[s.name] > 1:
            tag = f"#{s.series_number}" if s.series_number is not None else ""
            if numbered[(s.name, s.series_number)] > 1:
                tag = f"{tag} {s.series_uid[-6:]}".strip()
            img.metadata["name"] = f"{s.name} {tag}"
        images.append(img)
    if not images:
        raise errors[0]
    return images
