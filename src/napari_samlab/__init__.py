"""napari-samlab: promptable segmentation of medical and microscopy images.

The public Python API (SPEC.md)::

    from napari_samlab import read_image, write_labels, load_model, SlicePredictor

Imports are lazy so that ``import napari_samlab`` (done by napari at
start-up) stays cheap and torch is only loaded when a model is.
"""
__version__ = "0.1.0"

__all__ = ["read_image", "write_labels", "load_model", "SlicePredictor", "Image", "SamlabError", "segment_everything"]


def __getattr__(name):
    if name == "read_image":
        from .io.readers import read_image

        return read_image
    if name == "write_labels":
        from .io.writers import write_labels

        return write_labels
    if name == "load_model":
        from .models.registry import load_model

        return load_model
    if name == "SlicePredictor":
        from .predict.predictor import SlicePredictor

        return SlicePredictor
    if name == "segment_everything":
        from .instances.api import segment_everything

        return segment_everything
    if name == "Image":
        from .io.image import Image

        return Image
    if name == "SamlabError":
        from .errors import SamlabError

        return SamlabError
    raise AttributeError(f"module 'napari_samlab' has no attribute {name!r}")
