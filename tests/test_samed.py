"""SAMed / SAMed_h / SAMed_s: detection, building, faithfulness against upstream's inference.

Checkpoints are written in upstream's file layout with random weights and a
small image encoder (64 wide).  The reference path below follows
hitachinsk/SAMed step by step by a different route than the package: it
loads the base like ``build_sam.load_from`` (global blocks picked by the key
text, as upstream's ViT-B code does), wraps ``qkv`` / decoder projections in
LoRA modules instead of merging, and runs ``test_single_volume`` by hand.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")
import torch.nn.functional as F  # noqa: E402
from scipy.ndimage import zoom  # noqa: E402
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer  # noqa: E402
from torch import nn  # noqa: E402

from napari_samlab.errors import SamlabError  # noqa: E402
from napari_samlab.models.base import Prompt  # noqa: E402
from napari_samlab.models.samed import build_samed, detect_samed  # noqa: E402
from napari_samlab.base.windowing import Window, apply_window  # noqa: E402

VIT_B_GLOBAL = [2, 5, 8, 11]


# --------------------------------------------------------------------------
# checkpoint writers (upstream layouts)
# --------------------------------------------------------------------------
def make_sam(img_size, dim, depth, heads, global_idx, num_multimask, pixel_mean=None, pixel_std=None, device=None):
    """segment_anything's Sam as SAMed's _build_sam makes it (window 14, 256-d decoder)."""
    kw = {}
    if pixel_mean is not None:
        kw = {"pixel_mean": pixel_mean, "pixel_std": pixel_std}
    ctx = torch.device(device) if device else torch.device("cpu")
    with ctx:
        return Sam(
            image_encoder=ImageEncoderViT(
                depth=depth, embed_dim=dim, img_size=img_size, mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
                qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_idx, window_size=14, out_chans=256,
            ),
            prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(img_size // 16, img_size // 16),
                                         input_image_size=(img_size, img_size), mask_in_chans=16),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=num_multimask,
                transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
            ),
            **kw,
        )


def randomize(sd: dict, seed: int) -> dict:
    """Random values of every tensor (norm scales near 1) so that nothing is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        r = torch.randn(v.shape, generator=g)
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or ".norm" in k and k.endswith("weight") \
                or (k.startswith("image_encoder.neck.") and k.endswith(("1.weight", "3.weight"))):
            out[k] = 1.0 + 0.1 * r
        elif "positional_encoding_gaussian_matrix" in k:
            out[k] = r
        else:
            out[k] = 0.2 * r
    return out


def write_base(tmp_path, dim=64, depth=12, heads=4, global_idx=VIT_B_GLOBAL, seed=1):
    """A small SAM base (1024 px, 64x64 pos_embed, 127-row global tables) saved like sam_vit_b_01ec64.pth."""
    sd = randomize(make_sam(1024, dim, depth, heads, global_idx, 3).state_dict(), seed)
    path = tmp_path / "sam_base.pth"
    torch.save(sd, path)
    return path


