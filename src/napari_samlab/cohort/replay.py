"""``samlab replay``: make a label image again from its provenance record.

The record names the image, the checkpoint(s), the window, the prompts as
applied and the encoder backend; replay checks that the image and the
checkpoints are byte for byte the ones recorded (SHA-256) and refuses
otherwise, then runs the same code path as ``samlab segment --prompts`` and
``samlab batch`` (:func:`napari_samlab.cohort.apply.segment_image_with`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import SamlabError
from .prompts import parse_prompts
from .provenance import file_sha256, read_provenance

ENCODER_BACKENDS_EXACT = ("torch", "openvino", "onnxruntime", "openvino-int8", "onnxruntime-int8", "torch-autocast")


def _check_same(kind: str, path, want: Optional[str], record_name: str) -> None:
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise SamlabError(f"the {kind} {p} named in {record_name} does not exist any more: replay needs that exact file")
    got = file_sha256(p)
    if got != want:
        raise SamlabError(f"the {kind} {p.name} has changed since {record_name} was written "
                          f"(sha256 {got[:12]}… instead of {str(want)[:12]}…): replay refuses to run on different data")


def replay_labels(record_path, device: Optional[str] = None) -> tuple:
    """Recompute the labels a provenance record describes.

    Parameters
    ----------
    record_path : path
        ``CASE.json`` of a batch or the sidecar of ``samlab segment``.
    device : str, optional
        Override the recorded device (e.g. replay a GPU run on a CPU).

    Returns
    -------
    (labels, image, record)
        ``labels`` on ``image``'s grid.

    Raises
    ------
    SamlabError
        Not a provenance file; the image or a checkpoint is missing or its
        SHA-256 differs from the record; or anything segment would refuse.

    Examples
    --------
    >>> labels, image, rec = replay_labels("out/case01.json")   # doctest: +SKIP
    """
    from .. import load_model, read_image
    from .apply import segment_image_with

    record_path = Path(record_path)
    rec = read_provenance(record_path)
    name = record_path.name
    _check_same("image", rec["image"], rec["image_sha256"], name)
    if rec.get("checkpoint") is not None:
        _check_same("checkpoint", rec["checkpoint"], rec["checkpoint_sha256"], name)
    if rec.get("base_checkpoint") is not None:
        _check_same("base checkpoint", rec["base_checkpoint"], rec.get("base_checkpoint_sha256"), name)
    entries = parse_prompts({"prompts": rec["prompts"]}, name)
    engine = rec.get("engine") or {}
    backend = engine.get("backend")
    model = load_model(rec.get("checkpoint"), family=rec["model"], base_checkpoint=rec.get("base_checkpoint"),
                       device=device or engine.get("device", "cpu"),
                       encoder_backend=backend if backend in ENCODER_BACKENDS_EXACT else None)
    image = read_image(rec["image"])
    window = rec["window"]
    if rec.get("everything") is not None:  # a "segment everything" run: no prompts, its own settings
        from ..instances.cli import everything_args, run_everything

        labels = run_everything(everything_args(rec["everything"]), image, model)
    else:
        labels = segment_image_with(image, model, entries, window, only_slice=rec.get("only_slice"), source=name)
    return labels, image, rec


def replay(record_path, out, device: Optional[str] = None) -> Path:
    """Replay a record and write the labels to ``out`` (atomically).

    Examples
    --------
    >>> replay("out/case01.json", "again.nii.gz")   # doctest: +SKIP
    """
    from .. import write_labels

    labels, image, _ = replay_labels(record_path, device)
    write_labels(labels, image, out)
    return Path(out)
