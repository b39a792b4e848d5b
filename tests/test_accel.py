"""Accelerated image-encoder backends agree with PyTorch and cache their exports.

A small SAM ViT (256 px, width 96, depth 2, one global-attention block)
keeps every export to a few seconds.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from napari_samlab.models import accel
from napari_samlab.models.accel import accelerated_encoder, backend_available, physical_cores
from napari_samlab.models.accel_runners import _torch_threads
from napari_samlab.models.base import SegmentationModel

SHAPE = (1, 3, 256, 256)
EXPORT_BACKENDS = [b for b in ("onnxruntime", "openvino") if backend_available(b)]


def small_vit(seed: int = 0):
    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(seed)
    enc = ImageEncoderViT(
        img_size=256, patch_size=16, embed_dim=96, depth=2, num_heads=2, mlp_ratio=4.0, out_chans=32,
        qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        global_attn_indexes=(1,), window_size=7,
    )
    # random rel-pos tables (zeros at init would hide a wrong relative-position export)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.5)
    return enc.eval()


@pytest.fixture(scope="module")
def encoder():
    return small_vit()


@pytest.fixture(scope="module")
def image():
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def reference(encoder, image):
    with torch.no_grad():
        return encoder(image)


@pytest.fixture(scope="module")
def reference_at_core_count(encoder, image):
    # the module at the thread count accelerated_encoder defaults to: a float
    # sum split over another number of threads rounds differently, and CI
    # machines' PyTorch default (logical CPUs) need not be their core count
    with _torch_threads(physical_cores()), torch.no_grad():
        return encoder(image)


def test_torch_backend_is_the_module(encoder, image, reference_at_core_count):
    f = accelerated_encoder(encoder, SHAPE, backend="torch", weights_key="w0")
    out = f(image.numpy())  # numpy in, torch out
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.equal(out, reference_at_core_count)
    assert f.backend == "torch" and f.exact and f.cache_path is None


@pytest.mark.parametrize("backend", EXPORT_BACKENDS)
def test_export_matches_torch_and_is_cached(backend, encoder, image, reference, tmp_path):
    f = accelerated_encoder(encoder, SHAPE, backend=backend, cache_dir=tmp_path, weights_key="w0")
    assert f.exported and f.backend == backend and f.exact
    out = f(image)
    assert out.shape == reference.shape
    # fp32 all the way: only float re-association differs
    assert torch.allclose(out, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))
    assert f.verify_error is not None and f.verify_error < 1e-4

    # a second construction (as in a new process) loads the file, no export
    g = accelerated_encoder(encoder, SHAPE, backend=backend, cache_dir=tmp_path, weights_key="w0")
    assert not g.exported and g.cache_path == f.cache_path
    assert torch.equal(g(image), out)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1


# the cache key is built the same way for every backend: one backend suffices
@pytest.mark.parametrize("backend", EXPORT_BACKENDS[:1])
def test_cache_invalidated_when_weights_change(backend, image, tmp_path):
    a = small_vit(seed=0)
    fa = accelerated_encoder(a, SHAPE, backend=backend, cache_dir=tmp_path, weights_key="model-a")
    b = small_vit(seed=1)
    # same weights_key on purpose: the module's own weight hash must still tell them apart
    fb = accelerated_encoder(b, SHAPE, backend=backend, cache_dir=tmp_path, weights_key="model-a")
    assert fb.exported and fb.cache_path != fa.cache_path
    with torch.no_grad():
        ref_b = b(image)
    assert torch.allclose(fb(image), ref_b, rtol=1e-4, atol=1e-4 * float(ref_b.abs().max()))
    # a different key with the same weights is a different entry too
    fk = accelerated_encoder(a, SHAPE, backend=backend, cache_dir=tmp_path, weights_key="model-a-v2")
    assert fk.exported and fk.cache_path not in (fa.cache_path, fb.cache_path)
    # and a different shape
    with pytest.raises(ValueError, match="shape"):
        fa(torch.zeros(1, 3, 128, 128))


CORRUPTIONS = [("onnxruntime", "truncate"), ("onnxruntime", "delete_meta"), ("openvino", "flip")]


@pytest.mark.parametrize("backend,damage", [c for c in CORRUPTIONS if c[0] in EXPORT_BACKENDS])
def test_corrupt_cache_is_rebuilt(backend, damage, encoder, image, reference, tmp_path):
    f = accelerated_encoder(encoder, SHAPE, backend=backend, cache_dir=tmp_path, weights_key="w0")
    meta_file = f.cache_path / "meta.json"
    biggest = max((p for p in f.cache_path.iterdir() if p.name != "meta.json"), key=lambda p: p.stat().st_size)
    data = biggest.read_bytes()
    if damage == "truncate":
        biggest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one weight byte changed: only the hash sees it
        pos = len(data) // 2
        biggest.write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:])
    else:
        meta_file.unlink()
    g = accelerated_encoder(encoder, SHAPE, backend=backend, cache_dir=tmp_path, weights_key="w0")
    assert g.exported
    assert torch.allclose(g(image), reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))
    h = accelerated_encoder(encoder, SHAPE, backend=backend, cache_dir=tmp_path, weights_key="w0")
    assert not h.exported


def test_auto_picks_an_exact_export_backend(encoder, image, reference, tmp_path):
    f = accelerated_encoder(encoder, SHAPE, backend="auto", cache_dir=tmp_path, weights_key="w0")
    expected = EXPORT_BACKENDS[0] if EXPORT_BACKENDS else "torch"
    if "openvino" in EXPORT_BACKENDS:
        expected = "openvino"
    assert f.backend == expected and f.exact
    assert torch.allclose(f(image), reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))


def test_auto_falls_back_to_torch_when_exports_fail(encoder, image, reference_at_core_count, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(accel, "_build_entry", broken)
    f = accelerated_encoder(encoder, SHAPE, backend="auto", cache_dir=tmp_path, weights_key="w0")
    assert f.backend == "torch"
    assert torch.equal(f(image), reference_at_core_count)
    if EXPORT_BACKENDS:  # asked for by name, the failure is not hidden
        with pytest.raises(RuntimeError, match="exploded"):
            accelerated_encoder(encoder, SHAPE, backend=EXPORT_BACKENDS[0], cache_dir=tmp_path, weights_key="w0")


def test_auto_refuses_an_inexact_export(encoder, image, reference, tmp_path, monkeypatch):
    real = accel._load_runner

    def off_by_a_lot(*args, **kwargs):
        run = real(*args, **kwargs)
        return lambda x: run(x) * 1.01  # 1% off: not exact

    monkeypatch.setattr(accel, "_load_runner", off_by_a_lot)
    f = accelerated_encoder(encoder, SHAPE, backend="auto", cache_dir=tmp_path, weights_key="w0")
    assert f.backend == "torch"


def test_cache_dir_from_environment(encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMLAB_CACHE_DIR", str(tmp_path / "env"))
    assert accel.default_cache_dir() == tmp_path / "env" / "encoders"
    if EXPORT_BACKENDS:
        f = accelerated_encoder(encoder, SHAPE, backend=EXPORT_BACKENDS[0], weights_key="w0", verify=False)
        assert f.cache_path.parent == tmp_path / "env" / "encoders"


def test_bad_arguments(encoder):
    with pytest.raises(ValueError, match="unknown encoder backend"):
        accelerated_encoder(encoder, SHAPE, backend="tensorrt", weights_key="w0")
    with pytest.raises(ValueError, match="input_shape"):
        accelerated_encoder(encoder, (3, 256, 256), weights_key="w0")


@pytest.mark.skipif(not backend_available("onnxruntime-int8"), reason="onnxruntime not installed")
def test_int8_is_opt_in_and_close(encoder, image, reference, tmp_path):
    f = accelerated_encoder(encoder, SHAPE, backend="onnxruntime-int8", cache_dir=tmp_path, weights_key="w0")
    assert not f.exact
    a, b = f(image).numpy().ravel(), reference.numpy().ravel()
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert 0.98 < cos < 1.0


def test_physical_cores_positive():
    assert 1 <= accel.physical_cores() <= (torch.get_num_threads() + 64)


@pytest.mark.skipif(not EXPORT_BACKENDS, reason="no export backend installed")
def test_load_model_encoder_backend_choice(tmp_path, monkeypatch):
    """Exported encoders by default where faithful; torch on request; own cache keys."""
    import checkpoint_factory as factory

    from napari_samlab import SlicePredictor, load_model
    from napari_samlab.errors import SamlabError

    monkeypatch.setenv("SAMLAB_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = factory.save(factory.litemedsam_state_dict(seed=5), tmp_path / "lite.pth")
    monkeypatch.delenv("SAMLAB_ENCODER_BACKEND", raising=False)
    assert load_model(ckpt, family="litemedsam").encoder_backend == "auto"
    monkeypatch.setenv("SAMLAB_ENCODER_BACKEND", "torch")
    assert load_model(ckpt, family="litemedsam").encoder_backend == "torch"
    plain = load_model(ckpt, family="litemedsam", encoder_backend="torch")
    fast = load_model(ckpt, family="litemedsam", encoder_backend=EXPORT_BACKENDS[0])
    assert fast.encoder_backend == EXPORT_BACKENDS[0]
    img = (np.random.default_rng(0).random((120, 150)) * 255).astype(np.uint8)
    img[40:80, 50:110] = 220
    box = (45, 35, 115, 85)
    p_plain, p_fast = SlicePredictor(plain), SlicePredictor(fast)
    p_plain.set_image(img, window="none")
    p_fast.set_image(img, window="none")
    m0, _ = p_plain.predict(box=box)
    m1, _ = p_fast.predict(box=box)
    inter, union = np.logical_and(m0, m1).sum(), np.logical_or(m0, m1).sum()
    assert union == 0 or inter / union > 0.99
    assert p_plain.key != p_fast.key
    with pytest.raises(SamlabError, match="encoder backend"):
        load_model(ckpt, family="litemedsam", encoder_backend="tensorrt")


# ----------------------------------------------------------------------
# torch-autocast: opt-in lower precision
def test_torch_autocast_is_opt_in_and_close(encoder, image, reference):
    assert "torch-autocast" in accel.APPROX_BACKENDS and "torch-autocast" not in accel.AUTO_ORDER
    f = accelerated_encoder(encoder, SHAPE, backend="torch-autocast", weights_key="w0")
    assert f.backend == "torch-autocast" and not f.exact and f.cache_path is None
    out = f(image)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert not torch.equal(out, reference)  # bf16 really ran
    a, b = out.numpy().ravel(), reference.numpy().ravel()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99


def test_autocast_dtype_per_device_type():
    assert accel.autocast_dtype("cuda") == torch.float16
    assert accel.autocast_dtype("cpu") == torch.bfloat16


class TinyModel(SegmentationModel):
    """The smallest engine around one encoder: what is tested is run_encoder."""

    family = "tiny"

    def __init__(self, encoder, backend="torch", device="cpu"):
        self.encoder, self.encoder_backend, self.device = encoder.eval(), backend, device

    def fingerprint(self):
        return "tiny-" + accel._module_digest(self.encoder)

    def encode(self, x):
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if x.ndim == 2:  # a slice from SlicePredictor
            x = x[None, None].repeat(1, 3, 1, 1)
        with torch.no_grad():
            return {"image_embedding": self.run_encoder(self.encoder, x).numpy()}

    def decode(self, embedding, prompt):
        raise NotImplementedError("encoder tests only")


@pytest.mark.parametrize("backend", ["auto", "torch", "openvino", "onnxruntime", "torch-autocast"])
def test_run_encoder_on_a_gpu_device_uses_torch(backend, encoder, image, reference, tmp_path, monkeypatch):
    """model.device "cuda": exports (CPU-only) become torch fp32, autocast stays autocast.

    The weights stay on the CPU here (no GPU on the test machine): the
    dispatch is what is checked; autocast picks its dtype from where the
    weights are.
    """
    monkeypatch.setenv("SAMLAB_CACHE_DIR", str(tmp_path))
    model = TinyModel(encoder, backend, device="cuda")
    out = model.encode(image)["image_embedding"]
    if backend == "torch-autocast":
        assert model.last_encoder_backend == "torch-autocast"
        assert not np.array_equal(out, reference.numpy())
    else:
        assert model.last_encoder_backend == "torch"
        assert np.array_equal(out, reference.numpy())
    assert not any(tmp_path.iterdir())  # nothing exported


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_encoder_fp32_and_autocast(image, reference):
    enc = small_vit().cuda()
    x = image.cuda()
    for backend in ("auto", "torch-autocast"):
        model = TinyModel(enc, backend, device="cuda")
        with torch.no_grad():
            out = model.run_encoder(enc, x)
        assert out.dtype == torch.float32 and out.is_cuda
        a, b = out.cpu().numpy().ravel(), reference.numpy().ravel()
        cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        if backend == "auto":
            assert model.last_encoder_backend == "torch" and cos > 0.99999
        else:
            assert model.last_encoder_backend == "torch-autocast" and 0.99 < cos < 1.0


def test_predictor_cache_key_per_backend(encoder, tmp_path, monkeypatch):
    from napari_samlab import SlicePredictor

    monkeypatch.setenv("SAMLAB_CACHE_DIR", str(tmp_path))
    img = np.random.default_rng(0).random(SHAPE[2:]).astype(np.float32)
    keys = {}
    for backend in ("torch", "torch-autocast", *EXPORT_BACKENDS[:1]):
        model = TinyModel(encoder, backend)
        p = SlicePredictor(model)
        p.set_image(img, window="none")
        assert model.last_encoder_backend == backend
        keys[backend] = p.key
    assert len(set(keys.values())) == len(keys)  # an approximate embedding never answers for an exact one


# ----------------------------------------------------------------------
# cancellable encodes
def slow_encoder(width: int = 48, depth: int = 10):
    """Few weights, much arithmetic: about a second per 384 px encode, an export in a second."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, width, 3, padding=1)]
    for _ in range(depth):
        layers += [torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).eval()