def write_samed(tmp_path, dim=64, depth=12, heads=4, global_idx=VIT_B_GLOBAL, num_classes=8, rank=4,
                decoder_lora=False, seed=2, name="samed_lora.pth"):
    """A LoRA file as LoRA_Sam.save_lora_parameters writes it (SAMed or SAMed_s)."""
    g = torch.Generator().manual_seed(seed)
    trained = randomize(make_sam(512, dim, depth, heads, global_idx, num_classes).state_dict(), seed + 100)
    out = {}
    for i in range(2 * depth):
        out[f"w_a_{i:03d}"] = 0.3 * torch.randn(rank, dim, generator=g)
        out[f"w_b_{i:03d}"] = 0.3 * torch.randn(dim, rank, generator=g)  # upstream inits B to 0; trained ones are not
    if decoder_lora:
        for short, internal in (("sa", 256), ("cti", 128), ("cit", 128)):
            for i in range(4):  # 2 layers x (q, v)
                out[f"{short}_a_{i:03d}"] = 0.3 * torch.randn(rank, 256, generator=g)
                out[f"{short}_b_{i:03d}"] = 0.3 * torch.randn(internal, rank, generator=g)
        for tag in ("q", "v"):
            out[f"fati_{tag}a"] = 0.3 * torch.randn(rank, 256, generator=g)
            out[f"fati_{tag}b"] = 0.3 * torch.randn(128, rank, generator=g)
    for k, v in trained.items():
        if k.startswith("prompt_encoder."):
            out[k] = v
        if k.startswith("mask_decoder.") and not (decoder_lora and "transformer" in k):
            out[k] = v
    path = tmp_path / name
    torch.save(out, path)
    return path


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------
# reference: upstream's route
# --------------------------------------------------------------------------
class RefLoRAqkv(nn.Module):
    def __init__(self, qkv, a_q, b_q, a_v, b_v):
        super().__init__()
        self.qkv, self.a_q, self.b_q, self.a_v, self.b_v = qkv, a_q, b_q, a_v, b_v
        self.dim = qkv.in_features

    def forward(self, x):
        qkv = self.qkv(x)
        qkv[:, :, :, : self.dim] += self.b_q(self.a_q(x))
        qkv[:, :, :, -self.dim:] += self.b_v(self.a_v(x))
        return qkv


class RefLoRAproj(nn.Module):
    def __init__(self, proj, a, b):
        super().__init__()
        self.proj, self.a, self.b = proj, a, b

    def forward(self, x):
        return self.proj(x) + self.b(self.a(x))


def _lin(weight):
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight = nn.Parameter(weight.clone())
    return layer


