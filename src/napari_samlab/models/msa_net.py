"""The Medical SAM Adapter network as torch modules (see :mod:`napari_samlab.models.msa`).

An independent re-implementation from the documented behaviour of the
upstream code (GPL-3.0; nothing is copied from it).  The modules are defined
on first use so that importing napari-samlab does not import torch.
"""
from __future__ import annotations

import math

PATCH_SIZE = 16
WINDOW_SIZE = 14
ADAPTER_SCALE = 0.5  # weight of MLP_Adapter beside the block's MLP


def modules():
    """Define the torch modules on first use and cache them."""
    global _MOD
    try:
        return _MOD
    except NameError:
        pass
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling.common import LayerNorm2d
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos, window_partition, window_unpartition
    from torch import nn

    class Adapter(nn.Module):
        """Bottleneck dim -> hidden -> dim with GELU; optionally adds its input back."""

        def __init__(self, dim: int, hidden: int, skip: bool):
            super().__init__()
            self.skip = skip
            self.D_fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.D_fc2 = nn.Linear(hidden, dim)

        def forward(self, x):
            y = self.D_fc2(self.act(self.D_fc1(x)))
            return x + y if self.skip else y

    class Mlp(nn.Module):
        def __init__(self, dim: int, hidden: int):
            super().__init__()
            self.lin1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.lin2 = nn.Linear(hidden, dim)

        def forward(self, x):
            return self.lin2(self.act(self.lin1(x)))

    class Attention(nn.Module):
        """Multi-head self-attention with decomposed relative positions (SAM's maths)."""

        def __init__(self, dim: int, heads: int, rel_rows: int, rel_names: tuple):
            super().__init__()
            self.num_heads = heads
            head_dim = dim // heads
            self.scale = head_dim ** -0.5
            self.qkv = nn.Linear(dim, dim * 3, bias=True)
            self.proj = nn.Linear(dim, dim)
            self.rel_names = rel_names
            for name in rel_names:
                self.register_parameter(name, nn.Parameter(torch.zeros(rel_rows, head_dim)))

        def forward(self, x):
            B, H, W, _ = x.shape
            qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
            attn = (q * self.scale) @ k.transpose(-2, -1)
            # tables of another length are linearly resampled inside (as upstream)
            attn = add_decomposed_rel_pos(attn, q, getattr(self, self.rel_names[0]),
                                          getattr(self, self.rel_names[1]), (H, W), (H, W))
            attn = attn.softmax(dim=-1)
            x = (attn @ v).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
            return self.proj(x)

    class AdapterBlock(nn.Module):
        def __init__(self, dim, heads, mlp_dim, adapter_dim, window, rel_rows, rel_names):
            super().__init__()
            self.window_size = window
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention(dim, heads, rel_rows, rel_names)
            self.MLP_Adapter = Adapter(dim, adapter_dim, skip=False)
            self.Space_Adapter = Adapter(dim, adapter_dim, skip=True)
            self.Depth_Adapter = Adapter(dim, adapter_dim, skip=False)  # 3D only: loaded, not run
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp(dim, mlp_dim)

        def forward(self, x):
            shortcut = x
            if self.window_size > 0:
                H, W = x.shape[1], x.shape[2]
                # MSA partitions (zero-pads) before norm1: padded tokens become norm1's bias
                x, pad_hw = window_partition(x, self.window_size)
            x = self.Space_Adapter(self.attn(self.norm1(x)))
            if self.window_size > 0:
                x = window_unpartition(x, self.window_size, pad_hw, (H, W))
            x = shortcut + x
            xn = self.norm2(x)
            return x + self.mlp(xn) + ADAPTER_SCALE * self.MLP_Adapter(xn)

    class PatchEmbed(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

        def forward(self, x):
            return self.proj(x).permute(0, 2, 3, 1)

    class ImageEncoder(nn.Module):
        def __init__(self, cfg: dict):
            super().__init__()
            dim = cfg["embed_dim"]
            self.img_size = cfg["image_size"]
            self.patch_embed = PatchEmbed(dim)
            g = cfg["pos_grid"]
            self.pos_embed = nn.Parameter(torch.zeros(1, g, g, dim))
            self.blocks = nn.ModuleList(
                AdapterBlock(dim, cfg["heads"], cfg["mlp_dim"], cfg["adapter_dim"],
                             0 if i in cfg["global_blocks"] else WINDOW_SIZE, cfg["rel_rows"][i], cfg["rel_names"])
                for i in range(cfg["depth"])
            )
            out = cfg["out_chans"]
            self.neck = nn.Sequential(
                nn.Conv2d(dim, out, kernel_size=1, bias=False), LayerNorm2d(out),
                nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False), LayerNorm2d(out),
            )

        def forward(self, x):
            x = self.patch_embed(x)
            if self.pos_embed.shape[1:3] == x.shape[1:3]:
                x = x + self.pos_embed  # generation A: stored at the grid size
            else:
                pos = F.interpolate(self.pos_embed.permute(0, 3, 1, 2), size=(x.shape[1], x.shape[2]),
                                    mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
                x = x + pos
            for blk in self.blocks:
                x = blk(x)
            return self.neck(x.permute(0, 3, 1, 2))

    # ---- EfficientSAM-style two-way transformer (generations B and C) ----
    class TokenAttention(nn.Module):
        def __init__(self, dim: int, heads: int, downsample: int = 1):
            super().__init__()
            self.internal_dim = dim // downsample
            self.num_heads = heads
            self.inv_sqrt = 1.0 / math.sqrt(self.internal_dim / heads)
            self.q_proj = nn.Linear(dim, self.internal_dim)
            self.k_proj = nn.Linear(dim, self.internal_dim)
            self.v_proj = nn.Linear(dim, self.internal_dim)
            self.out_proj = nn.Linear(self.internal_dim, dim)

        def _heads(self, x):
            b, n, c = x.shape
            return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

        def forward(self, q, k, v):
            q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
            attn = (q @ k.permute(0, 1, 3, 2)) * self.inv_sqrt
            out = torch.softmax(attn, dim=-1) @ v
            b, h, n, c = out.shape
            return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    class ReluMlp(nn.Module):
        """One hidden layer with ReLU; keys ``layers.0.0`` and ``fc``."""

        def __init__(self, dim: int, hidden: int):
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())])
            self.fc = nn.Linear(hidden, dim)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return self.fc(x)

    class TwoWayBlock(nn.Module):
        def __init__(self, dim, heads, mlp_dim, first: bool):
            super().__init__()
            self.first = first
            self.self_attn = TokenAttention(dim, heads)
            self.norm1 = nn.LayerNorm(dim)
            self.cross_attn_token_to_image = TokenAttention(dim, heads, 2)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = ReluMlp(dim, mlp_dim)
            self.norm3 = nn.LayerNorm(dim)
            self.norm4 = nn.LayerNorm(dim)
            self.cross_attn_image_to_token = TokenAttention(dim, heads, 2)

        def forward(self, queries, keys, query_pe, key_pe):
            if not self.first:
                queries = queries + query_pe  # the PE stays in the residual stream
            queries = self.norm1(queries + self.self_attn(queries, queries, queries))
            queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys))
            queries = self.norm3(queries + self.mlp(queries))
            q, k = queries + query_pe, keys + key_pe
            keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
            return queries, keys

    class EfficientTwoWayTransformer(nn.Module):
        def __init__(self, depth: int, dim: int, heads: int, mlp_dim: int):
            super().__init__()
            self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, i == 0) for i in range(depth))
            self.final_attn_token_to_image = TokenAttention(dim, heads, 2)
            self.norm_final_attn = nn.LayerNorm(dim)

        def forward(self, image_embedding, image_pe, point_embedding):
            keys = image_embedding.flatten(2).permute(0, 2, 1)
            key_pe = image_pe.flatten(2).permute(0, 2, 1)
            queries = point_embedding
            for layer in self.layers:
                queries, keys = layer(queries, keys, point_embedding, key_pe)
            attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
            return self.norm_final_attn(queries + attn), keys

    class MsaNet(nn.Module):
        def __init__(self, image_encoder, prompt_encoder, mask_decoder):
            super().__init__()
            self.image_encoder = image_encoder
            self.prompt_encoder = prompt_encoder
            self.mask_decoder = mask_decoder

    _MOD = {"ImageEncoder": ImageEncoder, "EfficientTwoWayTransformer": EfficientTwoWayTransformer, "MsaNet": MsaNet}
    return _MOD
