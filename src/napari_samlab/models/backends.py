"""Names of the image-encoder backends and the precision each computes in.

One list for ``load_model``, the CLI's ``--encoder``, the widget's encoder
box and :mod:`napari_samlab.models.accel` (which runs them).  Importing
this module does not import torch.
"""
from __future__ import annotations

import os
from typing import Optional

from ..errors import InputError

#: backends whose output equals PyTorch fp32 up to float rounding
EXACT_BACKENDS = ("torch", "onnxruntime", "openvino")
#: opt-in backends that trade accuracy for speed
APPROX_BACKENDS = ("onnxruntime-int8", "openvino-int8", "torch-autocast")
#: ``"auto"`` tries these in order (fastest first, as measured by
#: benchmarks/bench_encoder.py on a 2-core AVX2 CPU) and keeps the first
#: that is installed, exports and verifies
AUTO_ORDER = ("openvino", "onnxruntime", "torch")
#: relative tolerance of the export check: max |candidate - torch| over
#: max |torch|.  fp32 re-association in fused kernels gives ~1e-6.
EXACT_RTOL = 1e-3
#: every value ``encoder_backend`` may take
ENCODER_BACKENDS = ("torch", "auto", "openvino", "onnxruntime", "openvino-int8", "onnxruntime-int8", "torch-autocast")
#: short names the CLI's ``--encoder`` accepts
ALIASES = {"onnx": "onnxruntime", "ov": "openvino", "pytorch": "torch", "onnx-int8": "onnxruntime-int8"}


def normalize_backend(name: Optional[str]) -> Optional[str]:
    """The backend for what the user typed, or None (the default).

    Raises
    ------
    InputError
        Unknown backend.

    Examples
    --------
    >>> normalize_backend("ONNX")
    'onnxruntime'
    """
    if name is None or str(name).strip() == "":
        return None
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in ENCODER_BACKENDS:
        raise InputError(f"unknown encoder backend {name!r}: use one of {', '.join(ENCODER_BACKENDS)} "
                         "(or onnx for onnxruntime)", field="encoder")
    return key


def requested_backend(encoder_backend: Optional[str] = None) -> Optional[str]:
    """``encoder_backend``, else ``$SAMLAB_ENCODER_BACKEND``, else None (the family's default)."""
    return normalize_backend(encoder_backend or os.environ.get("SAMLAB_ENCODER_BACKEND") or None)


def backend_precision(backend: Optional[str], device: str = "cpu") -> str:
    """The arithmetic a backend computes the embedding in.

    Parameters
    ----------
    backend : str or None
        A resolved backend (not ``"auto"``); None: not run yet.
    device : str

    Returns
    -------
    str
        ``"fp32"``, ``"int8"`` (dynamically quantised matrix products,
        fp32 elsewhere), ``"fp16"``/``"bf16"`` (autocast), or ``"none"``
        (no encoder, e.g. classic) / ``"unknown"``.

    Examples
    --------
    >>> backend_precision("openvino"), backend_precision("torch-autocast", "cuda")
    ('fp32', 'fp16')
    """
    if backend is None:
        return "unknown"
    if backend in EXACT_BACKENDS:
        return "fp32"
    if backend.endswith("-int8"):
        return "int8"
    if backend == "torch-autocast":
        return "fp16" if str(device).startswith("cuda") else "bf16"
    return "unknown"
