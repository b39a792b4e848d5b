"""How propagation prompts the next slice: the strategy of a family, and a painted mask as a dense prompt.

Families declare their strategy (``Family.propagation_strategy`` in
``models/families/``): MedSAM's own 3D inference scripts propagate a box,
MSA was trained with single clicks, SAM's decoder takes its previous logits
as a dense prompt, and the classic engine has a step of its own ("track":
``ClassicModel.propagate_step``).  ``settings.strategy`` overrides it; a
model may also define ``propagation_strategy`` itself.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import SamlabError
from ..models.families import family_of

PARTS = ("box", "points", "mask")
#: Strategies that hand the whole step to the model's own ``propagate_step``.
OWN = ("track",)


def default_strategy(model) -> str:
    """The propagation strategy for ``model``'s family.

    Examples
    --------
    >>> class M: family = "medsam"
    >>> default_strategy(M())
    'box'
    """
    own = getattr(model, "propagation_strategy", None)
    if own:
        return str(own)
    fam = family_of(model)
    if fam is not None and fam.propagation_strategy:
        return fam.propagation_strategy
    parts = []
    if getattr(model, "supports_boxes", True):
        parts.append("box")
    elif getattr(model, "supports_points", True):
        parts.append("points")
    if getattr(model, "supports_mask_input", False):
        parts.append("mask")
    return "+".join(parts) or "box"


def parse_strategy(strategy: str, model) -> set:
    parts = {p.strip().lower() for p in str(strategy).replace(",", "+").split("+") if p.strip()}
    fam = getattr(model, "family", "model") or "model"
    if parts & set(OWN):
        if len(parts) > 1:
            raise SamlabError(f"propagation strategy {strategy!r}: 'track' is a strategy of its own, not combined with box, points or mask")
        if not callable(getattr(model, "propagate_step", None)):
            raise SamlabError(f"{fam} has no propagation step of its own: propagate with strategy 'box', 'points' or 'mask'")
        return parts
    bad = parts - set(PARTS)
    if bad or not parts:
        raise SamlabError(f"unknown propagation strategy {strategy!r}: use box, points, mask, a combination like box+mask, or track (classic)")
    if "box" in parts and not getattr(model, "supports_boxes", True):
        raise SamlabError(f"{fam} does not take boxes: propagate with strategy 'points'")
    if "points" in parts and not getattr(model, "supports_points", True):
        raise SamlabError(f"{fam} takes boxes only: propagate with strategy 'box'")
    if "mask" in parts and not getattr(model, "supports_mask_input", False):
        raise SamlabError(f"{fam} does not take a previous mask as prompt: propagate with strategy 'box' or 'points'")
    return parts


def mask_prompt(model, mask: np.ndarray) -> Optional[np.ndarray]:
    """A painted mask as the family's dense prompt (``mask_to_logits`` or the family's ``mask_prompt``), or None."""
    conv = getattr(model, "mask_to_logits", None)
    if callable(conv):
        return conv(mask)
    fam = family_of(model)
    if fam is not None and fam.mask_prompt is not None:
        return fam.mask_prompt(mask)
    return None
