"""Peak memory of a 300-slice 512×512 volume segmented slice by slice with ViT-B embeddings.

Issue 6's bound: a 300-slice 512×512 volume with ViT-B embeddings stays
under 4 GB peak resident memory.  This script does what a propagation
through the whole volume does, for real:

* the volume: the lung2 CT (61 slices of 512×512, int16) resampled along z
  to ``--slices`` slices (linear), 150 MB at 300 slices;
* the model: a full-size MedSAM ViT-B (1024 px) checkpoint with random
  weights (memory does not depend on their values), loaded with
  :func:`napari_samlab.load_model` and the default encoder backend;
* per slice: ``SlicePredictor.set_image`` (encode, cache), one box
  ``predict`` and the mask written into a (Z, Y, X) label volume, as the
  propagation does; the predictor uses its defaults (1024 MB in-memory
  LRU, float32) unless ``--memory-mb`` / ``--memory-dtype`` say otherwise.

Peak resident memory is the kernel's ``VmHWM`` of this process.  The
encoder export (first use of a checkpoint) runs in a separate process
first, so its one-off peak is reported on its own line and the measured
process loads the cached export like every later session does.

Usage::

    python benchmarks/bench_memory.py                  # 300 slices, ~35 min on 2 cores
    python benchmarks/bench_memory.py --slices 20      # smoke run
    python benchmarks/bench_memory.py --memory-dtype float16
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

DATA = Path(os.environ.get("SAMLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
BOUND_MB = 4096


def status_mb(field: str) -> float:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) / 1024 if m else float("nan")


def make_volume(n_slices: int) -> np.ndarray:
    """lung2 CT resampled along z to ``n_slices`` (int16, like the file)."""
    import SimpleITK as sitk
    from scipy.ndimage import zoom

    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "ct_chest_lung2" / "lung2_image.nrrd")))
    out = zoom(vol.astype(np.float32), (n_slices / vol.shape[0], 1, 1), order=1)
    return np.round(out).astype(vol.dtype)


def write_checkpoint(path: Path) -> None:
    from checkpoint_factory import VIT_B, sam_state_dict, save

    save(sam_state_dict(VIT_B, seed=0), path)


def load(path: Path, backend):
    from napari_samlab import load_model

    return load_model(path, family="medsam", encoder_backend=backend)


def export_child(path: str, backend: str) -> None:
    """Write the checkpoint, load it and encode one slice so the export is cached; print the peak.

    Done here, not in the measured process: building the random weights
    leaves freed heap behind that would count against the measured peak.
    """
    write_checkpoint(Path(path))
    model = load(Path(path), None if backend == "default" else backend)
    model.encode(np.zeros((512, 512, 3), np.uint8))
    print(f"EXPORT_PEAK_MB {status_mb('VmHWM'):.0f} BACKEND {model.encoder_backend}"
          f" RAN {getattr(getattr(model, '_accelerated', None), 'backend', 'torch')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--memory-mb", type=float, default=None, help="in-memory cache bound (default: SlicePredictor's)")
    ap.add_argument("--memory-dtype", default=None, help="float32 or float16 (default: SlicePredictor's)")
    ap.add_argument("--backend", default="default", help="encoder backend (default: load_model's default)")
    ap.add_argument("--export-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.export_child:
        export_child(*args.export_child)
        return 0

    from napari_samlab import SlicePredictor

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "medsam_vit_b.pth"
        t = time.perf_counter()
        res = subprocess.run([sys.executable, __file__, "--export-child", str(ckpt), args.backend],
                             capture_output=True, text=True)
        m = re.search(r"EXPORT_PEAK_MB (\d+) BACKEND (\S+) RAN (\S+)", res.stdout)
        if not m:
            print(res.stdout, res.stderr)
            return 1
        print(f"first use (checkpoint written, export + one encode, separate process): peak RSS {m.group(1)} MB, "
              f"backend {m.group(2)} -> {m.group(3)}, {time.perf_counter() - t:.0f} s")

        base = status_mb("VmRSS")
        vol = make_volume(args.slices)
        model = load(ckpt, None if args.backend == "default" else args.backend)
        kwargs = {}
        if args.memory_mb is not None:
            kwargs["memory_mb"] = args.memory_mb
        if args.memory_dtype is not None:
            kwargs["memory_dtype"] = args.memory_dtype
        predictor = SlicePredictor(model, **kwargs)
        win = model.auto_window(vol)
        labels = np.zeros(vol.shape, np.uint8)
        after_load = status_mb("VmRSS")
        print(f"volume {vol.shape} {vol.dtype} {vol.nbytes / 2**20:.0f} MB; window {win}; "
              f"predictor memory bound {predictor.memory_mb:.0f} MB "
              f"{getattr(predictor, 'memory_dtype', 'float32')}; RSS before {base:.0f} MB, after load {after_load:.0f} MB",
              flush=True)
        h, w = vol.shape[1:]
        box = (w * 0.3, h * 0.3, w * 0.7, h * 0.7)
        t0 = time.perf_counter()
        rss = []
        for z in range(vol.shape[0]):
            predictor.set_image(vol[z], window=win)
            mask, _ = predictor.predict(box=box)
            labels[z][mask] = 1
            rss.append(status_mb("VmRSS"))
            if z % 25 == 0 or z == vol.shape[0] - 1:
                el = time.perf_counter() - t0
                print(f"  slice {z + 1}/{vol.shape[0]}: RSS {rss[-1]:.0f} MB, peak {status_mb('VmHWM'):.0f} MB, "
                      f"cache {len(predictor._memory)} entries {predictor._memory.nbytes / 2**20:.0f} MB, "
                      f"{el / (z + 1):.1f} s/slice", flush=True)
        took = time.perf_counter() - t0
        peak = status_mb("VmHWM")
        emb = predictor.embedding
        emb_mb = sum(getattr(v, "nbytes", 0) for v in emb.values()) / 2**20
        ran = getattr(getattr(model, "_accelerated", None), "backend", "torch")
        print(f"\n{vol.shape[0]} slices in {took / 60:.1f} min ({took / vol.shape[0]:.1f} s/slice, encoder {ran}); "
              f"encoder calls {predictor.encoder_calls}")
        print(f"one embedding: {emb_mb:.1f} MB as held in memory; keeping all {vol.shape[0]} in float32 would take "
              f"{vol.shape[0] * 4:.0f} MB")
        print(f"in-memory cache at the end: {len(predictor._memory)} entries, {predictor._memory.nbytes / 2**20:.0f} MB")
        verdict = "PASS" if peak < BOUND_MB else "FAIL"
        print(f"peak resident memory (VmHWM): {peak:.0f} MB; bound {BOUND_MB} MB: {verdict} "
              f"(max RSS during the loop {max(rss):.0f} MB)")
        return 0 if peak < BOUND_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
