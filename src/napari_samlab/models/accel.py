"""Faster image-encoder execution on CPU: ONNX Runtime and OpenVINO backends.

The image encoder (a ViT-B at 1024 px is about 0.97 TFLOP per slice) is the
one step users wait for.  :func:`accelerated_encoder` wraps an encoder
``nn.Module`` into a callable ``(1, 3, S, S) float32 -> torch.Tensor`` that
runs on one of several backends:

``"torch"``
    the module itself, under ``inference_mode``, with the intra-op thread
    count set to the number of physical cores (hyper-threads only slow
    dense matrix code down).
``"onnxruntime"``
    exported once with :func:`torch.onnx.export` at the fixed input shape,
    cached on disk, run by an ONNX Runtime session with every graph
    optimisation enabled.
``"openvino"``
    converted once with :func:`openvino.convert_model`, the IR cached on
    disk in fp32, compiled for the CPU with ``INFERENCE_PRECISION_HINT=f32``
    at each load (about a second for a ViT-B; OpenVINO's own blob cache
    saved 0.1 s of that and doubled the disk use, so it is not used).
``"onnxruntime-int8"``, ``"openvino-int8"``  (approximate, opt-in)
    dynamic int8 quantisation of the matrix multiplications (ONNX Runtime's
    ``quantize_dynamic``; OpenVINO runs the same quantised ONNX graph).
    Embeddings differ from fp32 (cosine ~0.99+): never chosen by ``"auto"``.
``"torch-autocast"``  (approximate, opt-in)
    the module under :func:`torch.autocast` on its own device: float16 on
    CUDA, bfloat16 on the CPU; the output is cast back to float32.  Meant for
    GPUs: on a CPU without bf16 units (AVX512-BF16/AMX) it is far slower than
    fp32 (LiteMedSAM: 30 s instead of 3 s per slice on a 2-core AVX2 CPU).
``"auto"``
    the fastest *exact* backend that is installed and whose output matches
    PyTorch (checked once when the export is made, recorded in the cache);
    plain torch when nothing else works.

Exports are never made at import time: the first call of
:func:`accelerated_encoder` for a given (weights, shape, backend version)
exports and verifies (a ViT-B at 1024 takes about a minute), every later
call, in any process, loads the cached file.  A cache entry whose content
hash does not match its record (truncated, corrupt, half written) is
rebuilt, never used; so is a compiled OpenVINO blob that differs from the
hash recorded when it was written (OpenVINO itself would run a blob with a
flipped weight byte).

Cancelling: an encoder called with ``cancel=`` (a :class:`threading.Event`)
raises :class:`napari_samlab.errors.Cancelled` once the event is set.
OpenVINO runs the inference as an async request and cancels it, ONNX Runtime
stops through ``RunOptions.terminate``; both give up within a fraction of a
second.  PyTorch cannot stop in the middle of a forward pass: the event is
checked before and after it.

Cache location: ``cache_dir`` argument, else ``$SAMLAB_CACHE_DIR/encoders``,
else ``~/.cache/napari-samlab/encoders``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
import threading
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..base.paths import ENCODER_KEY_HEX, ENCODER_TEMP_SUFFIX, default_encoder_cache_dir, encoder_entry_name
from .accel_runners import (  # noqa: F401 - autocast_dtype, CANCEL_POLL_MS re-exported
    CANCEL_POLL_MS, ONNX_OPSET, as_numpy, autocast_dtype, autocast_runner, check_cancel, export_onnx,
    ort_runner, ort_session, ov_compiled, ov_runner, quantize_int8, torch_runner,
)
from .backends import APPROX_BACKENDS, AUTO_ORDER, EXACT_BACKENDS, EXACT_RTOL  # noqa: F401 - names re-exported
from .spill import spill_weights  # noqa: F401 - re-exported (part of this module's API)

log = logging.getLogger(__name__)


_CACHE_FORMAT = 1  # bump when the layout of a cache entry changes
_QUANT_SETTINGS = "dynamic,MatMul+Gemm,s8,reduce_range,const-B"  # in the cache key of the int8 backends


# ----------------------------------------------------------------------
# small helpers
def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyper-threads not counted).

    Returns
    -------
    int
        At least 1.  Read from ``/sys`` topology where available (Linux),
        restricted to the process's CPU affinity; otherwise ``os.cpu_count()``.

    Examples
    --------
    >>> physical_cores() >= 1
    True
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add((base.joinpath("physical_package_id").read_text().strip(),
                       base.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(c)))
    return max(1, len(cores))


def default_cache_dir() -> Path:
    """Where exported encoders are kept unless ``cache_dir`` is given.

    Returns
    -------
    Path
        ``$SAMLAB_CACHE_DIR/encoders`` when the variable is set, else
        ``~/.cache/napari-samlab/encoders``.

    Examples
    --------
    >>> default_cache_dir().name
    'encoders'
    """
    return default_encoder_cache_dir()


def backend_available(backend: str) -> bool:
    """Whether the packages a backend needs can be imported.

    Parameters
    ----------
    backend : str
        One of :data:`EXACT_BACKENDS` or :data:`APPROX_BACKENDS`.

    Returns
    -------
    bool

    Examples
    --------
    >>> backend_available("torch")
    True
    """
    import importlib.util

    need = {
        "torch": [],
        "torch-autocast": [],
        "onnxruntime": ["onnx", "onnxruntime"],
        "onnxruntime-int8": ["onnx", "onnxruntime"],
        "openvino": ["openvino"],
        "openvino-int8": ["openvino", "onnx", "onnxruntime"],
    }[backend]
    return all(importlib.util.find_spec(m) is not None for m in need)


def _backend_version(backend: str) -> str:
    """Versions that change the exported file (part of the cache key)."""
    parts = [f"torch={torch.__version__}", f"fmt={_CACHE_FORMAT}"]
    if backend.startswith("onnxruntime") or backend == "openvino-int8":
        import onnx
        import onnxruntime

        parts += [f"onnx={onnx.__version__}", f"ort={onnxruntime.__version__}", f"opset={ONNX_OPSET}"]
    if backend.startswith("openvino"):
        import openvino

        parts.append(f"ov={openvino.__version__}")
    if backend.endswith("-int8"):
        parts.append(f"q={_QUANT_SETTINGS}")
    return ";".join(parts)


def _hash_files(paths: Sequence[Path]) -> str:
    """sha256 over the bytes of ``paths`` (in order): detects any corruption."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def relative_error(a, b) -> float:
    """``max |a - b| / max |b|``: the export check's measure.

    Parameters
    ----------
    a, b : array-like
        Same shape; ``b`` is the reference.

    Returns
    -------
    float

    Examples
    --------
    >>> relative_error(np.ones(3), np.ones(3))
    0.0
    """
    a, b = as_numpy(a), as_numpy(b)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


