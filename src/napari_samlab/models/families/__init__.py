"""The family registry: every model family the package knows, each declared once.

A family is one module in this folder holding ``FAMILY = Family(...)``
(:class:`~.spec.Family`: names, detection, build, preprocessing,
capabilities) plus its name in :data:`BUILTIN` below.  Code elsewhere asks
the registry (``family_names()``, ``get_family(name)``, ``detect(sd)``) and
never writes family names out.  Families defined outside the package (a
plug-in, a test) are added at run time with :func:`register_family`.

Examples
--------
>>> family_names()[0]
'classic'
>>> get_family("Lite_MedSAM").name
'litemedsam'
"""
from __future__ import annotations

import importlib
import threading
from typing import Dict, List, Optional

from ...errors import InputError
from .spec import BuildContext, Family  # noqa: F401 - re-exported for family modules and plug-ins

#: the built-in families, in the order users see them (the one place they are listed)
BUILTIN = ("classic", "sam", "medsam", "litemedsam", "samed", "msa", "sam2", "medsam2")

_lock = threading.Lock()
_families: Dict[str, Family] = {}
_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        for name in BUILTIN:
            fam = importlib.import_module(f"{__name__}.{name}").FAMILY
            _families.setdefault(fam.name, fam)
        _loaded = True


def register_family(family: Family, replace: bool = False) -> Family:
    """Add a family (after the built-in ones).

    Parameters
    ----------
    family : Family
    replace : bool
        Allow replacing a family of the same name.

    Returns
    -------
    Family

    Raises
    ------
    ValueError
        The name or one of its aliases is taken.

    Examples
    --------
    >>> register_family(Family("toy", "Toy", make=ToyModel, needs_checkpoint=False))   # doctest: +SKIP
    """
    _ensure_loaded()
    with _lock:
        taken = {a: f.name for f in _families.values() for a in (f.name, *f.aliases) if f.name != family.name}
        clash = [n for n in (family.name, *family.aliases) if n in taken]
        if clash:
            raise ValueError(f"family names {clash} are taken by {sorted({taken[n] for n in clash})}")
        if family.name in _families and not replace:
            raise ValueError(f"family {family.name!r} is registered already (pass replace=True)")
        _families[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family added with :func:`register_family` (built-in ones stay)."""
    _ensure_loaded()
    if name in BUILTIN:
        raise ValueError(f"{name} is a built-in family")
    with _lock:
        _families.pop(name, None)


def families() -> List[Family]:
    """Every registered family, built-in ones first."""
    _ensure_loaded()
    return list(_families.values())


def family_names() -> tuple:
    """Canonical names of every registered family (``--model`` choices, the widget's list)."""
    return tuple(f.name for f in families())


def find_family(name: Optional[str]) -> Optional[Family]:
    """The family called ``name`` (any case, aliases too), or None."""
    if name is None:
        return None
    key = str(name).strip().lower()
    for fam in families():
        if key == fam.name or key in fam.aliases:
            return fam
    return None


def get_family(name: str) -> Family:
    """The family called ``name`` (any case, aliases too).

    Raises
    ------
    InputError
        No such family.
    """
    fam = find_family(name)
    if fam is None:
        raise InputError(f"unknown model {name!r}: use one of {', '.join(family_names())}", field="model")
    return fam


def family_of(model) -> Optional[Family]:
    """The registered family of a built engine (by its ``family`` attribute), or None."""
    return find_family(getattr(model, "family", None) or None)
