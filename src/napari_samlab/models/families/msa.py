"""Medical SAM Adapter (three code generations); one positive click."""
from .spec import Family


def _detect(sd):
    from ..msa import detect_msa

    found = detect_msa(sd)
    if found is None:
        return None
    found = dict(found)
    found.pop("family", None)
    return found


def _build(sd, ctx):
    from ..msa import build_msa

    return build_msa(sd, device=ctx.device, name=ctx.name, **ctx.options)


FAMILY = Family(
    name="msa",
    pretty="MSA (Medical SAM Adapter)",
    aliases=("medical-sam-adapter",),
    build=_build,
    detect=_detect,
    detect_rank=20,
    prompts=("points",),
    exported_encoder=True,
    propagation_strategy="points",  # trained with single clicks
    build_options=("image_size", "num_outputs"),  # files that do not record them (--image-size, --num-outputs)
    example_checkpoint="the MSA .pth",
)
