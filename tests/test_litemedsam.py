"""LiteMedSAM masks equal CVPR24_LiteMedSAM_infer.py's pipeline on real images."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_factory as cf  # noqa: E402

from napari_samlab.errors import SamlabError  # noqa: E402
from napari_samlab.models.litemedsam import LITEMEDSAM_TINYVIT, LiteMedSAMNet  # noqa: E402
from napari_samlab.models.registry import detect_family, load_model, model_from_state_dict  # noqa: E402
from napari_samlab.models.sam_family import default_decoder_config, tinyvit_config_from_state_dict  # noqa: E402
from napari_samlab.predict.predictor import SlicePredictor  # noqa: E402

cv2 = pytest.importorskip("cv2")


def reference_net(path, tcfg=cf.SMALL_TINYVIT):
    net = LiteMedSAMNet(tcfg, default_decoder_config())
    net.load_state_dict(torch.load(path, map_location="cpu"))
    net.eval()  # after loading, as the upstream script does
    return net


def lite_encode_reference(net, img_np):
    """MedSAM_infer_npz_2D preprocessing: INTER_AREA to longest side 256, min-max, pad."""
    img_3c = np.repeat(img_np[:, :, None], 3, axis=-1) if img_np.ndim == 2 else img_np
    oldh, oldw = img_3c.shape[:2]
    scale = 256 * 1.0 / max(oldh, oldw)
    neww, newh = int(oldw * scale + 0.5), int(oldh * scale + 0.5)
    img_256 = cv2.resize(img_3c, (neww, newh), interpolation=cv2.INTER_AREA)
    img_256 = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), a_min=1e-8, a_max=None)
    img_256 = np.pad(img_256, ((0, 256 - newh), (0, 256 - neww), (0, 0)))
    with torch.no_grad():
        emb = net.image_encoder(torch.tensor(img_256).float().permute(2, 0, 1).unsqueeze(0))
    return emb, (newh, neww), (oldh, oldw)


def lite_decode_reference(net, emb, new_size, original_size, box):
    """resize_box_to_256 + medsam_inference + postprocess_masks."""
    box = np.array(box)
    box256 = np.zeros_like(box)
    for i in range(4):
        box256[i] = int(box[i] * (256 / max(original_size)))
    with torch.no_grad():
        bt = torch.as_tensor(box256[None, None, ...], dtype=torch.float)
        sparse, dense = net.prompt_encoder(points=None, boxes=bt, masks=None)
        low, iou = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
        m = low[..., :new_size[0], :new_size[1]]
        m = F.interpolate(m, size=original_size, mode="bilinear", align_corners=False)
        m = torch.sigmoid(m).squeeze().numpy()
    return m > 0.5, float(iou[0, 0])


# The mask comparisons run twice: with the upstream PyTorch encoder and with
# the fastest exported one (issue 6: the fast path must keep masks identical).
# Layout and prompt checks do not depend on the encoder backend: once.


@pytest.fixture(scope="module")
def lite_file(tmp_path_factory):
    return cf.save(cf.litemedsam_state_dict(seed=2), tmp_path_factory.mktemp("ck") / "lite_medsam.pth")


@pytest.mark.usefixtures("each_encoder_backend")
def test_litemedsam_matches_reference(lite_file, histology_rgb, lung):
    histo = histology_rgb[30:270, 10:330]  # 240×320, not square
    ct = np.array(lung[0][28])
    ct_u8 = np.clip(ct, -160, 240)
    ct_u8 = np.uint8((ct_u8 - ct_u8.min()) / (ct_u8.max() - ct_u8.min()) * 255.0)
    model = load_model(lite_file)  # detected from the keys
    assert model.family == "litemedsam"
    ref = reference_net(lite_file)
    pred = SlicePredictor(model)
    n_fg, masks = 0, []
    for image, window, ref_img, boxes in [
        (histo, "auto", histo, [(20, 30, 200, 180), (100, 10, 319, 239), (5, 5, 60, 50)]),
        (ct, "auto", ct_u8, [(100, 150, 250, 350), (280, 120, 420, 330), (37, 41, 301, 263)]),
    ]:
        pred.set_image(image, window=window)
        emb, new_size, orig = lite_encode_reference(ref, ref_img)
        for box in boxes:
            mask, score = pred.predict(box=box)
            want, want_score = lite_decode_reference(ref, emb, new_size, orig, box)
            assert mask.shape == image.shape[:2]
            assert np.array_equal(mask, want), f"box {box}: {np.sum(mask != want)} pixels differ"
            assert score == pytest.approx(want_score, abs=1e-6)
            n_fg += int(0 < mask.sum() < mask.size)
            masks.append(mask.sum())
    # random weights: the comparison must still involve real, prompt-dependent masks
    assert n_fg >= 1 and len(set(masks)) >= 3


def test_eval_order_cannot_go_stale():
    sd = cf.litemedsam_state_dict(seed=3)
    a = LiteMedSAMNet(cf.SMALL_TINYVIT, default_decoder_config())
    a.load_state_dict(sd)
    a.eval()
    b = LiteMedSAMNet(cf.SMALL_TINYVIT, default_decoder_config()).eval()
    b.load_state_dict(sd)  # upstream would keep stale cached attention biases here
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(a.image_encoder(x), b.image_encoder(x))


@pytest.mark.slow
def test_full_size_layout():
    net = LiteMedSAMNet(LITEMEDSAM_TINYVIT, default_decoder_config())
    sd = net.state_dict()
    assert len(sd) == 435
    assert tuple(sd["image_encoder.patch_embed.seq.0.c.weight"].shape) == (32, 3, 1, 1)
    assert not any(k.startswith("image_encoder.head") for k in sd)
    cfg = tinyvit_config_from_state_dict(sd)
    for k in ("img_size", "patch_kernel", "embed_dims", "depths", "mlp_ratio", "mbconv_expand_ratio", "head_classes"):
        assert cfg[k] == LITEMEDSAM_TINYVIT[k], k
    # layer 0 is convolutional: its heads/window are not in the file
    assert cfg["num_heads"][1:] == (4, 5, 10) and cfg["window_sizes"][1:] == (7, 14, 7)
    info = detect_family(sd)
    assert (info.family, info.image_size, info.backbone) == ("litemedsam", 256, "tinyvit")
    model = model_from_state_dict(sd, "litemedsam", "lite_medsam.pth")
    emb = model.encode(np.zeros((64, 80), np.uint8))
    assert emb["features"].shape == (1, 256, 64, 64)


def test_litemedsam_prompts(lite_file):
    pred = SlicePredictor(load_model(lite_file, family="litemedsam"))
    pred.set_image(np.arange(40 * 50, dtype=np.uint8).reshape(40, 50))
    with pytest.raises(SamlabError, match="trained with boxes only"):
        pred.predict(points=[(3, 4)])
    with pytest.raises(SamlabError, match="outside"):
        pred.predict(box=(0, 0, 50, 39))
    mask, score = pred.predict(box=(0, 0, 49, 39))
    assert mask.shape == (40, 50)
