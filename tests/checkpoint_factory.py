"""Small random checkpoints in each upstream file layout, for tests.

Every function builds a model with napari-samlab's own builders (which use
segment_anything's classes and the upstream key names), gives it random
but *useful* weights (masks with both foreground and background) and
returns its state dict or writes it the way the upstream project saves it.
Other test modules (SAMed, MSA) add their own factories next to these.
"""
from __future__ import annotations

from pathlib import Path

import torch

from napari_samlab.models.sam_family import build_sam_vit, default_decoder_config

# ViT with the SAM key structure but tiny width: fast on CPU
SMALL_VIT = {"embed_dim": 96, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,), "img_size": 1024,
             "window_size": 14}
VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)}
SMALL_TINYVIT = {"img_size": 256, "patch_kernel": 1, "embed_dims": (16, 32, 40, 80), "depths": (1, 1, 2, 1),
                 "num_heads": (1, 2, 2, 4), "window_sizes": (7, 7, 14, 7), "mlp_ratio": 4.0,
                 "mbconv_expand_ratio": 4.0, "head_classes": 0, "out_chans": 256}


HYPER_GAIN = 40.0


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Deterministic random weights; BatchNorm statistics kept sane."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(1.0 + 0.1 * torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
            elif "norm" in name.split(".")[-2] or name.endswith("bn.weight") or ".ln" in name:
                if name.endswith("weight"):
                    t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
                else:
                    t.copy_(0.05 * torch.randn(t.shape, generator=g))
            elif "positional_encoding_gaussian_matrix" in name:
                t.copy_(torch.randn(t.shape, generator=g))
            else:
                fan_in = t[0].numel() if t.ndim > 1 else 1
                std = scale if t.ndim <= 1 else (1.0 / max(fan_in, 1)) ** 0.5
                t.copy_(std * torch.randn(t.shape, generator=g))
            if "output_hypernetworks_mlps" in name and ".layers.2." in name:
                t.mul_(HYPER_GAIN)  # spread the mask logits well away from the threshold


def sam_state_dict(vit: dict = SMALL_VIT, seed: int = 0, randomize: bool = True) -> dict:
    """State dict of a segment_anything ``Sam`` (ViT encoder) in SAM's key layout.

    ``vit=VIT_B`` gives the released ViT-B shape (314 keys).
    """
    torch.manual_seed(seed)
    sam = build_sam_vit(vit, default_decoder_config())
    if randomize:
        _randomize(sam, seed)
    return {k: v.clone() for k, v in sam.state_dict().items()}


def litemedsam_state_dict(tcfg: dict = SMALL_TINYVIT, seed: int = 0, randomize: bool = True) -> dict:
    """LiteMedSAM layout (``image_encoder`` TinyViT, prompt encoder, mask decoder)."""
    from napari_samlab.models.litemedsam import LITEMEDSAM_TINYVIT, LiteMedSAMNet

    torch.manual_seed(seed)
    net = LiteMedSAMNet(tcfg or LITEMEDSAM_TINYVIT, default_decoder_config())
    if randomize:
        _randomize(net, seed)
    return {k: v.clone() for k, v in net.state_dict().items()}


def mobilesam_state_dict(seed: int = 0) -> dict:
    """MobileSAM (vit_t) layout at full size: 3×3 stride-2 patch embedding and an ImageNet head."""
    from napari_samlab.models.sam_family import SamTinyViT

    torch.manual_seed(seed)
    tcfg = {"img_size": 1024, "patch_kernel": 3, "embed_dims": (64, 128, 160, 320), "depths": (2, 2, 6, 2),
            "num_heads": (2, 4, 5, 10), "window_sizes": (7, 7, 14, 7), "head_classes": 1000}
    return dict(SamTinyViT(tcfg, default_decoder_config()).state_dict())


def save(sd: dict, path, layout: str = "plain") -> Path:
    """Write ``sd`` as upstream projects do.

    ``layout``: ``"plain"`` (``torch.save(state_dict)``: MedSAM and
    LiteMedSAM releases), ``"model"`` (MedSAM training:
    ``{"model": sd, "optimizer": ..., "epoch": n}``), ``"module"``
    (DataParallel ``module.`` prefix inside ``"model"``), ``"state_dict"``
    (``{"state_dict": sd, "epoch": n}``), ``"msa"`` (``{"epoch", "model":
    "sam", "state_dict": sd, "optimizer", "best_tol", "path_helper"}``).
    """
    path = Path(path)
    if layout == "plain":
        obj = sd
    elif layout == "model":
        obj = {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}, "epoch": 7}
    elif layout == "module":
        obj = {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    elif layout == "state_dict":
        obj = {"state_dict": sd, "epoch": 2}
    elif layout == "msa":
        obj = {"epoch": 5, "model": "sam", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
               "best_tol": 0.123, "path_helper": {"ckpt_path": "logs/x/Model", "prefix": "logs/x"}}
    else:
        raise ValueError(layout)
    torch.save(obj, path)
    return path
