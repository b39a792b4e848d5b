"""A small model family defined outside the package: one module, registered with one call.

Files: ``torch.save({"toy.level": tensor([t])}, path)``.  The engine
segments the pixels inside a box whose value is at least ``t`` (after the
family's own window, which maps the slice's range onto 0..255), so results
are easy to predict in tests.
"""
from __future__ import annotations

import numpy as np

from napari_samlab.base.windowing import Window
from napari_samlab.models.base import Prediction, SegmentationModel
from napari_samlab.models.families import Family


class ToyModel(SegmentationModel):
    family = "toy"
    supports_points = False
    supports_boxes = True

    def __init__(self, level: float):
        self.level = float(level)

    def fingerprint(self) -> str:
        return f"toy-{self.level!r}"

    def encode(self, image):
        return {"image": np.asarray(image, np.float32), "original_size": np.array(image.shape[:2])}

    def decode(self, embedding, prompt):
        img = embedding["image"]
        x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
        mask = np.zeros(img.shape[:2], bool)
        mask[y0:y1 + 1, x0:x1 + 1] = img[y0:y1 + 1, x0:x1 + 1] >= self.level
        return Prediction(mask=mask, score=1.0)


def _detect(sd):
    if "toy.level" not in sd:
        return None
    return {"backbone": "threshold", "image_size": 0, "level": float(sd["toy.level"].reshape(-1)[0])}


def _build(sd, ctx):
    return ToyModel(float(sd["toy.level"].reshape(-1)[0]))


def _window(image, modality=None):
    return Window(float(np.min(image)), float(np.max(image)), "uint8", False, "toy-range")


FAMILY = Family(
    name="toy",
    pretty="Toy threshold",
    aliases=("toy-threshold",),
    build=_build,
    detect=_detect,
    detect_rank=5,
    prompts=("box",),
    propagation_strategy="box",
    auto_window=_window,
    example_checkpoint="toy.pth",
)
