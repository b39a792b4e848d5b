"""How far the default (exported) image encoder is from upstream PyTorch fp32, and what exact cache storage costs.

Part 1, fidelity: a MedSAM-layout model (random weights; ``--model small``
is the tests' small ViT, ``--model vit_b`` the full ViT-B) encodes real CT
slices of sample_data/ct_chest_lung2.nrrd with ``encoder_backend="torch"``
(upstream PyTorch fp32) and with the default (``"auto"``: the exported
encoder, OpenVINO or ONNX Runtime, fp32).  Printed: the max absolute and
max relative error of the embedding (``max |a - b| / max |b|``, the
export check's measure) and the IoU of the masks of several boxes.

Part 2, cache storage: a disk-cache hit with float32 entries (the default,
bit-exact) against float16 entries (the old default, now ``--cache-dtype
float16``), timed alternately in the same loop, and the bytes per slice on
disk.

Run:  python benchmarks/bench_encoder_fidelity.py [--model small|vit_b] [--slices 4] [--repeats 10]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import SimpleITK as sitk  # noqa: E402

import checkpoint_factory as factory  # noqa: E402
from napari_samlab.base.windowing import resolve_window  # noqa: E402
from napari_samlab.models.base import encoder_report  # noqa: E402
from napari_samlab.models.registry import load_model  # noqa: E402
from napari_samlab.predict.predictor import SlicePredictor  # noqa: E402

BOXES = [(300, 320, 400, 410), (100, 150, 250, 350), (280, 120, 420, 330), (37, 41, 301, 263), (200, 200, 232, 230)]


def iou(a, b) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def fidelity(ckpt: Path, volume: np.ndarray, zs) -> None:
    ref_model = load_model(ckpt, family="medsam", encoder_backend="torch")
    dft_model = load_model(ckpt, family="medsam")
    win = resolve_window("auto", volume, ref_model)
    ref, dft = SlicePredictor(ref_model), SlicePredictor(dft_model)
    abs_err, rel_err, ious = [], [], []
    for z in zs:
        ref.set_image(volume[z], window=win)
        dft.set_image(volume[z], window=win)
        a, b = dft.embedding["features"], ref.embedding["features"]
        abs_err.append(float(np.abs(a - b).max()))
        rel_err.append(abs_err[-1] / float(np.abs(b).max()))
        for box in BOXES:
            ious.append(iou(dft.predict(box=box)[0], ref.predict(box=box)[0]))
    rep = encoder_report(dft_model)
    print(f"default encoder: {rep['summary']}")
    print(f"  embedding vs PyTorch fp32 over {len(zs)} slices: max abs error {max(abs_err):.3g}, "
          f"max rel error {max(rel_err):.3g}")
    print(f"  mask IoU over {len(ious)} boxes: min {min(ious):.6f}, mean {statistics.mean(ious):.6f}, "
          f"identical masks {sum(v == 1.0 for v in ious)}/{len(ious)}")
    return dft_model, win


def cache_hits(model, volume: np.ndarray, z: int, win, repeats: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="samlab-bench-cache-"))
    dirs = {"float32": root / "f32", "float16": root / "f16"}
    for dtype, d in dirs.items():
        SlicePredictor(model, cache_dir=d, disk_dtype=dtype).set_image(volume[z], window=win)  # prime
    times = {k: [] for k in dirs}
    for _ in range(repeats):
        for dtype, d in dirs.items():  # alternate: machine load hits both alike
            p = SlicePredictor(model, cache_dir=d, disk_dtype=dtype)
            t = time.perf_counter()
            p.set_image(volume[z], window=win)
            times[dtype].append((time.perf_counter() - t) * 1000)
            assert p.disk_hits == 1 and p.encoder_calls == 0
    sizes = {k: SlicePredictor(model, cache_dir=d, disk_dtype=k).disk_usage().nbytes for k, d in dirs.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"disk-cache hit (median of {repeats}, includes hashing the slice): float32 {med['float32']:.1f} ms, "
          f"float16 {med['float16']:.1f} ms (ratio float32/float16 {med['float32'] / med['float16']:.2f})")
    print(f"disk per slice: float32 {sizes['float32'] / 2**20:.2f} MB, float16 {sizes['float16'] / 2**20:.2f} MB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("small", "vit_b"), default="small")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(ROOT / "sample_data" / "ct_chest_lung2.nrrd")))
    zs = np.linspace(10, volume.shape[0] - 10, args.slices).astype(int)
    vit = factory.SMALL_VIT if args.model == "small" else {**factory.VIT_B, "img_size": 1024}
    ckpt = factory.save(factory.sam_state_dict(vit, seed=3), Path(tempfile.mkdtemp()) / "medsam.pth")
    print(f"model: MedSAM layout, {args.model} ViT (random weights), CT {volume.shape}, slices {[int(z) for z in zs]}")
    model, win = fidelity(ckpt, volume, zs)
    cache_hits(model, volume, int(zs[0]), win, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
