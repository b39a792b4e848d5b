"""Background prefetch around the displayed slice, under a real napari viewer (Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest tests/test_prefetch.py -q

While the user looks at a slice of a volume, the slice and its neighbours
are encoded in a low-priority thread; moving, prompting, propagating or
closing stops it mid-encode (``base.cancel.cancellable``), so the user's
action never waits for a background encode.  ``SlowOracle`` is the oracle
segmenter with an encode that takes ``delay`` seconds and stops when
cancelled, the way an exported encoder does.  No test reads the clock: a
"long" encode here (60 s) outlasts every wait of the test, so an action
that waited for it would fail; the latencies themselves are measured by
benchmarks/bench_gui_latency.py.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip("napari needs a display: run the widget tests under xvfb-run", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_samlab.base.cancel import raise_if_cancelled  # noqa: E402
from napari_samlab.models.classic import ClassicModel  # noqa: E402
from napari_samlab.propagate.oracle import OracleModel  # noqa: E402
from napari_samlab.widgets import SegmentationWidget  # noqa: E402
from napari_samlab.widgets._session import session_for  # noqa: E402

N, Z_MID = 16, 7  # napari shows slice 7 first
LONG = 60.0  # seconds: an encode that outlasts every wait below unless it is stopped
BOX = (10, 12, 30, 34)  # around the object (x0, y0, x1, y1)


@pytest.fixture(scope="module")
def volume():
    """(volume, truth): 16 random 48 x 48 slices (each one distinct) and a disc on every slice."""
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1000, (N, 48, 48)).astype(np.int16)
    yy, xx = np.mgrid[:48, :48]
    truth = np.broadcast_to((yy - 23) ** 2 + (xx - 20) ** 2 < 64, vol.shape).copy()
    return vol, truth


class SlowOracle(OracleModel):
    """The oracle with an encode of ``delay`` seconds that stops as soon as it is cancelled.

    Records the slice of every encode begun (``started``), finished
    (``encoded``) and the nice value of the thread that ran it.
    """

    def __init__(self, vol, truth, delay: float):
        super().__init__(vol, truth)
        self.delay = float(delay)
        self.started = []
        self.nice = []

    def fingerprint(self) -> str:
        return super().fingerprint() + "-slow"

    def encode(self, image):
        self.started.append(self._by_hash.get(self._hash(np.asarray(image))))
        if hasattr(os, "getpriority"):
            import threading

            self.nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        for _ in range(round(self.delay / 0.005)):  # 5 ms steps, no clock read
            raise_if_cancelled()  # as an exported encoder does inside cancellable()
            time.sleep(0.005)
        return super().encode(image)


def _setup(make_napari_viewer, vol, model):
    """A viewer showing ``vol`` with ``model`` loaded; prefetch off until the test turns it on."""
    viewer = make_napari_viewer()
    img = viewer.add_image(vol, name="volume")
    viewer.layers.selection.active = img
    seg = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment", area="right")
    seg.set_image_layer(img)
    seg.propagation.prefetch_check.setChecked(False)
    session_for(viewer).set_model(model, getattr(model, "family", "model"))
    assert seg.current_plane().index == ((0, Z_MID),)
    return viewer, seg


def _cached(seg, vol, zs) -> list:
    """Which of ``zs`` the predictor answers from its cache (checked one by one)."""
    p = seg.session.predictor
    out = []
    with seg.session.lock:
        for z in zs:
            before = p.encoder_calls
            p.set_image(vol[z], window=seg.window)
            if p.encoder_calls == before:
                out.append(z)
    return out


def test_moving_prefetches_slice_then_neighbours(make_napari_viewer, qtbot, volume):
    """(a) a small LiteMedSAM: stopping on a slice encodes it, then its neighbours, the way of movement first."""
    from napari_samlab.widgets._compat import avoid_triton_llvm_clash

    avoid_triton_llvm_clash()
    pytest.importorskip("torch")
    import checkpoint_factory as cf

    from napari_samlab.models.registry import model_from_state_dict

    vol, truth = volume
    model = model_from_state_dict(cf.litemedsam_state_dict(seed=2), "litemedsam", "lite_medsam.pth")
    viewer, seg = _setup(make_napari_viewer, vol, model)
    panel = seg.propagation
    panel.prefetch_check.setChecked(True)
    seg.set_slice(5)  # down from the middle
    # a limit for a loaded machine, not a speed check (five LiteMedSAM encodes)
    qtbot.waitUntil(lambda: panel.prefetched == [5, 4, 6, 3, 7] and not panel.prefetching, timeout=120000)
    panel.prefetch_check.setChecked(False)
    calls = seg.session.predictor.encoder_calls
    assert _cached(seg, vol, range(2, 10)) == [3, 4, 5, 6, 7]
    assert seg.session.predictor.encoder_calls == calls + 3  # 2, 8 and 9 really had to be encoded

    # the user's prompt on a neighbour needs no encode
    seg.set_slice(4)
    seg.set_box(*BOX)
    calls = seg.session.predictor.encoder_calls
    assert seg.segment(wait=True) is not None
    assert seg.session.predictor.encoder_calls == calls


def test_moving_again_cancels_and_restarts(make_napari_viewer, qtbot, volume):
    """(b) moving stops the encode in progress and starts over around the new slice, in the new direction."""
    vol, truth = volume
    model = SlowOracle(vol, truth, delay=0.4)
    viewer, seg = _setup(make_napari_viewer, vol, model)
    panel = seg.propagation
    panel.prefetch_check.setChecked(True)
    seg.set_slice(5)
    qtbot.waitUntil(lambda: panel.prefetched == [5] and model.started[-1:] == [4], timeout=20000)
    n0 = len(model.started)
    seg.set_slice(10)  # up
    qtbot.waitUntil(lambda: panel.prefetched == [10, 11, 9, 12, 8] and not panel.prefetching, timeout=20000)
    assert model.started[n0:] == [10, 11, 9, 12, 8]
    assert model.encoded == [5, 10, 11, 9, 12, 8]  # slice 4 was stopped part way
    if sys.platform.startswith("linux"):
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert all(n > base or n == 19 for n in model.nice)  # the prefetch thread runs at low priority


def test_prompt_during_slow_prefetch_is_answered_at_once(make_napari_viewer, qtbot, volume):
    """(c) a long background encode does not hold up the user's prompt on a cached slice."""
    vol, truth = volume
    model = SlowOracle(vol, truth, delay=LONG)
    viewer, seg = _setup(make_napari_viewer, vol, model)
    panel = seg.propagation
    model.delay = 0.0
    assert _cached(seg, vol, [Z_MID]) == []  # the displayed slice: encoded now, cached from here on
    model.delay = LONG
    panel.prefetch_check.setChecked(True)  # skips the cached slice, starts a long encode of a neighbour
    qtbot.waitUntil(lambda: len(model.started) == 2 and panel.prefetching, timeout=10000)
    time.sleep(0.2)
    seg.set_box(*BOX)
    # a prompt that waited for the background encode would time out here
    mask = seg.segment(wait=True, timeout=20)
    assert mask is not None, "the prompt waited for the background encode"
    assert np.array_equal(mask, truth[Z_MID] & _box_mask(BOX, truth.shape[1:]))
    assert model.encoded == [Z_MID]  # the neighbour's encode was stopped, not finished


