"""Image-encoder speed on this machine: accelerated backends against upstream PyTorch fp32.

Every row is measured in the same run as the upstream row of its model,
interleaved (upstream, backend 1, backend 2, ..., upstream, backend 1, ...)
so that load from other processes hits all of them alike; the table gives
medians.  "upstream" is what the families' own inference code does:
``with torch.no_grad(): image_encoder(x)`` in fp32 with PyTorch's default
threads.

Models (random weights: speed does not depend on them):

* ``vitb1024``  SAM / MedSAM ViT-B at 1024 px, input = MedSAM-preprocessed H&E image
* ``samed512``  SAMed ViT-B at 512 px, input = a lung2 CT slice (SAMed windowing)
* ``lite256``   LiteMedSAM TinyViT at 256 px, input = the H&E image resized

Columns: seconds per slice (median), speed-up against upstream (upstream
time / backend time, from the same repeats), GFLOP per slice (PyTorch's FLOP
counter, matrix products and convolutions), the fraction of the CPU's peak
FLOP/s reached, peak resident memory while encoding (process ``VmHWM``, reset
before each call) and the transient memory one call adds, the agreement of
the embedding with upstream (cosine, max relative error) and of the masks a
SAM decoder (random weights, same for both) produces from it for a few boxes
(mean IoU).

Usage::

    python benchmarks/bench_encoder.py                      # all models, ~8 min on 2 cores
    python benchmarks/bench_encoder.py --models vitb1024 --repeats 3
    python benchmarks/bench_encoder.py --backends torch openvino --cache-dir /tmp/enc

Exports are cached (``--cache-dir``, default the plugin's encoder cache), so
only the first run pays for them; their time is printed separately.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_samlab.models import accel  # noqa: E402

DATA = Path(os.environ.get("SAMLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
ASSUMED_PEAK_TFLOPS = 0.19  # 2 cores x 2 AVX2 FMA units x 8 fp32 lanes x 2 flop x ~3 GHz


# ----------------------------------------------------------------------
# machine
def measure_peak_gflops(threads: int, n: int = 3072, repeats: int = 5) -> float:
    """Best float32 GEMM rate PyTorch reaches here (GFLOP/s): a practical peak."""
    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
    except (OSError, AttributeError):
        return set()


def _status_kb(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed_call(f, x):
    """Run ``f(x)``: (seconds, output, peak RSS MB during the call, RSS MB before)."""
    before = _status_kb("VmRSS")
    reset_peak_rss()
    t = time.perf_counter()
    out = f(x)
    dt = time.perf_counter() - t
    peak = _status_kb("VmHWM")
    return dt, out, peak / 1024, before / 1024


# ----------------------------------------------------------------------
# models and inputs
def vit_b(img_size: int, seed: int = 0):
    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(seed)
    return ImageEncoderViT(
        depth=12, embed_dim=768, img_size=img_size, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=12, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=(2, 5, 8, 11),
        window_size=14, out_chans=256,
    ).eval()


def tinyvit_256(seed: int = 0):
    from napari_samlab.models.litemedsam import LITEMEDSAM_TINYVIT
    from napari_samlab.models.tinyvit import TinyViT

    torch.manual_seed(seed)
    return TinyViT(**LITEMEDSAM_TINYVIT).eval()  # eval() after the weights: TinyViT caches biases there


def he_image() -> np.ndarray:
    from skimage import io

    img = io.imread(DATA / "histology_he" / "he_histo.jpg")
    return img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, -1)


def medsam_input(img: np.ndarray, size: int) -> torch.Tensor:
    """MedSAM_Inference.py: resize (order 3, anti-aliased) to size², uint8, min-max to [0, 1]."""
    from skimage import transform

    r = transform.resize(img, (size, size), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    r = (r - r.min()) / np.clip(r.max() - r.min(), 1e-8, None)
    return torch.tensor(r, dtype=torch.float32).permute(2, 0, 1)[None].contiguous()


def ct_input(size: int) -> torch.Tensor:
    """A lung2 CT slice, SAMed windowing (HU [-125, 275] to [0, 1]), zoomed to size², 3 channels."""
    import SimpleITK as sitk
    from scipy.ndimage import zoom

    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "ct_chest_lung2" / "lung2_image.nrrd")))
    sl = vol[vol.shape[0] // 2].astype(np.float32)
    sl = (np.clip(sl, -125, 275) + 125) / 400
    sl = zoom(sl, (size / sl.shape[0], size / sl.shape[1]), order=3).astype(np.float32)
    return torch.from_numpy(sl)[None, None].repeat(1, 3, 1, 1).contiguous()


MODELS = {
    "vitb1024": dict(label="SAM/MedSAM ViT-B 1024", build=lambda: vit_b(1024), size=1024,
                     image=lambda: medsam_input(he_image(), 1024)),
    "samed512": dict(label="SAMed ViT-B 512", build=lambda: vit_b(512), size=512, image=lambda: ct_input(512)),
    "lite256": dict(label="LiteMedSAM TinyViT 256", build=tinyvit_256, size=256,
                    image=lambda: medsam_input(he_image(), 256)),
}


def count_gflop(encoder, x) -> float:
    """Matrix FLOPs of one forward (PyTorch's FlopCounterMode), on the meta device when possible."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        m = copy.deepcopy(encoder).to("meta")
        with counter, torch.no_grad():
            m(torch.empty(x.shape, device="meta"))
    except Exception:  # noqa: BLE001 - some modules keep CPU tensors outside their buffers
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            encoder(x)
    return counter.get_total_flops() / 1e9


# ----------------------------------------------------------------------
# agreement
def make_decoder(img_size: int, grid: int, seed: int = 0):
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    torch.manual_seed(seed)
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size),
                       mask_in_chans=16).eval()
    md = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                     num_heads=8), transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256).eval()
    return pe, md


