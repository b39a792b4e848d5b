"""Propagation quality on real volumes with ground truth (issue 5).

From ONE box on the object's middle slice (the slice in the middle of the
object's z-extent; the box = the true mask's bounding box there) and nothing
else, propagate through the volume and compare with the truth:

* the classic engine (targets: Colin27 brain 3D Dice >= 0.90, lung2 tumour
  >= 0.80);
* an oracle 2D segmenter (the truth's component(s) the prompt names), which
  isolates the propagation logic (target >= 0.97 on both).

Prints the per-slice record next to the true per-slice Dice, the flagged
slices, and how many of the slices with true Dice < 0.8 were flagged; then
the true neighbour-slice statistics and (``--sweep``) the classic Dice for
other stop settings, which is how the defaults in ``PropagationSettings``
were chosen, and the classic engine's own propagation parameters
(``ClassicModel(track_*=...)``); then (``--interp``) slice interpolation
methods on the same truths.  Not a test::

    .venv/bin/python benchmarks/eval_propagation.py [--only brain,lung] [--quiet] [--sweep] [--interp]
    .venv/bin/python benchmarks/eval_propagation.py --suite [--kinds real,perturbed,synthetic] [--match TEXT]

``--suite`` is the robustness suite (issue 11): every case of
``benchmarks/robustness_cases.py`` (real objects from sample_data/, the same
made harder with TorchIO, synthetic volumes with known truth), one box on
the middle slice, the classic engine; per case the 3D Dice, how many slices
the output reaches beyond the object's z-extent (allowed: 2 + 10 % of the
extent), the flagged slices and the time, and each perturbation's Dice
loss against its clean case (allowed: 0.10).

Measured (defaults; classic uses its "track" step, ClassicModel.propagate_step):
brain oracle 0.9996, classic 0.972 (box+mask strategy: 0.71, ran to the
volume's end); lung oracle 0.998, classic 0.867 (box+mask: 0.39).  The
suite's table, before and after issue 11: docs/classic_engine.md.  Most
classic slices with true Dice < 0.8 are the object's thin ends (brain top
z=146..158 over-segmented by the surrounding cortex/CSF partial volume,
brainstem continued into the cord below z=4, tumour end slices).
"""
from __future__ import annotations

import os
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_samlab.models.base import Prompt
from napari_samlab.predict.predictor import SlicePredictor
from napari_samlab.propagate import (PropagationSettings, dice, interpolate_slices, iou,
                                     propagate_from_prompt)
from napari_samlab.propagate.oracle import OracleModel
from napari_samlab.propagate.quality import bbox

# ../shared/data beside the checkout (SAMLAB_SHARED_DATA overrides)
DATA = Path(os.environ.get("SAMLAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DATASETS = {
    "brain": ("mri_brain_colin27/colin27_t1.nii.gz", "mri_brain_colin27/colin27_t1_brain.nii.gz", None, 0.90),
    "lung": ("ct_chest_lung2/lung2_image.nrrd", "ct_chest_lung2/lung2_label.nrrd", 1, 0.80),
}


def load(name: str, data: Path):
    import SimpleITK as sitk

    img, lab, value, target = DATASETS[name]
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(data / img)))
    t = sitk.GetArrayFromImage(sitk.ReadImage(str(data / lab)))
    truth = (t > 0) if value is None else (t == value)
    return vol, truth, target


