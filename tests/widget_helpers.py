"""Helpers for the widget tests: sample layers, direct engine results, slow models."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from napari_samlab.models.classic import ClassicModel
from napari_samlab.predict.predictor import SlicePredictor
from napari_samlab.base.windowing import resolve_window

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def sample_layers(name: str) -> list:
    """LayerData tuples of a bundled sample (``histology``, ``ct_chest``, ...).

    Falls back to the raw files in shared/data when the sample module or
    its files are missing, so the widget tests do not depend on them.
    """
    try:
        from napari_samlab.napari_plugin import sample_data

        return getattr(sample_data, name)()
    except (ImportError, FileNotFoundError, AttributeError):
        pass
    import SimpleITK as sitk

    if name == "histology":
        import imageio.v3 as iio

        return [(iio.imread(SHARED / "histology_he" / "he_histo.jpg"), {"name": "H&E histology", "rgb": True}, "image")]
    if name == "ct_chest":
        out = []
        for f, nm, kind in (("lung2_image.nrrd", "CT chest", "image"), ("lung2_label.nrrd", "lung tumour (truth)", "labels")):
            img = sitk.ReadImage(str(SHARED / "ct_chest_lung2" / f))
            meta = {"spacing": list(img.GetSpacing()), "origin": list(img.GetOrigin()),
                    "direction": list(img.GetDirection()), "modality": "CT" if kind == "image" else None}
            out.append((sitk.GetArrayFromImage(img), {"name": nm, "scale": tuple(reversed(img.GetSpacing())),
                                                      "metadata": {"samlab": meta}}, kind))
        return out
    raise ValueError(name)


def add_layers(viewer, layer_data) -> list:
    return [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in layer_data]


def direct(model, image2d, window, prompt_kwargs) -> np.ndarray:
    """What the engine itself answers (the reference for the widget)."""
    pred = SlicePredictor(model)
    pred.set_image(image2d, window=window)
    mask, _ = pred.predict(**prompt_kwargs)
    return mask


def volume_window(model, layer, preset="auto"):
    geo = layer.metadata.get("samlab", {}) if isinstance(layer.metadata.get("samlab"), dict) else {}
    return resolve_window(preset, np.asarray(layer.data), model, geo.get("modality"))


class SlowClassic(ClassicModel):
    """The classic engine with an image encoder that takes ``delay`` seconds.

    It sleeps in small steps (like a GPU model waiting on its device) and
    counts encodes, to test that the GUI stays responsive and that stale
    results are dropped.
    """

    def __init__(self, delay: float = 1.0):
        super().__init__()
        self.delay = float(delay)
        self.encodes = 0

    def fingerprint(self) -> str:
        return super().fingerprint() + f"-slow{self.delay}"

    def encode(self, image):
        end = time.perf_counter() + self.delay
        while time.perf_counter() < end:
            time.sleep(0.01)
        self.encodes += 1
        return super().encode(image)


def distinct_colors(rgba: np.ndarray, min_count: int = 50) -> int:
    """Number of colours (quantised to 5 bits) covering at least ``min_count`` pixels."""
    q = (np.asarray(rgba)[..., :3] // 8).astype(np.int32)
    codes = q[..., 0] * 1024 + q[..., 1] * 32 + q[..., 2]
    _, counts = np.unique(codes, return_counts=True)
    return int(np.sum(counts >= min_count))
