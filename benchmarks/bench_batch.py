"""Cohort throughput of ``samlab batch``: cases/minute with 1 and 2 workers,
memory per worker, and the per-case overhead against the plain API in a loop.

Cases are crops of the bundled chest CT (sample_data/ct_chest_lung2.nrrd),
each shifted a little, with a box prompt on the tumour propagated through
the crop by the classic engine (the weight-free default), written as NRRD
files with their prompts files and a CASES.csv in a temporary folder.

Measured, side by side in the same run:

1. **API loop** (the baseline): ``read_image`` + ``segment_with_prompts`` +
   ``write_labels`` per case, in this process;
2. **run_case loop**: the batch task itself (hashing, skip check,
   atomic outputs, provenance) called in a loop in this process, i.e. what
   batch adds per case without Dask;
3. **batch, 1 worker** and **batch, 2 workers**: ``run_batch`` on a
   LocalCluster of worker processes, as ``samlab batch --workers N`` runs it;
   cluster start-up and each fresh worker's warm-up (one case into a
   scratch folder: imports, model load, first-call costs, as the API loop's
   warm-up case) are timed apart from the cases.

Prints cases/minute, the 2-worker/1-worker ratio, each worker's resident
and peak memory, and the overhead per case of (2) and (3) over (1).

Usage::

    python benchmarks/bench_batch.py            # 16 cases
    python benchmarks/bench_batch.py --quick    # 4 cases, to check it runs
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
CT = REPO / "sample_data" / "ct_chest_lung2.nrrd"
TUMOUR_BOX = (319, 337, 383, 393)  # x0 y0 x1 y1 on slice 20 of the full CT


def make_cases(folder: Path, n: int) -> Path:
    img = sitk.ReadImage(str(CT))
    rows = ["case,image,prompts"]
    for i in range(n):
        dx, dy = 3 * (i % 8), 2 * (i // 8)
        x0, y0 = 240 + dx, 280 + dy
        crop = img[x0:x0 + 200, y0:y0 + 180, 10:34]  # 200 x 180 x 24 voxels
        sitk.WriteImage(crop, str(folder / f"c{i:03d}.nrrd"), True)
        box = [TUMOUR_BOX[0] - x0, TUMOUR_BOX[1] - y0, TUMOUR_BOX[2] - x0, TUMOUR_BOX[3] - y0]
        (folder / f"c{i:03d}.json").write_text(json.dumps({"prompts": [{"slice": 10, "box": box, "propagate": True}]}))
        rows.append(f"c{i:03d},c{i:03d}.nrrd,c{i:03d}.json")
    csv_path = folder / "CASES.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def api_loop(cases, outdir: Path) -> float:
    from napari_samlab import load_model, read_image, write_labels
    from napari_samlab.cohort.apply import segment_with_prompts
    from napari_samlab.cohort.prompts import load_prompts

    outdir.mkdir()
    t0 = time.perf_counter()
    model = load_model(family="classic")
    for case in cases:
        image = read_image(case.image)
        labels = segment_with_prompts(image, model, load_prompts(case.prompts))
        write_labels(labels, image, outdir / f"{case.name}.nii.gz")
    return time.perf_counter() - t0


def task_loop(cases, outdir: Path) -> float:
    from napari_samlab.cohort.batch import BatchSettings
    from napari_samlab.cohort.worker import run_case

    outdir.mkdir()
    shared = BatchSettings().resolved()
    t0 = time.perf_counter()
    for case in cases:
        r = run_case(case.to_dict(), shared, str(outdir))
        assert r["status"] == "done", r
    return time.perf_counter() - t0


def worker_memory():
    import resource

    import psutil

    return psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def warm_worker(case, settings, scratch):
    """One case in a fresh worker, into a scratch folder: imports, model load and first-call costs
    (what the API loop's warm-up case also paid) are then out of the timed run."""
    from napari_samlab.cohort.worker import run_case

    folder = Path(scratch) / str(os.getpid())
    folder.mkdir(parents=True, exist_ok=True)
    assert run_case(case, settings, str(folder))["status"] == "done"


def batch(cases, outdir: Path, workers: int) -> dict:
    from napari_samlab.cohort.batch import BatchSettings, connect, run_batch

    t0 = time.perf_counter()
    client, cluster = connect(workers=workers)
    client.wait_for_workers(workers)
    start = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        client.run(warm_worker, cases[0].to_dict(), BatchSettings().resolved(), str(outdir) + "-warm")
        warm = time.perf_counter() - t1
        t1 = time.perf_counter()
        report = run_batch(cases, outdir, BatchSettings(), client=client, progress=False)
        run = time.perf_counter() - t1
        assert report.ok and report.done == len(cases), report.failed
        mem = client.run(worker_memory)
        loads = {r["pid"]: r["model_loads"] for r in report.results}
    finally:
        t2 = time.perf_counter()
        client.close()
        cluster.close()
        close = time.perf_counter() - t2
    return {"start": start, "warm": warm, "run": run, "close": close, "memory": list(mem.values()), "loads": loads}


def same_outputs(a: Path, b: Path, cases) -> bool:
    return all(np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / f"{c.name}.nii.gz"))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(b / f"{c.name}.nii.gz")))) for c in cases)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="4 cases")
    args = ap.parse_args(argv)
    n = 4 if args.quick else args.cases

    from napari_samlab.cohort.batch import silence_distributed
    from napari_samlab.cohort.cases import read_cases

    silence_distributed()
    print(f"{n} cases (200x180x24 CT crops, classic engine, 1 propagated box each); "
          f"{os.cpu_count()} cores, load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = read_cases(make_cases(tmp, n))
        api_loop(cases[:1], tmp / "warm")  # imports and first-call costs out of the way
        t_api = api_loop(cases, tmp / "api")
        t_task = task_loop(cases, tmp / "task")
        one = batch(cases, tmp / "b1", 1)
        two = batch(cases, tmp / "b2", 2)
        assert same_outputs(tmp / "api", tmp / "b1", cases) and same_outputs(tmp / "api", tmp / "b2", cases)

    def per_min(seconds):
        return 60.0 * n / seconds

    print(f"{'run':<22}{'cases/min':>10}{'s/case':>9}   notes")
    print(f"{'API loop (baseline)':<22}{per_min(t_api):>10.1f}{t_api / n:>9.3f}")
    print(f"{'run_case loop':<22}{per_min(t_task):>10.1f}{t_task / n:>9.3f}   + hashing, skip check, provenance")
    for name, r in (("batch, 1 worker", one), ("batch, 2 workers", two)):
        print(f"{name:<22}{per_min(r['run']):>10.1f}{r['run'] / n:>9.3f}   cluster start {r['start']:.1f} s, "
              f"worker warm-up {r['warm']:.1f} s, close {r['close']:.1f} s; "
              f"all included {per_min(r['run'] + r['start'] + r['warm']):.1f} cases/min")
    print(f"2 workers / 1 worker: {one['run'] / two['run']:.2f}x cases/min")
    print(f"overhead per case vs API loop: run_case {1000 * (t_task - t_api) / n:+.0f} ms, "
          f"batch 1 worker {1000 * (one['run'] - t_api) / n:+.0f} ms "
          f"({1000 * (one['run'] + one['start'] + one['warm'] - t_api) / n:+.0f} ms with cluster start-up and worker warm-up)")
    for name, r in (("1 worker", one), ("2 workers", two)):
        mem = ", ".join(f"{rss / 2**20:.0f} MB (peak {peak / 2**20:.0f} MB)" for rss, peak in r["memory"])
        print(f"memory per worker, {name}: {mem}; model loads per worker process: {sorted(r['loads'].values())}")
    print("outputs of both batch runs equal the API loop's, voxel for voxel")


if __name__ == "__main__":
    sys.exit(main())
