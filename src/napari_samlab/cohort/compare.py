"""Comparing two label images label by label: Dice, HD95 and volumes.

For each label value present in either image:

* ``dice`` = 2|A∩B| / (|A| + |B|);
* ``hd95_mm``: the 95th percentile of the symmetric surface distances in
  millimetres (the usual definition, as in MedPy's ``hd95``): the surface
  of a mask is its voxels with a background neighbour along an axis (the
  image edge counts as background), each surface voxel's distance to the
  nearest surface voxel of the other mask is taken in both directions, and
  the two lists are pooled.  None where the label is absent from one image;
* ``volume_ref_ml``, ``volume_test_ml``: voxel count x voxel volume / 1000
  (None for 2D images, which have no volume).

Distances use the voxel spacing, so anisotropic CT is measured in mm.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import SamlabError

KEYS = ("label", "dice", "hd95_mm", "volume_ref_ml", "volume_test_ml")


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a background face-neighbour (image border = background).

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> int(surface(m).sum())
    8
    """
    mask = np.asarray(mask, bool)
    eroded = ndi.binary_erosion(mask, ndi.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def _crop(a: np.ndarray, b: np.ndarray):
    """Both masks cut to the bounding box of their union, plus one background voxel each side."""
    union = a | b
    idx = np.nonzero(union)
    lo = [max(int(i.min()) - 1, 0) for i in idx]
    hi = [int(i.max()) + 2 for i in idx]
    sl = tuple(slice(l, h) for l, h in zip(lo, hi))
    pad = [(1 if l == 0 else 0, 1 if h > n else 0) for l, h, n in zip(lo, hi, a.shape)]
    # beyond the image edge is background, as in surface(): pad with zeros there
    return np.pad(a[sl], pad), np.pad(b[sl], pad)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) from every surface voxel of ``a`` to the surface of ``b``.

    Parameters
    ----------
    a, b : ndarray of bool
        Same shape, both non-empty.
    spacing : sequence of float
        Voxel size in array order (z, y, x).

    Examples
    --------
    >>> a = np.zeros((1, 8), bool); a[0, 2] = True
    >>> b = np.zeros((1, 8), bool); b[0, 5] = True
    >>> surface_distances(a, b, (1.0, 2.0)).tolist()
    [6.0]
    """
    a, b = _crop(np.asarray(a, bool), np.asarray(b, bool))
    sa, sb = surface(a), surface(b)
    dist_to_b = ndi.distance_transform_edt(~sb, sampling=tuple(float(s) for s in spacing))
    return dist_to_b[sa]


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> Optional[float]:
    """95th percentile of the symmetric surface distances (mm); None if either mask is empty.

    Examples
    --------
    >>> a = np.zeros((10, 10), bool); a[2:5, 2:5] = True
    >>> hd95(a, a, (1.0, 1.0))
    0.0
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() or not b.any():
        return None
    d = np.concatenate([surface_distances(a, b, spacing), surface_distances(b, a, spacing)])
    return float(np.percentile(d, 95))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare_labels(reference: np.ndarray, test: np.ndarray, spacing: Sequence[float]) -> List[dict]:
    """Per-label agreement of two label arrays on the same grid.

    Parameters
    ----------
    reference, test : ndarray of int
        Same shape; 0 is background.
    spacing : sequence of float
        Voxel size in array order ((z, y, x) or (y, x)), mm.

    Returns
    -------
    list of dict
        One per label value present in either, ascending, with the keys
        ``label``, ``dice``, ``hd95_mm``, ``volume_ref_ml``, ``volume_test_ml``.

    Examples
    --------
    >>> ref = np.zeros((4, 6, 6), np.uint8); ref[1:3, 1:4, 1:4] = 1
    >>> compare_labels(ref, ref, (2.0, 1.0, 1.0))[0]["dice"]
    1.0
    """
    reference, test = np.asarray(reference), np.asarray(test)
    if reference.shape != test.shape:
        raise SamlabError(f"the label images have different shapes {reference.shape} and {test.shape}: "
                          "compare segmentations of the same image")
    if len(spacing) != reference.ndim:
        raise SamlabError(f"spacing {tuple(spacing)} does not fit a {reference.ndim}D label image")
    voxel_ml = float(np.prod(spacing)) / 1000.0 if reference.ndim == 3 else None
    values = np.union1d(np.unique(reference), np.unique(test))
    rows = []
    for v in values[values != 0]:
        a, b = reference == v, test == v
        na, nb = int(a.sum()), int(b.sum())
        rows.append({
            "label": int(v),
            "dice": dice(a, b),
            "hd95_mm": hd95(a, b, spacing),
            "volume_ref_ml": None if voxel_ml is None else na * voxel_ml,
            "volume_test_ml": None if voxel_ml is None else nb * voxel_ml,
        })
    return rows