def boxes_for(size: int):
    s = size
    return [(0.1 * s, 0.1 * s, 0.45 * s, 0.5 * s), (0.4 * s, 0.3 * s, 0.9 * s, 0.8 * s),
            (0.2 * s, 0.55 * s, 0.5 * s, 0.95 * s), (0.05 * s, 0.05 * s, 0.95 * s, 0.95 * s)]


def masks_from(emb: torch.Tensor, dec, size: int) -> list:
    """MedSAM-style decode: box prompt, single mask, logits > 0 (= sigmoid > 0.5) at 256²."""
    pe, md = dec
    out = []
    with torch.inference_mode():
        for box in boxes_for(size):
            sparse, dense = pe(points=None, boxes=torch.tensor([box], dtype=torch.float32), masks=None)
            low, _ = md(image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                        dense_prompt_embeddings=dense, multimask_output=False)
            out.append((low[0, 0] > 0).numpy())
    return out


def iou(a, b) -> float:
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().ravel(), b.double().ravel()
    return float(a @ b / (a.norm() * b.norm()))


# ----------------------------------------------------------------------
def bench_model(name: str, backends: list, repeats: int, cache_dir: Path, threads: int, peak_gflops: float) -> list:
    spec = MODELS[name]
    enc = spec["build"]()
    x = spec["image"]()
    shape = tuple(x.shape)
    gflop = count_gflop(enc, x)
    print(f"\n[{spec['label']}] {gflop:.0f} GFLOP/slice; building backends ...", flush=True)

    def upstream(inp):
        # the families' own code: no_grad, fp32, PyTorch's default threads
        with torch.no_grad():
            return enc(inp)

    default_threads = torch.get_num_threads()
    runners = {"upstream": upstream}
    info = {"upstream": dict(exact=True, export="")}
    for b in backends:
        if not accel.backend_available(b):
            print(f"  {b}: not installed, skipped")
            continue
        t = time.perf_counter()
        try:
            f = accel.accelerated_encoder(enc, shape, backend=b, cache_dir=cache_dir, weights_key=f"bench-{name}",
                                          threads=threads, verify=False)
        except Exception as err:  # noqa: BLE001 - report and go on
            print(f"  {b}: failed: {type(err).__name__}: {str(err)[:200]}")
            continue
        took = time.perf_counter() - t
        runners[b] = f
        info[b] = dict(exact=f.exact, export="" if f.cache_path is None else
                       f"{took:.0f}s" + (" (export)" if f.exported else " (cached)"))
        how = " (exported)" if f.exported else (" (from cache)" if f.cache_path else "")
        print(f"  {b}: ready in {took:.1f} s{how}", flush=True)

    # one warm-up each (first-call allocations, OpenVINO/ORT lazy init)
    for k, f in runners.items():
        torch.set_num_threads(default_threads)
        f(x)
    times = {k: [] for k in runners}
    peaks = {k: [] for k in runners}
    deltas = {k: [] for k in runners}
    outs = {}
    for r in range(repeats):
        for k, f in runners.items():
            torch.set_num_threads(default_threads)  # upstream runs with the default, backends set their own
            dt, out, peak, before = timed_call(f, x)
            times[k].append(dt)
            peaks[k].append(peak)
            deltas[k].append(peak - before)
            outs[k] = out
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {times[k][-1]:.2f}s" for k in runners), flush=True)

    grid = outs["upstream"].shape[-1]
    dec = make_decoder(spec["size"], grid)
    ref_masks = masks_from(outs["upstream"], dec, spec["size"])
    fg = float(np.mean([m.mean() for m in ref_masks]))
    rows = []
    for k in runners:
        med = float(np.median(times[k]))
        ratio = float(np.median(np.array(times["upstream"]) / np.array(times[k])))
        ref = outs["upstream"]
        rel = float((outs[k] - ref).abs().max() / ref.abs().max())
        masks = masks_from(outs[k], dec, spec["size"])
        rows.append(dict(
            model=spec["label"], backend=k, exact="yes" if info[k]["exact"] else "no", s=med, ratio=ratio,
            gflop=gflop, peak_frac=gflop / med / peak_gflops, rss=max(peaks[k]), delta=max(deltas[k]),
            cos=cosine(outs[k], ref), rel=rel, iou=float(np.mean([iou(a, b) for a, b in zip(masks, ref_masks)])),
            fg=fg, export=info[k]["export"], n=len(times[k]),
        ))
    del runners, outs
    return rows


