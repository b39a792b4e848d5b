"""SlicePredictor: caching (memory LRU, zarr disk cache), windows, prompt checks."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from napari_samlab.errors import SamlabError  # noqa: E402
from napari_samlab.models.base import Prediction, SegmentationModel  # noqa: E402
from napari_samlab.predict.cache import DiskCache, MemoryCache, embedding_key  # noqa: E402
from napari_samlab.predict.predictor import SlicePredictor  # noqa: E402
from napari_samlab.predict.windowing import Window  # noqa: E402


class FakeModel(SegmentationModel):
    """Deterministic, fast engine: features derived from the windowed pixels."""

    family = "medsam"
    supports_points = False

    def __init__(self):
        self.seen = []

    def fingerprint(self):
        return "fake-1"

    def encode(self, image):
        self.seen.append(image)
        rng = np.random.default_rng(int(np.asarray(image, np.float64).sum()) % 2**32)
        return {"features": rng.standard_normal((1, 256, 64, 64)).astype(np.float32),
                "original_size": np.array(image.shape[:2])}

    def decode(self, emb, prompt):
        h, w = (int(v) for v in emb["original_size"])
        x0, y0, x1, y1 = (int(v) for v in prompt.box)
        mask = np.zeros((h, w), bool)
        mask[y0:y1 + 1, x0:x1 + 1] = emb["features"][0, 0, 0, 0] > -10
        return Prediction(mask, float(emb["features"][0, 0, 0, 1]))


@pytest.fixture
def ct():
    rng = np.random.default_rng(0)
    return (rng.integers(-1000, 1500, (3, 512, 512))).astype(np.int16)


def test_second_set_image_does_not_encode(ct):
    model = FakeModel()
    p = SlicePredictor(model)
    p.set_image(ct[0], window="auto")
    p.set_image(ct[0], window="auto")
    assert p.encoder_calls == 1 and p.memory_hits == 1
    p.set_image(ct[0].copy(), window="ct-lung")  # other window: other embedding
    assert p.encoder_calls == 2
    p.set_image(ct[1], window=Window(-160, 240))  # a Window object, as the CLI passes
    p.set_image(ct[1], window=(40, 400))  # the same mapping as level/width
    assert p.encoder_calls == 3
    mask, score = p.predict(box=(10, 20, 30, 40))
    assert mask.dtype == bool and mask.shape == (512, 512) and mask.sum() == 21 * 21
    # the window really was applied before encode
    assert model.seen[0].dtype == np.uint8


def test_memory_lru_bound(ct):
    model = FakeModel()
    one_mb = 4 * 256 * 64 * 64 / 2**20  # 4 MiB per embedding
    p = SlicePredictor(model, memory_mb=2.5 * one_mb)
    for z in range(3):
        p.set_image(ct[z], window="none")
    assert p.encoder_calls == 3
    p.set_image(ct[2], window="none")  # most recent: kept
    assert p.encoder_calls == 3
    p.set_image(ct[0], window="none")  # evicted
    assert p.encoder_calls == 4
    c = MemoryCache(0)  # bound below one entry: the newest is still kept
    c.put("a", {"x": np.zeros(10)})
    c.put("b", {"x": np.zeros(10)})
    assert "b" in c and "a" not in c and len(c) == 1


def test_disk_cache_roundtrip_and_fp16(ct, tmp_path):
    p = SlicePredictor(FakeModel(), cache_dir=tmp_path)
    p.set_image(ct[0])
    fresh = p.embedding["features"]
    q = SlicePredictor(FakeModel(), cache_dir=tmp_path)  # a new session
    q.set_image(ct[0])
    assert q.encoder_calls == 0 and q.disk_hits == 1
    hit = q.embedding["features"]
    assert hit.dtype == np.float32
    assert np.array_equal(hit, fresh.astype(np.float16).astype(np.float32))  # fp16-rounded by design
    r = SlicePredictor(FakeModel(), cache_dir=tmp_path / "f32", disk_dtype="float32")
    r.set_image(ct[0])
    s = SlicePredictor(FakeModel(), cache_dir=tmp_path / "f32", disk_dtype="float32")
    s.set_image(ct[0])
    assert s.disk_hits == 1 and np.array_equal(s.embedding["features"], fresh)


def _entry_files(cache_dir, key):
    root = DiskCache(cache_dir).path(key)
    return [f for f in root.rglob("*") if f.is_file()]


@pytest.mark.parametrize("damage", ["garbage_chunk", "truncate_chunk", "wrong_key", "flip_byte", "delete_meta"])
def test_corrupt_disk_entry_is_recomputed(ct, tmp_path, damage):
    p = SlicePredictor(FakeModel(), cache_dir=tmp_path, disk_dtype="float32")
    p.set_image(ct[0])
    key, fresh = p.key, p.embedding["features"].copy()
    files = _entry_files(tmp_path, key)
    chunks = [f for f in files if f.name != "zarr.json" and "features" in f.parts]
    assert chunks
    if damage == "garbage_chunk":
        chunks[0].write_bytes(b"\x00garbage" * 100)
    elif damage == "truncate_chunk":
        data = chunks[0].read_bytes()
        chunks[0].write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        data = bytearray(chunks[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunks[0].write_bytes(bytes(data))
    elif damage == "wrong_key":
        # an entry copied under another slice's name must not be trusted
        other = embedding_key(ct[1], "x", "y")
        dst = DiskCache(tmp_path).path(other)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(DiskCache(tmp_path).path(key), dst)
        q = SlicePredictor(FakeModel(), cache_dir=tmp_path)
        assert q._disk.get(other) is None and q._disk.rejected == 1
        return
    elif damage == "delete_meta":
        (DiskCache(tmp_path).path(key) / "zarr.json").unlink()
    q = SlicePredictor(FakeModel(), cache_dir=tmp_path, disk_dtype="float32")
    q.set_image(ct[0])
    assert q.encoder_calls == 1 and q.disk_hits == 0
    assert np.array_equal(q.embedding["features"], fresh)
    # the bad entry was replaced by a good one
    r = SlicePredictor(FakeModel(), cache_dir=tmp_path, disk_dtype="float32")
    r.set_image(ct[0])
    assert r.encoder_calls == 0 and r.disk_hits == 1


def test_prompt_validation(ct):
    p = SlicePredictor(FakeModel())
    with pytest.raises(SamlabError, match="call set_image"):
        p.predict(box=(0, 0, 1, 1))
    p.set_image(ct[0][:100, :200])
    with pytest.raises(SamlabError, match="outside the 200×100 slice"):
        p.predict(box=(0, 0, 200, 50))
    with pytest.raises(SamlabError, match="x1 < x0"):
        p.predict(box=(50, 0, 10, 50))
    with pytest.raises(SamlabError, match="four numbers"):
        p.predict(box=(1, 2, 3))
    with pytest.raises(SamlabError, match="trained with boxes only"):
        p.predict(points=[(5, 5)])
    with pytest.raises(SamlabError, match="needs a prompt"):
        p.predict()
    mask, _ = p.predict(box=(0, 0, 199, 99))  # inclusive corners: the whole slice
    assert mask.all()


def test_point_validation(ct):
    class PointModel(FakeModel):
        family = "sam"
        supports_points = True

        def decode(self, emb, prompt):
            return Prediction(np.zeros(tuple(emb["original_size"]), bool), float(len(prompt.points)),
                              extra={"labels": prompt.point_labels})

    p = SlicePredictor(PointModel())
    p.set_image(ct[0][:100, :200])
    with pytest.raises(SamlabError, match="outside"):
        p.predict(points=[(5, 100)])
    with pytest.raises(SamlabError, match="2 points but 1 point labels"):
        p.predict(points=[(5, 5), (6, 6)], point_labels=[1])
    with pytest.raises(SamlabError, match="1 \\(object\\) or 0"):
        p.predict(points=[(5, 5)], point_labels=[2])
    pred = p.predict_prompt(__import__("napari_samlab.models.base", fromlist=["Prompt"]).Prompt(points=[(5, 5), (6, 7)]))
    assert pred.extra["labels"] == [1, 1]


def test_cached_set_image_is_fast(ct):
    p = SlicePredictor(FakeModel())
    p.set_image(ct[0], window="auto")
    times = []
    for _ in range(7):
        t = time.perf_counter()
        p.set_image(ct[0], window="auto")
        times.append(time.perf_counter() - t)
    assert p.encoder_calls == 1
    assert np.median(times) < 0.05  # target ≤ 5 ms; loose for a loaded CI machine


def test_fp16_disk_hit_effect_on_medsam_masks(tmp_path):
    """How much an fp16 disk hit changes real masks (small MedSAM, CT slice): tiny, bounded."""
    import SimpleITK as sitk

    import checkpoint_factory as cf
    from napari_samlab.models.registry import model_from_state_dict

    ct = sitk.GetArrayFromImage(sitk.ReadImage("/work/shared/data/ct_chest_lung2/lung2_image.nrrd"))[30]
    model = model_from_state_dict(cf.sam_state_dict(seed=1), "medsam", "m.pth")
    a = SlicePredictor(model, cache_dir=tmp_path)
    a.set_image(ct)
    b = SlicePredictor(model, cache_dir=tmp_path)
    b.set_image(ct)
    assert b.disk_hits == 1 and b.encoder_calls == 0
    diffs = []
    for box in [(100, 150, 250, 350), (280, 120, 420, 330), (37, 41, 301, 263), (200, 200, 232, 230)]:
        ma, _ = a.predict(box=box)
        mb, _ = b.predict(box=box)
        diffs.append(int(np.sum(ma != mb)))
    print("fp16 disk hit: differing pixels per mask:", diffs)
    assert max(diffs) <= 0.01 * ct.size
