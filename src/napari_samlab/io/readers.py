"""Reading images with their geometry: ``read_image`` and friends.

Every format except DICOM folders goes through SimpleITK, so the array and
geometry are exactly what ``SimpleITK.ReadImage`` gives (SPEC.md); DICOM
folders go through :mod:`napari_samlab.io.dicom`, which sorts slices along
the normal and refuses what cannot be stacked.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import SamlabError
from .image import Image

# extension -> format name (what users call it in messages)
FORMATS = {
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".seg.nrrd": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".dcm": "DICOM",
}
# refuse to load what would not fit: fraction of the memory that is free now
MEMORY_FRACTION = 0.7


def image_extension(path) -> str:
    """The lower-case extension that decides the format ('' if unknown).

    Examples
    --------
    >>> image_extension("scan.NII.GZ")
    '.nii.gz'
    """
    name = Path(path).name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return ""


def can_read(path) -> bool:
    """Cheap check used by the napari reader: a known extension or a DICOM folder."""
    path = Path(path)
    if path.is_dir():
        return folder_has_dicom(path)
    if image_extension(path):
        return path.is_file()
    if path.is_file():  # DICOM files often have no extension
        from .dicom import is_dicom_file

        return is_dicom_file(path)
    return False


def folder_has_dicom(folder, max_files: int = 200) -> bool:
    """True if one of the first ``max_files`` files under ``folder`` is DICOM."""
    from .dicom import is_dicom_file

    seen = 0
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            if is_dicom_file(os.path.join(root, name)):
                return True
            seen += 1
            if seen >= max_files:
                return False
    return False


def read_images(path, timepoint: Optional[int] = None, keep_time: bool = False) -> List[Image]:
    """Read every image at ``path``: one per DICOM series, else one.

    Parameters
    ----------
    path : str or Path
        An image file or a folder holding a DICOM series (or several).
    timepoint : int, optional
        For 4D NIfTI/NRRD/MHA: which volume to take.
    keep_time : bool
        Return a 4D image (t, z, y, x) instead of refusing (napari shows the
        4th axis as a slider).

    Returns
    -------
    list of Image
    """
    path = Path(path)
    if not path.exists():
        raise SamlabError(f"{path} does not exist: check the path")
    if path.is_dir() or (path.is_file() and (image_extension(path) == ".dcm" or not image_extension(path))):
        from .dicom import is_dicom_file, read_dicom_series

        if path.is_dir():
            return read_dicom_series(path)
        if not is_dicom_file(path):
            raise SamlabError(
                f"{path.name} is not an image napari-samlab can read: use NIfTI, NRRD, MHA/MHD, "
                "a DICOM series folder, TIFF, PNG or JPEG"
            )
        # one DICOM file: read the series it belongs to from its folder
        uid = _series_uid_of(path)
        return read_dicom_series(path.parent, series_uid=uid) if uid else read_dicom_series(path)
    return [_read_with_sitk(path, timepoint, keep_time)]


def read_image(path, timepoint: Optional[int] = None) -> Image:
    """Read one 2D image or 3D volume with spacing, origin and direction.

    Parameters
    ----------
    path : str or Path
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``, a DICOM series
        folder, ``.tif``/``.tiff``, ``.png``, ``.jpg``.
    timepoint : int, optional
        Volume index of a 4D file.

    Returns
    -------
    Image
        ``image.array`` equals ``SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(path))``.

    Raises
    ------
    SamlabError
        For anything that cannot be read, with what to do about it.

    Examples
    --------
    >>> image = read_image("sample_data/ct_chest_lung2.nrrd")   # doctest: +SKIP
    >>> image.array.shape, image.spacing                         # doctest: +SKIP
    ((61, 512, 512), (0.627, 0.627, 5.0))
    """
    images = read_images(path, timepoint)
    if len(images) > 1:
        listing = "; ".join(
            f"{im.metadata.get('name', '?')} ({im.array.shape[0]} slices, UID {im.metadata.get('series_uid', '?')})"
            for im in images
        )
        raise SamlabError(
            f"{path} holds {len(images)} DICOM series ({listing}): point to a folder holding only one series"
        )
    return images[0]


def _segments_of(path: Path, reader) -> list:
    """Segment names/colours: 3D Slicer's .seg.nrrd fields, or an ITK-SNAP
    label file beside the image (see io/segments.py)."""
    from .segments import is_seg_nrrd, read_itksnap, segments_from_fields, sidecar_path

    if is_seg_nrrd(path):
        return segments_from_fields({k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()
                                     if k.startswith("Segment")})
    side = sidecar_path(path)
    return read_itksnap(side) if side.is_file() else []


def _series_uid_of(path) -> Optional[str]:
    import pydicom

    try:
        return str(pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
    except Exception:
        return None


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def _read_with_sitk(path: Path, timepoint: Optional[int], keep_time: bool) -> Image:
    import SimpleITK as sitk

    # ITK prints warnings straight to stderr; our messages say what matters
    sitk.ProcessObject_SetGlobalWarningDisplay(False)

    fmt = FORMATS.get(image_extension(path), "image")
    if path.stat().st_size == 0:
        raise SamlabError(f"{path.name} is empty (0 bytes): re-export or re-download it")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise SamlabError(
            f"cannot read {path.name}: it is not a valid {fmt} file or it is damaged ({_itk_reason(err)}); "
            "re-export it or check the file"
        ) from None
    size = list(reader.GetSize())
    ncomp = reader.GetNumberOfComponents()
    nbytes = int(np.prod(size, dtype=np.int64)) * ncomp * max(1, _pixel_bytes(reader.GetPixelIDValue()))
    free = _available_memory()
    if nbytes > MEMORY_FRACTION * free:
        raise SamlabError(
            f"{path.name} needs {nbytes / 2**30:.1f} GiB in memory but only {free / 2**30:.1f} GiB are free: "
            "crop or downsample it first (e.g. with SimpleITK or 3D Slicer)"
        )
    ndim = len(size)
    if ndim == 4:
        if size[3] == 1:
            timepoint = 0
        if timepoint is None and not keep_time:
            raise SamlabError(
                f"{path.name} is 4D ({size[3]} volumes of {size[0]}x{size[1]}x{size[2]}); napari-samlab segments "
                "one 3D volume at a time: pick one (timepoint=K in Python, or extract it, e.g. fslroi IN OUT K 1)"
            )
        if timepoint is not None and not 0 <= timepoint < size[3]:
            raise SamlabError(f"{path.name} has volumes 0..{size[3] - 1}; timepoint {timepoint} does not exist")
        if timepoint is not None:
            reader.SetExtractIndex([0, 0, 0, int(timepoint)])
            reader.SetExtractSize(size[:3] + [0])
    try:
        itk_image = reader.Execute()
    except RuntimeError as err:
        raise SamlabError(
            f"cannot read the pixels of {path.name}: the file is truncated or damaged ({_itk_reason(err)}); "
            "re-export it"
        ) from None
    _check_complete(path, itk_image, reader)
    array = sitk.GetArrayFromImage(itk_image)
    spatial = min(itk_image.GetDimension(), 3)
    spacing, origin = itk_image.GetSpacing()[:spatial], itk_image.GetOrigin()[:spatial]
    direction = np.asarray(itk_image.GetDirection()).reshape(itk_image.GetDimension(), -1)[:spatial, :spatial]
    meta = {"path": str(path), "format": fmt, "name": _layer_name(path)}
    # free-text header fields (NIfTI descrip/intent_name, NRRD content, modality keys): CT/MR detection reads them
    said = [f"{k}: {reader.GetMetaData(k).strip()}" for k in reader.GetMetaDataKeys()
            if (k in ("descrip", "intent_name", "NRRD_content", "content") or "modality" in k.lower())
            and reader.GetMetaData(k).strip()]
    if said:
        meta["header_text"] = "; ".join(said)[:500]
    if itk_image.GetDimension() == 4:
        meta["time_axis"] = True
    segments = _segments_of(path, reader)
    if segments:
        meta["segments"] = segments
    image = Image(array, spacing, origin, tuple(direction.ravel()), max(1, ncomp), meta)
    return image


def _check_complete(path: Path, itk_image, reader) -> None:
    """Catch truncated files that ITK reads silently (NIfTI, TIFF): it pads with zeros."""
    ext = image_extension(path)
    if ext in (".nii", ".nii.gz"):
        expected = _nifti_expected_bytes(path, itk_image)
        if expected is None:
            return
        if ext == ".nii":
            actual = path.stat().st_size
        else:
            # gzip's trailer holds the uncompressed size mod 2**32: a cheap
            # first check; decompress fully only when it disagrees
            with open(path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                isize = int.from_bytes(fh.read(4), "little")
            if isize == expected % 2**32:
                return
            actual = _gzip_length(path)
        if actual < expected:
            raise SamlabError(
                f"{path.name} is truncated: it holds {actual} of the {expected} bytes its header announces; "
                "re-export or re-download it"
            )
    elif ext in (".tif", ".tiff"):
        import tifffile

        import logging

        problems = []

        class _Collect(logging.Handler):  # tifffile logs (not raises) broken page chains
            def emit(self, record):
                msg = record.getMessage()
                # errors always; older tifffile (2023.x) logs a cut page chain as a warning only
                if record.levelno >= logging.ERROR or "invalid page offset" in msg or "truncat" in msg.lower():
                    problems.append(msg)

        handler = _Collect(logging.WARNING)
        tif_log = logging.getLogger("tifffile")
        tif_log.addHandler(handler)
        propagate, tif_log.propagate = tif_log.propagate, False
        try:
            size = path.stat().st_size
            with tifffile.TiffFile(str(path)) as tif:
                pages = len(tif.pages)
                for page in tif.pages:
                    ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts)]
                    if ends and max(ends) > size:
                        problems.append("pixel data beyond the end of the file")
                        break
        except Exception as err:  # tifffile raises many kinds for damaged files
            problems.append(type(err).__name__)
        finally:
            tif_log.removeHandler(handler)
            tif_log.propagate = propagate
        if problems:
            raise SamlabError(f"{path.name} is truncated or damaged ({problems[0][:80]}): re-export it")
        depth = itk_image.GetSize()[2] if itk_image.GetDimension() == 3 else 1
        if depth > pages:
            raise SamlabError(f"{path.name} is truncated: {pages} pages of {depth}; re-export it")


def _nifti_expected_bytes(path: Path, itk_image):
    """vox_offset + data size from the raw NIfTI-1/2 header (None if unsure)."""
    import gzip
    import struct

    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
    except (OSError, EOFError):
        return None
    for endian in ("<", ">"):
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:  # NIfTI-1
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0]) or 352
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:  # NIfTI-2
            dims = struct.unpack(endian + "8q", head[16:80])
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            offset = int(struct.unpack(endian + "q", head[168:176])[0]) or 544
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    nvox = int(np.prod([max(1, d) for d in dims[1:ndim + 1]], dtype=np.int64))
    return offset + nvox * bitpix // 8


def _gzip_length(path: Path) -> int:
    import gzip
    import zlib

    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while True:
                chunk = fh.read(1 << 22)
                if not chunk:
                    break
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        pass  # a cut stream ends early: what was read so far is the length
    return total


def _pixel_bytes(pixel_id: int) -> int:
    import SimpleITK as sitk

    table = {
        sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2,
        sitk.sitkUInt32: 4, sitk.sitkInt32: 4, sitk.sitkFloat32: 4, sitk.sitkUInt64: 8,
        sitk.sitkInt64: 8, sitk.sitkFloat64: 8,
    }
    return table.get(pixel_id, 8)


def _itk_reason(err: Exception) -> str:
    """The informative last part of ITK's multi-line exception text."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.lower().startswith(("description:", "itk::error")) or ":" in ln:
            text = ln.split("Description:", 1)[-1].strip()
            text = text.split(": ", 1)[-1] if text.startswith("itk::ERROR") else text
            return text[:160]
    return (lines[-1] if lines else str(err))[:160]


def _layer_name(path: Path) -> str:
    from .atomic import split_ext

    return split_ext(path)[0]


def looks_like_labels(image: Image) -> bool:
    """True for integer images that are label maps (name hint and few values).

    Used by the napari reader to open ``*_label.nrrd`` / ``*seg*`` / ``*mask*``
    files as Labels layers.
    """
    name = os.path.basename(str(image.metadata.get("path", ""))).lower()
    if image.channels > 1 or not np.issubdtype(image.array.dtype, np.integer):
        return False
    if not any(h in name for h in ("label", "seg", "mask", "annot")):
        return False
    sample = image.array.ravel()[:: max(1, image.array.size // 2_000_000)]
    return int(sample.min(initial=0)) >= 0 and len(np.unique(sample)) <= 1024
