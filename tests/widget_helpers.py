"""Helpers for the widget tests: sample layers, direct engine results, slow models."""
from __future__ import annotations

import time

import numpy as np

from napari_samlab.models.classic import ClassicModel
from napari_samlab.predict.predictor import SlicePredictor
from napari_samlab.base.windowing import resolve_window


def sample_layers(name: str) -> list:
    """LayerData tuples of a bundled sample (``histology``, ``ct_chest``, ...),
    exactly as File > Open Sample gives them (from the repository's sample_data/)."""
    from napari_samlab.napari_plugin import sample_data

    return getattr(sample_data, name)()


def add_layers(viewer, layer_data) -> list:
    return [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in layer_data]


def direct(model, image2d, window, prompt_kwargs) -> np.ndarray:
    """What the engine itself answers (the reference for the widget)."""
    pred = SlicePredictor(model)
    pred.set_image(image2d, window=window)
    mask, _ = pred.predict(**prompt_kwargs)
    return mask


def volume_window(model, layer, preset="auto"):
    from napari_samlab.base.windowing import detect_modality

    geo = layer.metadata.get("samlab", {}) if isinstance(layer.metadata.get("samlab"), dict) else {}
    guess = detect_modality(np.asarray(layer.data), metadata=geo)  # metadata first, as the CLI and widget do
    return resolve_window(preset, np.asarray(layer.data), model,
                          guess.kind if guess.kind in ("CT", "MR") else geo.get("modality"))


class SlowClassic(ClassicModel):
    """The classic engine with an image encoder that takes ``delay`` seconds.

    It sleeps in small steps (like a GPU model waiting on its device) and
    counts encodes, to test that the GUI stays responsive and that stale
    results are dropped.
    """

    def __init__(self, delay: float = 1.0, events: list | None = None):
        super().__init__()
        self.delay = float(delay)
        self.encodes = 0
        self.events = events  # when given: "encode start"/"encode end" appended

    def fingerprint(self) -> str:
        return super().fingerprint() + f"-slow{self.delay}"

    def encode(self, image):
        # sleeps in 10 ms steps, as a device wait would (no clock read: the
        # tests count encodes and order of events, never durations)
        if self.events is not None:
            self.events.append("encode start")
        for _ in range(max(1, round(self.delay / 0.01))):
            time.sleep(0.01)
        if self.events is not None:
            self.events.append("encode end")
        self.encodes += 1
        return super().encode(image)


def distinct_colors(rgba: np.ndarray, min_count: int = 50) -> int:
    """Number of colours (quantised to 5 bits) covering at least ``min_count`` pixels."""
    q = (np.asarray(rgba)[..., :3] // 8).astype(np.int32)
    codes = q[..., 0] * 1024 + q[..., 1] * 32 + q[..., 2]
    _, counts = np.unique(codes, return_counts=True)
    return int(np.sum(counts >= min_count))
