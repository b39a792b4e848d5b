"""``samlab batch``: every case of a CASES.csv as one task on dask.distributed.

The client (this module) checks the inputs, starts or joins a cluster,
submits one :func:`napari_samlab.cohort.worker.run_case` task per case and
collects the results as they come, with a progress bar.  Design choices:

* **Failures that would recur are not retried.**  ``run_case`` turns every
  problem of a case into a ``"failed"`` result instead of an exception, so
  Dask never retries it; the case goes to ``failures.csv`` and stderr while
  the other cases go on.
* **A worker that dies costs one retry.**  The client keeps only one case
  per worker thread in flight, so a worker holds just the case it runs;
  the LocalCluster's scheduler gives up on a task at the first worker death
  (``allowed-failures: 0``) and the client resubmits it, up to ``retries``
  times, on whichever worker is alive.  (An external scheduler
  keeps its own ``allowed-failures``, default 3, before the client's retries
  begin.)
* **Threads.**  A LocalCluster runs one task at a time per worker process and
  gives each worker ``cores // workers`` BLAS/PyTorch threads, so workers do
  not fight over cores.
* **Nothing half-written.**  Outputs are written atomically by the worker;
  a case is done when both files exist and its record matches the settings;
  ``failures.csv`` is written atomically at the end and a stale one is
  removed when the run starts.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from ..errors import SamlabError
from .cases import Case
from .provenance import file_sha256, remove_quietly

FAILURES = "failures.csv"
CONNECT_TIMEOUT_S = 5
WORKER_WAIT_S = 60


@dataclass
class BatchSettings:
    """What every case of a batch shares.

    Parameters
    ----------
    model : str, optional
        Family; detected from ``checkpoint`` when None (classic without one).
    checkpoint, base_checkpoint : path, optional
    window : str or (level, width)
    device : str
    cache_dir : path, optional
        On-disk embedding cache shared by the workers.
    encoder_backend : str, optional
        As for :func:`napari_samlab.load_model`.

    Examples
    --------
    >>> BatchSettings(model="classic", window="ct-lung").window
    'ct-lung'
    """

    model: Optional[str] = None
    checkpoint: Optional[str] = None
    base_checkpoint: Optional[str] = None
    window: object = "auto"
    device: str = "cpu"
    cache_dir: Optional[str] = None
    encoder_backend: Optional[str] = None

    def resolved(self) -> dict:
        """Plain data for the workers, with absolute paths and the checkpoints' SHA-256.

        Raises
        ------
        SamlabError
            A checkpoint that does not exist.
        """
        from .apply import window_request

        out = {"model": self.model, "window": window_request(self.window), "device": self.device,
               "cache_dir": None if self.cache_dir is None else str(Path(self.cache_dir).expanduser().resolve()),
               "encoder_backend": self.encoder_backend,
               "checkpoint": None, "checkpoint_sha256": None, "base_checkpoint": None, "base_checkpoint_sha256": None}
        if self.checkpoint is None and self.model not in (None, "classic"):
            raise SamlabError(f"--model {self.model} needs its weights: add --checkpoint PATH")
        for key, path in (("checkpoint", self.checkpoint), ("base_checkpoint", self.base_checkpoint)):
            if path is None:
                continue
            p = Path(path).expanduser()
            if not p.is_file():
                raise SamlabError(f"{key.replace('_', ' ')} {path} does not exist: check the path")
            out[key] = str(p.resolve())
            out[f"{key}_sha256"] = file_sha256(p)
        if out["checkpoint"] is None:
            out["model"] = "classic"
        return out


@dataclass
class BatchReport:
    """What a batch did: one result dict per case (see ``run_case``)."""

    results: List[dict] = field(default_factory=list)
    seconds: float = 0.0
    dashboard: Optional[str] = None

    def _count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.results)

    @property
    def done(self) -> int:
        return self._count("done")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> List[dict]:
        return [r for r in self.results if r["status"] == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        rate = 60.0 * len(self.results) / self.seconds if self.seconds > 0 else 0.0
        return (f"{len(self.results)} cases: {self.done} segmented, {self.skipped} already done, "
                f"{len(self.failed)} failed in {self.seconds:.1f} s ({rate:.1f} cases/min)")


def prepare_outdir(outdir) -> Path:
    """Create OUTDIR (its parent must exist) and remove a stale failures.csv."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise SamlabError(f"{outdir} is a file: give a folder for the outputs")
    if not outdir.parent.exists():
        raise SamlabError(f"folder {outdir.parent} does not exist: create it first")
    try:
        outdir.mkdir(exist_ok=True)
    except OSError as err:
        raise SamlabError(f"cannot create {outdir}: {err.strerror}") from None
    remove_quietly(outdir / FAILURES)
    return outdir