def test_cancellable_is_per_thread_and_nests():
    import threading

    from napari_samlab.errors import Cancelled, SamlabError
    from napari_samlab.base.cancel import cancellable, current_cancel_event, raise_if_cancelled

    assert not issubclass(Cancelled, SamlabError)
    outer, inner = threading.Event(), threading.Event()
    raise_if_cancelled()  # no context: nothing to do
    with cancellable(outer):
        with cancellable(inner):
            assert current_cancel_event() is inner
            outer.set()
            raise_if_cancelled()  # only the innermost event counts
        assert current_cancel_event() is outer
        seen = []
        t = threading.Thread(target=lambda: seen.append(current_cancel_event()))
        t.start()
        t.join()
        assert seen == [None]  # other threads are not affected
        with pytest.raises(Cancelled):
            raise_if_cancelled()
    assert current_cancel_event() is None


def _spy_on_interruption(backend, monkeypatch, started, outcome):
    """Patch the backend's run calls: ``started`` fires when an encode that can be
    cancelled begins; ``outcome`` gets "stopped" when the backend really
    stopped it part-way, "finished" when it ran to the end."""
    if backend == "onnxruntime":
        import onnxruntime as ort

        real_run = ort.InferenceSession.run

        def run(self, output_names, input_feed, run_options=None):
            if run_options is None:
                return real_run(self, output_names, input_feed)
            started.set()
            try:
                out = real_run(self, output_names, input_feed, run_options)
            except Exception:
                outcome.append("stopped")  # RunOptions.terminate ended it between kernels
                raise
            outcome.append("finished")
            return out

        monkeypatch.setattr(ort.InferenceSession, "run", run)
    elif backend == "openvino":
        import openvino as ov

        real_start, real_wait = ov.InferRequest.start_async, ov.InferRequest.wait

        def start_async(self, *args, **kwargs):
            started.set()
            return real_start(self, *args, **kwargs)

        def wait(self):  # called only after request.cancel()
            try:
                real_wait(self)
            except RuntimeError:
                outcome.append("stopped")  # "Infer Request was canceled"
                raise
            outcome.append("finished")

        monkeypatch.setattr(ov.InferRequest, "start_async", start_async)
        monkeypatch.setattr(ov.InferRequest, "wait", wait)


