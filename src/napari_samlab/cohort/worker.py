"""What one batch task does on a worker: one case, start to finish.

:func:`run_case` is a plain function (no Dask inside), so the same code runs
on a Dask worker, in a loop in one process (benchmarks), or in a test.  It
never raises for a problem with the case: it returns ``status "failed"``
with the one-line message, so that Dask does not retry errors that would
recur (an unreadable image, a bad prompt).  Only a worker that dies (killed,
out of memory) makes Dask report the task lost; the client then runs it
again elsewhere.

Models are kept per process, keyed by family, checkpoint and its SHA-256,
device and encoder backend: a worker loads the model for its first case and
reuses it for every later one.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Optional

from ..errors import SamlabError
from .prompts import load_prompts
from .provenance import build_provenance, engine_info, file_sha256, is_done, remove_quietly, write_provenance

log = logging.getLogger(__name__)

_models: dict = {}
_models_lock = threading.Lock()
# a worker with several threads runs several cases at once; the model they
# share is used by one case at a time (engines keep per-call state such as
# a lazily built exported encoder); reading and writing still overlap
_engine_lock = threading.Lock()
_stats = {"model_loads": 0, "cases": 0}


def settings_key(settings: dict) -> tuple:
    """What identifies a loaded model (the checkpoint by content, not only by path)."""
    return (settings.get("model"), settings.get("checkpoint"), settings.get("checkpoint_sha256"),
            settings.get("base_checkpoint"), settings.get("base_checkpoint_sha256"),
            settings.get("device", "cpu"), settings.get("encoder_backend"))


def cached_model(settings: dict):
    """The model for ``settings``, loaded once per process.

    ``settings["torch_threads"]``, when given, sets PyTorch's thread count
    before the first load (a LocalCluster shares the cores among workers).

    Examples
    --------
    >>> m = cached_model({"model": "classic"})   # doctest: +SKIP
    >>> m is cached_model({"model": "classic"})  # doctest: +SKIP
    True
    """
    from .. import load_model

    key = settings_key(settings)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            threads = settings.get("torch_threads")
            if threads and settings.get("checkpoint"):
                import torch

                torch.set_num_threads(int(threads))
            model = load_model(settings.get("checkpoint"), family=settings.get("model"),
                               base_checkpoint=settings.get("base_checkpoint"),
                               device=settings.get("device", "cpu"),
                               encoder_backend=settings.get("encoder_backend"))
            _models.clear()  # one model per worker: a new setting replaces the old one
            _models[key] = model
            _stats["model_loads"] += 1
        return model


def worker_stats() -> dict:
    """Models loaded and cases run by this process (for tests and benchmarks)."""
    return {"pid": os.getpid(), **_stats}


def run_case(case: dict, settings: dict, outdir: str) -> dict:
    """Segment one case and write ``OUTDIR/CASE.nii.gz`` and ``OUTDIR/CASE.json`` atomically.

    Parameters
    ----------
    case : dict
        :meth:`Case.to_dict`: ``name``, ``image``, ``prompts`` (path or None).
    settings : dict
        ``model``, ``checkpoint``, ``checkpoint_sha256``, ``base_checkpoint``,
        ``base_checkpoint_sha256``, ``window``, ``device``, ``cache_dir``,
        ``encoder_backend``, ``torch_threads``.
    outdir : str
        Existing output folder.

    Returns
    -------
    dict
        ``case``, ``status`` (``"done"``, ``"skipped"`` (already done with
        the same settings) or ``"failed"``), ``error`` (one line or None),
        ``seconds``, ``pid`` and ``model_loads`` (of this process so far).

    Examples
    --------
    >>> run_case({"name": "c1", "image": "/d/c1.nrrd", "prompts": "/d/c1.json"},
    ...          {"model": "classic", "window": "auto"}, "/out")["status"]   # doctest: +SKIP
    'done'
    """
    t0 = time.perf_counter()
    name = case["name"]
    try:
        status = _run(case, settings, Path(outdir))
        error = None
    except SamlabError as err:
        status, error = "failed", str(err)
    except MemoryError:
        status, error = "failed", "out of memory: run fewer workers per machine (--workers) or crop the image"
    except Exception as err:  # noqa: BLE001 - a task boundary: report the case, keep the worker
        log.exception("case %s failed", name)
        text = " ".join(str(err).split())[:300]
        status, error = "failed", f"internal error: {type(err).__name__}: {text} (rerun with SAMLAB_DEBUG=1 and report it)"
    _stats["cases"] += 1
    return {"case": name, "status": status, "error": error, "seconds": time.perf_counter() - t0,
            "pid": os.getpid(), "model_loads": _stats["model_loads"]}


def _run(case: dict, settings: dict, outdir: Path) -> str:
    from .. import read_image, write_labels
    from .apply import segment_image_with, window_request

    name = case["name"]
    image_path = Path(case["image"])
    if not image_path.exists():
        raise SamlabError(f"image {image_path} does not exist: fix the path in the CSV")
    prompts_path: Optional[str] = case.get("prompts")
    entries = load_prompts(prompts_path) if prompts_path else []
    model = cached_model(settings)
    if model.needs_prompt and not prompts_path:
        raise SamlabError(f"no prompts file: {model.family} needs one (the CSV's prompts column); only SAMed runs without")
    if not model.needs_prompt:
        entries = []  # SAMed: automatic classes, a prompts file is not used
    window = window_request(settings.get("window", "auto"))
    labels_path = outdir / f"{name}.nii.gz"
    record_path = outdir / f"{name}.json"
    expected = {"image_sha256": file_sha256(image_path), "model": model.family,
                "checkpoint_sha256": settings.get("checkpoint_sha256"), "window": window,
                "prompts": [e.to_dict() for e in entries]}
    if is_done(record_path, labels_path, expected):
        return "skipped"
    image = read_image(image_path)
    with _engine_lock:
        labels = segment_image_with(image, model, entries, window, settings.get("cache_dir"),
                                    source=Path(prompts_path).name if prompts_path else "prompts")
    # the old record no longer describes what is about to be written
    remove_quietly(record_path)
    write_labels(labels, image, labels_path)
    record = build_provenance(
        case=name, image=image_path, image_sha256=expected["image_sha256"], model=model.family,
        checkpoint=settings.get("checkpoint"), checkpoint_sha256=settings.get("checkpoint_sha256"),
        window=window, prompts=expected["prompts"], engine=engine_info(model),
        base_checkpoint=settings.get("base_checkpoint"), base_checkpoint_sha256=settings.get("base_checkpoint_sha256"),
        labels=labels_path, labels_sha256=file_sha256(labels_path))
    write_provenance(record_path, record)
    return "done"
