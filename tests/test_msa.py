"""Medical SAM Adapter: detection of the three generations, faithfulness, full-size layout.

Checkpoints are written in MSA's training-file layout (``{"epoch", "model":
"sam", "state_dict", "optimizer", "best_tol", "path_helper"}``) with random
weights and a small encoder.  The reference forward below is written
independently from the documented behaviour: plain tensor code for the
adapter ViT (window partition before norm1, Space_Adapter with skip,
0.5 * MLP_Adapter), SAM's decoder for generation A and a plain
EfficientSAM-style two-way transformer for B/C.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer  # noqa: E402
from torch import nn  # noqa: E402

from napari_samlab.errors import SamlabError  # noqa: E402
from napari_samlab.models.base import Prompt  # noqa: E402
from napari_samlab.models.msa import build_msa, detect_msa  # noqa: E402

EPS = 1e-6


# --------------------------------------------------------------------------
# checkpoint writer (MSA layout)
# --------------------------------------------------------------------------
def msa_layout(generation, dim=64, depth=4, heads=4, global_idx=(1, 3), image_size=256, pos_grid=None,
               global_rows=None):
    """{key: shape} of an MSA ``state_dict`` of the given generation."""
    hd = dim // heads
    grid = image_size // 16
    pos_grid = pos_grid or 64
    rel = ("rel_h", "rel_w") if generation == "C" else ("rel_pos_h", "rel_pos_w")
    L = {"image_encoder.patch_embed.proj.weight": (dim, 3, 16, 16), "image_encoder.patch_embed.proj.bias": (dim,),
         "image_encoder.pos_embed": (1, pos_grid, pos_grid, dim)}
    for i in range(depth):
        p = f"image_encoder.blocks.{i}."
        rows = (global_rows or 2 * grid - 1) if i in global_idx else 27
        L.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                  p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
                  p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                  p + f"attn.{rel[0]}": (rows, hd), p + f"attn.{rel[1]}": (rows, hd),
                  p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                  p + "mlp.lin1.weight": (4 * dim, dim), p + "mlp.lin1.bias": (4 * dim,),
                  p + "mlp.lin2.weight": (dim, 4 * dim), p + "mlp.lin2.bias": (dim,)})
        for a in ("MLP_Adapter", "Space_Adapter", "Depth_Adapter"):
            L.update({p + f"{a}.D_fc1.weight": (dim // 4, dim), p + f"{a}.D_fc1.bias": (dim // 4,),
                      p + f"{a}.D_fc2.weight": (dim, dim // 4), p + f"{a}.D_fc2.bias": (dim,)})
    L.update({"image_encoder.neck.0.weight": (256, dim, 1, 1), "image_encoder.neck.1.weight": (256,),
              "image_encoder.neck.1.bias": (256,), "image_encoder.neck.2.weight": (256, 256, 3, 3),
              "image_encoder.neck.3.weight": (256,), "image_encoder.neck.3.bias": (256,)})
    with torch.device("meta"):
        pe = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(image_size,) * 2,
                           mask_in_chans=16)
        md = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                              num_heads=8), transformer_dim=256)
    L.update({"prompt_encoder." + k: tuple(v.shape) for k, v in pe.state_dict().items()})
    for k, v in md.state_dict().items():
        if generation != "A":  # EfficientSAM MLP names in the two-way blocks
            k = k.replace("mlp.lin1.", "mlp.layers.0.0.").replace("mlp.lin2.", "mlp.fc.")
        L["mask_decoder." + k] = tuple(v.shape)
    return L


def random_state_dict(layout, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in layout.items():
        r = torch.randn(shape, generator=g)
        if "norm" in k and k.endswith("weight") or k.startswith("image_encoder.neck.") and k.endswith(("1.weight", "3.weight")):
            sd[k] = 1.0 + 0.1 * r
        elif "positional_encoding_gaussian_matrix" in k:
            sd[k] = r
        else:
            sd[k] = 0.2 * r
    return sd


def write_msa(tmp_path, generation, seed=0, **kw):
    sd = random_state_dict(msa_layout(generation, **kw), seed)
    sd["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    file = {"epoch": 42, "model": "sam", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
            "best_tol": 0.1234, "path_helper": {"ckpt_path": "logs/x/Model", "sample_path": "logs/x/Samples"}}
    path = tmp_path / f"msa_{generation}.pth"
    torch.save(file, path)
    return path


def load_state(path):
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert obj["model"] == "sam"
    return obj["state_dict"]


# --------------------------------------------------------------------------
# independent reference forward
# --------------------------------------------------------------------------
def ln(x, sd, p, eps=EPS):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def lin(x, sd, p):
    return F.linear(x, sd[p + ".weight"], sd[p + ".bias"])


def adapter(x, sd, p, skip):
    y = lin(F.gelu(lin(x, sd, p + ".D_fc1")), sd, p + ".D_fc2")
    return x + y if skip else y


def rel_table(table, size):
    """Rows for every (query, key) offset of a size-long axis; resampled linearly if the length differs."""
    n = 2 * size - 1
    if table.shape[0] != n:
        table = F.interpolate(table.T[None], size=n, mode="linear")[0].T
    idx = torch.arange(size)[:, None] - torch.arange(size)[None, :] + size - 1
    return table[idx]  # (size, size, C)


def ref_attention(x, sd, p, heads, rel):
    B, H, W, C = x.shape
    qkv = lin(x, sd, p + ".qkv").reshape(B, H * W, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, hd)
    hd = C // heads
    attn = (q * hd ** -0.5) @ k.transpose(-2, -1)
    Rh, Rw = rel_table(sd[p + "." + rel[0]], H), rel_table(sd[p + "." + rel[1]], W)
    qg = q.reshape(B, heads, H, W, hd)
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", qg, Rh)
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", qg, Rw)
    attn = (attn.view(B, heads, H, W, H, W) + bias_h[..., :, None] + bias_w[..., None, :]).view(B, heads, H * W, H * W)
    out = attn.softmax(-1) @ v
    return lin(out.transpose(1, 2).reshape(B, H, W, C), sd, p + ".proj")


def ref_block(x, sd, p, heads, window, rel):
    B, H, W, C = x.shape
    shortcut = x
    if window:
        ph, pw = (-H) % window, (-W) % window
        x = F.pad(x, (0, 0, 0, pw, 0, ph))  # zeros first, then norm1 (MSA order)
        Hp, Wp = H + ph, W + pw
        x = x.view(B, Hp // window, window, Wp // window, window, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C)
    y = adapter(ref_attention(ln(x, sd, p + ".norm1"), sd, p + ".attn", heads, rel), sd, p + ".Space_Adapter", True)
    if window:
        y = y.view(B, Hp // window, Wp // window, window, window, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        y = y[:, :H, :W]
    x = shortcut + y
    xn = ln(x, sd, p + ".norm2")
    mlp = lin(F.gelu(lin(xn, sd, p + ".mlp.lin1")), sd, p + ".mlp.lin2")
    return x + mlp + 0.5 * adapter(xn, sd, p + ".MLP_Adapter", False)


def ln2d(x, w, b, eps=EPS):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + eps)
    return w[:, None, None] * x + b[:, None, None]


def ref_encoder(img, sd, heads, global_idx, depth, rel):
    x = F.conv2d(img, sd["image_encoder.patch_embed.proj.weight"], sd["image_encoder.patch_embed.proj.bias"], stride=16)
    x = x.permute(0, 2, 3, 1)
    pos = sd["image_encoder.pos_embed"]
    if pos.shape[1] != x.shape[1]:
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    x = x + pos
    for i in range(depth):
        x = ref_block(x, sd, f"image_encoder.blocks.{i}", heads, 0 if i in global_idx else 14, rel)
    x = x.permute(0, 3, 1, 2)
    x = F.conv2d(x, sd["image_encoder.neck.0.weight"])
    x = ln2d(x, sd["image_encoder.neck.1.weight"], sd["image_encoder.neck.1.bias"])
    x = F.conv2d(x, sd["image_encoder.neck.2.weight"], padding=1)
    return ln2d(x, sd["image_encoder.neck.3.weight"], sd["image_encoder.neck.3.bias"])


class RefEfficientTransformer(nn.Module):
    """EfficientSAM-style two-way transformer as plain tensor code over the file's tensors."""

    def __init__(self, sd, heads=8, depth=2):
        super().__init__()
        self.sd, self.heads, self.depth = {k[len("mask_decoder.transformer."):]: v for k, v in sd.items()
                                           if k.startswith("mask_decoder.transformer.")}, heads, depth

    def attn(self, p, q, k, v):
        sd = self.sd
        q, k, v = lin(q, sd, p + ".q_proj"), lin(k, sd, p + ".k_proj"), lin(v, sd, p + ".v_proj")
        b, _, c = q.shape
        split = lambda t: t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        a = torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(c / self.heads)), -1)
        return lin((a @ v).transpose(1, 2).reshape(b, -1, c), sd, p + ".out_proj")

    def forward(self, image_embedding, image_pe, point_embedding):
        sd = self.sd
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        kpe = image_pe.flatten(2).permute(0, 2, 1)
        qpe = point_embedding
        queries = point_embedding
        for i in range(self.depth):
            p = f"layers.{i}"
            if i > 0:
                queries = queries + qpe
            queries = ln(queries + self.attn(p + ".self_attn", queries, queries, queries), sd, p + ".norm1", 1e-5)
            queries = ln(queries + self.attn(p + ".cross_attn_token_to_image", queries + qpe, keys + kpe, keys),
                         sd, p + ".norm2", 1e-5)
            mlp = lin(F.relu(lin(queries, sd, p + ".mlp.layers.0.0")), sd, p + ".mlp.fc")
            queries = ln(queries + mlp, sd, p + ".norm3", 1e-5)
            keys = ln(keys + self.attn(p + ".cross_attn_image_to_token", keys + kpe, queries + qpe, queries),
                      sd, p + ".norm4", 1e-5)
        out = self.attn("final_attn_token_to_image", queries + qpe, keys + kpe, keys)
        return ln(queries + out, sd, "norm_final_attn", 1e-5), keys


