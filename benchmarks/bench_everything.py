"""Segment everything: seconds, peak memory and F1, side by side with the scikit-image watershed baseline.

Rows (each engine of each row runs in a fresh Python process, so peak RSS
is that run's own, from ``resource.getrusage``):

* ``fluo512``   the 512×512 nuclei sample (truth: nuclei_labels.tif)
* ``he300x500`` the H&E sample (no truth: count only)
* ``vol64``     64×256×256 synthetic nuclei volume, anisotropic, noisy (exact truth)
* ``stack3d``   a 3D volume built from the real nuclei image: each true nucleus
                becomes an ellipsoid through ~11 slices (its footprint shrinking
                away from its centre slice, centre slices shifted at random),
                with the real pixel texture and added noise (truth by construction)
* ``he4096``    a 4096×4096 H&E mosaic (the sample mirrored and repeated), tiled

The baseline is Otsu + distance transform + peak_local_max + watershed
(:mod:`napari_samlab.instances.baseline`), on the same nucleus channel
(haematoxylin for H&E).  Usage::

    python benchmarks/bench_everything.py           # all rows
    python benchmarks/bench_everything.py --quick   # fluo512, he300x500, stack3d
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_data"


def _stack3d(seed: int = 0):
    import tifffile
    from scipy import ndimage as ndi

    img = tifffile.imread(SAMPLES / "nuclei.tif").astype(np.float32)
    gt = tifffile.imread(SAMPLES / "nuclei_labels.tif")
    rng = np.random.default_rng(seed)
    depth, half = 32, 5.5
    n = int(gt.max())
    zc = rng.uniform(half, depth - half, n + 1)
    dt = ndi.distance_transform_edt(gt > 0)  # depth of each pixel inside its nucleus
    peak = np.asarray(ndi.maximum(dt, gt, index=np.arange(n + 1)))
    peak[0] = 1
    rel = dt / peak[gt]  # 0 at the border, 1 at the centre of each nucleus
    bg = float(np.median(img[gt == 0]))
    vol = np.empty((depth,) + img.shape, np.float32)
    truth = np.zeros((depth,) + img.shape, np.int32)
    for z in range(depth):
        s = np.clip(1 - ((z - zc[gt]) / half) ** 2, 0, 1)  # ellipsoid cross-section (squared radius fraction)
        inside = (gt > 0) & (rel > 1 - np.sqrt(s) + 1e-6) & (s > 0)
        truth[z][inside] = gt[inside]
        vol[z] = np.where(inside, img, bg)
    vol = ndi.gaussian_filter(vol, (1.0, 0.7, 0.7)) + rng.normal(0, 6, vol.shape).astype(np.float32)
    return vol, truth


def _data(row: str):
    """(image, truth or None, rgb, spacing, tile) of a row."""
    import tifffile
    from skimage import io

    from napari_samlab.instances.synthetic import synthetic_nuclei

    if row == "fluo512":
        return tifffile.imread(SAMPLES / "nuclei.tif"), tifffile.imread(SAMPLES / "nuclei_labels.tif"), False, None
    if row == "he300x500":
        return io.imread(SAMPLES / "he_histology.jpg"), None, True, None
    if row == "vol64":
        img, truth = synthetic_nuclei((64, 256, 256), radius=8, anisotropy=2.0, noise=0.1, bias=0.3, seed=11)
        return img, truth, False, (2.0, 1.0, 1.0)
    if row == "stack3d":
        vol, truth = _stack3d()
        return vol, truth, False, None
    if row == "he4096":
        he = io.imread(SAMPLES / "he_histology.jpg")
        tile = np.concatenate([he, he[:, ::-1]], axis=1)
        tile = np.concatenate([tile, tile[::-1]], axis=0)
        reps = (4096 // tile.shape[0] + 1, 4096 // tile.shape[1] + 1, 1)
        return np.tile(tile, reps)[:4096, :4096], None, True, None
    raise ValueError(row)


def run_one(row: str, engine: str) -> dict:
    """In this process: one engine on one row."""
    from napari_samlab.instances import match_instances, segment_everything
    from napari_samlab.instances.baseline import skimage_watershed
    from napari_samlab.instances.channels import nucleus_channel

    image, truth, rgb, spacing = _data(row)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if engine == "ours":
        labels = segment_everything(image, rgb=rgb, spacing=spacing)
    else:
        # the baseline gets the same nucleus channel (haematoxylin for H&E) so that only the method differs
        grey = nucleus_channel(image, rgb=rgb) if rgb else image
        labels = skimage_watershed(grey)
    secs = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = {"row": row, "engine": engine, "seconds": secs, "peak_rss_mb": peak_mb,
           "input_rss_mb": before / 1024.0, "objects": int(labels.max())}
    if truth is not None:
        s = match_instances(truth, labels)
        out.update(f1=s.f1, precision=s.precision, recall=s.recall, mean_iou=s.mean_matched_iou)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the small rows only")
    ap.add_argument("--rows", nargs="*", help="rows to run")
    ap.add_argument("--one", nargs=2, metavar=("ROW", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return 0
    rows = args.rows or (["fluo512", "he300x500", "stack3d"] if args.quick else
                         ["fluo512", "he300x500", "vol64", "stack3d", "he4096"])
    env_path = str(ROOT / "src")
    import os

    env = dict(os.environ, PYTHONPATH=env_path + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"{'row':10s} {'engine':8s} {'s':>7s} {'peakMB':>7s} {'objects':>7s} {'F1':>6s} {'P':>5s} {'R':>5s} {'mIoU':>5s}")
    for row in rows:
        res = {}
        for engine in ("ours", "baseline"):
            p = subprocess.run([sys.executable, __file__, "--one", row, engine], capture_output=True, text=True, env=env)
            if p.returncode != 0:
                print(f"{row} {engine} failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            res[engine] = r
            f1 = f"{r['f1']:.3f} {r['precision']:.2f} {r['recall']:.2f} {r['mean_iou']:.2f}" if "f1" in r else "    -"
            print(f"{row:10s} {engine:8s} {r['seconds']:7.2f} {r['peak_rss_mb']:7.0f} {r['objects']:7d} {f1}")
        if len(res) == 2:
            o, b = res["ours"], res["baseline"]
            extra = f", F1 {o['f1'] - b['f1']:+.3f}" if "f1" in o else ""
            print(f"{row:10s} ratio    time {o['seconds'] / b['seconds']:.2f}x, peak RSS {o['peak_rss_mb'] / b['peak_rss_mb']:.2f}x{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
