"""Shared fixtures: paths to real data, small helpers."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Importing triton after napari has made a Mesa OpenGL context segfaults
# (both bundle LLVM).  torchvision/torch._dynamo import it lazily; nothing
# here uses torch.compile, so make it look absent for the whole session.
if not os.environ.get("SAMLAB_ALLOW_TRITON"):
    sys.modules.setdefault("triton", None)

# exported encoders and embeddings go to a throw-away cache, not ~/.cache
if "SAMLAB_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["SAMLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="samlab-test-cache-")

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_data"
# ../shared/data sits beside the checkout (also in CI)
SHARED_DATA = Path(os.environ.get("SAMLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def _fast_backends():
    from napari_samlab.models.accel import backend_available

    return [b for b in ("openvino", "onnxruntime") if backend_available(b)][:1]


@pytest.fixture(params=["torch", *_fast_backends()])
def each_encoder_backend(request, monkeypatch):
    """Run a test with upstream torch and with the fastest exported encoder."""
    monkeypatch.setenv("SAMLAB_ENCODER_BACKEND", request.param)
    return request.param