@pytest.mark.parametrize("backend", ["torch", *EXPORT_BACKENDS])
def test_cancel_stops_an_encode(backend, tmp_path, monkeypatch):
    # how much sooner a cancelled encode returns is measured by
    # benchmarks/bench_cancel.py; here: that the backend really stopped it
    import threading

    from napari_samlab.errors import Cancelled
    from napari_samlab.base.cancel import cancellable

    monkeypatch.setenv("SAMLAB_CACHE_DIR", str(tmp_path))
    model = TinyModel(slow_encoder(), backend)
    size = 128 if backend == "torch" else 384  # torch always finishes its forward pass: keep it short
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    want = model.encode(x)["image_embedding"]  # exports; outside cancellable(): runs as before
    assert model.last_encoder_backend == backend

    stop = threading.Event()
    stop.set()
    with cancellable(stop), pytest.raises(Cancelled):  # set before: nothing runs
        model.encode(x)

    started, outcome = threading.Event(), []
    _spy_on_interruption(backend, monkeypatch, started, outcome)
    stop = threading.Event()
    # set the event once the backend's run has begun (torch: at once)
    setter = threading.Thread(target=lambda: (backend == "torch" or started.wait(), stop.set()))
    setter.start()
    with cancellable(stop), pytest.raises(Cancelled):
        model.encode(x)
    setter.join()
    if backend != "torch":  # torch finishes its forward pass, then stops
        assert started.is_set() and outcome == ["stopped"], outcome
    # the model is still usable, with the same result
    with cancellable(threading.Event()):
        again = model.encode(x)["image_embedding"]
    assert np.array_equal(again, want)