def ref_predict(sd, generation, rgb, click_xy, S, heads=4, global_idx=(1, 3), depth=4):
    """Upstream's 2D validation for one image and one positive click (x, y)."""
    H, W = rgb.shape[:2]
    pil = Image.fromarray(rgb).resize((S, S), Image.BILINEAR)
    img = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float().div(255)[None]
    rel = ("attn.rel_h", "attn.rel_w") if generation == "C" else ("attn.rel_pos_h", "attn.rel_pos_w")
    rel = tuple(r.split(".", 1)[1] for r in rel)
    with torch.no_grad():
        emb = ref_encoder(img, sd, heads, global_idx, depth, rel)
        pe = PromptEncoder(embed_dim=256, image_embedding_size=(S // 16,) * 2, input_image_size=(S, S), mask_in_chans=16)
        pe.load_state_dict({k[len("prompt_encoder."):]: v for k, v in sd.items() if k.startswith("prompt_encoder.")})
        if generation == "A":
            tr = TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
        else:
            tr = RefEfficientTransformer(sd)
        md = MaskDecoder(num_multimask_outputs=3, transformer=tr, transformer_dim=256)
        md_sd = {k[len("mask_decoder."):]: v for k, v in sd.items()
                 if k.startswith("mask_decoder.") and (generation == "A" or ".transformer." not in k)}
        md.load_state_dict(md_sd, strict=False)
        if generation == "A":
            md.transformer.load_state_dict({k[len("mask_decoder.transformer."):]: v for k, v in sd.items()
                                            if k.startswith("mask_decoder.transformer.")})
        # the click as upstream's random_click gives it: (row, col) in the S x S frame
        x, y = click_xy
        pt = torch.tensor([[[(y + 0.5) * S / H - 0.5, (x + 0.5) * S / W - 0.5]]], dtype=torch.float)
        se, de = pe(points=(pt, torch.ones(1, 1, dtype=torch.int)), boxes=None, masks=None)
        pred, iou = md(image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=se,
                       dense_prompt_embeddings=de, multimask_output=False)
        up = F.interpolate(pred, (H, W), mode="bilinear", align_corners=False)[0, 0]
    return up, float(iou[0, 0])


def rgb_image(h=120, w=100, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([40 + 30 * np.sin(xx / 7.0), 60 + 20 * np.cos(yy / 5.0), 90 + 0 * xx], -1)
    blob = (yy - 0.55 * h) ** 2 + (xx - 0.4 * w) ** 2 < (0.2 * min(h, w)) ** 2
    img[blob] = [200, 120, 80]
    img = img + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def assert_same_mask(pred, ref_logits):
    """Logits equal up to float rounding; masks identical except at exact near-ties of the threshold."""
    low = torch.from_numpy(pred.low_res_logits)[None]
    ours = F.interpolate(low, tuple(ref_logits.shape), mode="bilinear", align_corners=False)[0, 0]
    scale = float(ref_logits.abs().max())
    assert torch.allclose(ours, ref_logits, atol=1e-4 * scale, rtol=0)
    ref = (ref_logits > 0).numpy()
    diff = pred.mask != ref
    if diff.any():
        assert np.abs(ref_logits.numpy()[diff]).max() < 1e-4 * scale


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------
@pytest.mark.parametrize("generation", ["A", "B", "C"])
def test_detect_generations(tmp_path, generation):
    size = 1024 if generation == "A" else 256
    path = write_msa(tmp_path, generation, image_size=size)
    sd = load_state(path)
    info = detect_msa(sd)
    assert info["family"] == "msa" and info["generation"] == generation
    assert info["image_size"] == size and info["num_classes"] == 1
    assert info["global_blocks"] == [1, 3] and info["depth"] == 4
    assert info["decoder"] == ("sam" if generation == "A" else "efficientsam")
    # the whole file dict is accepted as well
    whole = torch.load(path, map_location="cpu", weights_only=True)
    assert detect_msa(whole)["generation"] == generation


def test_detect_rejects_other_families():
    from segment_anything.modeling import ImageEncoderViT
    with torch.device("meta"):
        enc = ImageEncoderViT(img_size=256, embed_dim=32, depth=2, num_heads=2, use_rel_pos=True, window_size=14,
                              global_attn_indexes=(1,))
    sam_like = {"image_encoder." + k: torch.zeros(v.shape) for k, v in enc.state_dict().items()}
    assert detect_msa(sam_like) is None
    assert detect_msa({"w_a_000": torch.zeros(4, 768)}) is None
    with pytest.raises(SamlabError, match="not a Medical SAM Adapter"):
        build_msa(sam_like)


@pytest.mark.parametrize("generation,size,shape,click", [
    ("C", 256, (120, 100), (40, 66)),
    ("B", 224, (90, 130), (52, 50)),
    ("A", 1024, (64, 80), (30, 35)),
])
def test_msa_matches_reference(tmp_path, generation, size, shape, click, each_encoder_backend):
    """Every generation, with the upstream PyTorch encoder and the fastest exported one (issue 6)."""
    if generation == "A":
        # generation A: pos_embed stored at the grid size and added as is; 1024 px, small width for speed
        sd = load_state(write_msa(tmp_path, "A", dim=32, heads=2, depth=2, global_idx=(1,), image_size=1024,
                                  pos_grid=64, seed=3))
        kw = {"heads": 2, "global_idx": (1,), "depth": 2}
    else:
        sd = load_state(write_msa(tmp_path, generation, image_size=size, seed=1))
        kw = {}
    model = build_msa(sd)
    model.encoder_backend = each_encoder_backend  # build_msa keeps torch; load_model would pick
    assert model.generation == generation and model.image_size == size
    assert model.supports_points and not model.supports_boxes and model.needs_prompt
    rgb = rgb_image(*shape)
    emb = model.encode(rgb)
    assert model.last_encoder_backend == each_encoder_backend
    assert emb["image_embedding"].shape == (1, 256, size // 16, size // 16)
    assert list(emb["original_size"]) == list(shape)
    pred = model.decode(emb, Prompt(points=[click], point_labels=[1]))
    ref_logits, ref_iou = ref_predict(sd, generation, rgb, click, size, **kw)
    assert pred.mask.shape == shape and pred.mask.dtype == bool
    assert_same_mask(pred, ref_logits)
    assert pred.score == pytest.approx(ref_iou, abs=1e-3)
    # grey input goes through convert("RGB"): same as the repeated grey image
    grey = rgb[..., 0]
    a = model.encode(grey)["image_embedding"]
    b = model.encode(np.repeat(grey[..., None], 3, -1))["image_embedding"]
    assert np.array_equal(a, b)


def test_click_is_swapped_to_row_col(tmp_path):
    sd = load_state(write_msa(tmp_path, "C", image_size=256, seed=4))
    model = build_msa(sd)
    coords = model.point_coords([(10, 200)], (256, 256))
    assert coords.tolist() == [[200.0, 10.0]]  # (x=10, y=200) -> (row 200, col 10)
    rgb = rgb_image(256, 256, seed=2)
    emb = model.encode(rgb)
    a = model.decode(emb, Prompt(points=[(10, 200)], point_labels=[1])).low_res_logits
    b = model.decode(emb, Prompt(points=[(200, 10)], point_labels=[1])).low_res_logits
    assert not np.allclose(a, b)  # orientation matters
    with pytest.raises(SamlabError, match="outside"):
        model.decode(emb, Prompt(points=[(300, 5)], point_labels=[1]))
    with pytest.raises(SamlabError, match="click"):
        model.decode(emb, Prompt(box=(1, 1, 20, 20)))
    with pytest.raises(SamlabError, match="does not take boxes"):
        model.check_prompt(Prompt(box=(1, 1, 20, 20)), (256, 256))


def test_old_127_row_tables_and_explicit_size(tmp_path, each_encoder_backend):
    """Files from January 2024 keep 127-row global tables whatever the size: resampled at run time."""
    sd = load_state(write_msa(tmp_path, "B", image_size=256, global_rows=127, seed=5))
    assert detect_msa(sd)["image_size"] == 1024
    model = build_msa(sd, image_size=256)
    model.encoder_backend = each_encoder_backend
    assert model.image_size == 256
    rgb = rgb_image(80, 80, seed=1)
    pred = model.decode(model.encode(rgb), Prompt(points=[(30, 40)], point_labels=[1]))
    assert model.last_encoder_backend == each_encoder_backend
    ref_logits, _ = ref_predict(sd, "B", rgb, (30, 40), 256)
    assert_same_mask(pred, ref_logits)


def test_load_model_default_encoder_backend(tmp_path, monkeypatch):
    """MSA is among the families with the exported encoder on by default."""
    from napari_samlab.models.registry import load_model

    monkeypatch.delenv("SAMLAB_ENCODER_BACKEND", raising=False)
    path = write_msa(tmp_path, "C", image_size=256, depth=2, global_idx=(1,))
    assert load_model(path).encoder_backend == "auto"
    assert load_model(path, encoder_backend="torch").encoder_backend == "torch"


def test_incomplete_checkpoint(tmp_path):
    sd = load_state(write_msa(tmp_path, "C", image_size=256))
    del sd["image_encoder.blocks.2.MLP_Adapter.D_fc2.weight"]
    with pytest.raises(SamlabError, match=r"1 missing key \(image_encoder.blocks.2.MLP_Adapter.D_fc2.weight\)"):
        build_msa(sd)


@pytest.mark.slow
def test_full_size_vit_b_generation_c_layout():
    """Full ViT-B MSA (generation C, 1024 px): every key and shape of the file loads; no forward."""
    layout = msa_layout("C", dim=768, depth=12, heads=12, global_idx=(2, 5, 8, 11), image_size=1024)
    sd = {k: torch.zeros(s) for k, s in layout.items()}
    info = detect_msa(sd)
    assert info["generation"] == "C" and info["image_size"] == 1024 and info["backbone"] == "vit_b"
    assert info["global_blocks"] == [2, 5, 8, 11] and info["mask_tokens"] == 4
    assert info["image_size_from"] == "unknown"  # 127-row tables: MSA wrote them for every size for a while
    with pytest.raises(SamlabError) as err:
        build_msa(sd, fingerprint="x")
    assert "--image-size" in err.value.for_cli() and err.value.field == "image_size"
    model = build_msa(sd, fingerprint="x", image_size=1024)
    got = {k: tuple(v.shape) for k, v in model.net.state_dict().items()}
    assert got == layout
    assert got["image_encoder.blocks.2.attn.rel_h"] == (127, 64)
    assert got["image_encoder.blocks.3.attn.rel_w"] == (27, 64)
    assert got["image_encoder.blocks.0.Space_Adapter.D_fc1.weight"] == (192, 768)
    assert got["image_encoder.pos_embed"] == (1, 64, 64, 768)
    assert got["mask_decoder.transformer.layers.0.mlp.layers.0.0.weight"] == (2048, 256)
    assert got["mask_decoder.transformer.layers.1.mlp.fc.weight"] == (256, 2048)
    assert [b.window_size for b in model.net.image_encoder.blocks] == [0 if i in (2, 5, 8, 11) else 14 for i in range(12)]


def test_several_output_masks_keep_every_class(tmp_path):
    """-multimask_output N: tokens [0:N] are all kept, class k written as label value k (later wins)."""
    from napari_samlab.models.msa import default_num_outputs

    assert (default_num_outputs(4), default_num_outputs(3), default_num_outputs(6)) == (1, 2, 5)
    sd = load_state(write_msa(tmp_path, "C", image_size=256, depth=2, global_idx=(1,), seed=7))
    one = build_msa(sd, fingerprint="x")
    two = build_msa(sd, fingerprint="x", num_outputs=2)
    assert one.num_classes == 1 and two.num_classes == 2
    rgb = rgb_image(70, 90, seed=2)
    emb = two.encode(rgb)
    prompt = Prompt(points=[(40, 30)], point_labels=[1])
    p1, p2 = one.decode(emb, prompt), two.decode(emb, prompt)
    assert p2.labels is not None and p2.low_res_logits.shape[0] == 2
    up = F.interpolate(torch.from_numpy(p2.low_res_logits)[None], (70, 90), mode="bilinear", align_corners=False)[0]
    expect = np.zeros((70, 90), np.uint8)
    expect[(up[0] > 0).numpy()] = 1
    expect[(up[1] > 0).numpy()] = 2
    assert np.array_equal(p2.labels, expect) and np.array_equal(p2.mask, expect > 0)
    assert np.array_equal(p1.mask, (up[0] > 0).numpy())  # class 1 is what the one-output model gives
    assert len(np.unique(p2.labels)) >= 2
    with pytest.raises(SamlabError, match="1 to 4 output masks"):
        build_msa(sd, num_outputs=5)


def test_cli_image_size_and_num_outputs(tmp_path):
    """Files that do not record their size need --image-size (clear error without); classes via --num-outputs."""
    import SimpleITK as sitk

    from napari_samlab import SlicePredictor, load_model
    from test_cli import assert_clean_failure, samlab

    path = write_msa(tmp_path, "B", image_size=256, global_rows=127, depth=2, global_idx=(1,), seed=5)
    img = tmp_path / "rgb.png"
    Image.fromarray(rgb_image(70, 90, seed=2)).save(img)
    out = tmp_path / "o.png"
    res = samlab("segment", img, "-o", out, "--checkpoint", path, "--point", 40, 30)
    assert_clean_failure(res, str(out), "--image-size")
    res = samlab("segment", img, "-o", out, "--checkpoint", path, "--point", 40, 30, "--image-size", 256,
                 "--num-outputs", 2)
    assert res.returncode == 0, res.stderr
    cli = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    model = load_model(path, image_size=256, num_outputs=2)
    pred = SlicePredictor(model)
    pred.set_image(np.asarray(Image.open(img)), window="auto")
    api = pred.predict_prompt(Prompt(points=[(40, 30)], point_labels=[1]))
    assert np.array_equal(cli, api.labels) and set(np.unique(cli)) <= {0, 1, 2} and cli.any()
