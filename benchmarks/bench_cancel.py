"""How soon a cancelled encode returns: each encoder backend against its own full encode.

A convolutional encoder with few weights and much arithmetic (about a
second per 384 px encode) runs through ``SegmentationModel.run_encoder``
with each available backend.  Per backend, alternately in the same loop (so
machine load hits both alike): a full encode, and an encode whose cancel
event is set 50 ms after it began.  Printed: medians of both, their ratio,
and the latency from the event being set to ``Cancelled`` reaching the
caller.  PyTorch cannot stop inside a forward pass: its row shows that it
finishes, then stops (ratio near 1).  Target (issue 6, formerly a timed
assert in tests/test_accel.py): exported backends return a cancelled encode
in under half the time of a full one.  tests/test_accel.py checks, without
the clock, that the backends really stop part-way.

Run:  python benchmarks/bench_cancel.py [--repeats 5] [--size 384] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_samlab.errors import Cancelled  # noqa: E402
from napari_samlab.models import accel  # noqa: E402
from napari_samlab.models.accel import backend_available  # noqa: E402
from napari_samlab.models.base import SegmentationModel, cancellable  # noqa: E402

SET_AFTER_S = 0.05


def slow_encoder(width: int = 48, depth: int = 10) -> torch.nn.Module:
    """Few weights, much arithmetic (as in tests/test_accel.py)."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, width, 3, padding=1)]
    for _ in range(depth):
        layers += [torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).eval()


class EncoderOnly(SegmentationModel):
    """The smallest engine around one encoder: only ``run_encoder`` is used."""

    family = "bench"

    def __init__(self, encoder, backend):
        self.encoder, self.encoder_backend, self.device = encoder, backend, "cpu"

    def fingerprint(self):
        return "bench-" + accel._module_digest(self.encoder)

    def encode(self, x):
        with torch.no_grad():
            return self.run_encoder(self.encoder, x)

    def decode(self, embedding, prompt):
        raise NotImplementedError("encoder benchmark only")


def full_s(model, x) -> float:
    t = time.perf_counter()
    with cancellable(threading.Event()):
        model.encode(x)
    return time.perf_counter() - t


def cancelled_s(model, x):
    """(seconds until Cancelled reached the caller, seconds from the event being set to then)."""
    stop = threading.Event()
    set_at = []

    def fire():
        set_at.append(time.perf_counter())
        stop.set()

    timer = threading.Timer(SET_AFTER_S, fire)
    t = time.perf_counter()
    timer.start()
    try:
        with cancellable(stop):
            model.encode(x)
    except Cancelled:
        pass
    end = time.perf_counter()
    timer.join()
    return end - t, end - set_at[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=384, help="input side in pixels")
    ap.add_argument("--quick", action="store_true", help="2 repeats, 256 px: checks that the script runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.size = 2, 256
    backends = ["torch"] + [b for b in ("onnxruntime", "openvino") if backend_available(b)]
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {args.size}x{args.size} input, event set {SET_AFTER_S * 1000:.0f} ms "
          f"after the start, median of {args.repeats}")
    print(f"{'backend':12s} {'full s':>8s} {'cancelled s':>12s} {'ratio':>6s} {'set->stop ms':>13s}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["SAMLAB_CACHE_DIR"] = tmp  # the export goes to a throw-away folder
        for backend in backends:
            model = EncoderOnly(slow_encoder(), backend)
            model.encode(x)  # export / warm-up, outside the clock
            full, cancel, latency = [], [], []
            for _ in range(args.repeats):
                full.append(full_s(model, x))
                c, lat = cancelled_s(model, x)
                cancel.append(c)
                latency.append(lat)
            f, c, lat = statistics.median(full), statistics.median(cancel), statistics.median(latency)
            rows.append((backend, f, c))
            print(f"{backend:12s} {f:8.2f} {c:12.2f} {c / f:6.2f} {lat * 1000:13.0f}")
    print("target: exported backends' ratio < 0.5 (torch finishes its forward pass: ratio ~1)")
    return rows


if __name__ == "__main__":
    main()
