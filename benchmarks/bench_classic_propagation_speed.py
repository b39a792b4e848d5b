"""Speed of the classic engine's propagation through 150 slices (issue 11).

One box on the middle slice of the Colin27 brain (sample_data/, 181 x 217
slices), propagated through its slices with the "track" step, side by side
with the same run without motion following (``track_motion=0``, the step
before optical flow came in) in the same process, alternating, ``--rounds``
times each.  Prints the fastest CPU time of each (on a shared machine the
wall time also counts other processes; the CPU time is what the
propagation itself costs), per slice and for 150 slices, and their ratio.
The first round also pays one-off imports; the minimum leaves them out.
Target: 150 slices under 5 s.  Not a test::

    .venv/bin/python benchmarks/bench_classic_propagation_speed.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import robustness_cases as rc
    from eval_propagation import middle_prompt
    from napari_samlab.models.classic import ClassicModel
    from napari_samlab.predict.predictor import SlicePredictor
    from napari_samlab.propagate import dice, propagate_from_prompt

    t1 = rc._read("mri_brain_colin27_t1.nii.gz")
    truth = rc._read("mri_brain_colin27_brain_mask.nii.gz") > 0
    z, prompt = middle_prompt(truth)
    engines = {"default": ClassicModel(), "no motion following": ClassicModel(track_motion=0)}
    best = {}
    for _ in range(max(args.rounds, 1)):
        for name, model in engines.items():
            w0, c0 = time.perf_counter(), time.process_time()
            res = propagate_from_prompt(SlicePredictor(model), t1, z, prompt, modality="MR")
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            n = len(res.records)
            if name not in best or cpu < best[name][1]:
                best[name] = (wall, cpu, n, dice(res.mask, truth))
    for name, (wall, cpu, n, d) in best.items():
        print(f"{name:20s} {n} slices of {t1.shape[1]}x{t1.shape[2]}: CPU {cpu:.2f} s (wall {wall:.2f} s), "
              f"{1000 * cpu / n:.1f} ms/slice; 150 slices: CPU {150 * cpu / n:.2f} s (target 5 s); 3D Dice {d:.3f}")
    (_, c_new, n_new, _), (_, c_old, n_old, _) = best["default"], best["no motion following"]
    print(f"per slice, default / no motion following: {(c_new / n_new) / (c_old / n_old):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
