"""The README's main job: ``python -m napari_samlab.demo``.

With a display it opens napari with the plugin's widgets docked and the CT
sample loaded.  Headless (no ``DISPLAY``, or ``--headless``) it segments the
lung tumour of the bundled CT with the default engine (classic, no
weights), writes the label file aligned with the CT and a PNG preview.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

# The CT sample's tumour: prompt on its middle slice with its box
DEMO_SLICE = 20
DEMO_BOX = (319, 337, 383, 393)


def run_headless(out_dir: Path, propagate: bool = True) -> int:
    from . import cli
    from .napari_plugin.sample_data import sample_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    ct = sample_dir() / "ct_chest_lung2.nrrd"
    labels_path = out_dir / "ct_chest_tumour_labels.nii.gz"
    argv = ["segment", str(ct), "-o", str(labels_path), "--slice", str(DEMO_SLICE),
            "--box", *map(str, DEMO_BOX)]
    if propagate:
        argv.append("--propagate")
    status = cli.main(argv)
    if status != 0:
        return status
    preview = out_dir / "ct_chest_tumour_preview.png"
    title = write_preview(ct, labels_path, preview, truth_path=sample_dir() / "ct_chest_lung2_tumour.nrrd")
    print(f"preview: {preview} ({title})")
    return 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (1.0 when both are empty).

    Examples
    --------
    >>> dice(np.array([1, 1, 0]), np.array([1, 0, 0]))
    0.6666666666666666
    """
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def preview_title(z: int, depth: int, labels: np.ndarray, truth: np.ndarray | None) -> str:
    """The preview's title: which slice, and Dice against the sample's truth when there is one.

    Examples
    --------
    >>> preview_title(20, 61, np.ones((2, 2, 2)), np.ones((2, 2, 2)))
    'slice 20 of 0..60 | Dice vs truth: 1.000 on this slice, 1.000 in 3D'
    """
    title = f"slice {z} of 0..{depth - 1}"
    if truth is not None:
        title += f" | Dice vs truth: {dice(labels[z], truth[z]):.3f} on this slice, {dice(labels, truth):.3f} in 3D"
    return title


def write_preview(image_path, labels_path, png_path, z: int | None = None, truth_path=None) -> str:
    """PNG of the slice with the most label voxels, labels outlined in colour, under a title line.

    The title (drawn above the image and stored as the PNG's ``Title`` text)
    names the slice shown and, with ``truth_path``, the Dice of the labels
    against that truth on this slice and in 3D.

    Returns
    -------
    str
        The title.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw, PngImagePlugin
    from skimage.segmentation import find_boundaries

    from .io.readers import read_image
    from .base.windowing import apply_window, ct_window

    image = read_image(image_path).array
    labels = read_image(labels_path).array
    truth = read_image(truth_path).array if truth_path is not None else None
    if z is None:
        z = int(np.argmax(labels.reshape(labels.shape[0], -1).sum(1))) if labels.any() else image.shape[0] // 2
    grey = apply_window(image[z], ct_window(image, 40, 400))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    edge = find_boundaries(labels[z] > 0, mode="inner")
    rgb[labels[z] > 0] = (0.6 * rgb[labels[z] > 0] + 0.4 * np.array([255, 60, 60])).astype(np.uint8)
    rgb[edge] = (255, 255, 0)
    if truth is not None:
        rgb[find_boundaries(truth[z] > 0, mode="inner")] = (0, 220, 255)  # truth outline in cyan
    title = preview_title(z, image.shape[0], labels, truth)
    canvas = PILImage.new("RGB", (rgb.shape[1], rgb.shape[0] + 24), (0, 0, 0))
    canvas.paste(PILImage.fromarray(rgb), (0, 24))
    ImageDraw.Draw(canvas).text((6, 6), title + ("  (yellow: result, cyan: truth)" if truth is not None else ""),
                                fill=(255, 255, 255))
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    from .io.atomic import atomic_output

    with atomic_output(png_path) as tmp:
        canvas.save(tmp, format="PNG", pnginfo=info)
    return title


def run_gui() -> int:
    import napari

    from .napari_plugin.sample_data import ct_chest

    viewer = napari.Viewer(title="napari-samlab")
    for data, kwargs, kind in ct_chest():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    viewer.dims.set_point(0, viewer.layers[0].data_to_world((DEMO_SLICE, 0, 0))[0])
    viewer.window.add_plugin_dock_widget("napari-samlab", "Model")
    viewer.window.add_plugin_dock_widget("napari-samlab", "Segment")
    napari.run()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_samlab.demo", description=__doc__)
    parser.add_argument("--headless", action="store_true", help="segment and write files even if a display exists")
    parser.add_argument("--out", default="out", help="output folder for headless mode (default: out/)")
    args = parser.parse_args(argv)
    if not args.headless and os.environ.get("DISPLAY") and not os.environ.get("CI"):
        return run_gui()
    return run_headless(Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