def middle_prompt(truth: np.ndarray):
    """The middle slice of the object's z-extent and the true box there."""
    zs = np.flatnonzero(truth.reshape(truth.shape[0], -1).any(1))
    z = int((zs[0] + zs[-1]) // 2)
    if not truth[z].any():  # a hole in the extent: nearest slice with object
        z = int(zs[np.argmin(np.abs(zs - z))])
    return z, Prompt(box=bbox(truth[z]))


def classic_model():
    try:
        from napari_samlab.models.classic import ClassicModel
    except ImportError as exc:  # engine not merged yet
        print(f"classic engine not available ({exc}): skipping it")
        return None
    return ClassicModel()


def evaluate(name, vol, truth, model, settings=None, quiet=False, label=""):
    z, prompt = middle_prompt(truth)
    pred = SlicePredictor(model)
    t0 = time.perf_counter()
    res = propagate_from_prompt(pred, vol, z, prompt, settings=settings)
    dt = time.perf_counter() - t0
    d3 = dice(res.mask, truth)
    per = {k: dice(res.mask[k], truth[k]) for k in range(vol.shape[0]) if res.mask[k].any() or truth[k].any()}
    bad = sorted(k for k, d in per.items() if d < 0.8)
    flagged = set(res.flagged_slices())
    in_rec = [k for k in bad if k in res.records]
    missed = [k for k in bad if k not in res.records]
    # a missed slice (beyond where a run ended) counts as pointed at when the
    # run's last kept slice carries stopped_here / edge
    ends = {st.last_kept for st in res.stops if st.rule_fired or st.reason == "z_limit"}
    ends = {e for e in ends if e is not None and e in flagged}
    pointed = [k for k in missed if any(abs(k - e) <= 3 for e in ends)]
    if not quiet:
        print(f"\n--- {name} / {label}: slice-by-slice (prompt on z={z}, box={prompt.box}) ---")
        print("   z source  score  iou_prev   area  true_area  true_dice  flags")
        for k in sorted(set(res.records) | set(per)):
            r = res.records.get(k)
            if r is None:
                print(f"{k:4d}   (not reached)                  {int(truth[k].sum()):7d}    {per.get(k, 1.0):6.3f}")
                continue
            ip = "   -  " if r.iou_prev is None else f"{r.iou_prev:6.3f}"
            print(f"{k:4d} {r.source[:6]:6s} {r.score:6.3f} {ip}  {r.area:7d} {int(truth[k].sum()):7d}    "
                  f"{per.get(k, 1.0):6.3f}   {','.join(sorted(r.flags)) or '-'}")
        for st in res.stops:
            print("  stop:", st.describe())
    print(f"{name:6s} {label:18s} 3D Dice {d3:.4f}  slices {len(res.records):4d}  encodes {res.encoder_calls:4d}  "
          f"{dt:6.1f} s  flagged {len(flagged):3d}  Dice<0.8: {len(bad)} "
          f"(kept {len(in_rec)}, flagged {sum(k in flagged for k in in_rec)}; "
          f"not reached {len(missed)}, next to a flagged end {len(pointed)})  stops {res.stop_reasons}")
    if not quiet:
        print(f"  flagged slices: {sorted(flagged)}")
        print(f"  slices with true Dice < 0.8: {bad}")
    return d3, res


def truth_stats(name, truth):
    zs = np.flatnonzero(truth.reshape(truth.shape[0], -1).any(1))
    ious, ratios = [], []
    for a, b in zip(zs[:-1], zs[1:]):
        if b != a + 1:
            continue
        ious.append(iou(truth[a], truth[b]))
        ra, rb = truth[a].sum(), truth[b].sum()
        ratios.append(max(ra, rb) / max(min(ra, rb), 1))
    ious, ratios = np.array(ious), np.array(ratios)
    inner = slice(3, len(ious) - 3) if len(ious) > 10 else slice(0, len(ious))
    print(f"{name:6s} true neighbour slices: IoU min {ious.min():.3f} (inner {ious[inner].min():.3f}), "
          f"median {np.median(ious):.3f}; area ratio max {ratios.max():.2f} (inner {ratios[inner].max():.2f}); "
          f"extent z={zs[0]}..{zs[-1]}")


def sweep(name, vol, truth, model):
    from napari_samlab.models.classic import ClassicModel

    base = PropagationSettings()
    grid = [("defaults", {})]
    grid += [(f"max_empty={v}", {"max_empty": v}) for v in (2, 3)]
    grid += [(f"stop_min_iou={v}", {"stop_min_iou": v}) for v in (0.0, 0.1, 0.3, 0.5)]
    grid += [(f"area_factor={v}", {"stop_area_factor": v}) for v in (2.0, 5.0, 1e9)]
    grid += [(f"box_margin={v}", {"box_margin": v}) for v in (0, 2, 10, 20)]
    grid += [(f"strategy={v}", {"strategy": v}) for v in ("box", "mask", "points", "box+points")]
    grid += [("no stop rules", {"stop_min_iou": 0.0, "stop_area_factor": 1e9, "max_empty": 10 ** 6})]
    grid += [("strategy=box+mask", {"strategy": "box+mask"})]
    for label, ch in grid:
        try:
            evaluate(name, vol, truth, model, base.with_(**ch), quiet=True, label=label)
        except Exception as exc:  # an engine bug must not hide the other rows
            print(f"{name:6s} {label:18s} failed: {type(exc).__name__}: {exc}")
    # the classic engine's own step ("track"): its parameters
    mgrid = [("track_tau", (0.1, 0.3)), ("track_reach", (0.15, 0.35)), ("track_prior", (1.5, 3.5)),
             ("track_prior_out", (2.5, 8.0)), ("track_evidence", (0.25, 0.5)), ("track_open", (0.3, 0.7)),
             ("track_min_fraction", (0.1,))]
    for key, values in mgrid:
        for v in values:
            try:
                evaluate(name, vol, truth, ClassicModel(**{key: v}), base, quiet=True, label=f"{key}={v}")
            except Exception as exc:
                print(f"{name:6s} {key}={v} failed: {type(exc).__name__}: {exc}")


def interp_eval(name, truth, steps):
    zs = np.flatnonzero(truth.reshape(truth.shape[0], -1).any(1))
    z0, z1 = int(zs[0]), int(zs[-1])
    methods = ["sdf", "aligned", "nearest"]
    import SimpleITK as sitk

    if hasattr(sitk, "MorphologicalContourInterpolator"):
        methods.append("morphological")
    else:
        print("(SimpleITK here has no MorphologicalContourInterpolator: morphological not measured)")
    for k in steps:
        ann = list(range(z0, z1 + 1, k))
        if ann[-1] != z1:
            ann.append(z1)
        between = [z for z in range(z0, z1 + 1) if z not in ann]
        row = []
        for m in methods:
            t0 = time.perf_counter()
            out = interpolate_slices(np.where(np.isin(np.arange(truth.shape[0]), ann)[:, None, None], truth, False), ann, m)
            dt = time.perf_counter() - t0
            d = dice(out[between], truth[between])
            row.append(f"{m} {d:.4f} ({dt:.1f} s)")
        print(f"{name:6s} every {k} slices ({len(ann)} drawn): Dice on the slices between: " + ", ".join(row))


def reach_beyond(mask: np.ndarray, truth: np.ndarray) -> int:
    """Slices of ``mask`` outside ``truth``'s z-extent (the farther end)."""
    zt = np.flatnonzero(truth.any((1, 2)))
    zm = np.flatnonzero(mask.any((1, 2)))
    if zm.size == 0 or zt.size == 0:
        return 0
    return int(max(zt[0] - zm[0], zm[-1] - zt[-1], 0))


def run_suite(kinds, match=None, model=None, no_spacing=False):
    """The robustness table (markdown) for the classic engine; returns rows."""
    import robustness_cases as rc
    from napari_samlab.models.classic import ClassicModel

    model = model or ClassicModel()
    rows = []
    print("| case | kind | slices | object z | 3D Dice | 2D Dice (box) | beyond (allowed) | flagged | time s | stops |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in rc.all_cases(tuple(kinds)):
        if match and match not in c.name:
            continue
        z, prompt = middle_prompt(c.truth)
        t0 = time.perf_counter()
        geometry = {} if no_spacing or c.spacing is None else {"spacing": c.spacing}
        res = propagate_from_prompt(SlicePredictor(model), c.volume, z, prompt, modality=c.modality, **geometry)
        dt = time.perf_counter() - t0
        d3 = dice(res.mask, c.truth)
        d2 = dice(res.mask[z], c.truth[z])
        boxed = np.zeros_like(c.truth[z])
        x0, y0, x1, y1 = prompt.box
        boxed[y0:y1 + 1, x0:x1 + 1] = True
        d2_box = dice(boxed, c.truth[z])
        zs = np.flatnonzero(c.truth.any((1, 2)))
        ext = int(zs[-1] - zs[0] + 1)
        beyond = reach_beyond(res.mask, c.truth)
        allowed = 2 + 0.1 * ext
        ok = "" if beyond <= allowed else " **over**"
        stops = ",".join(sorted({st.reason for st in res.stops}))
        print(f"| {c.name} | {c.kind} | {c.volume.shape[0]} | {zs[0]}..{zs[-1]} | {d3:.3f} | {d2:.3f} ({d2_box:.3f}) "
              f"| {beyond} ({allowed:.1f}){ok} "
              f"| {len(res.flagged_slices())} | {dt:.2f} | {stops} |", flush=True)
        rows.append(dict(name=c.name, kind=c.kind, group=c.group or c.name, dice=d3, dice2d=d2, box2d=d2_box, beyond=beyond, allowed=allowed, time=dt,
                         slices=len(res.records)))
    clean = {r["name"]: r["dice"] for r in rows if r["kind"] in ("real", "public")}
    losses = []
    for r in rows:
        if r["kind"] == "perturbed":
            base = r["name"].split(" [")[0]
            if base in clean:
                losses.append((r["name"], clean[base] - r["dice"]))
    if rows:
        ds = np.array([r["dice"] for r in rows])
        over = [r["name"] for r in rows if r["beyond"] > r["allowed"]]
        print(f"\nmean 3D Dice {ds.mean():.3f}, min {ds.min():.3f}; beyond the allowance: {over or 'none'}")
        for kind in sorted({r["kind"] for r in rows}):
            kr = [r for r in rows if r["kind"] == kind]
            dk = np.array([r["dice"] for r in kr])
            below = sum(r["dice2d"] < r["box2d"] + 0.03 for r in kr)
            print(f"  {kind}: {len(kr)} cases, mean 3D Dice {dk.mean():.3f}, min {dk.min():.3f}, below 0.40: "
                  f"{int((dk < 0.40).sum())}, beyond the allowance: {sum(r['beyond'] > r['allowed'] for r in kr)}, "
                  f"2D below box + 0.03: {below}")
        # issue 11's 2D check is per kind of data: the group's mean against its boxes' mean
        groups = {r["group"] for r in rows if r["group"] != r["name"]}
        for grp in sorted(groups):
            gr = [r for r in rows if r["group"] == grp]
            d2, db = np.mean([r["dice2d"] for r in gr]), np.mean([r["box2d"] for r in gr])
            print(f"  2D, {grp} ({len(gr)} cases): engine {d2:.3f}, box {db:.3f} "
                  f"({d2 - db:+.3f}, needs +0.03: {'ok' if d2 >= db + 0.03 else 'BELOW'})")
    if losses:
        worst = max(losses, key=lambda x: x[1])
        print(f"largest loss to a perturbation: {worst[0]} {worst[1]:+.3f} (allowed 0.10); "
              f"over 0.10: {[n for n, l in losses if l > 0.10] or 'none'}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--only", default="brain,lung")
    ap.add_argument("--quiet", action="store_true", help="no per-slice tables")
    ap.add_argument("--sweep", action="store_true", help="classic Dice for other stop settings")
    ap.add_argument("--interp", action="store_true", help="measure slice interpolation methods")
    ap.add_argument("--no-classic", action="store_true")
    ap.add_argument("--suite", action="store_true", help="the robustness suite (robustness_cases.py)")
    ap.add_argument("--kinds", default="real,perturbed,synthetic,public", help="suite: which kinds of case")
    ap.add_argument("--no-spacing", action="store_true", help="suite: propagate as if every volume were isotropic")
    ap.add_argument("--match", default=None, help="suite: only cases whose name contains this")
    args = ap.parse_args(argv)
    if args.suite:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        run_suite([k.strip() for k in args.kinds.split(",") if k.strip()], args.match, no_spacing=args.no_spacing)
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    cm = None if args.no_classic else classic_model()
    summary = []
    for name in names:
        vol, truth, target = load(name, args.data)
        truth_stats(name, truth)
        d, _ = evaluate(name, vol, truth, OracleModel(vol, truth), quiet=args.quiet, label="oracle")
        summary.append((name, "oracle", d, 0.97))
        if cm is not None:
            d, _ = evaluate(name, vol, truth, cm, quiet=args.quiet, label="classic")
            summary.append((name, "classic", d, target))
            if args.sweep:
                sweep(name, vol, truth, cm)
        if args.interp:
            interp_eval(name, truth, (2, 4, 8) if name == "brain" else (2, 3))
    print("\nsummary (one box on the middle slice):")
    ok = True
    for name, eng, d, tgt in summary:
        passed = d >= tgt
        ok &= passed
        print(f"  {name:6s} {eng:8s} 3D Dice {d:.4f}  target {tgt:.2f}  {'ok' if passed else 'BELOW TARGET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