# ----------------------------------------------------------------------
# the callable
class AcceleratedEncoder:
    """An image encoder bound to one backend; call it like the module.

    Attributes
    ----------
    backend : str
        The backend actually used (``"auto"`` resolved).
    exact : bool
        False for the approximate backends (int8, ``"torch-autocast"``).
    input_shape : tuple of int
        The fixed ``(1, 3, S, S)`` input shape.
    cache_path : Path or None
        Directory of the cache entry (None for the PyTorch backends).
    exported : bool
        True when this construction made the export (cache miss).
    verify_error : float or None
        Relative error against PyTorch measured when the export was made.
    threads : int
        Intra-op threads the backend uses.
    """

    def __init__(self, run: Callable, backend: str, input_shape: tuple, *, exact: bool,
                 cache_path: Optional[Path] = None, exported: bool = False,
                 verify_error: Optional[float] = None, threads: int = 1):
        self._run = run
        self.backend = backend
        self.exact = exact
        self.input_shape = tuple(int(v) for v in input_shape)
        self.cache_path = cache_path
        self.exported = exported
        self.verify_error = verify_error
        self.threads = threads

    def __call__(self, x: Union[np.ndarray, torch.Tensor], cancel: Optional[threading.Event] = None) -> torch.Tensor:
        """Encode ``x`` of shape :attr:`input_shape` (float32, numpy or torch).

        Parameters
        ----------
        x : ndarray or torch.Tensor
            The encoder's input.
        cancel : threading.Event, optional
            Once set, the encode stops and raises
            :class:`~napari_samlab.errors.Cancelled` (at once with OpenVINO
            and ONNX Runtime, after the forward pass with PyTorch).

        Returns
        -------
        torch.Tensor
            float32, e.g. (1, 256, 64, 64) for a SAM ViT at 1024; on the CPU
            except for the PyTorch backends on a GPU.

        Raises
        ------
        Cancelled
            ``cancel`` was set before the encode finished.

        Examples
        --------
        >>> f = accelerated_encoder(encoder, (1, 3, 256, 256), backend="torch")   # doctest: +SKIP
        >>> f(np.zeros((1, 3, 256, 256), np.float32)).dtype                       # doctest: +SKIP
        torch.float32
        """
        if tuple(x.shape) != self.input_shape:
            raise ValueError(f"encoder input has shape {tuple(x.shape)}, this encoder was built for {self.input_shape}")
        check_cancel(cancel)
        out = self._run(x, cancel)
        check_cancel(cancel)  # set during a forward that could not stop: the caller still stops
        return out

    def __repr__(self) -> str:
        return f"AcceleratedEncoder(backend={self.backend!r}, input_shape={self.input_shape}, threads={self.threads})"


