"""MedSAM: SAM ViT-B fine-tuned on medical images; boxes only, images scaled to [0, 1]."""
from ...errors import SamlabError
from .sam_layout import vit_label, vit_layout
from .spec import Family


def _build(sd, ctx):
    from ..sam_family import build_sam_family

    backbone = ctx.info.backbone
    if backbone in ("vit_l", "vit_h"):
        raise SamlabError(f"{ctx.name} is a SAM {vit_label(backbone)} checkpoint, but MedSAM is a ViT-B: "
                          "use {model:sam}, or give medsam_vit_b.pth")
    return build_sam_family(sd, "medsam", ctx.fingerprint(sd), ctx.device, ctx.name)


FAMILY = Family(
    name="medsam",
    pretty="MedSAM",
    build=_build,
    detect=vit_layout,  # the same keys as SAM ViT-B: the user chooses
    detect_rank=40,
    prompts=("box",),  # trained with boxes; points are unsupported upstream
    exported_encoder=True,
    propagation_strategy="box",  # MedSAM's own 3D inference propagates a box
    example_checkpoint="medsam_vit_b.pth",
)
