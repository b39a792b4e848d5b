"""Slice-to-slice propagation: napari-free core used by the CLI, the API and the widget.

Examples
--------
>>> from napari_samlab.propagate import propagate_from_prompt, PropagationSettings  # doctest: +SKIP
>>> res = propagate_from_prompt(predictor, vol, 30, Prompt(box=(10, 20, 60, 80)))  # doctest: +SKIP
>>> res.flagged_slices()                                                           # doctest: +SKIP
"""
from .core import propagate_from_prompt, propagate_volume, repropagate
from .settings import PropagationResult, PropagationSettings
from .strategy import default_strategy
from .interpolate import INTERPOLATION_METHODS, interpolate_slices, signed_distance
from .plan import PropagationPlan, encode_slices, next_slices_to_encode, visit_order
from .quality import FLAGS, STOP_REASONS, SliceRecord, StopInfo, dice, iou

__all__ = [
    "FLAGS",
    "INTERPOLATION_METHODS",
    "PropagationPlan",
    "PropagationResult",
    "PropagationSettings",
    "STOP_REASONS",
    "SliceRecord",
    "StopInfo",
    "default_strategy",
    "dice",
    "encode_slices",
    "interpolate_slices",
    "iou",
    "next_slices_to_encode",
    "propagate_from_prompt",
    "propagate_volume",
    "repropagate",
    "signed_distance",
    "visit_order",
]