# ----------------------------------------------------------------------
# cache entries
def _module_digest(encoder: torch.nn.Module) -> str:
    """Cheap hash of the encoder's parameters and buffers, its class and mode.

    Guards the cache against a stale ``weights_key``: weights edited in
    place (a merged LoRA, a resized table) still give a new entry.
    """
    from .checkpoint import weights_fingerprint

    state = dict(encoder.state_dict(keep_vars=False))
    return f"{type(encoder).__module__}.{type(encoder).__qualname__}:{weights_fingerprint(state)}"


def _entry_key(weights_key: str, digest: str, shape: tuple, backend: str) -> str:
    text = f"{weights_key}|{digest}|{tuple(shape)}|{backend}|{_backend_version(backend)}"
    return hashlib.sha256(text.encode()).hexdigest()[:ENCODER_KEY_HEX]


def _read_meta(entry: Path) -> Optional[dict]:
    """The entry's record if every file it lists is present and hashes right."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        files = [entry / f for f in meta["files"]]
        if _hash_files(files) != meta["sha256"]:
            log.warning("encoder cache entry %s is corrupt: rebuilding it", entry)
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _build_entry(entry: Path, backend: str, encoder: torch.nn.Module, shape: tuple,
                 weights_key: str, threads: int, verify: bool) -> dict:
    """Export into a temporary directory, verify, then move into place atomically."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ENCODER_TEMP_SUFFIX, dir=entry.parent))
    try:
        t0 = time.perf_counter()
        if backend in ("onnxruntime", "onnxruntime-int8", "openvino-int8"):
            onnx_dir = tmp / "fp32"
            onnx_dir.mkdir()
            export_onnx(encoder, shape, onnx_dir / "model.onnx")
            if backend == "onnxruntime":
                for p in onnx_dir.iterdir():
                    p.rename(tmp / p.name)
                main = "model.onnx"
            else:
                quantize_int8(onnx_dir / "model.onnx", tmp / "model_int8.onnx")
                main = "model_int8.onnx"
            shutil.rmtree(onnx_dir)
        elif backend == "openvino":
            import openvino as ov

            model = None
            if backend_available("onnxruntime"):
                # via ONNX: the TorchScript ONNX exporter plus OpenVINO's ONNX
                # frontend is several times quicker than converting the module
                onnx_dir = tmp / "onnx"
                onnx_dir.mkdir()
                try:
                    export_onnx(encoder, shape, onnx_dir / "model.onnx")
                    # read_model: the ONNX frontend alone; convert_model's extra
                    # passes took 11 s on ViT-B (3 s on a test model) and gave
                    # the same compiled output
                    model = ov.Core().read_model(str(onnx_dir / "model.onnx"))
                except Exception as err:  # noqa: BLE001 - fall back to the direct conversion
                    log.info("ONNX route to OpenVINO failed (%s); converting the module directly", err, exc_info=True)
            if model is None:
                example = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    model = ov.convert_model(encoder.eval().cpu(), example_input=example)
            # compress_to_fp16 defaults to True: that would round the weights
            ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
            shutil.rmtree(tmp / "onnx", ignore_errors=True)
            main = "model.xml"
        else:
            raise ValueError(backend)
        export_s = time.perf_counter() - t0

        err = None
        if verify:
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
            ref = torch_runner(encoder, threads)(x)
            got = _load_runner(tmp, backend, main, threads)(x)
            err = relative_error(got, ref)
        files = sorted(p.name for p in tmp.iterdir())
        meta = {
            "backend": backend, "main": main, "files": files, "sha256": _hash_files([tmp / f for f in files]),
            "weights_key": weights_key, "input_shape": list(shape), "versions": _backend_version(backend),
            "export_seconds": round(export_s, 2), "verify_error": err,
            "exact": err is not None and err <= EXACT_RTOL,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)  # atomic on one filesystem: readers never see half an entry
        return meta
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_runner(entry: Path, backend: str, main: str, threads: int) -> Callable:
    if backend.startswith("onnxruntime"):
        return ort_runner(ort_session(entry / main, threads))
    if backend.startswith("openvino"):
        return ov_runner(ov_compiled(entry / main, threads, exact=backend == "openvino"))
    raise ValueError(backend)


