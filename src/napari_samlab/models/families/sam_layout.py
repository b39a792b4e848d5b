"""Detection shared by the families built on SAM's module layout (SAM, MedSAM, MobileSAM, LiteMedSAM).

Keys alone tell a TinyViT encoder (``patch_embed.seq``) from a ViT one
(``patch_embed.proj``), and LiteMedSAM's TinyViT (1×1 patch convolution)
from MobileSAM's (3×3); they cannot tell MedSAM from plain SAM ViT-B.
"""
from __future__ import annotations

from typing import Optional

from ...errors import SamlabError


def tinyvit_layout(sd: dict) -> Optional[dict]:
    """TinyViT configuration of a SAM-layout state dict, or None when it has a ViT (or no) encoder."""
    if "image_encoder.patch_embed.seq.0.c.weight" not in sd:
        return None
    from ..sam_family import tinyvit_config_from_state_dict

    try:
        return tinyvit_config_from_state_dict(sd)
    except KeyError as err:
        raise SamlabError(f"TinyViT checkpoint without {err.args[0]}: the file is incomplete or not LiteMedSAM/MobileSAM") from None


def vit_layout(sd: dict) -> Optional[dict]:
    """What a SAM ViT state dict holds (``backbone``, ``image_size``, details), or None for another layout."""
    if "image_encoder.patch_embed.proj.weight" not in sd or "mask_decoder.iou_token.weight" not in sd:
        return None
    from ..sam_family import vit_config_from_state_dict

    try:
        vit = vit_config_from_state_dict(sd)
    except KeyError as err:
        raise SamlabError(f"SAM-layout checkpoint without {err.args[0]}: the file is incomplete") from None
    classes = int(sd["mask_decoder.mask_tokens.weight"].shape[0]) - 1 if "mask_decoder.mask_tokens.weight" in sd else 3
    return {"backbone": vit["backbone"], "image_size": vit["img_size"], "num_classes": 1,
            "vit": vit, "multimask_outputs": classes}


def vit_label(backbone: str) -> str:
    """``vit_b`` -> ``ViT-B`` for messages.

    Examples
    --------
    >>> vit_label("vit_h"), vit_label("vit_384x6")
    ('ViT-H', 'vit_384x6')
    """
    if backbone.startswith("vit_") and len(backbone) == 5:
        return "ViT-" + backbone[4:].upper()
    return backbone