def reference_net(lora, base, dim=64, depth=12, heads=4, global_idx=VIT_B_GLOBAL):
    num_classes = lora["mask_decoder.mask_tokens.weight"].shape[0] - 1
    decoder_lora = "sa_a_000" in lora
    sam = make_sam(512, dim, depth, heads, global_idx, num_classes, [0, 0, 0], [1, 1, 1])
    # build_sam.load_from
    sam_dict = sam.state_dict()
    excl = ["mask_tokens", "output_hypernetworks_mlps", "iou_prediction_head"]
    new = {k: v for k, v in base.items() if k in sam_dict and not any(e in k for e in excl)}
    pos = new["image_encoder.pos_embed"].permute(0, 3, 1, 2)
    new["image_encoder.pos_embed"] = F.interpolate(pos, (32, 32), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    rel_keys = [k for k in sam_dict if "rel_pos" in k]
    for k in [k for k in rel_keys if "2" in k or "5" in k or "8" in k or "11" in k]:
        h, w = new[k].shape
        new[k] = F.interpolate(new[k][None, None], (63, w), mode="bilinear", align_corners=False)[0, 0]
    sam_dict.update(new)
    sam.load_state_dict(sam_dict)
    # LoRA_Sam surgery
    for i, blk in enumerate(sam.image_encoder.blocks):
        blk.attn.qkv = RefLoRAqkv(blk.attn.qkv, _lin(lora[f"w_a_{2*i:03d}"]), _lin(lora[f"w_b_{2*i:03d}"]),
                                  _lin(lora[f"w_a_{2*i+1:03d}"]), _lin(lora[f"w_b_{2*i+1:03d}"]))
    if decoder_lora:
        tr = sam.mask_decoder.transformer
        for li, blk in enumerate(tr.layers):
            for short, attn in (("sa", blk.self_attn), ("cti", blk.cross_attn_token_to_image),
                                ("cit", blk.cross_attn_image_to_token)):
                attn.q_proj = RefLoRAproj(attn.q_proj, _lin(lora[f"{short}_a_{2*li:03d}"]), _lin(lora[f"{short}_b_{2*li:03d}"]))
                attn.v_proj = RefLoRAproj(attn.v_proj, _lin(lora[f"{short}_a_{2*li+1:03d}"]), _lin(lora[f"{short}_b_{2*li+1:03d}"]))
        fa = tr.final_attn_token_to_image
        fa.q_proj = RefLoRAproj(fa.q_proj, _lin(lora["fati_qa"]), _lin(lora["fati_qb"]))
        fa.v_proj = RefLoRAproj(fa.v_proj, _lin(lora["fati_va"]), _lin(lora["fati_vb"]))
    # load_lora_parameters: prompt encoder + mask decoder (without transformer for SAMed_s)
    sd = sam.state_dict()
    for k in sd:
        if k.startswith("prompt_encoder") or (k.startswith("mask_decoder") and not (decoder_lora and "transformer" in k)):
            sd[k] = lora[k]
    sam.load_state_dict(sd)
    return sam.eval()


def reference_slice(sam, slc, input_size=224, patch_size=512):
    """utils.test_single_volume for one slice; returns (class map, 512 logits)."""
    x, y = slc.shape
    s = slc
    if x != input_size or y != input_size:
        s = zoom(s, (input_size / x, input_size / y), order=3)
    nx, ny = s.shape
    if nx != patch_size or ny != patch_size:
        s = zoom(s, (patch_size / nx, patch_size / ny), order=3)
    inputs = torch.from_numpy(s).unsqueeze(0).unsqueeze(0).float().repeat(1, 3, 1, 1)
    with torch.no_grad():
        img = sam.preprocess(inputs)
        emb = sam.image_encoder(img)
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        low, _ = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
        masks = sam.postprocess_masks(low, input_size=(patch_size, patch_size), original_size=(patch_size, patch_size))
        out = torch.argmax(torch.softmax(masks, dim=1), dim=1).squeeze(0).numpy()
    oh, ow = out.shape
    pred = zoom(out, (x / oh, y / ow), order=0) if (x != oh or y != ow) else out
    return pred, masks[0]


def ct_slice(h=90, w=76, seed=0):
    """A CT-like slice in HU with an organ-ish blob, windowed as the predictor does for SAMed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    hu = -900 + 40 * rng.standard_normal((h, w))
    body = (yy - h / 2) ** 2 / (0.45 * h) ** 2 + (xx - w / 2) ** 2 / (0.45 * w) ** 2 < 1
    hu[body] = 30 + 30 * rng.standard_normal(body.sum())
    organ = (yy - 0.4 * h) ** 2 + (xx - 0.6 * w) ** 2 < (0.15 * h) ** 2
    hu[organ] = 180
    return apply_window(hu.astype(np.float32), Window(-125.0, 275.0, "unit"))


def assert_same_classes(ours, ref, ref_logits):
    """Class maps identical, except (at most a handful of) exact float near-ties of the reference."""
    diff = ours != ref
    if diff.any():
        top2 = torch.topk(ref_logits, 2, dim=0).values
        gap = (top2[0] - top2[1]).numpy()
        # pixels of the 512 grid that are near-ties; a mismatch anywhere else is a real error
        assert diff.mean() < 1e-3 and gap.min() < 1e-4, f"{diff.sum()} pixels differ"
    else:
        assert np.array_equal(ours, ref)


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------
def test_detect_samed_and_others(tmp_path):
    lora = load(write_samed(tmp_path))
    info = detect_samed(lora)
    assert info["family"] == "samed" and info["variant"] == "samed"
    assert info["lora_rank"] == 4 and info["num_classes"] == 8 and info["image_size"] == 512
    assert info["depth"] == 12 and info["embed_dim"] == 64
    lora_s = load(write_samed(tmp_path, decoder_lora=True, name="s.pth"))
    assert detect_samed(lora_s)["variant"] == "samed_s"
    # wrapped / prefixed forms are recognised too
    assert detect_samed({"state_dict": {"module." + k: v for k, v in lora.items()}})["num_classes"] == 8
    # not SAMed: a SAM base, an empty dict
    assert detect_samed(load(write_base(tmp_path))) is None
    assert detect_samed({}) is None


# The faithfulness tests run with the upstream PyTorch encoder and with the
# fastest exported one (issue 6: the fast path must keep the masks).
def test_samed_matches_upstream_inference(tmp_path, each_encoder_backend):
    base = load(write_base(tmp_path))
    lora = load(write_samed(tmp_path))
    model = build_samed(lora, base)
    model.encoder_backend = each_encoder_backend  # build_samed keeps torch; load_model would pick
    assert model.family == "samed" and model.needs_prompt is False and model.num_classes == 8
    ref = reference_net(lora, base)
    for shape, seed in (((90, 76), 0),):
        slc = ct_slice(*shape, seed=seed)
        emb = model.encode(slc)
        assert model.last_encoder_backend == each_encoder_backend
        assert emb["image_embedding"].shape == (1, 256, 32, 32)
        assert list(emb["original_size"]) == list(shape)
        pred = model.decode(emb, Prompt())
        ref_map, ref_logits = reference_slice(ref, slc)
        ours_logits = model.class_logits(emb)[0]
        scale = float(ref_logits.abs().max())
        assert torch.allclose(ours_logits, ref_logits, atol=2e-4 * scale, rtol=0)
        assert pred.labels.dtype == np.uint8 and pred.labels.shape == shape
        assert len(np.unique(pred.labels)) >= 2  # a real class map, not a constant
        assert_same_classes(pred.labels, ref_map, ref_logits)
        assert np.array_equal(pred.mask, pred.labels > 0)
        assert 0.0 < pred.score <= 1.0


def test_samed_s_decoder_lora_matches_upstream(tmp_path, each_encoder_backend):
    base = load(write_base(tmp_path))
    lora = load(write_samed(tmp_path, decoder_lora=True, num_classes=4, name="samed_s.pth"))
    assert not any("transformer" in k for k in lora if k.startswith("mask_decoder."))
    model = build_samed(lora, base)
    model.encoder_backend = each_encoder_backend
    assert model.variant == "samed_s" and model.num_classes == 4
    # decoder transformer = base + B@A on q/v of the right layers, untouched elsewhere
    sd = model.sam.state_dict()
    k = "mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj.weight"
    want = base[k].double() + lora["cit_b_003"].double() @ lora["cit_a_003"].double()
    assert torch.allclose(sd[k].double(), want, atol=1e-6)
    k = "mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj.weight"
    assert torch.equal(sd[k], base[k])
    ref = reference_net(lora, base)
    slc = ct_slice(70, 100, seed=3)
    emb = model.encode(slc)
    assert model.last_encoder_backend == each_encoder_backend
    pred = model.decode(emb, Prompt())
    ref_map, ref_logits = reference_slice(ref, slc)
    assert len(np.unique(pred.labels)) >= 2
    assert_same_classes(pred.labels, ref_map, ref_logits)


def test_load_model_default_encoder_backend(tmp_path, monkeypatch):
    """SAMed is among the families with the exported encoder on by default."""
    from napari_samlab.models.registry import load_model

    monkeypatch.delenv("SAMLAB_ENCODER_BACKEND", raising=False)
    base, lora = write_base(tmp_path, depth=2, global_idx=[1]), write_samed(tmp_path, depth=2, global_idx=[1])
    assert load_model(lora, base_checkpoint=base).encoder_backend == "auto"
    assert load_model(lora, base_checkpoint=base, encoder_backend="torch").encoder_backend == "torch"


def test_samed_h_layout_small(tmp_path):
    """ViT-H layout (32 blocks, global 7/15/23/31) at a small width: global blocks found from the base."""
    gidx = [7, 15, 23, 31]
    base = randomize(make_sam(1024, 32, 32, 2, gidx, 3).state_dict(), 5)
    lora = load(write_samed(tmp_path, dim=32, depth=32, heads=2, global_idx=gidx, num_classes=2, name="h.pth"))
    model = build_samed(lora, base)
    enc = model.sam.image_encoder
    assert [i for i, b in enumerate(enc.blocks) if b.window_size == 0] == gidx
    assert enc.blocks[7].attn.rel_pos_h.shape == (63, 16)
    assert enc.blocks[8].attn.rel_pos_h.shape == (27, 16)
    # SAMed_h's load_from picks the blocks by index: compare the resized table
    want = F.interpolate(base["image_encoder.blocks.15.attn.rel_pos_w"][None, None], (63, 16),
                         mode="bilinear", align_corners=False)[0, 0]
    assert torch.equal(enc.blocks[15].attn.rel_pos_w.detach(), want)
    pred = model.decode(model.encode(ct_slice(40, 40)), Prompt())
    assert pred.labels.shape == (40, 40) and pred.labels.max() <= 2


def test_bad_base_checkpoints(tmp_path):
    lora = load(write_samed(tmp_path))
    with pytest.raises(SamlabError, match="needs the original SAM"):
        build_samed(lora, None)
    with pytest.raises(SamlabError, match="not a SAM checkpoint"):
        build_samed(lora, {"conv.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(3)})
    with pytest.raises(SamlabError, match="SAMed LoRA file itself"):
        build_samed(lora, lora)
    msa_like = {"image_encoder.blocks.0.Space_Adapter.D_fc1.weight": torch.zeros(16, 64),
                "image_encoder.patch_embed.proj.weight": torch.zeros(64, 3, 16, 16)}
    with pytest.raises(SamlabError, match="Medical SAM Adapter"):
        build_samed(lora, msa_like)
    with pytest.raises(SamlabError, match="not a SAMed LoRA file"):
        build_samed(load(write_base(tmp_path)), load(write_base(tmp_path)))
    # one line each
    try:
        build_samed(lora, {"x": torch.zeros(1)})
    except SamlabError as err:
        assert "\n" not in str(err)


def _fake_base(width, depth, global_idx):
    """Only the tensors the base checks read, at full SAM shapes (no full-size weights needed)."""
    sd = {"image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 16, 16),
          "image_encoder.pos_embed": torch.zeros(1, 64, 64, width),
          "image_encoder.neck.0.weight": torch.zeros(256, width, 1, 1)}
    for i in range(depth):
        sd[f"image_encoder.blocks.{i}.attn.qkv.weight"] = torch.zeros(1)
        sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"] = torch.zeros(127 if i in global_idx else 27, 64)
    return sd


def test_samed_h_with_vit_b_base_is_refused():
    lora = {f"w_{ab}_{i:03d}": torch.zeros(4, 1280) if ab == "a" else torch.zeros(1280, 4)
            for i in range(64) for ab in "ab"}
    lora["mask_decoder.mask_tokens.weight"] = torch.zeros(9, 256)
    info = detect_samed(lora)
    assert info["variant"] == "samed_h" and info["backbone"] == "vit_h" and info["depth"] == 32
    with pytest.raises(SamlabError) as err:
        build_samed(lora, _fake_base(768, 12, VIT_B_GLOBAL))
    msg = str(err.value)
    assert "SAMed_h needs the SAM ViT-H base checkpoint (sam_vit_h_4b8939.pth); the given base is ViT-B" in msg
    # and the other way round
    lora_b = {f"w_{ab}_{i:03d}": torch.zeros(4, 768) if ab == "a" else torch.zeros(768, 4)
              for i in range(24) for ab in "ab"}
    lora_b["mask_decoder.mask_tokens.weight"] = torch.zeros(9, 256)
    with pytest.raises(SamlabError, match=r"SAMed needs the SAM ViT-B base checkpoint \(sam_vit_b_01ec64.pth\); the given base is ViT-H"):
        build_samed(lora_b, _fake_base(1280, 32, [7, 15, 23, 31]))


@pytest.mark.slow
def test_full_size_vit_b_samed_keys_and_shapes():
    """Full ViT-B SAMed built from a full-size base: LoRA count/shapes, resized tables, merge rows. No forward."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in make_sam(1024, 768, 12, 12, VIT_B_GLOBAL, 3).state_dict().items()}
    assert len(shapes) == 314  # sam_vit_b_01ec64.pth
    base = {k: torch.zeros(s) for k, s in shapes.items()}
    with torch.device("meta"):
        trained = {k: v.shape for k, v in make_sam(512, 768, 12, 12, VIT_B_GLOBAL, 8).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    lora = {k: torch.zeros(s) for k, s in trained.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    for i in range(24):
        lora[f"w_a_{i:03d}"] = torch.randn(4, 768, generator=g)
        lora[f"w_b_{i:03d}"] = torch.randn(768, 4, generator=g)
    a_keys = [k for k in lora if k.startswith("w_a_")]
    assert len(a_keys) == 24
    assert all(lora[k].shape == (4, 768) for k in a_keys)
    assert all(lora[k.replace("w_a_", "w_b_")].shape == (768, 4) for k in a_keys)
    info = detect_samed(lora)
    assert info == {"family": "samed", "variant": "samed", "backbone": "vit_b", "lora_rank": 4, "num_classes": 8,
                    "image_size": 512, "embed_dim": 768, "depth": 12, "decoder_lora": False}
    model = build_samed(lora, base, fingerprint="test")
    sd = model.sam.state_dict()
    enc = model.sam.image_encoder
    assert sd["image_encoder.pos_embed"].shape == (1, 32, 32, 768)
    for i in range(12):
        rows = 63 if i in VIT_B_GLOBAL else 27
        assert sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape == (rows, 64)
        assert enc.blocks[i].window_size == (0 if i in VIT_B_GLOBAL else 14)
    assert sd["mask_decoder.mask_tokens.weight"].shape == (9, 256)
    assert len(model.sam.mask_decoder.output_hypernetworks_mlps) == 9
    # block 5: q rows = B_q A_q (w_*_010), k rows untouched (zero base), v rows = B_v A_v (w_*_011)
    qkv = sd["image_encoder.blocks.5.attn.qkv.weight"]
    assert qkv.shape == (2304, 768)
    assert torch.allclose(qkv[:768], lora["w_b_010"] @ lora["w_a_010"], atol=1e-4)
    assert torch.count_nonzero(qkv[768:1536]) == 0
    assert torch.allclose(qkv[1536:], lora["w_b_011"] @ lora["w_a_011"], atol=1e-4)
    assert model.fingerprint().endswith("test")


def test_class_merge_is_softmax_then_argmax_with_first_max_ties():
    """Upstream: torch.argmax(torch.softmax(logits, 1), 1) on float32; ties go to the lowest class."""
    from napari_samlab.models.samed import merge_class_logits

    x = torch.zeros(1, 4, 2, 3)
    x[0, :, 0, 0] = torch.tensor([1.0, 3.0, 3.0, 2.0])     # exact tie of classes 1 and 2 -> 1
    x[0, :, 0, 1] = torch.tensor([0.0, 2e-8, -3.0, -3.0])  # logits differ, softmax ties -> 0 (argmax(logits) = 1)
    x[0, :, 0, 2] = torch.tensor([0.0, 5e-8, -3.0, -3.0])  # softmax resolves it -> 1
    x[0, :, 1, 0] = torch.tensor([-1.0, -1.0, -1.0, -1.0])  # all equal -> background
    x[0, :, 1, 1] = torch.tensor([0.0, 0.0, 7.0, 7.0])     # tie at the top -> 2
    x[0, :, 1, 2] = torch.tensor([5.0, 1.0, 0.0, 9.0])
    assert int(torch.argmax(x, 1)[0, 0, 1]) == 1  # the logits alone would say class 1 here
    labels, prob = merge_class_logits(x)
    assert labels.tolist() == [[[1, 0, 1], [0, 2, 3]]]
    ref = torch.argmax(torch.softmax(x.float(), dim=1), dim=1).numpy()
    assert np.array_equal(labels, ref) and prob.dtype == torch.float32
    # random float32 logits: bit for bit the upstream expression
    g = torch.Generator().manual_seed(0)
    r = torch.randn(1, 9, 64, 64, generator=g).round(decimals=1)  # rounding makes many exact ties
    assert np.array_equal(merge_class_logits(r)[0], torch.argmax(torch.softmax(r, dim=1), dim=1).numpy())
    # float64 input is merged as float32, as upstream's float32 network gives it
    assert np.array_equal(merge_class_logits(x.double())[0], labels)