def _exported_encoder(encoder, shape, backend, cache_dir: Path, weights_key: str, threads: int,
                      verify: bool) -> AcceleratedEncoder:
    entry = cache_dir / encoder_entry_name(backend, _entry_key(weights_key, _module_digest(encoder), shape, backend))
    meta = _read_meta(entry)
    exported = False
    if meta is not None:
        try:
            run = _load_runner(entry, backend, meta["main"], threads)
        except Exception as err:  # noqa: BLE001 - a file the backend cannot read is rebuilt
            log.warning("cannot load cached encoder %s (%s): rebuilding it", entry, err)
            log.debug("loading %s failed", entry, exc_info=True)
            meta = None
    if meta is None:
        meta = _build_entry(entry, backend, encoder, shape, weights_key, threads, verify)
        run = _load_runner(entry, backend, meta["main"], threads)
        exported = True
    exact = backend in EXACT_BACKENDS
    return AcceleratedEncoder(run, backend, shape, exact=exact, cache_path=entry, exported=exported,
                              verify_error=meta.get("verify_error"), threads=threads)


def accelerated_encoder(encoder: torch.nn.Module, input_shape: Sequence[int], *, backend: str = "auto",
                        cache_dir: Union[str, os.PathLike, None] = None, weights_key: str = "",
                        threads: Optional[int] = None, verify: bool = True) -> AcceleratedEncoder:
    """Wrap an image encoder into a fast callable for one fixed input shape.

    Parameters
    ----------
    encoder : torch.nn.Module
        The image encoder (e.g. ``sam.image_encoder``), already holding its
        final weights and on the CPU for the export backends (the PyTorch
        backends run it where it is).  It is not modified (except ``.eval()``).
    input_shape : sequence of int
        ``(1, 3, S, S)``; exports are made for exactly this shape.
    backend : str
        ``"auto"`` (default), ``"torch"``, ``"onnxruntime"``, ``"openvino"``,
        or the approximate ``"onnxruntime-int8"`` / ``"openvino-int8"`` /
        ``"torch-autocast"``.
    cache_dir : path, optional
        Where exports are kept; default :func:`default_cache_dir`.
    weights_key : str
        A fingerprint of the weights and architecture (e.g.
        ``SegmentationModel.fingerprint()``).  Part of the cache key, so a
        change of weights makes a new export.  A sampled hash of the
        module's own parameters is added to the key as well, so weights
        changed under an unchanged key still invalidate the cache.
    threads : int, optional
        Intra-op threads; default the number of physical cores.
    verify : bool
        When exporting, compare the backend's output with PyTorch on a
        random input (one extra PyTorch forward).  ``"auto"`` refuses a
        backend whose relative error exceeds :data:`EXACT_RTOL`.

    Returns
    -------
    AcceleratedEncoder
        ``f(x) -> torch.Tensor`` for float32 ``x`` of ``input_shape`` (numpy
        or torch); ``f.backend`` says which backend runs.

    Raises
    ------
    ValueError
        Unknown backend, or a bad ``input_shape``.
    RuntimeError
        An explicitly requested backend that is not installed or cannot
        export this encoder (``"auto"`` falls back to ``"torch"`` instead).

    Examples
    --------
    >>> f = accelerated_encoder(sam.image_encoder, (1, 3, 1024, 1024),
    ...                         weights_key=model.fingerprint())          # doctest: +SKIP
    >>> f.backend, f(np.zeros((1, 3, 1024, 1024), np.float32)).shape     # doctest: +SKIP
    ('openvino', torch.Size([1, 256, 64, 64]))
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 4 or shape[0] != 1:
        raise ValueError(f"input_shape must be (1, C, H, W), got {shape}")
    if backend != "auto" and backend not in EXACT_BACKENDS + APPROX_BACKENDS:
        raise ValueError(f"unknown encoder backend {backend!r}: use auto, {', '.join(EXACT_BACKENDS + APPROX_BACKENDS)}")
    threads = int(threads or physical_cores())
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    on_cpu = all(p.device.type == "cpu" for p in encoder.parameters())

    if backend == "torch":
        return AcceleratedEncoder(torch_runner(encoder, threads), "torch", shape, exact=True, threads=threads)
    if backend == "torch-autocast":
        return AcceleratedEncoder(autocast_runner(encoder, threads), backend, shape, exact=False, threads=threads)
    if backend != "auto":
        if not backend_available(backend):
            raise RuntimeError(f"encoder backend {backend!r} needs packages that are not installed")
        if not on_cpu:
            raise RuntimeError(f"encoder backend {backend!r} runs on the CPU; the encoder is on {next(encoder.parameters()).device}")
        return _exported_encoder(encoder, shape, backend, cache, weights_key, threads, verify)

    if not on_cpu:  # GPU: PyTorch is the fast path
        return AcceleratedEncoder(torch_runner(encoder, threads), "torch", shape, exact=True, threads=threads)
    for name in AUTO_ORDER:
        if name == "torch":
            break
        if not backend_available(name):
            continue
        try:
            f = _exported_encoder(encoder, shape, name, cache, weights_key, threads, verify)
        except Exception as err:  # noqa: BLE001 - auto never fails: it falls back
            log.warning("encoder backend %s unavailable for this model (%s); trying the next", name, err)
            log.debug("export with %s failed", name, exc_info=True)
            continue
        if f.verify_error is not None and f.verify_error > EXACT_RTOL:
            log.warning("encoder backend %s differs from PyTorch (relative error %.2g); not used", name, f.verify_error)
            continue
        return f
    return AcceleratedEncoder(torch_runner(encoder, threads), "torch", shape, exact=True, threads=threads)
