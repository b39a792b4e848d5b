"""Small synthetic CT cases for the cohort tests (written as real NRRD files)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPACING = (0.8, 0.8, 2.5)  # x, y, z mm: anisotropic like thick-slice CT
ORIGIN = (-40.0, 12.5, -100.0)


def ct_volume(seed: int, shape=(12, 56, 64)) -> tuple:
    """A noisy lung-like background with a soft-tissue ellipsoid; returns (array, box on the middle slice)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    cz, cy, cx = shape[0] // 2, shape[1] // 2 + rng.integers(-4, 5), shape[2] // 2 + rng.integers(-4, 5)
    rz, ry, rx = 3.2, 9 + rng.integers(0, 4), 11 + rng.integers(0, 4)
    inside = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    vol = np.where(inside, 40.0, -800.0) + rng.normal(0, 25, shape)
    box = [int(cx - rx - 3), int(cy - ry - 3), int(cx + rx + 3), int(cy + ry + 3)]
    return vol.astype(np.int16), cz, box


def write_case(folder: Path, name: str, seed: int, propagate: bool = True, extra_entries=()) -> tuple:
    """Write ``name.nrrd`` and ``name.prompts.json``; returns their paths."""
    vol, z, box = ct_volume(seed)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    image = folder / f"{name}.nrrd"
    sitk.WriteImage(img, str(image), True)
    prompts = folder / f"{name}.prompts.json"
    entries = [{"slice": z, "box": box, "propagate": propagate}, *extra_entries]
    prompts.write_text(json.dumps({"prompts": entries}))
    return image, prompts


def write_cases_csv(folder: Path, rows, name: str = "CASES.csv") -> Path:
    """CASES.csv with paths relative to ``folder`` where possible."""
    lines = ["case,image,prompts"]
    for case, image, prompts in rows:
        rel = lambda p: "" if p is None else (Path(p).name if Path(p).parent == folder else str(p))  # noqa: E731
        lines.append(f"{case},{rel(image)},{rel(prompts)}")
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def read_labels(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