def same_geometry(ref, test, ref_name: str = "REFERENCE", test_name: str = "TEST") -> None:
    """Raise unless two images share shape, spacing, origin and direction.

    Tolerances: 1e-4 relative on spacing, 1e-3 mm on the origin, 1e-5 on
    the direction cosines (what survives a float32 round trip through the
    usual formats).
    """
    if tuple(ref.spatial_shape) != tuple(test.spatial_shape):
        raise SamlabError(f"{ref_name} is {'x'.join(map(str, ref.spatial_shape))} voxels but {test_name} is "
                          f"{'x'.join(map(str, test.spatial_shape))}: compare label images of the same image grid")
    if test.channels != 1 or ref.channels != 1:
        raise SamlabError("a label image has several channels: give single-channel label images")
    checks = (("spacing", ref.spacing, test.spacing, dict(rtol=1e-4, atol=0)),
              ("origin", ref.origin, test.origin, dict(rtol=0, atol=1e-3)),
              ("direction", ref.direction, test.direction, dict(rtol=0, atol=1e-5)))
    for what, a, b, tol in checks:
        if not np.allclose(a, b, **tol):
            fmt = lambda t: "(" + ", ".join(f"{v:g}" for v in t) + ")"  # noqa: E731
            raise SamlabError(f"{ref_name} and {test_name} have different {what} {fmt(a)} and {fmt(b)}: "
                              "they are not on the same grid; resample one onto the other first")


def _integer_labels(image, name: str) -> np.ndarray:
    arr = np.asarray(image.array)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise SamlabError(f"{name} has fractional values: it is not a label image (give the segmentation, not the scan)")
        arr = arr.astype(np.int64)
    if arr.size and int(arr.min()) < 0:
        raise SamlabError(f"{name} has negative values: it is not a label image")
    return arr


def compare_files(reference, test) -> List[dict]:
    """Read two label images and compare them (see :func:`compare_labels`).

    Raises
    ------
    SamlabError
        Unreadable file, different geometry, or not a label image.

    Examples
    --------
    >>> rows = compare_files("truth.nrrd", "out/case01.nii.gz")   # doctest: +SKIP
    """
    from .. import read_image

    ref, tst = read_image(reference), read_image(test)
    same_geometry(ref, tst, str(reference), str(test))
    return compare_labels(_integer_labels(ref, str(reference)), _integer_labels(tst, str(test)), ref.scale)


def largest_disagreement_slice(reference: np.ndarray, test: np.ndarray, label: int, axis: int = 0) -> Optional[int]:
    """Index along ``axis`` of the slice where ``label`` disagrees most (voxel count); None if it never does.

    Examples
    --------
    >>> ref = np.zeros((3, 4, 4), int); ref[2, :2, :2] = 1
    >>> largest_disagreement_slice(ref, np.zeros_like(ref), 1)
    2
    """
    diff = (np.asarray(reference) == label) ^ (np.asarray(test) == label)
    other = tuple(i for i in range(diff.ndim) if i != axis)
    counts = diff.sum(axis=other)
    return int(np.argmax(counts)) if counts.any() else None


def disagreement_map(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """1 where only the reference has a label (missed), 2 where only the test has one or
    the two name different labels (extra or wrong), 0 where they agree.

    Examples
    --------
    >>> disagreement_map(np.array([1, 1, 0, 2]), np.array([1, 0, 3, 1])).tolist()
    [0, 1, 2, 2]
    """
    reference, test = np.asarray(reference), np.asarray(test)
    out = np.zeros(reference.shape, np.uint8)
    out[(reference != 0) & (test == 0)] = 1
    out[(test != 0) & (reference != test)] = 2
    return out


def format_table(rows: List[dict]) -> str:
    """A plain-text table of :func:`compare_labels` rows."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{'label':>6} {'dice':>7} {'hd95_mm':>9} {'ref_ml':>10} {'test_ml':>10}"]
    for r in rows:
        lines.append(f"{r['label']:>6} {r['dice']:>7.4f} {num(r['hd95_mm'], '9.2f'):>9} "
                     f"{num(r['volume_ref_ml'], '10.3f'):>10} {num(r['volume_test_ml'], '10.3f'):>10}")
    if not rows:
        lines.append("(no labels in either image)")
    return "\n".join(lines)
