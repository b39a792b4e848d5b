"""Safe checkpoint loading, unwrapping of training checkpoints, hashing.

Checkpoints are read with ``torch.load(weights_only=True)``: napari-samlab
never runs code stored in a checkpoint.  Training checkpoints are unwrapped
to the bare state dict (``{"model": sd}``, ``{"state_dict": sd}``, MSA's
``{"model": "<network name>", "state_dict": sd}``, ``module.`` prefixes of
DataParallel/DDP and ``_orig_mod.`` of ``torch.compile``).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import SamlabError

# Keys under which training scripts store the weights, most specific first.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "module", "params", "weights")
_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class LoadedCheckpoint:
    """A state dict and what we learned about its file.

    Attributes
    ----------
    state_dict : dict of str to torch.Tensor
        The bare weights (prefixes stripped).
    meta : dict
        ``"path"``, ``"top_level_keys"`` (of the file's dict), ``"wrapper"``
        (the key the weights were found under, or None), ``"prefix"`` (the
        stripped prefix, or None) and ``"extra"``: small non-tensor top-level
        entries such as ``epoch`` or MSA's network name string.
    """

    state_dict: dict
    meta: dict = field(default_factory=dict)


def _safe_numpy_globals() -> list:
    """numpy scalar/dtype reconstructors: data only, safe to allowlist.

    Training checkpoints often store ``best_loss`` or ``epoch`` as numpy
    scalars, which ``weights_only`` refuses by default.
    """
    allowed = [np.dtype]
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    scalar = getattr(getattr(core, "multiarray", None), "scalar", None)
    if scalar is not None:
        allowed.append(scalar)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _looks_like_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    # zip container (torch >= 1.6) or a pickle stream (legacy torch.save)
    return head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06") or head[:1] == b"\x80"


def _torch_load(path: Path) -> Any:
    import torch

    name = path.name
    if not path.exists():
        raise SamlabError(f"checkpoint {path} does not exist: check the path")
    if path.is_dir():
        raise SamlabError(f"checkpoint {path} is a folder, not a file: give the .pth/.pt file inside it")
    if path.stat().st_size == 0:
        raise SamlabError(f"{name} is empty (0 bytes): download or copy the checkpoint again")
    if not _looks_like_torch_file(path):
        raise SamlabError(f"{name} is not a PyTorch checkpoint (not a torch.save file): give a .pth/.pt weights file")
    try:
        ctx = torch.serialization.safe_globals(_safe_numpy_globals())
    except AttributeError:  # very old torch: nothing to allowlist
        import contextlib

        ctx = contextlib.nullcontext()
    try:
        with ctx:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        if "Unsupported global" in msg or "allowlist" in msg or "GLOBAL" in msg:
            raise SamlabError(
                f"{name} is not a plain weights file (it needs code to unpickle); napari-samlab does not "
                "execute checkpoint code: re-save it with torch.save(model.state_dict())"
            ) from None
        raise SamlabError(f"{name} is corrupt or not a PyTorch checkpoint (unpickling failed): download it again") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
        text = str(err).lower()
        if "central directory" in text or "eof" in text or "truncat" in text or isinstance(err, EOFError):
            raise SamlabError(f"{name} is truncated or corrupt (the file ends early): download or copy it again") from None
        raise SamlabError(f"{name} could not be read as a PyTorch checkpoint ({type(err).__name__}): download it again") from None


def _is_tensor(v) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def unwrap_state_dict(obj: Any, name: str = "checkpoint") -> tuple:
    """Find the weights inside a loaded checkpoint object.

    Parameters
    ----------
    obj : object
        What ``torch.load`` returned.
    name : str
        File name for messages.

    Returns
    -------
    state_dict : dict of str to Tensor
    meta : dict
        ``wrapper``, ``prefix``, ``top_level_keys``, ``extra`` (see
        :class:`LoadedCheckpoint`).

    Examples
    --------
    >>> import torch
    >>> sd, meta = unwrap_state_dict({"model": {"module.w": torch.zeros(1)}, "epoch": 3})
    >>> list(sd), meta["wrapper"], meta["prefix"]
    (['w'], 'model', 'module.')
    """
    if not isinstance(obj, dict):
        raise SamlabError(f"{name} holds a {type(obj).__name__}, not a state dict: re-save it with torch.save(model.state_dict())")
    meta = {"top_level_keys": [str(k) for k in list(obj)[:50]], "wrapper": None, "prefix": None, "extra": {}}
    sd = obj
    # descend through wrappers until a dict that is mostly tensors
    for _ in range(3):
        if sd and all(_is_tensor(v) for v in sd.values()):
            break
        inner = None
        for key in _WRAPPER_KEYS:
            cand = sd.get(key)
            if isinstance(cand, dict) and any(_is_tensor(v) for v in cand.values()):
                inner = key
                break
        if inner is None:
            break
        if sd is obj:
            meta["wrapper"] = inner
            meta["extra"] = {
                str(k): v for k, v in obj.items()
                if k != inner and isinstance(v, (str, int, float, bool)) and len(str(v)) < 200
            }
        else:
            meta["wrapper"] = f"{meta['wrapper']}.{inner}"
        sd = sd[inner]
    tensors = {str(k): v for k, v in sd.items() if _is_tensor(v)}
    if not tensors:
        raise SamlabError(f"{name} holds no weight tensors (top-level keys: {', '.join(meta['top_level_keys'][:8])}): give a model checkpoint")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            # "model." only when it wraps a whole SAM-like model, not a real submodule name
            if prefix == "model." and not any(k.startswith("model.image_encoder.") or k.startswith("model.mask_decoder.") for k in tensors):
                continue
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
            meta["prefix"] = prefix if meta["prefix"] is None else meta["prefix"] + prefix
    return tensors, meta


def plain_state_dict(obj: Any) -> dict:
    """The bare weight tensors of a state dict or training checkpoint; ``{}`` if none.

    Detection code uses this on anything a user hands over, so it never raises.

    Examples
    --------
    >>> import torch
    >>> list(plain_state_dict({"state_dict": {"module.w": torch.zeros(1)}, "model": "sam"}))
    ['w']
    >>> plain_state_dict("not weights")
    {}
    """
    try:
        return unwrap_state_dict(obj)[0]
    except SamlabError:
        return {}


def load_checkpoint(path: Union[str, os.PathLike]) -> LoadedCheckpoint:
    """Read a checkpoint safely and unwrap it to a bare state dict.

    Parameters
    ----------
    path : str or PathLike
        A ``.pth``/``.pt`` file written by ``torch.save``.

    Returns
    -------
    LoadedCheckpoint

    Raises
    ------
    SamlabError
        Missing, empty, truncated, non-torch or code-carrying files, and
        files without weights.

    Examples
    --------
    >>> ckpt = load_checkpoint("medsam_vit_b.pth")    # doctest: +SKIP
    >>> len(ckpt.state_dict)                          # doctest: +SKIP
    314
    """
    path = Path(path)
    obj = _torch_load(path)
    sd, meta = unwrap_state_dict(obj, path.name)
    meta["path"] = str(path)
    return LoadedCheckpoint(sd, meta)


def load_checkpoint_file(path: Union[str, os.PathLike]) -> dict:
    """The bare state dict of a checkpoint file (see :func:`load_checkpoint`).

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    dict of str to torch.Tensor

    Examples
    --------
    >>> sd = load_checkpoint_file("lite_medsam.pth")   # doctest: +SKIP
    >>> sd["image_encoder.patch_embed.seq.0.c.weight"].shape   # doctest: +SKIP
    torch.Size([32, 3, 1, 1])
    """
    return load_checkpoint(path).state_dict


def weights_fingerprint(state_dict: dict, sample: int = 4096) -> str:
    """Fast, stable hash of a state dict (cache keys, ``samlab info``).

    Hashes, in sorted key order, each tensor's name, dtype and shape, its
    sum in float64 (touches every value) and the raw bytes of up to
    ``sample`` evenly strided elements plus the first and last 256.  Any
    fine-tune changes the sums and the sampled bytes; hashing a ViT-B
    (94 M parameters) takes a fraction of a second instead of the seconds a
    full-byte hash takes.

    Parameters
    ----------
    state_dict : dict of str to Tensor
    sample : int
        Elements sampled per tensor.

    Returns
    -------
    str
        40 hex digits (SHA-1).

    Examples
    --------
    >>> import torch
    >>> weights_fingerprint({"w": torch.ones(3)}) == weights_fingerprint({"w": torch.ones(3)})
    True
    """
    import torch

    h = hashlib.sha1()
    with torch.no_grad():
        for name in sorted(state_dict):
            t = state_dict[name]
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            flat = t.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            if flat.is_floating_point() or flat.is_complex():
                h.update(repr(float(flat.double().sum())).encode())
            if flat.numel() > sample + 512:
                idx = torch.linspace(0, flat.numel() - 1, sample).long()
                parts = [flat[:256], flat[idx], flat[-256:]]
                flat = torch.cat(parts)
            flat = flat.contiguous().cpu()
            h.update(flat.view(torch.uint8).numpy().tobytes() if flat.dtype != torch.bool else flat.numpy().tobytes())
    return h.hexdigest()
