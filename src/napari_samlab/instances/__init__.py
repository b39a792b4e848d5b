"""Automatic instance segmentation ("segment everything"), napari-free.

Public functions::

    from napari_samlab.instances import segment_everything, match_instances

Modules: :mod:`.api` (the entry point), :mod:`.channels` (nucleus channel:
H&E deconvolution, fluorescence), :mod:`.size` (object size in px/µm,
estimation), :mod:`.classic` (weight-free seeded watershed, 2D/3D),
:mod:`.amg` (SAM's automatic mask generator), :mod:`.linking` (2D
instances linked through a volume), :mod:`.tiling` (large images),
:mod:`.metrics` (F1 at IoU 0.5), :mod:`.baseline` (scikit-image
watershed baseline), :mod:`.objects` (per-object table, delete, merge),
:mod:`.synthetic` (test images with known truth), :mod:`.cli` (the
``--everything`` glue of ``samlab segment``).
"""
from .api import EverythingResult, segment_everything
from .metrics import InstanceScore, match_instances

__all__ = ["segment_everything", "EverythingResult", "match_instances", "InstanceScore"]
