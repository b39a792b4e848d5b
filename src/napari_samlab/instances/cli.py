"""``samlab segment IMAGE -o OUT --everything``: the options and the run, kept here so that
:mod:`napari_samlab.cli` only adds them and calls :func:`run_everything` once.
"""
from __future__ import annotations

import sys
import warnings

from typing import Optional

import numpy as np

from ..errors import SamlabError

__all__ = ["add_everything_options", "run_everything"]


def add_everything_options(parser) -> None:
    """Add ``--everything`` and its options to the ``segment`` sub-parser."""
    g = parser.add_argument_group("segment everything (automatic instances, no prompt)")
    g.add_argument("--everything", action="store_true",
                   help="find every object (nuclei, cells) and give each its own label value 1..N")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--object-size", type=float, metavar="PX", help="typical object diameter in pixels (default: estimated)")
    size.add_argument("--object-size-um", type=float, metavar="UM", help="typical object diameter in micrometres (uses the image's pixel size)")
    g.add_argument("--min-size", type=float, metavar="PX", help="smallest object kept, in pixels/voxels (default: 15%% of a typical object)")
    g.add_argument("--tile-size", type=int, metavar="PX", help="process large 2D images in tiles of this side (default: 2048 when larger)")


def _spacing_um(image) -> tuple:
    """Pixel size per array axis (z, y, x) in micrometres; SimpleITK spacing is (x, y, z) in millimetres."""
    return tuple(float(s) * 1000.0 for s in reversed(image.spacing))


EVERYTHING_OPTIONS = ("object_size", "object_size_um", "min_size", "tile_size")


def everything_settings(args) -> Optional[dict]:
    """The ``--everything`` options of a run (for its provenance record), or None without ``--everything``."""
    if not getattr(args, "everything", False):
        return None
    return {k: getattr(args, k, None) for k in EVERYTHING_OPTIONS}


def everything_args(settings: dict):
    """An argument namespace for :func:`run_everything` from a record's ``everything`` settings (replay)."""
    import types

    base = {"box": None, "point": [], "negative": [], "prompts": None, "propagate": False, "slice": None,
            "everything": True}
    return types.SimpleNamespace(**base, **{k: settings.get(k) for k in EVERYTHING_OPTIONS})


def run_everything(args, image, model) -> np.ndarray:
    """Check the ``--everything`` request and return the instance labels (uint16/uint32).

    Raises SamlabError for prompts given with ``--everything``, a family
    that cannot, or absurd sizes, before any work is done.
    """
    from .api import segment_everything

    prompts = args.box is not None or args.point or args.negative or getattr(args, "prompts", None)
    if prompts:
        raise SamlabError("--everything finds every object without prompts: leave out --box/--point/--negative/--prompts")
    if args.propagate or args.slice is not None:
        raise SamlabError("--everything segments the whole image (all slices): leave out --slice and --propagate")
    if args.object_size_um is not None and all(abs(s - 1.0) < 1e-12 for s in image.spacing):
        raise SamlabError("IMAGE has no pixel size, so --object-size-um cannot be converted: give --object-size in pixels")
    if image.channels > 1 and not image.rgb:
        raise SamlabError(f"IMAGE has {image.channels} channels: save the nuclear channel as its own image and segment that")
    rgb = image.rgb
    spacing = _spacing_um(image)
    if args.object_size is not None and not args.object_size > 0:
        raise SamlabError(f"--object-size {args.object_size:g} must be a positive diameter in pixels")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segment_everything(image.array, model=model, object_size=args.object_size,
                                    object_size_um=args.object_size_um, spacing=spacing, min_size=args.min_size,
                                    rgb=rgb, tile_size=args.tile_size, return_result=True)
    for w in caught:
        if "segment everything" in str(w.message):
            print(f"samlab: warning: {w.message}", file=sys.stderr)
    n = int(result.labels.max())
    size = f"{result.diameter_px:.1f} px ({'estimated' if result.estimated else 'given'})" if result.diameter_px else "n/a"
    print(f"segment everything ({result.engine}): {n} objects, object diameter {size}", file=sys.stderr)
    dtype = np.uint16 if n <= 65535 else np.uint32
    return result.labels.astype(dtype)
