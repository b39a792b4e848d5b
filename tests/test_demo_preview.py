"""The quick start's preview PNG says which slice it shows and its Dice against the sample's truth (issue 17.11)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from PIL import Image

from napari_samlab.demo import write_preview


def test_preview_title_names_slice_and_dice(tmp_path, samples):
    truth_path = samples / "ct_chest_lung2_tumour.nrrd"
    truth = sitk.ReadImage(str(truth_path))
    arr = sitk.GetArrayFromImage(truth)
    labels = arr.copy()
    z_big = int(np.argmax(arr.reshape(arr.shape[0], -1).sum(1)))
    labels[z_big + 1:] = 0  # a result that misses the upper half of the tumour
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(truth)
    sitk.WriteImage(out, str(tmp_path / "labels.nii.gz"))
    png = tmp_path / "preview.png"
    title = write_preview(samples / "ct_chest_lung2.nrrd", tmp_path / "labels.nii.gz", png, truth_path=truth_path)
    inter = (labels > 0).sum()
    d3 = 2 * inter / ((labels > 0).sum() + (arr > 0).sum())
    assert title == f"slice {z_big} of 0..{arr.shape[0] - 1} | Dice vs truth: 1.000 on this slice, {d3:.3f} in 3D"
    img = Image.open(png)
    assert img.text["Title"] == title
    assert img.size[1] > arr.shape[1]  # the title line is drawn above the slice
