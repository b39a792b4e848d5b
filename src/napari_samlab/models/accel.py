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

log = logging.getLogger(__name__)

#: backends whose output equals PyTorch fp32 up to float rounding
EXACT_BACKENDS = ("torch", "onnxruntime", "openvino")
#: opt-in backends that trade accuracy for speed
APPROX_BACKENDS = ("onnxruntime-int8", "openvino-int8", "torch-autocast")
#: ``"auto"`` tries these in order (fastest first, as measured by
#: benchmarks/bench_encoder.py on a 2-core AVX2 CPU) and keeps the first
#: that is installed, exports and verifies.
AUTO_ORDER = ("openvino", "onnxruntime", "torch")

#: relative tolerance of the export check: max |candidate - torch| over
#: max |torch|.  fp32 re-association in fused kernels gives ~1e-6.
EXACT_RTOL = 1e-3

_CACHE_FORMAT = 1  # bump when the layout of a cache entry changes
_ONNX_OPSET = 17
_QUANT_SETTINGS = "dynamic,MatMul+Gemm,s8,reduce_range,const-B"  # in the cache key of the int8 backends
#: how often (ms) an OpenVINO request being waited for looks at the cancel event
CANCEL_POLL_MS = 50


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
    from ..predict.cache import cache_root

    return cache_root() / "encoders"


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

        parts += [f"onnx={onnx.__version__}", f"ort={onnxruntime.__version__}", f"opset={_ONNX_OPSET}"]
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


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.to(torch.float32).contiguous()


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


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
    a, b = _as_numpy(a), _as_numpy(b)
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
        _check_cancel(cancel)
        out = self._run(x, cancel)
        _check_cancel(cancel)  # set during a forward that could not stop: the caller still stops
        return out

    def __repr__(self) -> str:
        return f"AcceleratedEncoder(backend={self.backend!r}, input_shape={self.input_shape}, threads={self.threads})"


def _check_cancel(cancel: Optional[threading.Event]) -> None:
    if cancel is not None and cancel.is_set():
        from ..errors import Cancelled

        raise Cancelled("encoding stopped on request")


# ----------------------------------------------------------------------
# backends
def _torch_runner(encoder: torch.nn.Module, threads: int) -> Callable:
    encoder.eval()
    device = next(encoder.parameters()).device

    def run(x, cancel=None):
        # set per call: other code (or another library) may have changed it
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return encoder(_as_tensor(x).to(device)).float()

    return run


def autocast_dtype(device_type: str) -> torch.dtype:
    """The lower precision ``"torch-autocast"`` uses on a device type.

    Parameters
    ----------
    device_type : str
        ``"cuda"``, ``"cpu"`` (any other type gets bfloat16 as well).

    Returns
    -------
    torch.dtype
        float16 on CUDA (tensor cores, every CUDA GPU), bfloat16 elsewhere
        (the only low precision PyTorch's CPU autocast offers).

    Examples
    --------
    >>> autocast_dtype("cuda"), autocast_dtype("cpu")
    (torch.float16, torch.bfloat16)
    """
    return torch.float16 if device_type == "cuda" else torch.bfloat16