def write_failures(outdir: Path, failed: List[dict]) -> Optional[Path]:
    """``OUTDIR/failures.csv`` (columns ``case,error``), atomically; None when nothing failed."""
    from ..io.atomic import atomic_output

    if not failed:
        return None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "error"])
    for r in failed:
        writer.writerow([r["case"], r["error"]])
    path = outdir / FAILURES
    with atomic_output(path) as tmp:
        Path(tmp).write_text(buf.getvalue(), encoding="utf-8")
    return path


def connect(scheduler: Optional[str] = None, workers: Optional[int] = None, timeout_s: Optional[float] = None):
    """A ``(client, cluster)`` pair: the existing scheduler's, or a new LocalCluster.

    Parameters
    ----------
    scheduler : str, optional
        ``tcp://HOST:PORT`` of a running ``dask scheduler``.
    workers : int, optional
        Worker processes of the LocalCluster (default: the number of cores).
    timeout_s : float, optional
        How long to try to reach ``scheduler`` (default :data:`CONNECT_TIMEOUT_S`).

    Returns
    -------
    (distributed.Client, LocalCluster or None)
        ``cluster`` is None for an external scheduler (not ours to close).

    Raises
    ------
    SamlabError
        The scheduler cannot be reached, or ``workers`` < 1.

    Examples
    --------
    >>> client, cluster = connect(workers=2)   # doctest: +SKIP
    """
    import dask
    from distributed import Client, LocalCluster

    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    if scheduler is not None:
        if "://" not in scheduler:
            raise SamlabError(f"scheduler address {scheduler!r} has no protocol: write it as tcp://HOST:PORT")
        try:
            return Client(scheduler, timeout=f"{timeout_s}s"), None
        except (OSError, TimeoutError) as err:
            raise SamlabError(f"cannot reach the Dask scheduler at {scheduler} within {timeout_s:g} s "
                              f"({type(err).__name__}): start one with 'dask scheduler' or check the address") from None
        except ValueError as err:
            raise SamlabError(f"scheduler address {scheduler!r} is not valid ({err}): write it as tcp://HOST:PORT") from None
    cores = os.cpu_count() or 1
    n = cores if workers is None else int(workers)
    if n < 1:
        raise SamlabError(f"--workers {n}: give at least 1")
    threads = str(max(1, cores // n))
    config = {
        "distributed.scheduler.allowed-failures": 0,  # the client retries (see module docstring)
        "distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": threads,
        "distributed.nanny.pre-spawn-environ.MKL_NUM_THREADS": threads,
        "distributed.nanny.pre-spawn-environ.OPENBLAS_NUM_THREADS": threads,
        # Dask's default (65536) fixes glibc's trim threshold, which also freezes the mmap
        # threshold: every large temporary array is then mmapped and page-faulted afresh,
        # about 1.5x slower per case here (benchmarks/bench_batch.py); None leaves glibc's default
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
        "distributed.worker.daemon": False,
    }
    if not os.environ.get("SAMLAB_DEBUG"):
        config["logging.distributed"] = "error"
    with dask.config.set(config):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
    return client, cluster


def run_batch(cases: List[Case], outdir, settings: BatchSettings, *, client=None, workers: Optional[int] = None,
              scheduler: Optional[str] = None, retries: int = 2, progress: Optional[bool] = None,
              on_failure: Optional[Callable[[dict], None]] = None, on_start: Optional[Callable[[str], None]] = None) -> BatchReport:
    """Run every case on dask.distributed; return what happened.

    Parameters
    ----------
    cases : list of Case
        From :func:`napari_samlab.cohort.cases.read_cases`.
    outdir : path
        Output folder (created; its parent must exist).
    settings : BatchSettings
    client : distributed.Client, optional
        Use this client (e.g. a test's in-process cluster) instead of
        connecting; it is left open.
    workers : int, optional
        Worker processes of a new LocalCluster (default: cores).
    scheduler : str, optional
        Address of an existing cluster's scheduler.
    retries : int
        How often a case whose worker died runs again (default 2).
    progress : bool, optional
        Show a progress bar on stderr (default: when stderr is a terminal).
    on_failure : callable, optional
        Called with each failed result as it arrives (the CLI prints it).
    on_start : callable, optional
        Called with the dashboard address once the cluster is up.

    Returns
    -------
    BatchReport

    Examples
    --------
    >>> report = run_batch(read_cases("CASES.csv"), "out", BatchSettings(), workers=2)   # doctest: +SKIP
    >>> report.ok, report.summary()                                                      # doctest: +SKIP
    """
    from .worker import run_case

    if retries < 0:
        raise SamlabError(f"--retries {retries}: give 0 or more")
    if workers is not None and workers < 1:
        raise SamlabError(f"--workers {workers}: give at least 1")
    shared = settings.resolved()
    outdir = prepare_outdir(outdir)
    t0 = time.perf_counter()
    cluster = None
    own_client = client is None
    if own_client:
        client, cluster = connect(scheduler, workers)
    report = BatchReport()
    try:
        if cluster is not None:
            shared["torch_threads"] = max(1, (os.cpu_count() or 1) // max(1, len(cluster.workers)))
        if scheduler is not None and own_client:
            _wait_for_workers(client, scheduler)
        report.dashboard = client.dashboard_link
        if on_start is not None:
            on_start(report.dashboard)
        report.results = _collect(client, cases, shared, str(outdir.resolve()), run_case, retries, progress, on_failure)
    finally:
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()
    report.seconds = time.perf_counter() - t0
    write_failures(outdir, report.failed)
    return report


def _wait_for_workers(client, address: str) -> None:
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (TimeoutError, OSError):
        client.close()
        raise SamlabError(f"no Dask worker joined the scheduler at {address} within {WORKER_WAIT_S} s: "
                          f"start one with 'dask worker {address}'") from None


def _capacity(client) -> int:
    """Cases to keep in flight: one per worker thread of the cluster as it is now (at least 1)."""
    try:
        return max(1, sum(client.nthreads().values()))
    except (OSError, TimeoutError):
        return 1


def _collect(client, cases, shared, outdir, task, retries, progress, on_failure) -> List[dict]:
    """Run one task per case, resubmit cases whose worker died, gather every result.

    Only as many cases as the cluster has worker threads are in flight: a
    worker then holds just the case it runs, so a worker that dies takes
    that one case down (one retry), not the cases queued behind it.
    """
    from collections import deque

    from distributed import as_completed

    tag = uuid.uuid4().hex[:8]
    attempts = {c.name: 0 for c in cases}
    by_key = {}
    waiting = deque(cases)

    def submit(case: Case):
        attempts[case.name] += 1
        fut = client.submit(task, case.to_dict(), shared, outdir, pure=False, retries=0,
                            key=f"samlab-case-{case.name}-{tag}-{attempts[case.name]}")
        by_key[fut.key] = case
        return fut

    def top_up(futures):
        room = _capacity(client) - futures.count()
        while waiting and room > 0:
            futures.add(submit(waiting.popleft()))
            room -= 1

    futures = as_completed([])
    top_up(futures)
    results = {}
    bar = _progress_bar(len(cases), progress)
    try:
        while futures.count() or waiting:
            if not futures.count():
                top_up(futures)
            fut = next(futures)
            case = by_key.pop(fut.key)
            if fut.status == "finished":
                result = fut.result()
            else:
                try:  # a lost task: KilledWorker, or cancelled when the scheduler lost it
                    err = fut.exception()
                except BaseException as exc:  # noqa: BLE001 - CancelledError and the like
                    err = exc
                fut.release()
                if attempts[case.name] <= retries:
                    waiting.appendleft(case)
                    top_up(futures)
                    continue
                result = {"case": case.name, "status": "failed", "seconds": 0.0,
                          "error": _lost_message(err, attempts[case.name])}
            fut.release()
            top_up(futures)
            results[case.name] = result
            if result["status"] == "failed" and on_failure is not None:
                on_failure(result)
            if bar is not None:
                bar.set_postfix_str(f"{sum(r['status'] == 'failed' for r in results.values())} failed", refresh=False)
                bar.update(1)
    except BaseException:
        for fut in list(futures.futures):
            fut.cancel()
        raise
    finally:
        if bar is not None:
            bar.close()
    return [results[c.name] for c in cases]


def _lost_message(err: BaseException, tries: int) -> str:
    from distributed import KilledWorker

    if isinstance(err, KilledWorker) or err is None:
        return (f"the worker running it died {tries} times (out of memory? killed?): "
                "run fewer workers (--workers) or check the worker logs")
    text = " ".join(str(err).split())[:200]
    return f"the task was lost {tries} times ({type(err).__name__}: {text}): check the cluster's logs"


def _progress_bar(total: int, progress: Optional[bool]):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="case", desc="cases", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def silence_distributed() -> None:
    """Keep Dask's own warnings off the terminal unless SAMLAB_DEBUG is set."""
    if not os.environ.get("SAMLAB_DEBUG"):
        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.ERROR)
