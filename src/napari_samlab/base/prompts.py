"""Prompts and the one check every entry point runs on them.

:func:`validate_prompt` is used by ``SlicePredictor`` (the Python API and,
through it, the widgets and batch), the CLI (before it spends time
encoding) and propagation (on every anchor before the first encode).  Its
errors are :class:`~napari_samlab.errors.PromptError`: what is wrong, which
input (``box``, ``point``, ``negative``), what to do; each front end
phrases them for its user (``err.for_cli()`` / ``err.for_gui()``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import PromptError


@dataclass
class Prompt:
    """Prompts in array indices of the slice: x = column, y = row.

    ``box`` is ``(x0, y0, x1, y1)``, corners inclusive.  ``points`` is a
    sequence of ``(x, y)`` with ``point_labels`` 1 (object) or 0
    (background).  ``mask_input`` is a previous low-res logit mask returned
    by the same family's ``decode`` (``Prediction.low_res_logits``).
    """

    box: Optional[tuple] = None
    points: Optional[Sequence[tuple]] = None
    point_labels: Optional[Sequence[int]] = None
    mask_input: Optional[np.ndarray] = None
    multimask: bool = False


def prompt_kinds(model) -> Tuple[bool, bool, bool]:
    """``(needs_prompt, takes_boxes, takes_points)`` of an engine (its class attributes)."""
    return (bool(getattr(model, "needs_prompt", True)), bool(getattr(model, "supports_boxes", True)),
            bool(getattr(model, "supports_points", True)))


def validate_prompt(prompt: Prompt, shape: tuple, model=None, where: str = "", correction: bool = False) -> Prompt:
    """Check that ``prompt`` is well-formed, inside a slice of ``shape`` and usable by ``model``.

    Parameters
    ----------
    prompt : Prompt
    shape : tuple
        The slice's ``(H, W, ...)``.
    model : SegmentationModel, optional
        Its ``needs_prompt``, ``supports_boxes`` and ``supports_points``
        are checked too; without it only the geometry is.
    where : str
        Added to the message, e.g. ``" on slice 12"``.
    correction : bool
        The prompt corrects an object the engine already tracks (SAM 2's
        memory): background points alone are then a valid prompt.

    Returns
    -------
    Prompt
        A normalised copy (plain floats, one label per point, labels 1 when
        omitted).  A family that needs no prompt gets the prompt unchanged.

    Raises
    ------
    PromptError
        With ``field`` ``"box"``, ``"point"``, ``"negative"`` or None.

    Examples
    --------
    >>> validate_prompt(Prompt(points=[(3, 4)]), (10, 10)).point_labels
    [1]
    >>> validate_prompt(Prompt(box=(0, 0, 20, 5)), (10, 10))
    Traceback (most recent call last):
    ...
    napari_samlab.errors.PromptError: box (0.0, 0.0, 20.0, 5.0) is outside the image (10×10 slice): give x 0..9, y 0..9
    """
    needs, takes_boxes, takes_points = prompt_kinds(model) if model is not None else (True, True, True)
    name = getattr(model, "family", "") or "the model"
    if not needs:
        return prompt
    h, w = shape[:2]
    inside = f"give x 0..{w - 1}, y 0..{h - 1}"
    box, points, labels = prompt.box, prompt.points, prompt.point_labels
    if box is not None:
        b = np.asarray(box, dtype=np.float64).ravel()
        if b.size != 4 or not np.all(np.isfinite(b)):
            raise PromptError(f"a box needs four numbers x0 y0 x1 y1, got {box!r}{where}", "box", "give {box}")
        x0, y0, x1, y1 = b
        if x1 < x0 or y1 < y0:
            raise PromptError(f"box {tuple(b.tolist())}{where} is empty (x1 < x0 or y1 < y0)", "box",
                              "give the top-left corner first (x0 y0 x1 y1)")
        if x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1:
            raise PromptError(f"box {tuple(b.tolist())}{where} is outside the image ({w}×{h} slice)", "box", inside)
        box = tuple(v.item() if hasattr(v, "item") else v for v in np.asarray(box).ravel())
    if points is not None and len(points):
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        labels = [1] * len(p) if labels is None else [int(v) for v in labels]
        if len(labels) != len(p):
            raise PromptError(f"{len(p)} points but {len(labels)} point labels{where}", "point",
                              "give one label (1 object, 0 background) per point")
        if any(v not in (0, 1) for v in labels):
            raise PromptError(f"point labels must be 1 (object) or 0 (background), got {labels}{where}", "point")
        bad = (p[:, 0] < 0) | (p[:, 1] < 0) | (p[:, 0] > w - 1) | (p[:, 1] > h - 1) | ~np.isfinite(p).all(1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PromptError(f"point {tuple(p[i].tolist())}{where} is outside the image ({w}×{h} slice)",
                              "point" if labels[i] else "negative", inside)
        points = [tuple(q) for q in p.tolist()]
        if box is None and not any(labels) and not correction:
            raise PromptError(f"only background points given{where}", "negative",
                              "add {box} or {point}" if takes_boxes else "add {point}")
    else:
        points, labels = None, None
    if box is None and not points:
        hint = "give " + " or ".join(k for k, ok in (("{box}", takes_boxes), ("{point}", takes_points)) if ok)
        raise PromptError(f"no prompt given for {name}{where}", None, hint)
    if points and not takes_points:
        raise PromptError(f"{name} was trained with boxes only and does not take points", "point",
                          "draw {box} around the object instead")
    if box is not None and not takes_boxes:
        raise PromptError(f"{name} does not take boxes", "box", "give {point} instead")
    return Prompt(box, points, labels, prompt.mask_input, prompt.multimask)
