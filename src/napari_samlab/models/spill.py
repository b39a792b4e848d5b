"""Moving a module's weights out of the resident set once an exported encoder runs."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Union

import torch

from ..base.paths import default_encoder_cache_dir

log = logging.getLogger(__name__)


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
        Where the temporary file goes; default :func:`~napari_samlab.base.paths.default_encoder_cache_dir`.

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
    folder = Path(folder) if folder is not None else default_encoder_cache_dir()
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
        log.info("weights stay in memory (%s)", err, exc_info=True)
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
