"""TinyViT image encoders of LiteMedSAM (256 px) and MobileSAM (1024 px).

Our own implementation of the TinyViT variant that MobileSAM and the
LiteMedSAM branch of MedSAM build (``tiny_vit_sam.py``), with the same
module names so their state dicts load strictly:

* LiteMedSAM: 1×1 stride-1 patch-embedding convolutions, img_size 256,
  no classification head.
* MobileSAM (``vit_t``): 3×3 stride-2 patch-embedding convolutions,
  img_size 1024, plus an unused classification head (``norm_head``/``head``).

Both: embed_dims [64, 128, 160, 320], depths [2, 2, 6, 2], num_heads
[2, 4, 5, 10], window_sizes [7, 7, 14, 7]; the last patch merging has
stride 1 so the output grid is 64×64, then SAM's 256-channel neck.

Upstream caches attention biases in ``Attention.train(False)``, so
loading weights after ``.eval()`` silently uses stale biases.  Here the
biases are gathered from ``attention_biases`` on every forward pass, so the
order of ``.eval()`` and ``load_state_dict`` cannot matter.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segment_anything.modeling.common import LayerNorm2d


class Conv2d_BN(nn.Sequential):
    """Convolution without bias followed by BatchNorm (keys ``c.*``, ``bn.*``)."""

    def __init__(self, a, b, ks=1, stride=1, pad=0, groups=1):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, 1, groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, kernel: int):
        super().__init__()
        stride, pad = (1, 0) if kernel == 1 else (2, kernel // 2)
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, kernel, stride, pad),
            nn.GELU(),
            Conv2d_BN(embed_dim // 2, embed_dim, kernel, stride, pad),
        )

    def forward(self, x):
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, chans: int, expand_ratio: float):
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2d_BN(chans, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, chans, 1)
        self.act3 = nn.GELU()

    def forward(self, x):
        shortcut = x
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.conv3(x)
        return self.act3(x + shortcut)


class PatchMerging(nn.Module):
    def __init__(self, resolution: tuple, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x):
        if x.ndim == 3:  # tokens (B, L, C) back to (B, C, H, W)
            h, w = self.resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    def __init__(self, dim, depth, expand_ratio, downsample=None):
        super().__init__()
        self.blocks = nn.ModuleList([MBConv(dim, expand_ratio) for _ in range(depth)])
        self.downsample = downsample

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """LeViT-style attention with a learned bias per (|dy|, |dx|) offset."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.key_dim = key_dim
        self.d = key_dim  # attn_ratio 1
        self.dh = key_dim * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + 2 * key_dim * num_heads)
        self.proj = nn.Linear(self.dh, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets, idxs = {}, []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                if off not in offsets:
                    offsets[off] = len(offsets)
                idxs.append(offsets[off])
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idxs).view(len(points), len(points)), persistent=False)

    def forward(self, x):
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        # gathered every call: same values as upstream's cached `ab`, never stale
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, self.dh)
        return self.proj(x)


class TinyViTBlock(nn.Module):
    def __init__(self, dim, resolution, num_heads, window_size, mlp_ratio=4.0, local_conv_size=3):
        super().__init__()
        self.resolution = resolution
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, (window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x):
        h, w = self.resolution
        b, L, c = x.shape
        ws = self.window_size
        res = x
        if h == ws and w == ws:
            x = self.attn(x)
        else:
            x = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            x = self.attn(x)
            x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            if pad_b or pad_r:
                x = x[:, :h, :w].contiguous()
            x = x.view(b, L, c)
        x = res + x
        x = x.transpose(1, 2).reshape(b, c, h, w)
        x = self.local_conv(x)
        x = x.view(b, c, L).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    def __init__(self, dim, resolution, depth, num_heads, window_size, mlp_ratio, downsample=None):
        super().__init__()
        self.blocks = nn.ModuleList(
            [TinyViTBlock(dim, resolution, num_heads, window_size, mlp_ratio) for _ in range(depth)]
        )
        self.downsample = downsample

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck; output (B, 256, 64, 64) at full size.

    Parameters
    ----------
    img_size : int
        256 (LiteMedSAM) or 1024 (MobileSAM).
    patch_kernel : int
        1 (LiteMedSAM: two 1×1 stride-1 convs) or 3 (MobileSAM: two 3×3
        stride-2 convs).
    embed_dims, depths, num_heads, window_sizes : sequences of 4 ints
    mlp_ratio, mbconv_expand_ratio : float
    head_classes : int
        MobileSAM files carry an (unused) ImageNet head: ``norm_head`` and
        ``head`` with this many outputs; 0 for none.

    Examples
    --------
    >>> enc = TinyViT(img_size=256, patch_kernel=1).eval()   # doctest: +SKIP
    >>> enc(torch.zeros(1, 3, 256, 256)).shape                # doctest: +SKIP
    torch.Size([1, 256, 64, 64])
    """

    def __init__(self, img_size: int = 256, in_chans: int = 3, patch_kernel: int = 1,
                 embed_dims: Sequence[int] = (64, 128, 160, 320), depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (2, 4, 5, 10), window_sizes: Sequence[int] = (7, 7, 14, 7),
                 mlp_ratio: float = 4.0, mbconv_expand_ratio: float = 4.0, head_classes: int = 0,
                 out_chans: int = 256):
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], patch_kernel)
        res = img_size if patch_kernel == 1 else img_size // 4
        n = len(depths)
        self.layers = nn.ModuleList()
        for i in range(n):
            down = None
            if i < n - 1:
                # upstream: stride 1 when merging into 320/448/576 channels, i.e.
                # the last merge, so the final grid stays at img/16 (SAM's 64×64)
                stride = 1 if i == n - 2 else 2
                down = PatchMerging((res, res), embed_dims[i], embed_dims[i + 1], stride)
            if i == 0:
                layer = ConvLayer(embed_dims[0], depths[0], mbconv_expand_ratio, down)
            else:
                layer = BasicLayer(embed_dims[i], (res, res), depths[i], num_heads[i], window_sizes[i], mlp_ratio, down)
            self.layers.append(layer)
            if i < n - 1 and i != n - 2:
                res = (res - 1) // 2 + 1  # 3×3 stride-2 conv with padding 1
        self.out_res = res
        if head_classes:
            self.norm_head = nn.LayerNorm(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], head_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x):
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_res, self.out_res, c).permute(0, 3, 1, 2)
        return self.neck(x)
