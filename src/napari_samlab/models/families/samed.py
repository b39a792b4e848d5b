"""SAMed: LoRA on SAM at 512 px; no prompt, every slice gets the organ classes."""
from .spec import Family


def _detect(sd):
    if not any(k.startswith("w_a_") for k in sd):
        return None
    from ..samed import detect_samed

    found = detect_samed(sd)
    if found is None:  # LoRA keys in a layout detect_samed does not know: say what can be read
        w = sd.get("w_a_000")
        found = {"backbone": {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(int(w.shape[1]), "?") if w is not None else "?",
                 "lora_rank": int(w.shape[0]) if w is not None else None, "image_size": 512}
        if "mask_decoder.mask_tokens.weight" in sd:
            found["num_classes"] = int(sd["mask_decoder.mask_tokens.weight"].shape[0]) - 1
    found = dict(found)
    found.pop("family", None)
    return found


def _build(sd, ctx):
    from ..samed import build_samed

    return build_samed(sd, ctx.base_state_dict, device=ctx.device)


def _auto_window(image, modality=None):
    from ...base.windowing import Window, default_auto_window, detect_modality

    guess = detect_modality(image, modality)
    if guess.kind == "CT":  # Synapse: HU clipped, divided into [0, 1] (hu_offset: CT stored as HU + 1024)
        return Window(-125.0 + guess.hu_offset, 275.0 + guess.hu_offset, "unit", False, "samed-ct")
    return default_auto_window(image, modality=modality)


FAMILY = Family(
    name="samed",
    pretty="SAMed",
    aliases=("samed_h", "samed_s"),
    build=_build,
    detect=_detect,
    detect_rank=10,
    needs_base_checkpoint=True,
    needs_prompt=False,
    prompts=(),
    exported_encoder=True,
    auto_window=_auto_window,
    example_checkpoint="the SAMed LoRA .pth",
    base_hint="the original SAM weights it builds on (e.g. sam_vit_b_01ec64.pth)",
    note=lambda info: "LoRA weights only: needs the original SAM checkpoint via {base_checkpoint}",
)
