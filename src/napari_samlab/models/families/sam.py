"""Segment Anything (ViT-B/L/H) and MobileSAM (TinyViT, ``vit_t``), with SAM's own preprocessing."""
from .sam_layout import tinyvit_layout, vit_layout
from .spec import Family


def _detect(sd):
    tiny = tinyvit_layout(sd)
    if tiny is not None:
        if tiny["patch_kernel"] == 1:
            return None  # LiteMedSAM
        return {"backbone": "vit_t", "image_size": tiny["img_size"], "tinyvit": tiny, "variant": "MobileSAM"}
    return vit_layout(sd)


def _build(sd, ctx):
    from ..sam_family import build_sam_family

    return build_sam_family(sd, "sam", ctx.fingerprint(sd), ctx.device, ctx.name)


def _note(info):
    return "MobileSAM: runs with {model:sam} (SAM preprocessing)" if info.backbone == "vit_t" else ""


FAMILY = Family(
    name="sam",
    pretty="SAM",
    aliases=("mobilesam", "mobile_sam", "vit_t", "sam_vit_b", "sam_vit_l", "sam_vit_h"),
    build=_build,
    detect=_detect,
    detect_rank=40,
    prompts=("box", "points", "mask"),
    exported_encoder=True,
    propagation_strategy="box+mask",  # the decoder takes its previous logits as a dense prompt
    example_checkpoint="sam_vit_b_01ec64.pth",
    note=_note,
)
