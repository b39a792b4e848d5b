"""The speed benchmark: one table, every fast path against its upstream path in the same run.

One run prints one table in five sections; every row is measured in this
run next to the upstream-style PyTorch fp32 path it replaces (the families'
own inference code as reproduced in the faithfulness tests), so load from
other processes hits both alike:

1. **encoder**: seconds per slice of each image encoder, upstream
   (``with torch.no_grad(): image_encoder(x)`` in fp32 with PyTorch's default
   threads) and each backend of ``models/accel.py``, interleaved (upstream,
   backend 1, backend 2, ..., upstream, ...), medians.  Models (random
   weights: speed does not depend on them):

   * ``vitb1024``  SAM / MedSAM ViT-B at 1024 px, input = MedSAM-preprocessed H&E image
   * ``samed512``  SAMed ViT-B at 512 px, input = a lung2 CT slice (SAMed windowing)
   * ``lite256``   LiteMedSAM TinyViT at 256 px, input = the H&E image resized

   with GFLOP per slice (PyTorch's FLOP counter), the fraction of the CPU's
   peak FLOP/s reached, peak resident memory while encoding (``VmHWM``, reset
   before each call) and what one call adds, and the agreement with upstream:
   cosine and max relative error of the embedding, and mean IoU of the masks
   a SAM decoder (random weights, same for both) makes from it for 4 boxes.
2. **decoder**: milliseconds per prompt, segment_anything's ``SamPredictor``
   against our default exact decode path (and the opt-in reassociated one),
   timed alternately by ``bench_predictor.py`` (imported, not copied).
3. **propagation**: wall time of a whole ``propagate_from_prompt`` run from
   one box on the middle slice, through the lung2 tumour (11 slices, 512² CT)
   with MedSAM ViT-B 1024, and through the Colin27 brain (152 slices, 217×181
   MRI) with LiteMedSAM (``--brain-model vitb`` for ViT-B 1024: ~1 h).  The
   models come from ``load_model`` on full-size random checkpoints
   (``tests/checkpoint_factory.py``); :class:`OracleAnsweredModel` runs their
   real windowing, encoder and decoder but answers with the true mask, so
   both paths visit exactly the same slices.  Rows: upstream
   (``encoder_backend="torch"`` and segment_anything's own prompt encoder +
   mask decoder modules) and the fast default (``"auto"`` encoder, lean exact
   decoder), each in a fresh process (peak RSS = that process's ``VmHWM``,
   reset just before the run; the accelerated encoder is loaded, or exported,
   before the clock starts: "ready" in the notes).
4. **gpu**: when CUDA is available, the same encoders on the GPU: upstream
   fp32, the plugin's default (``run_encoder`` with ``"auto"``: fp32) and
   the approximate ``"torch-autocast"`` (fp16), with the mask IoU against
   fp32 and the fraction of the GPU's measured GEMM peak.  Otherwise the line
   ``GPU: none present``.
5. an **approximate modes** line: the mask IoU against fp32 of every opt-in
   approximate backend measured (int8 exports, ``torch-autocast``; its CPU
   form is bf16, emulated without avx512_bf16/amx and slow: only with
   ``--include-bf16``).

Usage::

    python benchmarks/bench_encoder.py            # everything: ~20 min on a quiet 2-core CPU, exports cached
    python benchmarks/bench_encoder.py --quick    # smoke run: LiteMedSAM, lung only, 2 repeats (~3 min)
    python benchmarks/bench_encoder.py --sections propagation --datasets lung
    python benchmarks/bench_encoder.py --models vitb1024 --repeats 3 --brain-model vitb
    python benchmarks/bench_encoder.py --backends torch openvino --cache-dir /tmp/enc
    python benchmarks/bench_encoder.py --sections encoder --models lite256 --include-bf16

Exports are cached (``--cache-dir``, default the plugin's encoder cache; the
propagation rows use the plugin's cache as ``load_model`` does), so only the
first run pays for them (about 40 s per backend for ViT-B 1024, 3.5 min for
all default backends of the three models); their time is printed
separately ("build", "ready").

Run time: the default run took 43 min on this project's 2-core AVX2 CPU
while other jobs held about half of it (upstream ViT-B 1024 at 28 s/slice
instead of 15 s quiet), first-run exports included: encoder section 19 min,
decoder 0.5 min, lung propagation 11 min, brain propagation 16 min; on a
quiet machine with exports cached that is about 8 + 0.5 + 5.5 + 5.5 min.
``--include-bf16`` is very slow without native bf16 (LiteMedSAM: 79 s/slice
against 5.6 s fp32 on the same loaded machine): use it with ``--models
lite256``.  The encoder rows run every backend of a model in one process, so
their "peak mem" is that process (ONNX Runtime and OpenVINO keep their
buffers: 12-18 GB for ViT-B 1024); "+RSS" is what one call adds, and
``--isolated-rss`` measures each backend alone in a fresh process.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import hashlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench_predictor, eval_propagation

from napari_samlab.models import accel  # noqa: E402
from napari_samlab.models.base import SegmentationModel  # noqa: E402

DATA = Path(os.environ.get("SAMLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
ASSUMED_PEAK_TFLOPS = 0.19  # 2 cores x 2 AVX2 FMA units x 8 fp32 lanes x 2 flop x ~3 GHz
SECTIONS = ("encoder", "decoder", "propagation", "gpu")
AUTOCAST = "torch-autocast"  # accel's opt-in lower-precision PyTorch backend (CUDA fp16, CPU bf16)


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


def known_backend(name: str) -> bool:
    """Whether this version of accel knows the backend (torch-autocast is newer than the others)."""
    return name == "torch" or name in accel.EXACT_BACKENDS + accel.APPROX_BACKENDS


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
    from skimage import io as skio

    img = skio.imread(DATA / "histology_he" / "he_histo.jpg")
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
    emb = emb.detach().float().cpu()
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
    a, b = a.detach().cpu().double().ravel(), b.detach().cpu().double().ravel()
    return float(a @ b / (a.norm() * b.norm()))


def agreement(out: torch.Tensor, ref: torch.Tensor, dec, size: int, ref_masks: list) -> dict:
    """Cosine, max relative error and mean mask IoU of ``out`` against the upstream output ``ref``."""
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    masks = masks_from(out, dec, size)
    return dict(cos=cosine(out, ref), rel=float((out - ref).abs().max() / ref.abs().max()),
                iou=float(np.mean([iou(a, b) for a, b in zip(masks, ref_masks)])))


# ----------------------------------------------------------------------
# section 1: CPU encoders
def bench_model(name: str, backends: list, repeats: int, cache_dir: Path, threads: int, peak_gflops: float) -> list:
    spec = MODELS[name]
    enc = spec["build"]()
    x = spec["image"]()
    shape = tuple(x.shape)
    gflop = count_gflop(enc, x)
    print(f"\n[encoder: {spec['label']}] {gflop:.0f} GFLOP/slice; building backends ...", flush=True)

    def upstream(inp):
        # the families' own code: no_grad, fp32, PyTorch's default threads
        with torch.no_grad():
            return enc(inp)

    default_threads = torch.get_num_threads()
    runners = {"upstream": upstream}
    info = {"upstream": dict(exact=True, export="")}
    for b in backends:
        if not known_backend(b):
            print(f"  {b}: not a backend of this version of models/accel.py, skipped")
            continue
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
    torch.set_num_threads(default_threads)

    ref = outs["upstream"]
    dec = make_decoder(spec["size"], ref.shape[-1])
    ref_masks = masks_from(ref, dec, spec["size"])
    fg = float(np.mean([m.mean() for m in ref_masks]))
    rows = []
    for k in runners:
        med = float(np.median(times[k]))
        ratio = float(np.median(np.array(times["upstream"]) / np.array(times[k])))
        rows.append(dict(
            section="encoder", model=spec["label"], path=k, exact="yes" if info[k]["exact"] else "no",
            time=f"{med:.3f} s/slice", ratio=ratio, gflop=gflop, peak_frac=gflop / med / peak_gflops,
            rss=max(peaks[k]), delta=max(deltas[k]), fg=fg, notes=(f"build {info[k]['export']}" if info[k]["export"]
                                                                   else ""),
            **agreement(outs[k], ref, dec, spec["size"], ref_masks),
        ))
    del runners, outs
    gc.collect()
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
    out = {}
    for b in backends:
        cmd = [sys.executable, __file__, "--rss-child", name, b, str(cache_dir), str(threads)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        m = re.search(r"RSS_PEAK_MB (\d+)", res.stdout)
        out[b] = float(m.group(1)) if m else float("nan")
    return out


# ----------------------------------------------------------------------
# section 2: decoder
def decoder_rows(repeats: int) -> tuple:
    """bench_predictor.py's paired SamPredictor-vs-ours decode timings as table rows (its printout is kept quiet)."""
    import bench_predictor

    print(f"\n[decoder] SamPredictor vs SlicePredictor, {repeats} alternating repeats ...", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        pairs, cached_ms, disk_ms = bench_predictor.main(["--repeats", str(repeats)])
    rows = []
    for case, ref_ms, ours_ms in pairs:
        opt_in = "reassociated" in case
        common = dict(section="decoder", model="SAM decoder (full size), 512² slice")
        rows.append(dict(common, path="upstream SamPredictor", exact="yes", time=f"{ref_ms:.1f} ms/prompt",
                         ratio=1.0, notes=case))
        rows.append(dict(common, path="ours, reassociated (opt-in)" if opt_in else "ours (default)",
                         exact="no" if opt_in else "yes", time=f"{ours_ms:.1f} ms/prompt", ratio=ref_ms / ours_ms,
                         notes=case))
    return rows, cached_ms, disk_ms


# ----------------------------------------------------------------------
# section 3: propagation
class OracleAnsweredModel(SegmentationModel):
    """A real MedSAM / LiteMedSAM model that answers with the true mask (benchmark only).

    With random weights a real model's masks are noise, so propagation would
    stop after the first slice and the wall time would mean nothing.  This
    wrapper keeps all of the real model's work and takes only the *answer*
    from :class:`napari_samlab.propagate.oracle.OracleModel`:

    * ``encode`` windows the raw slice with the real family's auto window
      (resolved once on the whole volume, as ``propagate_volume`` does), runs
      the real ``encode`` on it (resizing, normalisation and the image
      encoder on the backend under test) and adds the oracle's look-up of
      the slice (a hash and a connected-component labelling: milliseconds);
    * ``decode`` runs the real ``decode`` on the real embedding (its time is
      spent, its mask discarded) and returns the oracle's answer to the same
      prompt.

    So the upstream and the fast path visit exactly the same slices with the
    same prompts and differ only in the model's own work.  ``auto_window``
    returns None because the oracle finds a slice by its raw values; the
    windowing is applied in ``encode`` instead, at the same cost.

    Parameters
    ----------
    model : SegmentationModel
        A real prompt family from ``load_model`` (box prompts).
    oracle : OracleModel
        Built on the same volume.
    volume : ndarray (Z, Y, X)
        The raw volume, for the family's auto window.

    Attributes
    ----------
    encode_s, decode_s : float
        Time spent in the real model's encode and decode.
    decodes : int
        Number of decodes.

    Examples
    --------
    >>> m = OracleAnsweredModel(load_model(ckpt, "medsam"), OracleModel(vol, truth), vol)   # doctest: +SKIP
    >>> res = propagate_from_prompt(SlicePredictor(m), vol, z, Prompt(box=box))             # doctest: +SKIP
    """

    needs_prompt = True

    def __init__(self, model: SegmentationModel, oracle, volume: np.ndarray):
        self.inner, self.oracle = model, oracle
        self.family = model.family  # the family's propagation strategy (box for MedSAM/LiteMedSAM)
        self.supports_points, self.supports_boxes = model.supports_points, model.supports_boxes
        self.supports_mask_input = model.supports_mask_input
        self.image_size, self.device, self.encoder_backend = model.image_size, model.device, model.encoder_backend
        self.window = model.auto_window(volume)
        self.encode_s = self.decode_s = 0.0
        self.decodes = 0

    def fingerprint(self) -> str:
        return f"{self.inner.fingerprint()}+{self.oracle.fingerprint()}"

    def auto_window(self, image, modality=None):
        return None  # see the class docstring: encode windows the slice itself

    def real_encode(self, image: np.ndarray) -> dict:
        from napari_samlab.base.windowing import apply_window

        return self.inner.encode(apply_window(image, self.window))

    def encode(self, image: np.ndarray) -> dict:
        t = time.perf_counter()
        emb = self.real_encode(image)
        self.encode_s += time.perf_counter() - t
        look = self.oracle.encode(image)
        return {**emb, "oracle_labels": look["labels"]}

    def decode(self, embedding: dict, prompt):
        t = time.perf_counter()
        self.inner.decode(embedding, prompt)
        self.decode_s += time.perf_counter() - t
        self.decodes += 1
        return self.oracle.decode({"labels": embedding["oracle_labels"]}, prompt)


#: models of the propagation rows: full-size random checkpoints in the upstream layouts
PROP_MODELS = {
    "vitb": dict(label="MedSAM ViT-B 1024", family="medsam", size=1024),
    "lite": dict(label="LiteMedSAM TinyViT 256", family="litemedsam", size=256),
}


def write_checkpoint(kind: str, folder: Path) -> Path:
    """Full-size random weights of ``kind`` saved as the upstream release files are (checkpoint_factory)."""
    sys.path.insert(0, str(REPO / "tests"))
    import checkpoint_factory as cf

    path = folder / f"{kind}.pth"
    if not path.exists():
        sd = cf.sam_state_dict(cf.VIT_B) if kind == "vitb" else cf.litemedsam_state_dict(tcfg=None)
        cf.save(sd, path)
        del sd
        gc.collect()
    return path


def prop_child(dataset: str, kind: str, backend: str, ckpt: str, data: str) -> dict:
    """Subprocess body: one propagation run with one model and encoder path; returns what the row needs."""
    from eval_propagation import load, middle_prompt

    from napari_samlab import load_model
    from napari_samlab.predict.predictor import SlicePredictor
    from napari_samlab.propagate import propagate_from_prompt
    from napari_samlab.propagate.oracle import OracleModel

    vol, truth, _ = load(dataset, Path(data))
    spec = PROP_MODELS[kind]
    model = load_model(ckpt, family=spec["family"], encoder_backend=backend)
    if backend == "torch":
        model._fast = None  # upstream: segment_anything's own prompt encoder + mask decoder modules
    wrapped = OracleAnsweredModel(model, OracleModel(vol, truth), vol)
    z, prompt = middle_prompt(truth)
    # not timed: load (or export) the accelerated encoder, first-call allocations
    t = time.perf_counter()
    wrapped.real_encode(vol[z])
    ready = time.perf_counter() - t
    acc = getattr(model, "_accelerated", None)
    used = getattr(model, "last_encoder_backend", None) or (acc.backend if acc is not None else "torch")
    gflop = count_gflop(model.net.image_encoder, torch.empty(1, 3, spec["size"], spec["size"]))
    gc.collect()
    before = _status_kb("VmRSS")
    reset_peak_rss()
    t0 = time.perf_counter()
    res = propagate_from_prompt(SlicePredictor(wrapped), vol, z, prompt)
    wall = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    from napari_samlab.propagate import dice

    return dict(wall=wall, encodes=res.encoder_calls, slices=sorted(res.records), decodes=wrapped.decodes,
                encode_s=wrapped.encode_s, decode_s=wrapped.decode_s, ready=ready, gflop=gflop,
                backend=used, rss=peak / 1024, before=before / 1024,
                dice=dice(res.mask, truth), mask_sha=hashlib.sha1(np.packbits(res.mask).tobytes()).hexdigest(),
                shape=list(vol.shape), z=z)


def propagation_rows(datasets: list, models: dict, peak_gflops: float, data: Path) -> list:
    """Upstream and fast-default propagation runs per dataset, each in a fresh process."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="samlab-bench-") as tmp:
        for ds in datasets:
            kind = models[ds]
            spec = PROP_MODELS[kind]
            ckpt = write_checkpoint(kind, Path(tmp))
            print(f"\n[propagation: {ds}, {spec['label']}]", flush=True)
            got = {}
            for path, backend in (("upstream", "torch"), ("fast default", "auto")):
                cmd = [sys.executable, __file__, "--prop-child", ds, kind, backend, str(ckpt), str(data)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                m = re.search(r"^PROP_RESULT (.*)$", proc.stdout, re.M)
                if proc.returncode or m is None:
                    print(f"  {path}: failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
                    continue
                r = got[path] = json.loads(m.group(1))
                print(f"  {path}: {r['wall']:.1f} s, {r['encodes']} slices encoded (encoder {r['backend']}, "
                      f"ready in {r['ready']:.1f} s)", flush=True)
            same = len(got) == 2 and len({(tuple(r["slices"]), r["mask_sha"]) for r in got.values()}) == 1
            for path, r in got.items():
                ref = got.get("upstream")
                n = max(r["encodes"], 1)
                rows.append(dict(
                    section="propagation", model=f"{ds}: {spec['label']}", path=f"{path} ({r['backend']})",
                    exact="yes", time=f"{r['wall']:.1f} s run", slices=f"{r['encodes']} x {r['wall'] / n:.2f} s",
                    ratio=ref["wall"] / r["wall"] if ref else float("nan"), gflop=r["gflop"],
                    peak_frac=r["gflop"] * r["encodes"] / r["wall"] / peak_gflops, rss=r["rss"],
                    delta=r["rss"] - r["before"],
                    notes=f"encode {r['encode_s'] / n:.2f} s + decode {1000 * r['decode_s'] / max(r['decodes'], 1):.0f}"
                          f" ms x {r['decodes']}; ready {r['ready']:.0f} s; 3D Dice {r['dice']:.3f}"
                          + ("" if len(got) < 2 else "; same slices+masks" if same else "; DIFFERENT slices/masks"),
                ))
    return rows


# ----------------------------------------------------------------------
# section 4: GPU
class EncoderHarness(SegmentationModel):
    """The plugin's encoder switch (``SegmentationModel.run_encoder``) around a bare encoder module.

    Every family calls ``run_encoder`` for its image encoder; this harness
    lets the benchmark call it on the same random-weight encoders as the
    other rows, with a chosen backend and device.
    """

    family = "bench"

    def __init__(self, backend: str, device: str, key: str):
        self.encoder_backend, self.device, self._key = backend, device, key

    def fingerprint(self) -> str:
        return self._key

    def encode(self, image):
        raise NotImplementedError("benchmark harness: only run_encoder is used")

    def decode(self, embedding, prompt):
        raise NotImplementedError("benchmark harness: only run_encoder is used")


def measure_gpu_peak_tflops(dtype, n: int = 8192, repeats: int = 5) -> float:
    """Best GEMM rate on the GPU for ``dtype`` (TFLOP/s): the practical peak that '% peak' uses."""
    a = torch.rand(n, n, device="cuda", dtype=dtype)
    b = torch.rand(n, n, device="cuda", dtype=dtype)
    torch.mm(a, b)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    del a, b
    return 2 * n ** 3 / best / 1e12


def gpu_rows(names: list, repeats: int) -> list:
    """Upstream fp32, the plugin's default and torch-autocast (fp16) on CUDA, interleaved; [] without a GPU."""
    if not torch.cuda.is_available():
        return []  # the table's footer says "GPU: none present"
    from napari_samlab.models.registry import ENCODER_BACKENDS

    dev = "cuda"
    name_gpu = torch.cuda.get_device_name(0)
    peaks = {"fp32": measure_gpu_peak_tflops(torch.float32), "fp16": measure_gpu_peak_tflops(torch.float16)}
    print(f"\nGPU: {name_gpu}; GEMM peak measured fp32 {peaks['fp32']:.1f} TFLOP/s "
          f"(TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}), fp16 {peaks['fp16']:.1f} TFLOP/s")
    rows = []
    for name in names:
        spec = MODELS[name]
        enc = spec["build"]().to(dev)
        x = spec["image"]().to(dev)
        gflop = count_gflop(enc, x)

        def upstream(inp):
            with torch.no_grad():
                return enc(inp)

        runners = {"upstream": (upstream, "fp32", True)}
        for backend, label, prec, exact in (("auto", "plugin default (auto)", "fp32", True),
                                            (AUTOCAST, AUTOCAST, "fp16", False)):
            if backend not in ENCODER_BACKENDS:
                print(f"  {backend}: not an encoder backend of this version, skipped")
                continue
            h = EncoderHarness(backend, dev, f"bench-gpu-{name}")
            runners[label] = (lambda inp, h=h: _inference(h.run_encoder, enc, inp), prec, exact)
        print(f"[gpu: {spec['label']}] {gflop:.0f} GFLOP/slice", flush=True)
        for f, _, _ in runners.values():  # warm-up: cuDNN/cuBLAS heuristics, autocast weight casts
            for _ in range(3):
                f(x)
        torch.cuda.synchronize()
        times = {k: [] for k in runners}
        mem = {k: 0.0 for k in runners}
        outs = {}
        for _ in range(repeats):
            for k, (f, _, _) in runners.items():
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
                t = time.perf_counter()
                outs[k] = f(x)
                torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t)
                mem[k] = max(mem[k], torch.cuda.max_memory_allocated() / 2 ** 20)
        ref = outs["upstream"]
        dec = make_decoder(spec["size"], ref.shape[-1])
        ref_masks = masks_from(ref, dec, spec["size"])
        for k, (_, prec, exact) in runners.items():
            med = float(np.median(times[k]))
            rows.append(dict(
                section="gpu", model=spec["label"], path=k, exact="yes" if exact else "no", time=f"{med:.4f} s/slice",
                ratio=float(np.median(np.array(times["upstream"]) / np.array(times[k]))), gflop=gflop,
                peak_frac=gflop / med / (peaks[prec] * 1000), rss=mem[k],
                notes=f"{prec}; peak mem = torch.cuda.max_memory_allocated",
                **agreement(outs[k], ref, dec, spec["size"], ref_masks),
            ))
        enc = x = runners = outs = None  # free this model's GPU memory before the next
        torch.cuda.empty_cache()
    return rows


