"""napari dock widgets: thin translation between layers and the napari-free core.

``ModelWidget`` loads an engine (classic, SAM, MedSAM, ...); ``SegmentationWidget``
turns prompts on napari layers into masks and committed segments.  Both take
the viewer as first argument, as npe2 widget contributions do, and share the
loaded model through one session per viewer.
"""
from ._compat import avoid_triton_llvm_clash

avoid_triton_llvm_clash()  # before anything imports torch inside napari (see _compat)

from .model_widget import ModelWidget  # noqa: E402
from .segmentation_widget import SHORTCUTS, SegmentationWidget  # noqa: E402

__all__ = ["ModelWidget", "SegmentationWidget", "SHORTCUTS"]
