"""Slice-to-slice propagation (issue 5): logic tested with an oracle 2D segmenter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_samlab.errors import SamlabError
from napari_samlab.models.base import Prediction, Prompt
from napari_samlab.predict.predictor import SlicePredictor
from napari_samlab.base.windowing import Window
from napari_samlab.propagate import (
    PropagationPlan,
    PropagationSettings,
    default_strategy,
    dice,
    encode_slices,
    interpolate_slices,
    next_slices_to_encode,
    propagate_from_prompt,
    propagate_volume,
    repropagate,
    visit_order,
)
from napari_samlab.propagate.oracle import OracleModel
from napari_samlab.propagate.quality import bbox



# ----------------------------------------------------------------------
def ellipsoid(shape=(40, 64, 64), centre=(20, 32, 30), radii=(14, 18, 12)):
    z, y, x = np.indices(shape)
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2 <= 1


def image_of(truth, seed=0):
    """A distinct, noisy image per slice (the oracle finds slices by content)."""
    rng = np.random.default_rng(seed)
    return (truth * 100 + rng.integers(0, 20, truth.shape)).astype(np.int16)


def run(truth, anchors=None, settings=None, model=None, vol=None, **kw):
    vol = image_of(truth) if vol is None else vol
    model = OracleModel(vol, truth) if model is None else model
    pred = SlicePredictor(model)
    if anchors is None:
        z = int(np.mean(np.flatnonzero(truth.any((1, 2)))))
        anchors = {z: Prompt(box=bbox(truth[z]))}
    res = propagate_volume(pred, vol, anchors, settings=settings, **kw)
    return res, pred, model, vol


def reasons(res):
    return {(s.start, s.direction): s.reason for s in res.stops}


# ----------------------------------------------------------------------
def test_oracle_ellipsoid_reaches_the_whole_object():
    truth = ellipsoid()
    res, pred, model, _ = run(truth)
    assert dice(res.mask, truth) >= 0.97
    assert set(res.stop_reasons.values()) == {"empty"}
    # only visited slices were encoded, each once
    assert sorted(model.encoded) == sorted(set(model.encoded))
    assert res.encoder_calls == len(model.encoded) <= 2 + len(res.records)
    lo, hi = res.z_extent()
    assert (lo, hi) == (6, 34)
    assert {"stopped_here"} <= res.records[lo].flags and {"stopped_here"} <= res.records[hi].flags


def test_oracle_on_real_lung_tumour_crop(lung):
    img, lab = lung
    vol, truth = img[10:30, 280:440, 270:430], lab[10:30, 280:440, 270:430]
    assert truth.sum() == lab.sum()
    z = 10  # the middle of the tumour's extent (15..25 in the full volume)
    res, _, _, _ = run(truth, {z: Prompt(box=bbox(truth[z]))}, vol=vol, window="auto", modality="CT")
    assert dice(res.mask, truth) >= 0.97
    assert res.records[z].source == "anchor"


def test_points_strategy_for_point_only_family():
    truth = ellipsoid()
    vol = image_of(truth)
    model = OracleModel(vol, truth, family="msa")
    model.supports_boxes = False
    assert default_strategy(model) == "points"
    res, *_ = run(truth, {20: Prompt(points=[(30, 32)], point_labels=[1])}, model=model, vol=vol)
    assert res.strategy == "points"
    assert dice(res.mask, truth) >= 0.97
    with pytest.raises(SamlabError, match="does not take boxes"):
        run(truth, {20: Prompt(points=[(30, 32)])}, PropagationSettings(strategy="box"), model=model, vol=vol)


def test_family_defaults():
    class M:
        supports_boxes = supports_points = True
        supports_mask_input = True

    for fam, want in {"medsam": "box", "litemedsam": "box", "msa": "points", "sam": "box+mask",
                      "classic": "track"}.items():
        m = M()
        m.family = fam
        assert default_strategy(m) == want


# -- stopping -----------------------------------------------------------
def test_z_limits_stop_and_flag_edge():
    truth = ellipsoid()
    res, *_ = run(truth, settings=PropagationSettings(z_min=12, z_max=25))
    assert not res.mask[:12].any() and not res.mask[26:].any()
    assert res.mask[12].any() and res.mask[25].any()
    assert set(res.stop_reasons.values()) == {"z_limit"}
    assert "edge" in res.records[12].flags and "edge" in res.records[25].flags


def test_stop_slice():
    truth = ellipsoid()
    res, *_ = run(truth, settings=PropagationSettings(stop_slices={24}))
    assert res.stop_reasons["up"] == "stop_slice"
    assert not res.mask[24:].any() and res.mask[23].any()
    assert 24 not in res.records


def test_empty_for_n_slices():
    truth = ellipsoid()
    truth[14] = False  # the object is absent on one slice
    res1, *_ = run(truth, {20: Prompt(box=bbox(truth[20]))}, PropagationSettings(max_empty=1))
    assert res1.stop_reasons["down"] == "empty"
    assert not res1.mask[:15].any()
    res2, *_ = run(truth, {20: Prompt(box=bbox(truth[20]))}, PropagationSettings(max_empty=2))
    assert "empty" in res2.records[14].flags  # kept as an empty slice, the run went on
    assert res2.mask[13].any() and dice(res2.mask, truth) >= 0.97
    assert res2.stop_reasons["down"] == "empty"
    assert not any(r.area == 0 for z, r in res2.records.items() if z < 6)  # trailing empties dropped


def _disks(shape, spec):
    """Volume of disks: spec maps z -> (cy, cx, r)."""
    out = np.zeros(shape, bool)
    yy, xx = np.indices(shape[1:])
    for z, (cy, cx, r) in spec.items():
        out[z] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


def test_low_iou_stops_and_drops_the_offending_slice():
    spec = {z: (32, 32, 10) for z in range(5, 20)}
    spec.update({z: (32, 52, 10) for z in range(20, 30)})  # the object jumps sideways
    truth = _disks((35, 64, 72), spec)
    res, *_ = run(truth, {12: Prompt(box=bbox(truth[12]))})
    st = [s for s in res.stops if s.direction == "up"][0]
    assert (st.reason, st.z, st.last_kept) == ("low_iou", 20, 19)
    assert st.value < 0.2
    assert not res.mask[20:].any()
    assert "stopped_here" in res.records[19].flags


def test_area_jump_stops():
    spec = {z: (32, 32, 8) for z in range(5, 20)}
    spec.update({z: (32, 32, 17) for z in range(20, 30)})  # grows 4.5x at once
    truth = _disks((35, 64, 64), spec)
    res, *_ = run(truth, {12: Prompt(box=bbox(truth[12]))}, PropagationSettings(box_margin=20))
    assert reasons(res)[(12, "up")] == "area_jump"
    assert not res.mask[20:].any() and res.mask[19].any()


def test_low_score_stops():
    truth = ellipsoid()

    class Scored(OracleModel):
        def decode(self, embedding, prompt):
            p = super().decode(embedding, prompt)
            z = int(embedding["z"])
            return Prediction(p.mask, 0.3 if z >= 27 else 0.9, p.low_res_logits)

    vol = image_of(truth)
    res, *_ = run(truth, settings=PropagationSettings(stop_min_score=0.5, flag_min_score=0.95),
                  model=Scored(vol, truth), vol=vol)
    st = [s for s in res.stops if s.direction == "up"][0]
    assert (st.reason, st.z) == ("low_score", 27)
    assert not res.mask[27:].any()
    assert "low_score" in res.records[26].flags  # flagged (0.9 < 0.95) but kept


def test_intensity_change_stops():
    truth = ellipsoid()
    vol = image_of(truth)
    vol[25:] = np.where(truth[25:], 1000, vol[25:])  # another tissue from z=25 on
    vol[0, 0, 0] = 1000
    res, *_ = run(truth, vol=vol)
    st = [s for s in res.stops if s.direction == "up"][0]
    assert (st.reason, st.z) == ("intensity", 25)
    assert not res.mask[25:].any()


# -- anchors, re-propagation ---------------------------------------------
def test_two_anchors_fill_towards_the_middle():
    truth = ellipsoid()
    anchors = {10: Prompt(box=bbox(truth[10])), 30: truth[30].copy()}
    seen = []
    res, *_ = run(truth, anchors, progress=lambda done, total, z: seen.append(z))
    assert dice(res.mask, truth) >= 0.97
    assert seen[:4] == [10, 30, 9, 11] and seen[4:6] == [29, 31]
    from_lo = [z for z in range(11, 30) if res.records[z].anchor == 10]
    from_hi = [z for z in range(11, 30) if res.records[z].anchor == 30]
    assert from_lo == list(range(11, 21)) and from_hi == list(range(21, 30))
    assert res.records[30].source == "anchor" and res.records[30].score == 1.0
    assert reasons(res)[(10, "up")] == "anchor" and reasons(res)[(30, "down")] == "anchor"


def test_repropagate_changes_only_the_range_and_keeps_locked_voxels():
    truth = ellipsoid()
    anchors = {10: Prompt(box=bbox(truth[10])), 30: Prompt(box=bbox(truth[30]))}
    res, pred, model, vol = run(truth, anchors)
    # stale content everywhere (as if painted): only slices 11..29 may lose it
    res.mask[:, :3, :3] = True
    n_enc = len(model.encoded)
    calls = pred.encoder_calls
    corrected = truth[20].copy()
    locked = np.zeros_like(truth)
    locked[15, :3, :3] = True  # committed voxels on a recomputed slice
    res2 = repropagate(pred, vol, res, 20, corrected, locked=locked)
    assert res2.mask[:11, :3, :3].all() and res2.mask[30:, :3, :3].all()  # outside: unchanged
    assert np.array_equal(res2.mask[:11], res.mask[:11]) and np.array_equal(res2.mask[30:], res.mask[30:])
    assert res2.mask[15, :3, :3].all()  # locked: kept
    assert not res2.mask[[z for z in range(11, 30) if z != 15], :3, :3].any()  # recomputed
    assert np.array_equal(res2.mask[20], corrected) and res2.records[20].source == "anchor"
    assert dice(res2.mask[11:30], truth[11:30]) >= 0.97
    # no slice encoded twice: everything came from the cache
    assert pred.encoder_calls == calls and res2.encoder_calls == 0 and len(model.encoded) == n_enc
    assert set(res2.anchors) == {10, 20, 30}
    assert res.records[15] is not res2.records[15] and res2.records[8] is res.records[8]


def test_repropagate_outward_and_locked_slices():
    truth = ellipsoid()
    res, pred, model, vol = run(truth, {20: Prompt(box=bbox(truth[20]))}, PropagationSettings(z_max=26))
    assert res.z_extent() == (6, 26)
    before = res.mask.copy()
    before_24 = before[24].copy()
    res.mask[24] = False  # a painted edit on slice 24, committed
    res2 = repropagate(pred, vol, res, 26, truth[26], locked={24}, settings=res.settings.with_(z_max=None))
    assert np.array_equal(res2.mask[:21], before[:21])  # below the first anchor: untouched
    assert not res2.mask[24].any() and before_24.any()  # the locked slice kept its edit
    assert res2.z_extent()[1] == 34 and res2.stop_reasons["up"] == "empty"
    assert dice(res2.mask[27:], truth[27:]) >= 0.97
    assert len(model.encoded) == len(set(model.encoded))  # no slice encoded twice


def test_cancel_part_way_and_prefetch_order():
    truth = ellipsoid()
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 6

    res, pred, model, vol = run(truth, cancel=cancel)
    assert res.cancelled
    assert 4 <= len(res.records) <= 7
    assert {s.reason for s in res.stops} == {"cancelled"}
    nxt = next_slices_to_encode(res, 3)
    assert len(nxt) == 3 and not set(nxt) & set(res.records)
    plan = PropagationPlan(vol.shape[0], res.anchors, res.settings)
    assert nxt == plan.remaining(res.records, 3)
    # encoding them ahead makes the next propagation find them in the cache
    assert encode_slices(pred, vol, nxt) == 3
    n = len(model.encoded)
    res_full = propagate_volume(pred, vol, res.anchors)
    assert dice(res_full.mask, truth) >= 0.97
    assert not set(model.encoded[n:]) & set(model.encoded[:n])


def test_visit_order_meets_in_the_middle():
    assert visit_order([2, 6], 9) == [2, 6, 1, 3, 5, 7, 0, 4, 8]
    s = PropagationSettings(z_min=1, z_max=7, stop_slices={4})
    assert visit_order([2, 6], 9, s) == [2, 6, 1, 3, 5, 7]
    assert next_slices_to_encode({5: None}, 4, n_slices=10) == [5, 4, 6, 3]


# -- windowing, prompts, prompt-free families -----------------------------
def test_window_resolved_once_on_the_volume_and_boxes_clipped():
    truth = ellipsoid(centre=(20, 10, 30), radii=(10, 14, 12))  # runs off the top edge
    vol = image_of(truth)
    seen = {"auto": [], "boxes": []}

    class Spy(OracleModel):
        def auto_window(self, image, modality=None):
            seen["auto"].append(image.shape)
            return Window(-1e9, 1e9, "unit")  # monotone: distinct slices stay distinct

        def encode(self, image):
            z = int(np.argmin([np.abs(apply_unit(vol[k]) - image).sum() for k in range(vol.shape[0])]))
            self.encoded.append(z)
            from scipy import ndimage as ndi

            return {"labels": ndi.label(self.truth[z])[0], "z": np.array(z), "original_size": np.array(image.shape)}

        def decode(self, embedding, prompt):
            seen["boxes"].append(prompt.box)
            return super().decode(embedding, prompt)

    def apply_unit(img):
        from napari_samlab.base.windowing import apply_window

        return apply_window(img, Window(-1e9, 1e9, "unit"))

    res, *_ = run(truth, {20: Prompt(box=bbox(truth[20]))}, model=Spy(vol, truth), vol=vol)
    assert seen["auto"] == [vol.shape]  # once, on the whole volume
    assert isinstance(res.window, Window)
    H, W = vol.shape[1:]
    for x0, y0, x1, y1 in seen["boxes"]:
        assert 0 <= x0 <= x1 <= W - 1 and 0 <= y0 <= y1 <= H - 1
    assert dice(res.mask, truth) >= 0.97


def test_prompt_free_family_segments_every_slice():
    truth = ellipsoid()
    vol = image_of(truth)

    class NoPrompt(OracleModel):
        needs_prompt = False

        def decode(self, embedding, prompt):
            m = embedding["labels"] > 0
            return Prediction(m, 1.0, None, labels=m.astype(np.uint8) * 3)

    res = propagate_volume(SlicePredictor(NoPrompt(vol, truth, family="samed")), vol, {},
                           settings=PropagationSettings(z_min=2, z_max=37))
    assert len(res.records) == 36 and res.strategy == "all-slices"
    assert dice(res.mask, truth) == 1.0 and set(np.unique(res.labels)) == {0, 3}


def test_bad_input_is_one_line_samlab_error():
    truth = ellipsoid()
    with pytest.raises(SamlabError, match="at least one"):
        run(truth, {})
    with pytest.raises(SamlabError, match="outside the volume"):
        run(truth, {99: Prompt(box=(1, 1, 5, 5))})
    with pytest.raises(SamlabError, match="outside the"):
        run(truth, {20: Prompt(box=(500, 500, 600, 600))})
    with pytest.raises(SamlabError, match="shape"):
        run(truth, {20: np.ones((3, 3), bool)})
    with pytest.raises(SamlabError, match="strategy"):
        run(truth, settings=PropagationSettings(strategy="lasso"))


def test_propagate_from_prompt_and_next_flagged():
    truth = ellipsoid()
    vol = image_of(truth)
    res = propagate_from_prompt(SlicePredictor(OracleModel(vol, truth)), vol, 20, Prompt(box=bbox(truth[20])))
    assert dice(res.mask, truth) >= 0.97
    flagged = res.flagged_slices()
    assert flagged and flagged[0] == res.z_extent()[0]
    assert res.next_flagged(20) == [f for f in flagged if f > 20][0]
    assert res.next_flagged(flagged[-1]) == flagged[0]  # wraps
    assert res.next_flagged(20, step=-1) == [f for f in flagged if f < 20][-1]


# -- interpolation -------------------------------------------------------
@pytest.mark.parametrize("method,a,b", [
    ("sdf", (40, 36, 8, 14), (40, 40, 16, 24)),       # growing
    ("aligned", (40, 36, 8, 14), (40, 40, 16, 24)),
    ("aligned", (40, 30, 8, 14), (44, 46, 16, 24)),   # growing and moving
])
def test_interpolation_between_two_ellipses(method, a, b):
    shape = (11, 80, 80)
    yy, xx = np.indices(shape[1:])

    def ell(cy, cx, ry, rx):
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1

    vol = np.zeros(shape, bool)
    vol[0], vol[10] = ell(*a), ell(*b)
    out = interpolate_slices(vol, [0, 10], method=method)
    for z in (3, 5, 8):
        t = z / 10
        expected = ell(*[(1 - t) * p + t * q for p, q in zip(a, b)])
        assert dice(out[z], expected) > 0.9, z
    assert np.array_equal(out[0], vol[0]) and np.array_equal(out[10], vol[10])
    areas = [int(out[z].sum()) for z in range(11)]
    assert areas == sorted(areas)
    # copying the nearer slice is clearly worse: the test can tell methods apart
    assert dice(interpolate_slices(vol, [0, 10], "nearest")[5], ell(*[(p + q) / 2 for p, q in zip(a, b)])) < 0.8


def test_interpolation_towards_an_empty_annotated_slice_shrinks():
    vol = np.zeros((5, 40, 40), bool)
    vol[0, 10:30, 10:30] = True
    out = interpolate_slices(vol, [0, 4])
    areas = [int(out[z].sum()) for z in range(5)]
    assert areas[0] > areas[1] > areas[2] > areas[3] > areas[4] == 0
    with pytest.raises(SamlabError):
        interpolate_slices(vol, [0, 4], method="spline")


# -- the classic engine's own step ("track") ------------------------------
def test_classic_track_follows_the_real_tumour_and_stops(lung):
    from napari_samlab.models.classic import ClassicModel

    img, lab = lung
    vol, truth = img[:, 280:440, 270:430], lab[:, 280:440, 270:430]
    pred = SlicePredictor(ClassicModel())
    res = propagate_from_prompt(pred, vol, 20, Prompt(box=bbox(truth[20])), window="auto", modality="CT")
    assert res.strategy == "track"
    assert dice(res.mask, truth) >= 0.80
    # both runs end near the tumour's ends (15..25), not at the volume's
    lo, hi = res.z_extent()
    assert 13 <= lo <= 17 and 24 <= hi <= 27
    assert all(s.rule_fired for s in res.stops)


def test_track_strategy_errors():
    truth = ellipsoid()
    vol = image_of(truth)
    with pytest.raises(SamlabError, match="no propagation step of its own"):
        run(truth, settings=PropagationSettings(strategy="track"), vol=vol)
    from napari_samlab.models.classic import ClassicModel

    with pytest.raises(SamlabError, match="strategy of its own"):
        run(truth, settings=PropagationSettings(strategy="track+box"), model=ClassicModel(), vol=vol)


def test_classic_track_on_a_synthetic_ellipsoid():
    from napari_samlab.models.classic import ClassicModel

    truth = ellipsoid()
    res, *_ = run(truth, model=ClassicModel())
    assert dice(res.mask, truth) >= 0.9
    assert set(res.stop_reasons.values()) <= {"empty", "low_iou", "area_jump", "intensity"}


def test_contained_on_a_crop_matches_the_whole_slice():
    # the engine dilates only the masks' bounding box plus the tolerance
    from scipy import ndimage as ndi

    from napari_samlab.propagate.engine import _contained

    rng = np.random.default_rng(0)
    for i in range(400):
        h, w = rng.integers(1, 30, 2)
        a = rng.random((h, w)) < rng.uniform(0, 0.5)
        b = ndi.binary_dilation(a, iterations=int(rng.integers(0, 3))) if i % 2 else rng.random((h, w)) < 0.2
        for tol in (1, 2, 3):
            whole = (a & ndi.binary_dilation(b, iterations=tol)).sum() >= 0.9 * a.sum()
            assert _contained(a, b, tol, 0.9) == whole
