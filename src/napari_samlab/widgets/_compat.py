"""Work-arounds for running PyTorch inside napari's process."""
from __future__ import annotations

import os
import sys


def _llvm_mapped() -> bool:
    """Whether a Mesa/LLVM OpenGL driver is loaded in this process (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            return any("libLLVM" in line or "swrast_dri" in line or "llvmpipe" in line for line in f)
    except OSError:
        return False


def avoid_triton_llvm_clash() -> bool:
    """Keep PyTorch from importing triton where that would crash napari.

    napari draws with OpenGL; under Mesa (Xvfb, virtual machines, remote
    desktops, AMD/Intel drivers) that maps Mesa's LLVM into the process, and
    importing triton afterwards (PyTorch does so lazily from
    ``torchvision.ops`` and ``torch._dynamo``) segfaults on the clashing
    LLVM symbols.  napari-samlab never uses ``torch.compile``, so where LLVM
    is mapped and triton is not loaded yet, triton is made to look absent
    (PyTorch then simply reports it as not installed).  Set
    ``SAMLAB_ALLOW_TRITON=1`` to opt out.

    Returns
    -------
    bool
        True when triton was blocked by this call or an earlier one.
    """
    if sys.modules.get("triton", 0) is None:
        return True
    if "triton" in sys.modules or os.environ.get("SAMLAB_ALLOW_TRITON") == "1":
        return False
    if not _llvm_mapped():
        return False
    sys.modules["triton"] = None  # `import triton` now raises ImportError
    return True
