"""Speed of the classic engine's propagation through 150 slices (issue 11).

One box on the middle slice of the Colin27 brain (sample_data/, 181 x 217
slices), propagated through its 152 slices with the "track" step.  Prints
wall time and CPU time of this process (on a shared machine the wall time
also counts other processes; the CPU time is what the propagation itself
costs), per slice and for 150 slices.  Target: 150 slices under 5 s.
Not a test::

    .venv/bin/python benchmarks/bench_classic_propagation_speed.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    import robustness_cases as rc
    from eval_propagation import middle_prompt
    from napari_samlab.models.classic import ClassicModel
    from napari_samlab.predict.predictor import SlicePredictor
    from napari_samlab.propagate import dice, propagate_from_prompt

    t1 = rc._read("mri_brain_colin27_t1.nii.gz")
    truth = rc._read("mri_brain_colin27_brain_mask.nii.gz") > 0
    z, prompt = middle_prompt(truth)
    w0, c0 = time.perf_counter(), time.process_time()
    res = propagate_from_prompt(SlicePredictor(ClassicModel()), t1, z, prompt, modality="MR")
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = len(res.records)
    print(f"{n} slices of {t1.shape[1]}x{t1.shape[2]}: wall {wall:.2f} s, CPU {cpu:.2f} s "
          f"({1000 * cpu / n:.1f} ms/slice); 150 slices: wall {150 * wall / n:.2f} s, CPU {150 * cpu / n:.2f} s "
          f"(target 5 s); 3D Dice {dice(res.mask, truth):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
