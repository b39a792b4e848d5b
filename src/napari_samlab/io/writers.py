"""Writing label images that line up voxel for voxel with their source."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import SamlabError
from .atomic import atomic_output
from .image import Image
from .readers import image_extension
from .segments import is_seg_nrrd, itksnap_text, normalize_segments, sidecar_path, slicer_fields

LABEL_FORMATS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha", ".tif", ".tiff", ".png", ".dcm")
# formats that store no origin/direction (and PNG no spacing either)
_FLAT_FORMATS = (".png", ".tif", ".tiff")
# volume formats whose segment names/colours go to an ITK-SNAP label file beside them
_SIDECAR_FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha")


def check_label_output(path) -> Path:
    """Refuse, before any work, an output path no label format fits or whose folder is missing.

    Examples
    --------
    >>> check_label_output("out/tumour.nii.gz")   # doctest: +SKIP
    PosixPath('out/tumour.nii.gz')
    """
    out = Path(path)
    if image_extension(out) not in LABEL_FORMATS:
        raise SamlabError(f"cannot write labels to {out.name}: end OUT with one of {', '.join(LABEL_FORMATS)}")
    if not out.parent.exists():
        raise SamlabError(f"output folder {out.parent} does not exist: create it first")
    return out


def label_dtype(labels: np.ndarray):
    """Smallest unsigned type that holds every label value."""
    top = int(labels.max(initial=0))
    if top < 256:
        return np.uint8
    if top < 65536:
        return np.uint16
    return np.uint32


def write_labels(labels: np.ndarray, image: Image, path, segment_names: Optional[Dict[int, str]] = None,
                 segments: Optional[Sequence[dict]] = None) -> Path:
    """Write ``labels`` on ``image``'s grid to ``path`` (format from the extension).

    Parameters
    ----------
    labels : ndarray of int or bool
        Exactly ``image``'s spatial shape: (z, y, x) or (y, x).
    image : Image
        The source image whose spacing, origin and direction are written.
    path : str or Path
        ``.nii.gz``, ``.nii``, ``.nrrd``, ``.seg.nrrd`` (3D Slicer), ``.mha``, ``.tif``, ``.png``, or
        ``.dcm`` for a DICOM Segmentation of a DICOM source.
    segment_names : dict, optional
        Label value -> name.
    segments : sequence of dict, optional
        ``[{"label": 1, "name": "tumour", "color": (r, g, b)}, ...]`` (colour
        in 0..1 or 0..255).  Names and colours are written where review tools
        read them (see :mod:`napari_samlab.io.segments`): 3D Slicer's segment
        fields in a ``.seg.nrrd`` (always written there, default names for
        unnamed labels), an ITK-SNAP label description file
        ``<stem>.label.txt`` beside a NIfTI/NRRD/MHA (when names or segments
        are given; a stale one from an earlier save is removed), the
        segment labels of a DICOM SEG.

    Returns
    -------
    Path
        The written file.  Writing is atomic: on error nothing is left.

    Examples
    --------
    >>> write_labels(mask.astype(np.uint8), image, "tumour.nii.gz")   # doctest: +SKIP
    """
    path = Path(path)
    ext = image_extension(path)
    if ext not in LABEL_FORMATS:
        raise SamlabError(
            f"cannot write labels to {path.name}: use one of {', '.join(LABEL_FORMATS)}"
        )
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise SamlabError("labels must be whole numbers (label values); got fractional values")
        labels = labels.astype(np.int64)
    if labels.shape != tuple(image.spatial_shape):
        raise SamlabError(
            f"labels have shape {labels.shape} but the image has {tuple(image.spatial_shape)}: "
            "labels must cover the whole image grid"
        )
    if int(labels.min(initial=0)) < 0:
        raise SamlabError("labels must not be negative")
    _refuse_source_overwrite(path, image)
    if not path.parent.exists():
        raise SamlabError(f"folder {path.parent} does not exist: create it or choose another output path")
    if ext == ".dcm":
        from .dicom_seg import write_dicom_seg

        if segments:
            segment_names = {s["label"]: s["name"] for s in normalize_segments(segments, segment_names)}
        write_dicom_seg(labels, image, path, segment_names=segment_names)
        return path
    if ext in _FLAT_FORMATS:
        _check_flat_format(ext, labels, image, path)
    labels = labels.astype(label_dtype(labels), copy=False)
    fields, sidecar = {}, None
    if is_seg_nrrd(path):
        fields = slicer_fields(normalize_segments(segments, segment_names, labels), labels)
    elif ext in _SIDECAR_FORMATS and (segments or segment_names):
        sidecar = itksnap_text(normalize_segments(segments, segment_names, labels))
    _write_sitk(labels, image, path, ext, fields, sidecar)
    return path


def _refuse_source_overwrite(path: Path, image: Image) -> None:
    sources = [image.metadata.get("path")] + list(image.metadata.get("dicom_files", ()))
    for src in sources:
        if src and os.path.exists(src) and path.exists() and os.path.samefile(src, path):
            raise SamlabError(f"{path.name} is the source image: choose another output file name")


def _check_flat_format(ext, labels, image, path) -> None:
    if ext == ".png":
        if labels.ndim != 2:
            raise SamlabError(f"PNG holds 2D images only; {path.name} would need {labels.ndim}D: save as .nii.gz or .tif")
        if int(labels.max(initial=0)) > 65535:
            raise SamlabError("PNG holds label values up to 65535: save as .nii.gz or .nrrd")
    origin_lost = any(abs(v) > 1e-9 for v in image.origin)
    direction_lost = not np.allclose(image.direction_matrix, np.eye(image.spatial_ndim))
    spacing_lost = ext == ".png" and not np.allclose(image.spacing, 1.0)
    if origin_lost or direction_lost or spacing_lost:
        raise SamlabError(
            f"{ext.upper()[1:]} cannot store this image's geometry (origin {tuple(round(v, 2) for v in image.origin)}, "
            f"spacing {tuple(round(v, 3) for v in image.spacing)}): save as .nii.gz, .nrrd or .mha to keep it aligned"
        )


def to_sitk(labels: np.ndarray, image: Image):
    """A SimpleITK image of ``labels`` carrying ``image``'s geometry."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(labels, isVector=False)
    out.SetSpacing(image.spacing)
    out.SetOrigin(image.origin)
    out.SetDirection(image.direction)
    return out


def _write_sitk(labels: np.ndarray, image: Image, path: Path, ext: str, fields: Optional[Dict[str, str]] = None,
                sidecar: Optional[str] = None) -> None:
    """Write the image (with header ``fields``) and, if given, the label file
    beside it; both appear together or neither does."""
    import SimpleITK as sitk

    itk_image = to_sitk(labels, image)
    for key, value in (fields or {}).items():
        itk_image.SetMetaData(key, value)
    writer = sitk.ImageFileWriter()
    writer.SetUseCompression(ext in (".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".tif", ".tiff"))
    side = sidecar_path(path)
    try:
        with atomic_output(path) as tmp, contextlib.ExitStack() as stack:
            if sidecar is not None:
                stack.enter_context(atomic_output(side)).write_text(sidecar, encoding="utf-8")
            writer.SetFileName(str(tmp))
            writer.Execute(itk_image)
        if sidecar is None and ext in _SIDECAR_FORMATS and side.exists():
            side.unlink()  # names of an earlier save would be read back as this file's
    except RuntimeError as err:
        raise SamlabError(f"could not write {path.name}: {str(err).strip().splitlines()[-1][:160]}") from None
    except OSError as err:
        raise SamlabError(f"could not write {path.name}: {err.strerror} ({path.parent})") from None