def test_prompt_on_the_slice_being_prefetched_lets_that_encode_finish(make_napari_viewer, qtbot, volume):
    """A prompt on the very slice the prefetch is encoding waits for that encode instead of restarting it."""
    vol, truth = volume
    model = SlowOracle(vol, truth, delay=2.0)
    viewer, seg = _setup(make_napari_viewer, vol, model)
    panel = seg.propagation
    panel.prefetch_check.setChecked(True)  # starts with the displayed slice
    qtbot.waitUntil(lambda: len(model.started) == 1 and panel.prefetching, timeout=10000)
    assert model.started == [Z_MID]
    time.sleep(0.5)
    seg.set_box(*BOX)
    mask = seg.segment(wait=True, timeout=30)
    assert np.array_equal(mask, truth[Z_MID] & _box_mask(BOX, truth.shape[1:]))
    # one encode, finished by the prefetch: not stopped and begun again for the prompt
    assert model.started.count(Z_MID) == 1 and model.encoded == [Z_MID]
    qtbot.waitUntil(lambda: not panel.prefetching, timeout=10000)
    assert len(model.started) == 1  # and the prefetch ended after it


def test_cancel_stops_propagation_mid_encode(make_napari_viewer, qtbot, volume):
    """Cancel during a slow encode stops propagation at once, without an error."""
    from qtpy.QtCore import Qt

    vol, truth = volume
    model = SlowOracle(vol, truth, delay=LONG)
    viewer, seg = _setup(make_napari_viewer, vol, model)
    panel = seg.propagation
    model.delay = 0.0
    _cached(seg, vol, [Z_MID])  # the anchor slice answers at once
    model.delay = LONG
    seg.live_check.setChecked(False)
    seg.set_box(*BOX)
    seg.propagate()
    qtbot.waitUntil(lambda: len(model.started) == 2, timeout=10000)  # encoding the first neighbour
    time.sleep(0.2)
    qtbot.mouseClick(panel.cancel_button, Qt.LeftButton)
    # stops part-way through the neighbour's encode (it would take LONG seconds)
    qtbot.waitUntil(lambda: not panel.running, timeout=10000)
    assert model.encoded == [Z_MID]
    assert not [m for m in seg.notes.messages if m[0] == "error"]
    assert "cancelled" in panel.summary.text()
    res = seg.propagation_result
    if res is not None:  # the core handed back what was done before the encode stopped
        assert res.cancelled and Z_MID in res.records
        assert np.array_equal(seg.preview_layer.data > 0, res.mask)


def test_classic_engine_does_not_prefetch(make_napari_viewer, qtbot, volume):
    """(d) the classic engine's encode is as cheap as a cache look-up: nothing is prefetched for it."""
    vol, truth = volume
    viewer, seg = _setup(make_napari_viewer, vol, ClassicModel())
    panel = seg.propagation
    panel.prefetch_check.setChecked(True)
    calls = seg.session.predictor.encoder_calls
    seg.set_slice(5)
    seg.set_slice(6)
    qtbot.wait(1000)  # well past the idle delay
    assert not panel.prefetching and panel.prefetched == []
    assert seg.session.predictor.encoder_calls == calls
    # the same panel prefetches once a model with a real encoder is loaded
    session_for(viewer).set_model(OracleModel(vol, truth), "oracle")
    qtbot.waitUntil(lambda: panel.prefetched[:1] == [6] and not panel.prefetching, timeout=10000)
    assert len(panel.prefetched) == 5


def _box_mask(box, shape) -> np.ndarray:
    x0, y0, x1, y1 = box
    m = np.zeros(shape, bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m
