"""SAM 2 / SAM 2.1 (Meta's hiera tiny, small, base_plus, large at 1024 px); propagates with its memory."""
from typing import Optional

from .spec import Family


def detect_hiera(sd) -> Optional[dict]:
    """What a SAM 2 state dict holds, or None for another layout (see ``models.medsam2.detect_sam2``)."""
    from ..medsam2 import detect_sam2

    found = detect_sam2(sd)
    if found is None:
        return None
    found = dict(found)
    found["tiny_21"] = found.pop("family") == "sam2-or-medsam2"
    if not found["image_size"]:
        found["image_size"] = 1024  # SAM 2.1 tiny; MedSAM2 runs the same trunk at 512
    return found


def _build(sd, ctx):
    from ..medsam2 import build_sam2_family

    return build_sam2_family(sd, "sam2", ctx.name, ctx.fingerprint(sd), ctx.device)


FAMILY = Family(
    name="sam2",
    pretty="SAM 2",
    aliases=("sam2.1", "sam-2", "sam_2", "sam21"),
    build=_build,
    detect=detect_hiera,
    detect_rank=20,
    prompts=("box", "points"),
    memory_propagation=True,
    example_checkpoint="sam2.1_hiera_tiny.pt",
)