def _inference(run, enc, inp):
    with torch.inference_mode():  # as the families call run_encoder
        return run(enc, inp)


# ----------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: LiteMedSAM only, lung only, 2 repeats (a few minutes)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--models", nargs="+", default=None, choices=list(MODELS), help="encoder/GPU rows (default all)")
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino", "openvino-int8",
                                                     "onnxruntime-int8"],
                   help=f"CPU encoder backends (also: {AUTOCAST}, or --include-bf16)")
    p.add_argument("--include-bf16", action="store_true",
                   help=f"add {AUTOCAST} (bf16 on CPU: emulated without avx512_bf16/amx, slow) to the encoder rows")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved encoder repeats at 1024 (default 3; at least 5 for the smaller models)")
    p.add_argument("--decoder-repeats", type=int, default=None, help="decode repeats (default 30)")
    p.add_argument("--gpu-repeats", type=int, default=20)
    p.add_argument("--datasets", nargs="+", default=None, choices=("lung", "brain"), help="propagation rows")
    p.add_argument("--lung-model", choices=list(PROP_MODELS), default=None, help="default vitb (lite with --quick)")
    p.add_argument("--brain-model", choices=list(PROP_MODELS), default="lite",
                   help="vitb: MedSAM ViT-B 1024 through 152 slices, about an hour on 2 cores")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--cache-dir", default=None, help="export cache (default: the plugin's encoder cache)")
    p.add_argument("--threads", type=int, default=None, help="backend threads (default: physical cores)")
    p.add_argument("--isolated-rss", action="store_true",
                   help="also measure each backend's peak RSS in a fresh process (ViT-B 1024 only; ~3 min)")
    p.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--prop-child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        name, b, cdir, th = args.rss_child
        rss_child(name, b, cdir, int(th))
        return 0
    if args.prop_child:
        print("PROP_RESULT " + json.dumps(prop_child(*args.prop_child)))
        return 0

    models = args.models or (["lite256"] if args.quick else list(MODELS))
    repeats = args.repeats or (2 if args.quick else 3)
    datasets = args.datasets or (["lung"] if args.quick else ["lung", "brain"])
    prop_models = {"lung": args.lung_model or ("lite" if args.quick else "vitb"), "brain": args.brain_model}
    backends = list(args.backends) + ([AUTOCAST] if args.include_bf16 and AUTOCAST not in args.backends else [])
    threads = args.threads or accel.physical_cores()
    cache_dir = Path(args.cache_dir) if args.cache_dir else accel.default_cache_dir()
    flags = cpu_flags()
    default_threads = torch.get_num_threads()
    measured = measure_peak_gflops(threads)
    torch.set_num_threads(default_threads)  # upstream rows run with PyTorch's default, as the families do
    peak = max(measured, ASSUMED_PEAK_TFLOPS * 1000)
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16") if f in flags]
    print(f"CPU: {accel.physical_cores()} physical cores, backends use {threads} threads; SIMD: {' '.join(simd) or '?'}; "
          f"torch {torch.__version__}, default threads {torch.get_num_threads()}")
    print(f"peak: fp32 GEMM measured {measured:.0f} GFLOP/s, assumed {ASSUMED_PEAK_TFLOPS * 1000:.0f} GFLOP/s; "
          f"'% peak' uses the larger ({peak:.0f})")
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        print(f"bf16: no native bf16 arithmetic on this CPU (no avx512_bf16/amx): {AUTOCAST} on CPU is emulated"
              + ("" if AUTOCAST in backends else " and left out (--include-bf16 adds it)"))

    t_start = time.perf_counter()
    rows, extra = [], []
    if "encoder" in args.sections:
        for name in models:
            rep = repeats if (name == "vitb1024" or args.quick) else max(repeats, 5)
            model_rows = bench_model(name, backends, rep, cache_dir, threads, peak)
            if args.isolated_rss and name == "vitb1024":
                iso = isolated_rss(name, [r["path"] for r in model_rows], cache_dir, threads)
                for r in model_rows:
                    r["notes"] = (r["notes"] + "; " if r["notes"] else "") + f"alone RSS {iso.get(r['path']):.0f} MB"
            rows += model_rows
        fgs = {r["model"]: r["fg"] for r in rows if "fg" in r}
        extra.append("encoder mask IoU: 4 boxes through a random-weight SAM decoder, logits > 0; foreground fraction "
                     "of the upstream masks: " + ", ".join(f"{k} {v:.2f}" for k, v in fgs.items()))
    if "decoder" in args.sections:
        dec_rows, cached_ms, disk_ms = decoder_rows(args.decoder_repeats or (5 if args.quick else 30))
        rows += dec_rows
        extra.append(f"decoder: ours/SamPredictor on the same embedding, alternating; cached set_image "
                     f"{cached_ms:.2f} ms, disk-cache hit {disk_ms:.1f} ms (bench_predictor.py)")
    if "propagation" in args.sections:
        rows += propagation_rows(datasets, prop_models, peak, args.data)
        extra.append("propagation: one box (the true box) on the middle slice, default settings; real windowing, "
                     "encoder and decoder, masks from the oracle (OracleAnsweredModel); a fresh process per row")
    gpu_done = False
    if "gpu" in args.sections:
        g = gpu_rows(models, max(3, 5 if args.quick else args.gpu_repeats))
        rows += g
        gpu_done = bool(g)
        if not g:
            extra.append("GPU: none present")
    print_table(rows, extra)
    print(approx_line(rows, backends, gpu_done))
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"whole-run peak RSS of this process (getrusage; all CPU backends of a model loaded at once): {ru:.0f} MB; "
          f"total time {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


def approx_line(rows: list, backends: list, gpu_done: bool) -> str:
    """Section 5: how far every opt-in approximate mode is from fp32 (mask IoU)."""
    wanted = list(accel.APPROX_BACKENDS) + ([AUTOCAST] if AUTOCAST not in accel.APPROX_BACKENDS else [])
    parts = []
    for b in wanted:
        got = [r for r in rows if r["section"] in ("encoder", "gpu") and r["path"] == b and "iou" in r]
        if got:
            parts.append(f"{b}: " + ", ".join(f"{r['model']}{' (GPU fp16)' if r['section'] == 'gpu' else ''} "
                                             f"{r['iou']:.4f}" for r in got))
        elif b == AUTOCAST and not known_backend(b):
            parts.append(f"{b}: not in this version of models/accel.py")
        elif b == AUTOCAST and b not in backends:
            parts.append(f"{b}: CPU bf16 not run (--include-bf16)" + ("" if gpu_done else ", no GPU"))
        elif not any(r["section"] == "encoder" for r in rows):
            parts.append(f"{b}: encoder section not run")
        else:
            parts.append(f"{b}: not measured (not in --backends, not installed or failed)")
    return "approximate modes (opt-in), mask IoU vs fp32 on the sample data: " + "; ".join(parts)


COLUMNS = (("section", "section"), ("model", "model"), ("path", "path"), ("exact", "exact"), ("time", "time"),
           ("slices", "slices x s/slice"), ("ratio", "speed-up"), ("gflop", "GFLOP/slice"), ("peak_frac", "% peak"),
           ("rss", "peak mem MB"), ("delta", "+RSS MB"), ("cos", "cosine"), ("rel", "max rel err"),
           ("iou", "mask IoU"), ("notes", "notes"))
FORMATS = {"ratio": "{:.2f}x", "gflop": "{:.0f}", "peak_frac": lambda v: f"{100 * v:.0f}%", "rss": "{:.0f}",
           "delta": lambda v: f"{round(v) + 0:.0f}", "cos": "{:.6f}", "rel": "{:.1e}", "iou": "{:.4f}"}


def print_table(rows: list, extra: list = ()) -> None:
    """The one table: a row per measurement, '-' where a column does not apply."""
    def cell(r, key):
        v = r.get(key)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "-"
        f = FORMATS.get(key)
        return str(v) if f is None else (f(v) if callable(f) else f.format(v))

    lines = [tuple(h for _, h in COLUMNS)] + [tuple(cell(r, k) for k, _ in COLUMNS) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    print("\nspeed-up = upstream time / this path's time (encoder, gpu: median over interleaved repeats of the "
          "ratio; decoder: of medians; propagation: of the single runs); % peak = GFLOP/s reached over the "
          "machine's fp32 GEMM peak (GPU: of the row's precision); peak mem = process VmHWM reset before each call "
          "or run (GPU: CUDA memory); +RSS = what the call or run adds to the resident set before it")
    for j, line in enumerate(lines):
        if j > 1 and line[0] != lines[j - 1][0]:
            print()
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    if any(r["section"] == "encoder" for r in rows):
        print("encoder peak mem: this process with every backend of the model loaded at once (see +RSS, or "
              "--isolated-rss for each backend alone)")
    for e in extra:
        print(e)


if __name__ == "__main__":
    raise SystemExit(main())