def _autocast_runner(encoder: torch.nn.Module, threads: int, device_type: Optional[str] = None) -> Callable:
    """The module under autocast on its own device; float32 out.

    ``device_type`` defaults to where the parameters are; the runner moves
    the input there, so tests can drive the CUDA settings on any machine.
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    device_type = device_type or device.type
    dtype = autocast_dtype(device_type)

    def run(x, cancel=None):
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode(), torch.autocast(device_type=device_type, dtype=dtype):
            out = encoder(_as_tensor(x).to(device))
        return out.float()

    return run


def _export_onnx(encoder: torch.nn.Module, shape: tuple, path: Path) -> None:
    """``torch.onnx.export`` at a fixed shape; TorchScript exporter first (seconds), dynamo second."""
    example = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    encoder = encoder.eval().cpu()
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                kwargs = dict(input_names=["image"], output_names=["embedding"], opset_version=_ONNX_OPSET)
                if dynamo:
                    kwargs.update(dynamo=True, external_data=True, opset_version=18)
                else:
                    kwargs.update(dynamo=False, do_constant_folding=True)
                torch.onnx.export(encoder, (example,), str(path), **kwargs)
            return
        except Exception as err:  # noqa: BLE001 - any exporter failure means "try the next one"
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(err).__name__}: {err}")
            for p in path.parent.iterdir():
                p.unlink()
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


def _ort_session(model_path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])


def _ort_runner(session) -> Callable:
    import onnxruntime as ort

    name = session.get_inputs()[0].name

    def run(x, cancel=None):
        feeds = {name: _as_numpy(x)}
        if cancel is None:
            return torch.from_numpy(session.run(None, feeds)[0])
        # ONNX Runtime checks RunOptions.terminate between kernels: a watcher
        # thread sets it when the event fires (session.run holds no GIL)
        options = ort.RunOptions()
        done = threading.Event()

        def watch():
            while not done.is_set():
                if cancel.wait(CANCEL_POLL_MS / 1000):
                    options.terminate = True
                    return

        watcher = threading.Thread(target=watch, name="samlab-ort-cancel", daemon=True)
        watcher.start()
        try:
            out = session.run(None, feeds, options)[0]
        except Exception:
            _check_cancel(cancel)  # the termination's own error means "cancelled"
            raise
        finally:
            done.set()
            watcher.join()
        return torch.from_numpy(out)

    return run


def _ov_config(threads: int, exact: bool) -> dict:
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
        # f32 keeps the arithmetic of PyTorch; on CPUs with bf16/AMX OpenVINO
        # would otherwise silently pick bf16
        "INFERENCE_PRECISION_HINT": "f32",
    }
    if not exact:
        config.pop("INFERENCE_PRECISION_HINT")
    return config


def _ov_compiled(model_or_path, threads: int, exact: bool):
    import openvino as ov

    model = ov.Core().read_model(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    return ov.Core().compile_model(model, "CPU", _ov_config(threads, exact))


def _ov_runner(compiled) -> Callable:
    request = compiled.create_infer_request()
    out = compiled.output(0)
    lock = threading.Lock()  # one request: calls from two threads take turns

    def run(x, cancel=None):
        with lock:
            if cancel is None:
                # copy: the request's output buffer is reused by the next call
                return torch.from_numpy(np.array(request.infer([_as_numpy(x)])[out], copy=True))
            request.start_async([_as_numpy(x)])
            while not request.wait_for(CANCEL_POLL_MS):
                if cancel.is_set():
                    request.cancel()
                    try:
                        request.wait()  # raises "Infer Request was canceled"; the request stays usable
                    except RuntimeError:
                        pass
                    _check_cancel(cancel)
            return torch.from_numpy(np.array(request.get_tensor(out).data, copy=True))

    return run


def _quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantisation of MatMul/Gemm weights to int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # reduce_range (7-bit weights): without VNNI, x86 int8 kernels add pairs of
        # u8*s8 products in int16 and saturate; full-range weights gave
        # embeddings with cosine 0.96 to fp32 on ViT-B (mask IoU 0.86)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         reduce_range=True, extra_options={"MatMulConstBOnly": True})


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
    return hashlib.sha256(text.encode()).hexdigest()[:24]


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
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp", dir=entry.parent))
    try:
        t0 = time.perf_counter()
        if backend in ("onnxruntime", "onnxruntime-int8", "openvino-int8"):
            onnx_dir = tmp / "fp32"
            onnx_dir.mkdir()
            _export_onnx(encoder, shape, onnx_dir / "model.onnx")
            if backend == "onnxruntime":
                for p in onnx_dir.iterdir():
                    p.rename(tmp / p.name)
                main = "model.onnx"
            else:
                _quantize_int8(onnx_dir / "model.onnx", tmp / "model_int8.onnx")
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
                    _export_onnx(encoder, shape, onnx_dir / "model.onnx")
                    # read_model: the ONNX frontend alone; convert_model's extra
                    # passes took 11 s on ViT-B (3 s on a test model) and gave
                    # the same compiled output
                    model = ov.Core().read_model(str(onnx_dir / "model.onnx"))
                except Exception as err:  # noqa: BLE001 - fall back to the direct conversion
                    log.info("ONNX route to OpenVINO failed (%s); converting the module directly", err)
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
            ref = _torch_runner(encoder, threads)(x)
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
        return _ort_runner(_ort_session(entry / main, threads))
    if backend.startswith("openvino"):
        return _ov_runner(_ov_compiled(entry / main, threads, exact=backend == "openvino"))
    raise ValueError(backend)


def _exported_encoder(encoder, shape, backend, cache_dir: Path, weights_key: str, threads: int,
                      verify: bool) -> AcceleratedEncoder:
    entry = cache_dir / f"{backend}-{_entry_key(weights_key, _module_digest(encoder), shape, backend)}"
    meta = _read_meta(entry)
    exported = False
    if meta is not None:
        try:
            run = _load_runner(entry, backend, meta["main"], threads)
        except Exception as err:  # noqa: BLE001 - a file the backend cannot read is rebuilt
            log.warning("cannot load cached encoder %s (%s): rebuilding it", entry, err)
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
        return AcceleratedEncoder(_torch_runner(encoder, threads), "torch", shape, exact=True, threads=threads)
    if backend == "torch-autocast":
        return AcceleratedEncoder(_autocast_runner(encoder, threads), backend, shape, exact=False, threads=threads)
    if backend != "auto":
        if not backend_available(backend):
            raise RuntimeError(f"encoder backend {backend!r} needs packages that are not installed")
        if not on_cpu:
            raise RuntimeError(f"encoder backend {backend!r} runs on the CPU; the encoder is on {next(encoder.parameters()).device}")
        return _exported_encoder(encoder, shape, backend, cache, weights_key, threads, verify)

    if not on_cpu:  # GPU: PyTorch is the fast path
        return AcceleratedEncoder(_torch_runner(encoder, threads), "torch", shape, exact=True, threads=threads)
    for name in AUTO_ORDER:
        if name == "torch":
            break
        if not backend_available(name):
            continue
        try:
            f = _exported_encoder(encoder, shape, name, cache, weights_key, threads, verify)
        except Exception as err:  # noqa: BLE001 - auto never fails: it falls back
            log.warning("encoder backend %s unavailable for this model (%s); trying the next", name, err)
            continue
        if f.verify_error is not None and f.verify_error > EXACT_RTOL:
            log.warning("encoder backend %s differs from PyTorch (relative error %.2g); not used", name, f.verify_error)
            continue
        return f
    return AcceleratedEncoder(_torch_runner(encoder, threads), "torch", shape, exact=True, threads=threads)


def spill_weights(module: torch.nn.Module, folder: Union[str, os.PathLike, None] = None) -> bool:
    """Move a module's parameters and buffers out of the heap into a file-backed map.

    Once an exported encoder runs, the PyTorch copy of its weights (360 MB
    for a ViT-B) is needed only if PyTorch runs again (another input size,
    another backend).  This writes them to an unnamed temporary file and
    maps it back copy-on-write (``torch.load(mmap=True)``): the values and
    the module stay exactly the same, but the pages leave the resident set
    and come back from the file only when touched.  The file is unlinked at
    once (it lives as long as the mapping, and nothing can truncate it), so
    it needs no cleaning up.  Linux/macOS only; anywhere it cannot be done
    (no space, other platforms) the weights simply stay in memory.

    Parameters
    ----------
    module : torch.nn.Module
    folder : path, optional
        Where the temporary file goes; default :func:`default_cache_dir`.

    Returns
    -------
    bool
        True when the weights now live in the map.

    Examples
    --------
    >>> spill_weights(model.net.image_encoder)          # doctest: +SKIP
    True
    """
    if os.name != "posix":
        return False
    state = module.state_dict()
    if not state or any(t.device.type != "cpu" for t in state.values()):
        return False
    folder = Path(folder) if folder is not None else default_cache_dir()
    path = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".spill-", suffix=".pt", dir=folder)
        os.close(fd)
        path = Path(name)
        torch.save(state, path)
        mapped = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        module.load_state_dict(mapped, strict=True, assign=True)
    except Exception as err:  # noqa: BLE001 - an optimisation: keep the weights in memory
        log.info("weights stay in memory (%s)", err)
        return False
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    _trim_heap()
    return True


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
