"""DICOM slices and their geometry: frames, positions, orientation, rescaling; sorting along the normal and the checks that refuse what is not one regular volume."""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SamlabError
from .dicom_pixels import pixel_bits

_GEOMETRY_TOL = 1e-3        # mm: positions closer than this are the same slice
_ORIENT_TOL = 1e-3          # direction cosines that differ less are one orientation
_SPACING_REL_TOL = 0.05     # slice gaps may vary by 5 % (scanner rounding) ...
_SPACING_ABS_TOL = 0.01     # ... or 0.01 mm, whichever is larger


@dataclass
class Slice:
    path: Path
    ds: object
    frame: int              # frame index within its file (0 for single-frame)
    n_frames: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple | None
    slope: float
    intercept: float
    rows: int
    cols: int


def _floats(v, n=None):
    """Numbers of a (multi-)valued DS/FD element as an array, None if absent or bad."""
    if v is None or v == "":
        return None
    values = list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v]
    try:
        out = np.asarray([float(x) for x in values], float)
    except (TypeError, ValueError):
        return None
    if (n is not None and out.size != n) or not np.all(np.isfinite(out)):
        return None
    return out


def _fg(ds, frame: int, seq: str, attr: str):
    """An attribute from the per-frame or shared functional groups."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame),
                        ("SharedFunctionalGroupsSequence", 0)):
        try:
            item = getattr(ds, groups)[idx]
            return getattr(getattr(item, seq)[0], attr)
        except (AttributeError, IndexError, KeyError, TypeError):
            continue
    return None


def _rescale(ds, frame=None):
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if frame is not None and slope is None:
        slope = _fg(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _fg(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    try:
        slope = 1.0 if slope in (None, "") else float(slope)
        intercept = 0.0 if intercept in (None, "") else float(intercept)
    except (TypeError, ValueError):
        slope, intercept = 1.0, 0.0
    return slope, intercept


def slices_of(path, ds) -> list:
    rows, cols = int(ds.Rows), int(ds.Columns)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        ps = _floats(ds.get("PixelSpacing", None), 2)
        if ps is None:
            ps = _floats(ds.get("ImagerPixelSpacing", None), 2)
        return [Slice(path, ds, 0, 1, _floats(ds.get("ImagePositionPatient", None), 3),
                       _floats(ds.get("ImageOrientationPatient", None), 6),
                       None if ps is None else tuple(ps), *_rescale(ds), rows, cols)]
    out = []
    grid = _floats(ds.get("GridFrameOffsetVector", None))
    ipp0 = _floats(ds.get("ImagePositionPatient", None), 3)
    iop0 = _floats(ds.get("ImageOrientationPatient", None), 6)
    for f in range(n):
        pos = _floats(_fg(ds, f, "PlanePositionSequence", "ImagePositionPatient"), 3)
        iop = _floats(_fg(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        ps = _floats(_fg(ds, f, "PixelMeasuresSequence", "PixelSpacing"), 2)
        iop = iop if iop is not None else iop0
        if pos is None and ipp0 is not None and iop is not None and grid is not None and grid.size == n:
            # RT Dose style: offsets along the normal from the first frame
            nrm = np.cross(iop[:3], iop[3:])
            pos = ipp0 + grid[f] * nrm
        if ps is None:
            ps = _floats(ds.get("PixelSpacing", None), 2)
        out.append(Slice(path, ds, f, n, pos, iop, None if ps is None else tuple(ps),
                          *_rescale(ds, f), rows, cols))
    return out


def _orientation_groups(slices) -> list:
    groups: list = []  # [orientation, count]
    for s in slices:
        for g in groups:
            if np.max(np.abs(g[0] - s.orientation)) <= _ORIENT_TOL:
                g[1] += 1
                break
        else:
            groups.append([s.orientation, 1])
    return groups


def check_consistent(slices, label) -> None:
    sizes = Counter((s.rows, s.cols) for s in slices)
    if len(sizes) > 1:
        desc = ", ".join(f"{c}×{r} in {n} slices" for (r, c), n in sizes.most_common())
        raise SamlabError(
            f"series {label} has slices of different sizes ({desc}); it cannot be "
            "stacked into one volume: open the files one by one or choose another series"
        )
    bits = Counter((b[0], b[3], b[2]) for b in (pixel_bits(s.ds) for s in slices))
    if len(bits) > 1:
        raise SamlabError(
            f"series {label} mixes pixel formats (bits allocated, samples per pixel, "
            f"signedness: {sorted(bits)}); it cannot be stacked into one volume: "
            "choose another series"
        )
    spacings = {tuple(np.round(s.pixel_spacing, 4)) for s in slices if s.pixel_spacing is not None}
    if len(spacings) > 1:
        raise SamlabError(
            f"series {label} mixes pixel spacings {sorted(spacings)} mm; it cannot be "
            "stacked into one volume: open the files one by one or choose another series"
        )


def sort_and_check(slices, label) -> tuple:
    """Sort slices along the normal; return (sorted slices, normal, z spacing)."""
    missing = [s for s in slices if s.position is None]
    if missing:
        raise SamlabError(
            f"series {label}: {len(missing)} of {len(slices)} slices have no "
            f"ImagePositionPatient (e.g. {missing[0].path.name}), so the slices cannot "
            "be placed in space: open the files one by one or re-export the series "
            "with positions"
        )
    no_orient = [s for s in slices if s.orientation is None]
    if no_orient:
        raise SamlabError(
            f"series {label}: {len(no_orient)} of {len(slices)} slices have no "
            f"ImageOrientationPatient (e.g. {no_orient[0].path.name}), so the slice "
            "order is unknown: re-export the series with orientations"
        )
    groups = _orientation_groups(slices)
    if len(groups) > 1:
        desc = "; ".join(
            f"{n} slice{'s' if n > 1 else ''} with row/column cosines "
            + "(" + ", ".join(f"{v:.3f}" for v in o) + ")"
            for o, n in groups[:4]
        )
        more = f"; and {len(groups) - 4} more" if len(groups) > 4 else ""
        raise SamlabError(
            f"series {label} mixes {len(groups)} orientations in its {len(slices)} "
            f"slices; it cannot be stacked into one volume: {desc}{more}. Open the files "
            "one by one or choose a series acquired in one plane"
        )
    iop = slices[0].orientation
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    dist = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(dist, kind="stable")
    slices = [slices[i] for i in order]
    dist = dist[order]
    if len(slices) == 1:
        return slices, normal, None
    gaps = np.diff(dist)
    dup = np.flatnonzero(gaps <= _GEOMETRY_TOL)
    if dup.size:
        i = int(dup[0])
        same = int(np.sum(np.abs(dist - dist[i]) <= _GEOMETRY_TOL))
        raise SamlabError(
            f"series {label} has {same} slices at the same position "
            f"({dist[i]:.3f} mm along the slice normal, e.g. {slices[i].path.name} and "
            f"{slices[i + 1].path.name}); it probably holds several time points, echoes "
            "or copies: split them into separate folders or choose another series"
        )
    expected = float(np.median(gaps))
    tol = max(_SPACING_ABS_TOL, _SPACING_REL_TOL * expected)
    bad = np.flatnonzero(np.abs(gaps - expected) > tol)
    if bad.size:
        i = int(bad[0])
        extra = f" ({bad.size} uneven gaps in all)" if bad.size > 1 else ""
        raise SamlabError(
            f"series {label} has uneven slice spacing: {gaps[i]:.3f} mm between the slices "
            f"at {dist[i]:.3f} mm and {dist[i + 1]:.3f} mm along the slice normal "
            f"(files {slices[i].path.name}, {slices[i + 1].path.name}) where "
            f"{expected:.3f} mm is expected{extra}; it cannot be stacked into an even "
            "volume: slices are probably missing, so copy the complete series or choose "
            "another series"
        )
    # in-plane drift between slices means gantry tilt: the stack is sheared
    pos = np.array([s.position for s in slices])
    inplane = pos - np.outer(dist, normal)
    drift = float(np.max(np.linalg.norm(inplane - inplane[0], axis=1)))
    if drift > max(_SPACING_ABS_TOL, 0.01 * float(np.min(slices[0].pixel_spacing or (1.0,)))) * 10:
        warnings.warn(
            f"series {label} is sheared (gantry tilt: slice positions drift {drift:.2f} mm "
            "within the slice plane); it is shown as an unsheared stack like SimpleITK does",
            stacklevel=3,
        )
    spacing_z = (dist[-1] - dist[0]) / (len(slices) - 1)
    return slices, normal, float(spacing_z)
