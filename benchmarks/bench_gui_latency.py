"""GUI latencies under slow encoders, each against its baseline in the same run (napari under Xvfb).

The timed parts of the widget tests, moved here (tests never read the clock):

1. **Qt loop stall while encoding** (tests/test_widgets.py): the longest gap
   between ticks of a 10 ms QTimer while the Segment panel encodes 3 slices
   with an encoder of ``--encode`` seconds, against the longest gap of the
   same timer over the same time with nothing running.  Target: < 100 ms.
2. **Prompt during a background prefetch** (tests/test_prefetch.py): the
   time a prompt on a cached slice takes while the prefetch is encoding a
   neighbour (``--encode`` seconds, stopped by the prompt), against the same
   prompt with prefetch off.  Target: < 1.5 s, i.e. no wait for the encode.
3. **Cancel during propagation** (tests/test_prefetch.py): from the Cancel
   click to the panel idle, while propagation encodes a slice; baseline: the
   length of that encode.  Target: < 1.5 s.

Run:  xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/bench_gui_latency.py [--encode 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_samlab.models.base import raise_if_cancelled  # noqa: E402
from napari_samlab.models.classic import ClassicModel  # noqa: E402
from napari_samlab.propagate.oracle import OracleModel  # noqa: E402

BOX = (10, 12, 30, 34)


class Slow:
    """Mixin: an encode of ``delay`` seconds in 5 ms steps that stops when cancelled."""

    delay = 0.0

    def fingerprint(self):
        return super().fingerprint() + "-slow"

    def encode(self, image):
        end = time.perf_counter() + self.delay
        while time.perf_counter() < end:
            raise_if_cancelled()
            time.sleep(0.005)
        return super().encode(image)


class SlowClassic(Slow, ClassicModel):
    pass


class SlowOracle(Slow, OracleModel):
    pass


def wait(done, timeout=120.0):
    from qtpy.QtCore import QCoreApplication, QEventLoop

    end = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() > end:
            raise TimeoutError("the benchmark's step did not finish")
        QCoreApplication.processEvents(QEventLoop.AllEvents, 10)
        time.sleep(0.002)


def longest_tick_gap(run, seconds=None) -> float:
    """Longest gap (s) between 10 ms QTimer ticks while ``run()`` works (or idles ``seconds``)."""
    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    try:
        if run is None:
            end = time.perf_counter() + seconds
            wait(lambda: time.perf_counter() > end)
        else:
            run()
    finally:
        timer.stop()
    return float(np.max(np.diff(ticks))) if len(ticks) > 1 else float("inf")


def viewer_with(vol, model):
    import napari

    from napari_samlab.widgets import SegmentationWidget
    from napari_samlab.widgets._session import session_for

    viewer = napari.Viewer(show=False)
    img = viewer.add_image(vol, name="volume")
    seg = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment", area="right")
    seg.set_image_layer(img)
    seg.propagation.prefetch_check.setChecked(False)
    session_for(viewer).set_model(model, "slow")
    return viewer, seg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encode", type=float, default=3.0, help="seconds per slow encode")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1000, (16, 48, 48)).astype(np.int16)
    yy, xx = np.mgrid[:48, :48]
    truth = np.broadcast_to((yy - 23) ** 2 + (xx - 20) ** 2 < 64, vol.shape).copy()
    rows = []

    # 1. Qt loop while encoding
    model = SlowClassic()
    model.delay = args.encode / 3
    viewer, seg = viewer_with(vol, model)
    busy = longest_tick_gap(lambda: (seg.encode_slices([3, 4, 5]), wait(lambda: not seg.busy)))
    idle = longest_tick_gap(None, seconds=args.encode)
    rows.append(("Qt loop longest gap, encoding", idle, busy, 0.1))
    viewer.close()

    # 2. prompt while the prefetch encodes a neighbour
    model = SlowOracle(vol, truth)
    viewer, seg = viewer_with(vol, model)
    z = seg.current_plane().index[0][1]
    seg.set_box(*BOX)
    seg.segment(wait=True)  # the displayed slice: cached from here on

    def prompt_s():
        t = time.perf_counter()
        seg.set_box(*BOX)
        seg.segment(wait=True, timeout=120)
        return time.perf_counter() - t

    alone = prompt_s()
    model.delay = args.encode
    seg.propagation.prefetch_check.setChecked(True)
    wait(lambda: seg.propagation.prefetching)
    time.sleep(0.2)
    during = prompt_s()
    rows.append(("prompt, prefetch running", alone, during, 1.5))
    seg.propagation.prefetch_check.setChecked(False)

    # 3. cancel during propagation (the anchor slice is cached, the next one is slow)
    seg.live_check.setChecked(False)
    seg.set_box(*BOX)
    n = len(model.encoded)
    seg.propagate()
    time.sleep(0.3)
    t = time.perf_counter()
    seg.propagation.cancel_button.click()
    wait(lambda: not seg.propagation.running)
    cancel = time.perf_counter() - t
    rows.append(("cancel propagation", args.encode, cancel, 1.5))
    assert len(model.encoded) == n, "the encode under way was not stopped"
    viewer.close()

    print(f"slow encode {args.encode:g} s (slice {z} shown)")
    print(f"{'measure':34s} {'baseline s':>11s} {'ours s':>8s} {'ratio':>7s} {'target s':>9s}")
    for name, base, ours, target in rows:
        print(f"{name:34s} {base:11.3f} {ours:8.3f} {ours / base:7.2f} {'<' + format(target, 'g'):>9s}")
    return rows


if __name__ == "__main__":
    main()
