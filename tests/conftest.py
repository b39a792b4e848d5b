"""Shared fixtures: the repository's real sample data, small helpers.

Tests read only what the repository holds (``sample_data/``) or what they
generate: a clone with nothing beside it runs every test.
"""
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
    import atexit
    import shutil
    import tempfile

    os.environ["SAMLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="samlab-test-cache-")
    # CI machines can have little disk: leave nothing behind
    atexit.register(shutil.rmtree, os.environ["SAMLAB_CACHE_DIR"], True)

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_data"
ARTIFACTS = REPO / "test-artifacts"

# The bundled samples (see sample_data/README.md): the project's real data,
# converted losslessly (pixel values and geometry unchanged; the CT tumour
# label stored as uint8, the MRI brain mask binarised to 0/1).
CT_CHEST = SAMPLES / "ct_chest_lung2.nrrd"                     # 512x512x61 int16 HU
CT_TUMOUR = SAMPLES / "ct_chest_lung2_tumour.nrrd"             # tumour = 1, slices 15..25
MRI_T1 = SAMPLES / "mri_brain_colin27_t1.nii.gz"               # 181x217x181 uint8
MRI_BRAIN = SAMPLES / "mri_brain_colin27_brain_mask.nii.gz"    # brain = 1
NUCLEI = SAMPLES / "nuclei.tif"                                # 512x512 uint16
NUCLEI_LABELS = SAMPLES / "nuclei_labels.tif"                  # 125 instances
HISTOLOGY = SAMPLES / "he_histology.jpg"                       # 300x500 RGB


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


def read_array(path: Path) -> np.ndarray:
    """A sample as a NumPy array (z, y, x) through SimpleITK."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="session")
def lung():
    """The chest CT (z, y, x int16 HU) and its tumour truth (bool). Read-only."""
    vol, truth = read_array(CT_CHEST), read_array(CT_TUMOUR) == 1
    vol.flags.writeable = truth.flags.writeable = False
    return vol, truth


@pytest.fixture(scope="session")
def brain():
    """The T1 MRI (z, y, x uint8) and its brain mask (bool). Read-only."""
    vol, truth = read_array(MRI_T1), read_array(MRI_BRAIN) > 0
    vol.flags.writeable = truth.flags.writeable = False
    return vol, truth


@pytest.fixture(scope="session")
def histology_rgb() -> np.ndarray:
    """The H&E image, 300x500x3 uint8. Read-only."""
    from skimage import io

    rgb = io.imread(str(HISTOLOGY))
    rgb.flags.writeable = False
    return rgb


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