def rss_child(name: str, backend: str, cache_dir: str, threads: int) -> None:
    """Subprocess body: build one model, load one backend (from the cache), encode once, print peak RSS MB."""
    spec = MODELS[name]
    enc = spec["build"]()
    x = spec["image"]()
    if backend == "upstream":
        def f(inp):
            with torch.no_grad():
                return enc(inp)
    else:
        f = accel.accelerated_encoder(enc, tuple(x.shape), backend=backend, cache_dir=cache_dir,
                                      weights_key=f"bench-{name}", threads=threads, verify=False)
    f(x)
    print(f"RSS_PEAK_MB {_status_kb('VmHWM') / 1024:.0f}")


def isolated_rss(name: str, backends: list, cache_dir: Path, threads: int) -> dict:
    """Peak RSS of a fresh process that loads the model and one backend and encodes one slice."""
    import subprocess

    out = {}
    for b in backends:
        cmd = [sys.executable, __file__, "--rss-child", name, b, str(cache_dir), str(threads)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        m = re.search(r"RSS_PEAK_MB (\d+)", res.stdout)
        out[b] = float(m.group(1)) if m else float("nan")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino", "openvino-int8"],
                   help="also: onnxruntime-int8")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats at 1024 (more for smaller models)")
    p.add_argument("--cache-dir", default=None, help="export cache (default: the plugin's encoder cache)")
    p.add_argument("--threads", type=int, default=None, help="backend threads (default: physical cores)")
    p.add_argument("--isolated-rss", action="store_true",
                   help="also measure each backend's peak RSS in a fresh process (ViT-B 1024 only; ~3 min)")
    p.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        name, b, cdir, th = args.rss_child
        rss_child(name, b, cdir, int(th))
        return 0

    threads = args.threads or accel.physical_cores()
    cache_dir = Path(args.cache_dir) if args.cache_dir else accel.default_cache_dir()
    flags = cpu_flags()
    measured = measure_peak_gflops(threads)
    peak = max(measured, ASSUMED_PEAK_TFLOPS * 1000)
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16") if f in flags]
    print(f"CPU: {physical_cores_text(threads)}; SIMD: {' '.join(simd) or '?'}; "
          f"torch {torch.__version__}, default threads {torch.get_num_threads()}")
    print(f"peak: fp32 GEMM measured {measured:.0f} GFLOP/s, assumed {ASSUMED_PEAK_TFLOPS * 1000:.0f} GFLOP/s; "
          f"'% peak' uses the larger ({peak:.0f})")
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        print("bf16: no native bf16 arithmetic on this CPU (no avx512_bf16/amx): bf16 would be emulated, not benchmarked")

    rows = []
    for name in args.models:
        rep = args.repeats if name == "vitb1024" else max(args.repeats, 5)
        model_rows = bench_model(name, args.backends, rep, cache_dir, threads, peak)
        if args.isolated_rss and name == "vitb1024":
            iso = isolated_rss(name, [r["backend"] for r in model_rows], cache_dir, threads)
            for r in model_rows:
                r["iso"] = iso.get(r["backend"], float("nan"))
        rows += model_rows
    print_table(rows)
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwhole-run peak RSS (getrusage, all backends loaded at once): {ru:.0f} MB; "
          "one ViT-B embedding (1, 256, 64, 64) fp32 = 4 MB")
    return 0


def physical_cores_text(threads: int) -> str:
    return f"{accel.physical_cores()} physical cores, backends use {threads} threads"


def print_table(rows: list) -> None:
    head = ("model", "backend", "exact", "s/slice", "speed-up", "GFLOP", "% peak", "alone RSS MB", "+RSS MB",
            "cosine", "max rel err", "mask IoU", "build")
    lines = [head]
    for r in rows:
        lines.append((r["model"], r["backend"], r["exact"], f"{r['s']:.3f}", f"{r['ratio']:.2f}x", f"{r['gflop']:.0f}",
                      f"{100 * r['peak_frac']:.0f}%", f"{r['iso']:.0f}" if "iso" in r else "-", f"{r['delta']:.0f}",
                      f"{r['cos']:.6f}",
                      f"{r['rel']:.1e}", f"{r['iou']:.4f}", r["export"]))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    print("\nmedians of interleaved repeats; speed-up = median over repeats of upstream time / backend time; "
          "alone RSS = peak RSS of a fresh process holding only that backend (--isolated-rss); "
          "+RSS = memory one call adds over the resident set before it")
    for j, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    fgs = {r["model"]: r["fg"] for r in rows}
    print("mask IoU: 4 boxes through a random-weight SAM decoder, logits > 0; foreground fraction of the upstream masks: "
          + ", ".join(f"{k} {v:.2f}" for k, v in fgs.items()))


if __name__ == "__main__":
    raise SystemExit(main())
