"""How each encoder backend runs: PyTorch (plain, autocast), ONNX Runtime and OpenVINO, with cancelling.

:mod:`napari_samlab.models.accel` picks the backend and keeps the exported
files; this module holds the callables ``run(x, cancel=None) -> Tensor``
and the export/quantisation steps they need.
"""
from __future__ import annotations

import contextlib

import threading
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import Cancelled

ONNX_OPSET = 17
#: how often (ms) an OpenVINO request being waited for looks at the cancel event
CANCEL_POLL_MS = 50


def as_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.to(torch.float32).contiguous()


def as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def check_cancel(cancel: Optional[threading.Event]) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("encoding stopped on request")


@contextlib.contextmanager
def _torch_threads(threads: int):
    """PyTorch's intra-op thread count set for one encode, then given back.

    Set per call (other code may have changed it) and restored after: the
    decoder that runs next in the same process must keep the caller's thread
    count, or its float sums change order and a fresh encode would decode
    differently from a cached one (issue 12: exact reuse).
    """
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def torch_runner(encoder: torch.nn.Module, threads: int) -> Callable:
    encoder.eval()
    device = next(encoder.parameters()).device

    def run(x, cancel=None):
        with _torch_threads(threads), torch.inference_mode():
            return encoder(as_tensor(x).to(device)).float()

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


def autocast_runner(encoder: torch.nn.Module, threads: int, device_type: Optional[str] = None) -> Callable:
    """The module under autocast on its own device; float32 out.

    ``device_type`` defaults to where the parameters are; the runner moves
    the input there, so tests can drive the CUDA settings on any machine.
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    device_type = device_type or device.type
    dtype = autocast_dtype(device_type)

    def run(x, cancel=None):
        with _torch_threads(threads), torch.inference_mode(), torch.autocast(device_type=device_type, dtype=dtype):
            out = encoder(as_tensor(x).to(device))
        return out.float()

    return run


def export_onnx(encoder: torch.nn.Module, shape: tuple, path: Path) -> None:
    """``torch.onnx.export`` at a fixed shape; TorchScript exporter first (seconds), dynamo second."""
    example = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    encoder = encoder.eval().cpu()
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                kwargs = dict(input_names=["image"], output_names=["embedding"], opset_version=ONNX_OPSET)
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


def ort_session(model_path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])


def ort_runner(session) -> Callable:
    import onnxruntime as ort

    name = session.get_inputs()[0].name

    def run(x, cancel=None):
        feeds = {name: as_numpy(x)}
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
            check_cancel(cancel)  # the termination's own error means "cancelled"
            raise
        finally:
            done.set()
            watcher.join()
        return torch.from_numpy(out)

    return run


def ov_config(threads: int, exact: bool) -> dict:
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


def ov_compiled(model_or_path, threads: int, exact: bool):
    import openvino as ov

    model = ov.Core().read_model(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    return ov.Core().compile_model(model, "CPU", ov_config(threads, exact))


def ov_runner(compiled) -> Callable:
    request = compiled.create_infer_request()
    out = compiled.output(0)
    lock = threading.Lock()  # one request: calls from two threads take turns

    def run(x, cancel=None):
        with lock:
            if cancel is None:
                # copy: the request's output buffer is reused by the next call
                return torch.from_numpy(np.array(request.infer([as_numpy(x)])[out], copy=True))
            request.start_async([as_numpy(x)])
            while not request.wait_for(CANCEL_POLL_MS):
                if cancel.is_set():
                    request.cancel()
                    try:
                        request.wait()  # raises "Infer Request was canceled"; the request stays usable
                    except RuntimeError:
                        pass
                    check_cancel(cancel)
            return torch.from_numpy(np.array(request.get_tensor(out).data, copy=True))

    return run


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantisation of MatMul/Gemm weights to int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # reduce_range (7-bit weights): without VNNI, x86 int8 kernels add pairs of
        # u8*s8 products in int16 and saturate; full-range weights gave
        # embeddings with cosine 0.96 to fp32 on ViT-B (mask IoU 0.86)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         reduce_range=True, extra_options={"MatMulConstBOnly": True})
