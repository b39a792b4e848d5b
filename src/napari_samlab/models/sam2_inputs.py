"""What SAM 2 / MedSAM2 take as input: frames (MedSAM2's resize and normalisation) and prompt arrays.

Shared by the 2D engine (:class:`~napari_samlab.models.medsam2.Sam2Model`)
and the 3D pipeline (:mod:`napari_samlab.propagate.memory`), which sits
above the models.
"""
from __future__ import annotations

import numpy as np

# SAM 2's image normalisation (torchvision's ImageNet statistics)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def frame_tensor(image: np.ndarray, size: int):
    """One uint8 slice as the model input ``(3, size, size)`` float32 (MedSAM2's frame recipe).

    Examples
    --------
    >>> frame_tensor(np.zeros((20, 30), np.uint8), 64).shape
    torch.Size([3, 64, 64])
    """
    import torch
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image).astype(np.uint8)).convert("RGB").resize((size, size))
    x = torch.from_numpy(np.array(img).transpose(2, 0, 1).astype(np.float64) / 255.0)
    x -= torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    x /= torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return x.float()


def prompt_tensors(prompt) -> tuple:
    """``(points, labels, box)`` for ``add_new_points_or_box`` (pixel coordinates, as upstream passes them)."""
    box = None if prompt.box is None else np.asarray(prompt.box, np.float32).reshape(4)
    points = labels = None
    if prompt.points:
        points = np.asarray(prompt.points, np.float32).reshape(-1, 2)
        lab = prompt.point_labels if prompt.point_labels is not None else [1] * len(points)
        labels = np.asarray(lab, np.int32).reshape(-1)
    return points, labels, box