# ----------------------------------------------------------------------
# PyTorch's copy of the weights leaves the heap once an export runs
def _mapped_spill_files() -> list:
    maps = open("/proc/self/maps").read().splitlines()
    return [line for line in maps if ".spill-" in line and "(deleted)" in line]


@pytest.mark.skipif(not EXPORT_BACKENDS or not hasattr(__import__("os"), "fork"), reason="needs an export backend, POSIX")
def test_export_spills_torch_weights_to_a_map_with_identical_values(image, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMLAB_CACHE_DIR", str(tmp_path))
    enc = small_vit()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    n0 = len(_mapped_spill_files())
    model = TinyModel(enc, EXPORT_BACKENDS[-1])
    fast = model.encode(image)["image_embedding"]
    assert model.last_encoder_backend == EXPORT_BACKENDS[-1]
    assert enc._samlab_spilled is True
    assert len(_mapped_spill_files()) == n0 + 1  # the weights live in an unlinked, mapped file ...
    assert not list(tmp_path.rglob(".spill-*"))  # ... that has no name left to clean up
    after = enc.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model.encoder_backend = "torch"  # PyTorch again: pages come back from the file
    assert np.array_equal(model.encode(image)["image_embedding"], reference.numpy())
    assert np.allclose(fast, reference.numpy(), rtol=1e-4, atol=1e-4 * float(reference.abs().max()))


def test_spill_keeps_weights_in_memory_when_the_folder_is_unusable(tmp_path):
    enc = small_vit()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    assert accel.spill_weights(enc, blocker / "sub") is False
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
