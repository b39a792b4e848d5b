"""LiteMedSAM: MedSAM distilled into a TinyViT at 256 px; boxes only."""
from .sam_layout import tinyvit_layout
from .spec import Family


def _detect(sd):
    tiny = tinyvit_layout(sd)
    if tiny is None or tiny["patch_kernel"] != 1:
        return None
    return {"backbone": "tinyvit", "image_size": tiny["img_size"], "tinyvit": tiny}


def _build(sd, ctx):
    from ..litemedsam import build_litemedsam

    return build_litemedsam(sd, ctx.fingerprint(sd), ctx.device, ctx.name)


FAMILY = Family(
    name="litemedsam",
    pretty="LiteMedSAM",
    aliases=("lite_medsam", "medsam-lite", "medsam_lite", "lite-medsam"),
    build=_build,
    detect=_detect,
    detect_rank=30,
    prompts=("box",),
    exported_encoder=True,
    propagation_strategy="box",
    example_checkpoint="lite_medsam.pth",
)
