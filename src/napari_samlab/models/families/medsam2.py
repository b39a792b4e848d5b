"""MedSAM2: SAM 2.1 hiera-tiny at 512 px fine-tuned on medical volumes; propagates with SAM 2's memory.

Engine code: :mod:`napari_samlab.models.medsam2` (network from the ``sam2``
package) and :mod:`napari_samlab.propagate.memory` (MedSAM2's 3D pipeline).
"""
from .spec import Family
from .sam2 import detect_hiera


def _detect(sd):
    found = detect_hiera(sd)
    # MedSAM2 is SAM 2.1 hiera-tiny: other sizes (or SAM 2.0) are plain SAM 2 files
    return found if found is not None and found["tiny_21"] else None


def _build(sd, ctx):
    from ..medsam2 import build_sam2_family

    return build_sam2_family(sd, "medsam2", ctx.name, ctx.fingerprint(sd), ctx.device)


FAMILY = Family(
    name="medsam2",
    pretty="MedSAM2",
    aliases=("medsam-2", "medsam_2"),
    build=_build,
    detect=_detect,
    detect_rank=20,  # SAM 2 keys (Hiera trunk, memory attention) are unlike any SAM 1 layout
    prompts=("box", "points"),
    memory_propagation=True,
    example_checkpoint="MedSAM2_latest.pt",
)
