"""SAM and MedSAM masks equal the upstream pipelines on real images.

The references are written here from the upstream steps
(segment_anything's SamPredictor; MedSAM_Inference.py and pre_CT_MR.py),
on models assembled directly from segment_anything's classes and loaded
from the checkpoint file with a plain torch.load.
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_factory as cf  # noqa: E402

from napari_samlab import errors  # noqa: E402
from napari_samlab.models.registry import detect_family, load_model, model_from_state_dict  # noqa: E402
from napari_samlab.predict.predictor import SlicePredictor  # noqa: E402



def reference_sam(path, vit=cf.SMALL_VIT):
    """segment_anything's own classes, as build_sam.py assembles them."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=vit["depth"], embed_dim=vit["embed_dim"], img_size=1024, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=vit["num_heads"], patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=vit["global_attn_indexes"], window_size=14,
            out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    obj = torch.load(path, map_location="cpu")
    sam.load_state_dict(obj["model"] if "model" in obj else obj)
    return sam


def medsam_encode_reference(sam, img_np):
    """MedSAM_Inference.py preprocessing and encoder, step by step."""
    from skimage import transform

    img_3c = np.repeat(img_np[:, :, None], 3, axis=-1) if img_np.ndim == 2 else img_np
    img_1024 = transform.resize(img_3c, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    img_1024 = (img_1024 - img_1024.min()) / np.clip(img_1024.max() - img_1024.min(), a_min=1e-8, a_max=None)
    t = torch.tensor(img_1024).float().permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        return sam.image_encoder(t)


def medsam_decode_reference(sam, emb, H, W, box):
    """MedSAM_Inference.py's medsam_inference with the user box scaled to 1024."""
    box_1024 = np.array([box]) / np.array([W, H, W, H]) * 1024
    with torch.no_grad():
        box_torch = torch.as_tensor(box_1024, dtype=torch.float)[:, None, :]
        sparse, dense = sam.prompt_encoder(points=None, boxes=box_torch, masks=None)
        low, iou = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
        pred = F.interpolate(torch.sigmoid(low), size=(H, W), mode="bilinear", align_corners=False)
    return pred.squeeze().numpy() > 0.5, float(iou[0, 0])


def ct_pre(slice_hu):
    """pre_CT_MR.py for CT: clip to level 40 / width 400, min-max to 0-255 uint8."""
    x = np.clip(slice_hu, 40 - 200, 40 + 200)
    x = (x - np.min(x)) / (np.max(x) - np.min(x)) * 255.0
    return np.uint8(x)


# The mask comparisons run twice: with the upstream PyTorch encoder and with
# the fastest exported one (issue 6: the fast path must keep masks identical).
# Layout and prompt checks do not depend on the encoder backend: once.


@pytest.fixture(scope="module")
def histology(histology_rgb):
    return np.array(histology_rgb[40:260, 60:420])  # 220×360 RGB crop


@pytest.fixture(scope="module")
def ct_slice(lung):
    return np.array(lung[0][30])


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    return cf.save(cf.sam_state_dict(seed=1), tmp_path_factory.mktemp("ck") / "medsam_vit_b.pth", "model")


@pytest.mark.usefixtures("each_encoder_backend")
def test_medsam_matches_reference(sam_file, histology, ct_slice):
    model = load_model(sam_file, family="medsam")
    ref = reference_sam(sam_file)
    pred = SlicePredictor(model)
    cases = [
        (histology, "none", histology, [(30, 20, 200, 150), (150, 60, 350, 210), (0, 0, 359, 219)]),
        (ct_slice, "auto", ct_pre(ct_slice), [(100, 150, 250, 350), (280, 120, 420, 330), (200, 200, 232, 230)]),
    ]
    for image, window, ref_img, boxes in cases:
        pred.set_image(image, window=window)
        emb = medsam_encode_reference(ref, ref_img)
        for box in boxes:
            mask, score = pred.predict(box=box)
            want, want_score = medsam_decode_reference(ref, emb, image.shape[0], image.shape[1], box)
            assert mask.dtype == bool and mask.shape == image.shape[:2]
            assert np.array_equal(mask, want), f"box {box}: {np.sum(mask != want)} pixels differ"
            assert score == pytest.approx(want_score, abs=1e-6)


def test_medsam_refuses_points(sam_file, histology):
    pred = SlicePredictor(load_model(sam_file, family="medsam"))
    pred.set_image(histology[:32, :48])
    with pytest.raises(errors.SamlabError, match="trained with boxes only"):
        pred.predict(points=[(10, 10)], point_labels=[1])


@pytest.mark.usefixtures("each_encoder_backend")
def test_sam_matches_sampredictor(sam_file, histology, ct_slice):
    from segment_anything import SamPredictor

    model = load_model(sam_file, family="sam")
    ref = SamPredictor(reference_sam(sam_file))
    ours = SlicePredictor(model)
    prompts = [
        dict(box=(30, 20, 200, 150)),
        dict(points=[(120, 90)], point_labels=[1]),  # lone point: best of three by IoU
        dict(points=[(120, 90), (20, 200)], point_labels=[1, 0]),
        dict(box=(150, 60, 350, 210), points=[(250, 130)], point_labels=[1]),
        dict(box=(30, 20, 200, 150), multimask=True),
    ]
    for image, ref_img in [(histology, histology), (ct_slice, np.repeat(ct_pre(ct_slice)[:, :, None], 3, -1))]:
        ours.set_image(image, window="auto")
        ref.set_image(ref_img)
        for p in prompts:
            pts = np.array(p["points"], float) if "points" in p else None
            lab = np.array(p["point_labels"]) if "points" in p else None
            box = np.array(p["box"], float) if "box" in p else None
            multi = p.get("multimask", False) or (pts is not None and len(pts) == 1 and box is None)
            masks, scores, logits = ref.predict(point_coords=pts, point_labels=lab, box=box, multimask_output=multi)
            k = int(np.argmax(scores)) if multi else 0
            pr = ours.predict_prompt(__import__("napari_samlab.models.base", fromlist=["Prompt"]).Prompt(**p))
            assert np.array_equal(pr.mask, masks[k]), f"{p}: {np.sum(pr.mask != masks[k])} pixels differ"
            assert pr.score == pytest.approx(float(scores[k]), abs=1e-6)
            assert np.allclose(pr.low_res_logits, logits[k], atol=1e-5)
        # mask_input round trip, as in SAM's notebook
        masks, scores, logits = ref.predict(point_coords=np.array([[150.0, 100.0]]), point_labels=np.array([1]),
                                            mask_input=logits[k][None], multimask_output=False)
        m, s = ours.predict(points=[(150, 100)], point_labels=[1], mask_input=pr.low_res_logits)
        assert np.array_equal(m, masks[0])


@pytest.mark.slow
def test_full_size_vit_b_layout():
    sd = cf.sam_state_dict(cf.VIT_B, randomize=False)
    assert len(sd) == 314
    info = detect_family(sd)
    assert (info.family, info.backbone, info.image_size) == ("sam-or-medsam", "vit_b", 1024)
    assert info.details["vit"]["global_attn_indexes"] == (2, 5, 8, 11)
    assert info.details["vit"]["num_heads"] == 12
    with pytest.raises(errors.SamlabError) as e:
        model_from_state_dict(sd, None, "medsam_vit_b.pth")
    assert e.value.for_cli() == ("medsam_vit_b.pth is a ViT-B state dict; SAM and MedSAM share this layout: "
                                 "choose --model sam or --model medsam")
    model = model_from_state_dict(sd, "medsam", "medsam_vit_b.pth")
    assert model.family == "medsam" and model.config["backbone"] == "vit_b"


@pytest.mark.slow
def test_mobilesam_loads_as_sam():
    sd = cf.mobilesam_state_dict()
    info = detect_family(sd)
    assert (info.family, info.backbone, info.image_size) == ("sam", "vit_t", 1024)
    model = model_from_state_dict(sd, None, "mobile_sam.pt")
    assert model.family == "sam"
    with pytest.raises(errors.SamlabError) as e:
        model_from_state_dict(sd, "medsam", "mobile_sam.pt")
    assert e.value.for_cli() == "mobile_sam.pt is a MobileSAM (vit_t) checkpoint, not MedSAM: choose --model sam"
    with pytest.raises(errors.SamlabError, match="not LiteMedSAM"):
        model_from_state_dict(sd, "litemedsam", "mobile_sam.pt")
