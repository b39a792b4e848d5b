"""Command-line pieces of the cohort workflow, hooked into ``samlab`` by
``napari_samlab.cli``:

* :func:`add_subcommands` adds ``samlab batch``, ``samlab replay`` and
  ``samlab compare`` (each sets ``args.handler``);
* :func:`add_segment_options` adds ``--prompts FILE`` to ``samlab segment``;
  :func:`segment_labels` and :func:`write_segment_sidecar` are what
  ``run_segment`` calls to use it and to write the provenance sidecar.

Errors are raised as :class:`~napari_samlab.errors.SamlabError`; the main
CLI turns them into one stderr line and a non-zero exit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import SamlabError

EXIT_FAILED_CASES = 1


# -- samlab segment --prompts ------------------------------------------------
def add_segment_options(segment_parser) -> None:
    """Add ``--prompts FILE`` to the ``segment`` subcommand."""
    segment_parser.add_argument(
        "--prompts", metavar="FILE",
        help="JSON prompts file (the widget's Save prompts): every entry's slice, box/points, label and propagate "
             "flag, applied in order; replaces --slice/--box/--point/--negative/--label/--propagate")


def _flag_prompt_used(args) -> list:
    used = []
    if args.slice is not None:
        used.append("--slice")
    if args.box is not None:
        used.append("--box")
    if args.point:
        used.append("--point")
    if args.negative:
        used.append("--negative")
    if args.propagate:
        used.append("--propagate")
    if args.label != 1:
        used.append("--label")
    return used


def check_segment_args(args) -> None:
    """Checks before any work: the sidecar would not overwrite a foreign file, and
    ``--prompts`` is not mixed with the single-prompt flags (which would win is unclear)."""
    from .provenance import sidecar_path

    side = sidecar_path(args.output)
    if side.exists() and not _is_record(side):
        raise SamlabError(f"{side.name} exists and is not a samlab provenance file; writing {Path(args.output).name} "
                          f"would replace it with OUT's provenance record: choose another OUT name")
    if getattr(args, "prompts", None) is None:
        return
    used = _flag_prompt_used(args)
    if used:
        raise SamlabError(f"--prompts replaces {', '.join(used)}: put that prompt into the prompts file or leave out --prompts")


def _is_record(path: Path) -> bool:
    from .provenance import read_provenance

    try:
        read_provenance(path)
    except SamlabError:
        return False
    return True


def entries_for_args(args) -> list:
    """The prompt entries a ``samlab segment`` call applies: the file's, or the flags' one entry."""
    from .prompts import PromptEntry, load_prompts

    if getattr(args, "prompts", None) is not None:
        return load_prompts(args.prompts)
    if args.box is None and not args.point:
        return []
    return [PromptEntry(slice=args.slice or 0, box=tuple(args.box) if args.box is not None else None,
                        points=tuple(tuple(p) for p in args.point), negatives=tuple(tuple(p) for p in args.negative),
                        label=args.label, propagate=bool(args.propagate))]


def segment_labels(image, model, args, flags_segment):
    """Labels for ``samlab segment``: from ``--prompts`` if given, else ``flags_segment(image, model, args)``.

    Parameters
    ----------
    flags_segment : callable
        The CLI's own single-prompt path (used unchanged without ``--prompts``).
    """
    if getattr(args, "prompts", None) is None:
        return flags_segment(image, model, args)
    from .apply import segment_image_with

    check_segment_args(args)
    entries = entries_for_args(args)
    if not model.needs_prompt:
        print("samlab: note: this model segments without prompts; the prompts file is ignored", file=sys.stderr)
    return segment_image_with(image, model, entries, _window(args), args.cache_dir, source=Path(args.prompts).name)


def segment_names(labels, model, args):
    """Label value -> segment name for formats that store names (DICOM SEG)."""
    if not model.needs_prompt or getattr(model, "num_classes", 1) > 1:
        return None  # class maps (SAMed, multi-output MSA): label value = class index
    if getattr(args, "prompts", None) is None:
        return {args.label: "object"}
    import numpy as np

    return {int(v): f"object {int(v)}" for v in np.unique(labels) if v}


def _window(args):
    return list(args.window_level) if getattr(args, "window_level", None) else args.window


def write_segment_sidecar(image, model, args, out) -> Path:
    """Write ``OUT``'s provenance sidecar (OUT with its extension replaced by ``.json``).

    If the sidecar cannot be written, the just-written OUT is removed too, so
    that a label image never exists without its record.
    """
    from ..instances.cli import everything_settings
    from .provenance import write_sidecar

    out = Path(out)
    prompts_file = getattr(args, "prompts", None)
    try:
        return write_sidecar(out, image=image.metadata.get("path") or args.image, model=model, window=_window(args),
                             entries=entries_for_args(args) if model.needs_prompt and not everything_settings(args) else [],
                             checkpoint=args.checkpoint, base_checkpoint=getattr(args, "base_checkpoint", None),
                             only_slice=args.slice if (not model.needs_prompt and prompts_file is None) else None,
                             everything=everything_settings(args))
    except BaseException:
        out.unlink(missing_ok=True)
        raise


# -- samlab batch / replay / compare ----------------------------------------------
def add_subcommands(sub, families, windows) -> None:
    """Add ``batch``, ``replay`` and ``compare`` to the ``samlab`` subparsers.

    Parameters
    ----------
    sub : argparse subparsers action
    families : sequence of str
        The ``--model`` choices (the CLI's list of families).
    windows : sequence of str
        The ``--window`` choices (the CLI's presets).
    """
    batch = sub.add_parser("batch", help="segment every case of a CSV (case,image,prompts) on dask.distributed")
    batch.add_argument("cases", metavar="CASES.csv", help="header case,image,prompts; paths relative to the CSV's folder")
    batch.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="writes OUTDIR/CASE.nii.gz and OUTDIR/CASE.json")
    batch.add_argument("--model", choices=families, help="engine (default: classic, or detected from --checkpoint)")
    batch.add_argument("--checkpoint", metavar="PATH", help="model weights file (every worker must see this path)")
    batch.add_argument("--base-checkpoint", metavar="PATH", help="original SAM weights a SAMed LoRA file builds on")
    win = batch.add_mutually_exclusive_group()
    win.add_argument("--window", default="auto", choices=windows, help="intensity window (default: the family's own)")
    win.add_argument("--window-level", type=float, nargs=2, metavar=("L", "W"), help="manual window level and width")
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N", help="worker processes of a local cluster (default: the number of cores)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="use the running Dask cluster at tcp://HOST:PORT")
    batch.add_argument("--retries", type=int, default=2, metavar="N", help="runs again a case whose worker died, up to N times (default 2)")
    batch.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    batch.add_argument("--cache-dir", metavar="DIR", help="on-disk embedding cache shared by the workers")
    batch.set_defaults(handler=run_batch_command)

    replay = sub.add_parser("replay", help="rerun a case from its provenance file (refuses if the image or checkpoint changed)")
    replay.add_argument("record", metavar="CASE.json", help="provenance file written by samlab batch or segment")
    replay.add_argument("-o", "--output", required=True, metavar="OUT", help="label image to write")
    replay.add_argument("--device", choices=("cpu", "cuda"), help="override the recorded device")
    replay.set_defaults(handler=run_replay_command)

    compare = sub.add_parser("compare", help="per-label Dice, HD95 (mm) and volumes (mL) of two label images")
    compare.add_argument("reference", metavar="REFERENCE")
    compare.add_argument("test", metavar="TEST")
    compare.add_argument("--json", action="store_true", help="print a JSON list (label, dice, hd95_mm, volume_ref_ml, volume_test_ml)")
    compare.set_defaults(handler=run_compare_command)


def run_batch_command(args) -> int:
    from .batch import BatchSettings, run_batch, silence_distributed
    from .cases import read_cases

    cases = read_cases(args.cases)
    silence_distributed()
    settings = BatchSettings(model=args.model, checkpoint=args.checkpoint, base_checkpoint=args.base_checkpoint,
                             window=list(args.window_level) if args.window_level else args.window,
                             device=args.device, cache_dir=args.cache_dir)

    def started(link):
        print(f"Dask dashboard: {link}", flush=True)

    def failed(result):
        print(f"samlab: case {result['case']} failed: {result['error']}", file=sys.stderr, flush=True)

    report = run_batch(cases, args.output, settings, workers=args.workers, scheduler=args.scheduler,
                       retries=args.retries, on_failure=failed, on_start=started)
    print(report.summary())
    if not report.ok:
        print(f"failed cases are listed in {Path(args.output) / 'failures.csv'}")
        return EXIT_FAILED_CASES
    return 0


def run_replay_command(args) -> int:
    from .replay import replay_labels
    from .. import write_labels
    from ..io.writers import check_label_output

    out = check_label_output(args.output)
    labels, image, rec = replay_labels(args.record, args.device)
    write_labels(labels, image, out)
    print(f"wrote {out} (case {rec['case']}, {int((labels != 0).sum())} voxels labelled)")
    return 0


def run_compare_command(args) -> int:
    from .compare import compare_files, format_table

    rows = compare_files(args.reference, args.test)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0
