"""The ``samlab`` command line (SPEC.md): ``samlab segment``, ``samlab info``, ``samlab cache``,
and the cohort commands ``batch``, ``replay`` and ``compare`` (napari_samlab.cohort.cli).

Bad input ends with one line on stderr, a non-zero exit and no output
file.  Errors about an input are phrased with this front end's names for
it (``err.for_cli()``: ``--box X0 Y0 X1 Y1``, ``--model medsam``).  An
unexpected failure prints one line too; its traceback goes to the
``napari_samlab`` logger and to stderr with ``SAMLAB_DEBUG=1``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from .errors import SamlabError

log = logging.getLogger("napari_samlab")
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (SPEC: one clear line)."""

    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    from .base.windowing import PRESET_NAMES
    from .models.backends import ALIASES, ENCODER_BACKENDS
    from .models.families import family_names

    parser = _Parser(prog="samlab", description="Promptable segmentation of CT, MRI, histology and microscopy.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    seg = sub.add_parser("segment", help="segment an image from a box or points and write a label image")
    seg.add_argument("image", metavar="IMAGE", help="NIfTI, NRRD, MHA/MHD, DICOM series folder, TIFF, PNG or JPEG")
    seg.add_argument("-o", "--output", required=True, metavar="OUT", help="label image to write (.nii.gz, .nii, .nrrd, .mha, .tif, .png; .dcm = DICOM SEG for DICOM input)")
    seg.add_argument("--model", choices=family_names(), help="engine (default: classic, or detected from --checkpoint)")
    seg.add_argument("--checkpoint", metavar="PATH", help="model weights file")
    seg.add_argument("--base-checkpoint", metavar="PATH", help="original SAM weights a SAMed LoRA file builds on")
    seg.add_argument("--slice", type=int, metavar="Z", help="slice index that carries the prompt (3D input)")
    seg.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="box corners (array indices, inclusive)")
    seg.add_argument("--point", type=float, nargs=2, action="append", default=[], metavar=("X", "Y"), help="positive click (repeatable)")
    seg.add_argument("--negative", type=float, nargs=2, action="append", default=[], metavar=("X", "Y"), help="negative click (repeatable)")
    seg.add_argument("--propagate", action="store_true", help="propagate the prompted slice's mask through the volume")
    win = seg.add_mutually_exclusive_group()
    win.add_argument("--window", default="auto", choices=PRESET_NAMES, help="intensity window (default: the family's own)")
    win.add_argument("--window-level", type=float, nargs=2, metavar=("L", "W"), help="manual window level and width")
    seg.add_argument("--label", type=int, default=1, metavar="N", help="label value of the object (default 1)")
    seg.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    seg.add_argument("--image-size", type=int, metavar="S", help="MSA: the input size the checkpoint was trained at, "
                                                                 "for files that do not record it")
    seg.add_argument("--num-outputs", type=int, metavar="N", help="MSA: output masks to keep (class k is written as "
                                                                  "label value k); default from the file, else 1")
    seg.add_argument("--cache-dir", metavar="DIR", help="on-disk embedding cache (reused across runs)")
    seg.add_argument("--cache-dtype", choices=("float32", "float16"), default="float32",
                     help="storage type of the on-disk cache: float32 (default) keeps the embedding exactly as "
                          "computed; float16 halves the disk use and rounds it (part of the cache key)")
    seg.add_argument("--encoder", choices=sorted(set(ENCODER_BACKENDS) | set(ALIASES)), metavar="BACKEND",
                     help="image-encoder backend: torch (upstream PyTorch fp32), onnx, openvino (exported fp32, "
                          "checked against PyTorch), auto (default: the fastest of those), or the approximate "
                          "*-int8 / torch-autocast; default $SAMLAB_ENCODER_BACKEND or auto")
    from .cohort import cli as cohort_cli  # cohort hooks: segment --prompts, batch, replay, compare
    from .instances.cli import add_everything_options

    cohort_cli.add_segment_options(seg)
    add_everything_options(seg)
    cohort_cli.add_subcommands(sub, family_names(), PRESET_NAMES)
    info = sub.add_parser("info", help="describe a checkpoint file")
    info.add_argument("checkpoint", metavar="CHECKPOINT")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--encoder", choices=sorted(set(ENCODER_BACKENDS) | set(ALIASES)), metavar="BACKEND",
                      help="the encoder backend to report on (default $SAMLAB_ENCODER_BACKEND or auto)")
    cache = sub.add_parser("cache", help="show the disk caches (embeddings, exported encoders) and their size; --clear empties them")
    cache.add_argument("--clear", action="store_true", help="delete the cached entries (they are recomputed when needed)")
    cache.add_argument("--cache-dir", metavar="DIR", help="the embedding cache folder (as given to 'samlab segment --cache-dir'; "
                                                          "default $SAMLAB_CACHE_DIR/embeddings or ~/.cache/napari-samlab/embeddings)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``samlab`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as err:
        print(f"samlab: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.version:
        from . import __version__

        print(f"samlab (napari-samlab) {__version__}")
        return 0
    if args.command is None:
        build_parser().print_help()
        return EXIT_USAGE
    try:
        if getattr(args, "handler", None) is not None:  # batch, replay, compare
            return args.handler(args)
        if args.command == "segment":
            return run_segment(args)
        if args.command == "cache":
            return run_cache(args)
        return run_info(args)
    except SamlabError as err:
        print(f"samlab: error: {err.for_cli()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("samlab: interrupted; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("samlab: error: out of memory: crop the image, close other programs or use a smaller model", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - boundary: one line for users, the traceback to the log
        log.debug("samlab %s failed", args.command, exc_info=True)  # silent unless logging is configured
        if os.environ.get("SAMLAB_DEBUG"):
            import traceback

            traceback.print_exc()
        print(f"samlab: internal error: {type(err).__name__}: {err} (rerun with SAMLAB_DEBUG=1 and report it)", file=sys.stderr)
        return EXIT_INTERNAL


# -- samlab info -----------------------------------------------------------
def run_info(args) -> int:
    from .errors import CLI_NAMES
    from .models.registry import default_encoder, describe_checkpoint

    if not Path(args.checkpoint).is_file():
        raise SamlabError(f"{args.checkpoint} does not exist: check the path")
    info = describe_checkpoint(args.checkpoint, names=CLI_NAMES)
    info["encoder"] = default_encoder(info["family"], args.encoder)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for key, value in info.items():
            print(f"{key.replace('_', ' ')}: {value}")
    return 0


# -- samlab cache ----------------------------------------------------------
def run_cache(args) -> int:
    """Print each disk cache folder with its size; with ``--clear`` empty them first."""
    from .predict.cache import cache_usage, clear_cache_folder, default_cache_dirs

    if args.cache_dir is not None and not Path(args.cache_dir).expanduser().is_dir():
        what = "is not a folder" if Path(args.cache_dir).expanduser().exists() else "does not exist"
        raise SamlabError(f"cache folder {args.cache_dir} {what}: give the folder used with 'samlab segment --cache-dir'")
    folders = default_cache_dirs(args.cache_dir)
    # check every folder before deleting anything: a bad one stops the whole command
    usage = {kind: cache_usage(folder, kind) for kind, folder in folders.items()}
    for kind, folder in folders.items():
        if args.clear:
            freed = clear_cache_folder(folder, kind)
            left = cache_usage(folder, kind)
            print(freed.describe("freed") + (f"; {left.entries} in use or just written, kept" if left.entries else ""))
        else:
            print(usage[kind].describe())
    return 0


# -- samlab segment --------------------------------------------------------
def run_segment(args) -> int:
    from .io.readers import image_extension, read_image
    from .io.writers import check_label_output

    out = check_label_output(args.output)
    if not 1 <= args.label <= 65535:
        raise SamlabError(f"--label {args.label} is out of range: use 1..65535")
    _check_window_level(args.window_level)
    _check_device(args)
    if args.cache_dir is not None:
        from .predict.cache import check_cache_folder

        check_cache_folder(args.cache_dir)  # before any work: a foreign folder is refused, nothing written
    image = read_image(args.image)
    if image_extension(out) == ".dcm" and image.metadata.get("format") != "dicom":
        raise SamlabError("a .dcm output is a DICOM Segmentation and needs a DICOM series as IMAGE: save as .nii.gz or .nrrd instead")
    from .cohort import cli as cohort_cli

    cohort_cli.check_segment_args(args)
    model = _load_model(args)
    from .predict.predictor import SlicePredictor

    predictor = SlicePredictor(model, cache_dir=args.cache_dir, disk_dtype=args.cache_dtype)
    if getattr(args, "everything", False):
        from .instances.cli import run_everything

        labels = run_everything(args, image, model)
    else:  # --prompts FILE, else the single-prompt flags
        labels = cohort_cli.segment_labels(image, model, args, lambda im, m, a: segment_image(im, m, a, predictor))
    from .io.writers import write_labels
    from .models.base import encoder_report

    write_labels(labels, image, out, segment_names=cohort_cli.segment_names(labels, model, args))
    side = cohort_cli.write_segment_sidecar(image, model, args, out)  # provenance: OUT with .json
    n = int(np.count_nonzero(labels))
    if n == 0:
        print(f"samlab: warning: {_why_empty(image.array)}", file=sys.stderr)
    ml = n * float(np.prod(image.spacing)) / 1000.0 if image.spatial_ndim == 3 else None
    size = f", {ml:.2f} mL" if ml is not None else ""
    print(f"wrote {out} ({n} voxels labelled{size}) and its provenance {side.name}")
    report = encoder_report(model)
    hits = predictor.memory_hits + predictor.disk_hits
    used = report["backend"] != "none" and predictor.encoder_calls + hits  # this run's slices went through it
    counts = f"; {predictor.encoder_calls} slice(s) encoded, {hits} from the cache" if used else ""
    print(f"samlab: {report['summary']}{counts}", file=sys.stderr)
    return 0


def _load_model(args):
    from .models.registry import load_model

    from .models.families import get_family

    family = args.model
    if args.checkpoint is None and family is not None and get_family(family).needs_checkpoint:
        raise SamlabError(f"--model {family} needs its weights: add --checkpoint PATH")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise SamlabError(f"checkpoint {args.checkpoint} does not exist: check the path")
    if args.base_checkpoint is not None and not Path(args.base_checkpoint).is_file():
        raise SamlabError(f"base checkpoint {args.base_checkpoint} does not exist: check the path")
    if args.checkpoint is None:
        family = family or "classic"
    extra = {k: v for k, v in (("image_size", args.image_size), ("num_outputs", args.num_outputs)) if v is not None}
    if extra and (args.checkpoint is None or family == "classic"):
        raise SamlabError("--image-size and --num-outputs are for MSA checkpoints: add --checkpoint or leave them out")
    return load_model(args.checkpoint, family=family, base_checkpoint=args.base_checkpoint, device=args.device,
                      encoder_backend=getattr(args, "encoder", None), **extra)


def _check_window_level(window_level) -> None:
    """NaN or infinite level/width would clip every pixel away (an empty mask, exit 0)."""
    if window_level is None:
        return
    level, width = window_level
    if not (np.isfinite(level) and np.isfinite(width)) or width <= 0:
        raise SamlabError(f"--window-level {level:g} {width:g} is not a window: give a finite level and a positive "
                          "width, e.g. --window-level 40 400")


def _check_device(args) -> None:
    """--device cuda must run on CUDA or stop: never fall back to the CPU silently."""
    if args.device != "cuda":
        return
    try:
        import torch

        available = bool(torch.cuda.is_available())
    except ImportError:
        available = False
    if not available:
        raise SamlabError("--device cuda was asked for but this machine has no usable CUDA GPU: use --device cpu")
    if args.checkpoint is None and args.model in (None, "classic"):
        raise SamlabError("the classic engine runs on the CPU only: leave out --device cuda, or pick a model "
                          "with weights (--model ... --checkpoint ...)")


def _why_empty(volume: np.ndarray) -> str:
    """The one-line warning for an empty result: a constant image says so."""
    if volume.size and np.all(volume == volume.flat[0]):
        return (f"the image holds one value only ({volume.flat[0].item()!r} everywhere): nothing to segment; the mask is "
                "empty, check the input file")
    return "the mask is empty: the model found no object at the prompt; try another prompt, --window or model"


def _prompt_from_args(args, shape):
    """The prompt of --box/--point/--negative."""
    from .base.prompts import Prompt

    points = [tuple(p) for p in args.point] + [tuple(p) for p in args.negative]
    labels = [1] * len(args.point) + [0] * len(args.negative)
    return Prompt(box=tuple(args.box) if args.box is not None else None,
                  points=points or None, point_labels=labels or None)


def segment_image(image, model, args, predictor=None) -> np.ndarray:
    """Run the engine on IMAGE per the parsed CLI arguments; returns the label array."""
    from .base.prompts import validate_prompt
    from .base.windowing import resolve_window
    from .predict.predictor import SlicePredictor

    from .base.windowing import detect_modality

    volume = image.array
    is3d = image.spatial_ndim == 3
    guess = detect_modality(volume, metadata=image.metadata)  # metadata first, intensities as a fallback
    modality = guess.kind if guess.kind in ("CT", "MR") else image.metadata.get("modality")
    window = tuple(args.window_level) if args.window_level else args.window
    if predictor is None:
        predictor = SlicePredictor(model, cache_dir=args.cache_dir, disk_dtype=args.cache_dtype)
    labels = np.zeros(image.spatial_shape, np.uint16 if args.label > 255 or model.num_classes > 255 else np.uint8)
    if getattr(model, "memory_propagation", False):  # MedSAM2 / SAM 2: the video predictor's memory
        return _segment_with_memory(image, model, args, window, labels)

    if not model.needs_prompt:  # SAMed: classes on every slice, no prompt
        if args.box is not None or args.point or args.negative:
            print("samlab: note: this model segments without prompts; --box/--point are ignored", file=sys.stderr)
        win = resolve_window(window, volume, model, modality)
        _say_window(win, guess, args)
        if is3d and args.slice is not None:
            _check_slice(args.slice, volume.shape[0])
        from .cohort.apply import segment_without_prompts  # the one automatic path (segment, batch, replay)

        return segment_without_prompts(image, model, window, only_slice=args.slice if is3d else None,
                                       predictor=predictor, modality=modality)

    if is3d:
        if args.slice is None:
            raise SamlabError(f"IMAGE is a volume of {volume.shape[0]} slices: say which slice carries the prompt with --slice Z")
        _check_slice(args.slice, volume.shape[0])
        plane_shape = volume.shape[1:]
    else:
        if args.slice not in (None, 0):
            raise SamlabError("IMAGE is 2D: leave out --slice (or use --slice 0)")
        if args.propagate:
            raise SamlabError("--propagate needs a volume; IMAGE is 2D")
        plane_shape = volume.shape[:2]
    # the one prompt check (also run by the predictor), here before any encoding
    prompt = validate_prompt(_prompt_from_args(args, plane_shape), plane_shape, model)
    multiclass = getattr(model, "num_classes", 1) > 1
    if multiclass and args.propagate:
        raise SamlabError(f"--propagate follows one object; this model gives {model.num_classes} classes: "
                          "segment slice by slice (leave out --propagate) or use --num-outputs 1")
    win = resolve_window(window, volume, model, modality)
    _say_window(win, guess, args)

    if is3d and args.propagate:
        from .propagate import propagate_from_prompt

        t0 = time.perf_counter()
        result = propagate_from_prompt(predictor, volume, args.slice, prompt, window=win, modality=modality,
                                       spacing=image.spacing[::-1])
        labels[result.mask] = args.label
        flagged = result.flagged_slices()
        zs = np.flatnonzero(result.mask.any(axis=(1, 2)))
        extent = f"slices {zs.min()}..{zs.max()}" if zs.size else "no slices"
        print(f"propagated over {extent} in {time.perf_counter() - t0:.1f} s"
              + (f"; check flagged slices {', '.join(map(str, flagged))}:" if flagged else ""), file=sys.stderr)
        for line in flag_lines(result):
            print(line, file=sys.stderr)
        return labels

    plane = volume[args.slice] if is3d else volume
    predictor.set_image(plane, window=win)
    pred = predictor.predict_prompt(prompt)
    plane_out = labels[args.slice] if is3d else labels
    if multiclass and pred.labels is not None:
        plane_out[...] = pred.labels  # one label value per class (1..N), documented in README
    else:
        plane_out[pred.mask] = args.label
    return labels


def _segment_with_memory(image, model, args, window, labels) -> np.ndarray:
    """MedSAM2's 3D pipeline (propagate/memory.py); a one-slice volume or 2D image is one frame."""
    from .propagate.memory import segment_with_memory

    if args.box is None and not args.point:
        raise SamlabError("no prompt given: add --box X0 Y0 X1 Y1 or --point X Y (negatives need a box or a positive point)")
    volume = image.array
    is3d = image.spatial_ndim == 3
    if is3d and volume.shape[0] == 1:
        if args.propagate:
            raise SamlabError("IMAGE has a single slice: there is nothing to propagate to; drop --propagate to segment it in 2D")
        is3d, volume = False, volume[0]
    if is3d:
        if args.slice is None:
            raise SamlabError(f"IMAGE is a volume of {volume.shape[0]} slices: say which slice carries the prompt with --slice Z")
        _check_slice(args.slice, volume.shape[0])
        z = args.slice
    else:
        if args.slice not in (None, 0):
            raise SamlabError("IMAGE is 2D: leave out --slice (or use --slice 0)")
        if args.propagate:
            raise SamlabError("--propagate needs a volume; IMAGE is 2D")
        volume, z = volume[None], 0
    prompt = _prompt_from_args(args, volume.shape[1:3])
    t0 = time.perf_counter()
    mask = segment_with_memory(model, volume, z, prompt, window=window, propagate=args.propagate,
                               modality=image.metadata.get("modality"))
    labels[mask.reshape(labels.shape)] = args.label
    if args.propagate:
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        extent = f"slices {zs.min()}..{zs.max()}" if zs.size else "no slices"
        print(f"propagated with the model's memory over {extent} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if not mask.any():
        print("samlab: note: the model found no object for this prompt", file=sys.stderr)
    return labels


def _say_window(win, guess, args) -> None:
    """One stderr line: the window applied and why, and how to change it."""
    from .base.windowing import describe_window

    how = "given" if args.window_level or args.window != "auto" else "auto"
    print(f"samlab: {describe_window(win, guess)} [{how}; change with --window or --window-level L W]", file=sys.stderr)


# short reasons for the flags propagation puts on slices (propagate.quality.FLAGS has the long ones)
_FLAG_WHY = {
    "stopped_here": "propagation stopped after this slice",
    "edge": "the object still touches the end of the volume",
    "low_iou": "low overlap with the slice before",
    "big_jump": "the area changed a lot",
    "low_score": "the model's own score is low",
    "intensity": "the intensity inside the mask changed",
    "seam": "the runs from two anchors disagree here",
    "empty": "nothing found here, the object goes on after",
    "cancelled": "propagation was cancelled after this slice",
    "track_jump": "the object's shape changed a lot from the slice before",
    "track_overlap": "little overlap with the slice before",
    "track_weak": "weak evidence that this is still the object",
    "track_leak": "the mask leaked into the surroundings and was cut back",
}


def _stop_why(stop) -> str:
    """Why a run ended after its last kept slice, in a few words."""
    v = stop.value
    text = {
        "empty": "the object is gone on the next slice" + (f"s ({v:g} in a row)" if v and v > 1 else ""),
        "low_iou": f"the next slice overlapped it too little (IoU {v:.2f})" if v is not None else "low overlap",
        "area_jump": f"the next slice's area jumped x{v:.2f}" if v is not None else "area jump",
        "low_score": f"the next slice's score was low ({v:.2f})" if v is not None else "low score",
        "intensity": "the intensity changed on the next slice",
    }
    why = text.get(stop.reason, stop.reason)
    detail = getattr(stop, "detail", None)
    if detail == "depth limit":
        # the classic engine's stop for an object without an outline of its own
        why = ("the object has no clear outline of its own, so the run ended at a depth set by its size on the "
               "prompted slice (classic track_depth): prompt a slice further on to go on")
    elif detail:
        why += f": {detail}"
    return why


def flag_lines(result) -> List[str]:
    """One short line per flagged slice saying why, then how to look at them.

    Examples
    --------
    >>> flag_lines(result)                                          # doctest: +SKIP
    ['  slice 16: propagation stopped after this slice (next slice: low_iou 0.05)', ...]
    """
    stops = {s.last_kept: s for s in getattr(result, "stops", []) if s.last_kept is not None}
    lines = []
    for z in result.flagged_slices():
        rec = result.records[z]
        parts = []
        # the engine's own area/overlap flags say what the generic ones already say
        same = {"track_jump": "big_jump", "track_overlap": "low_iou"}
        for flag in sorted(f for f in rec.flags if same.get(f) not in rec.flags):
            why = _FLAG_WHY.get(flag, flag)
            if flag == "stopped_here" and z in stops:
                why += f" ({_stop_why(stops[z])})"
            elif flag == "low_iou" and rec.iou_prev is not None:
                why += f" (IoU {rec.iou_prev:.2f})"
            elif flag == "big_jump" and rec.area_ratio is not None:
                why += f" (x{rec.area_ratio:.2f})"
            elif flag == "low_score":
                why += f" ({rec.score:.2f})"
            parts.append(why)
        lines.append(f"  slice {z}: " + "; ".join(parts))
    if lines:
        lines.append("  look at them: open IMAGE and OUT in napari (Propagate box: 'Next flagged'), "
                     "or any viewer at those slice indices")
    return lines


def _check_slice(z: int, depth: int) -> None:
    if not 0 <= z < depth:
        raise SamlabError(f"--slice {z} is outside the volume (0..{depth - 1})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
