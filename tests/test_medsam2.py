"""MedSAM2 / SAM 2 (``medsam2``, ``sam2``): loading, MedSAM2's 3D pipeline, CLI and bad input.

The reference below follows ``medsam2_infer_3D_CT.py`` step by step with the
``sam2`` package's own ``SAM2VideoPredictor`` (MedSAM2's predictor settings,
frames handed over as a tensor as MedSAM2's ``init_state(images, H, W)``
does, upstream's CUDA hole filling emulated with OpenCV), and is compared
with the CLI and the Python API.  The networks are SAM 2.1 with a small
Hiera trunk at 128 px (random weights) registered as a known architecture.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import dice
from napari_samlab import cli
from napari_samlab.errors import SamlabError
from napari_samlab.models import medsam2 as m2

TEST_ARCH = {
    "signature": (16, (1, 1, 2, 1)), "config": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "config_v20": "configs/sam2/sam2_hiera_t.yaml", "label": "hiera-test", "image_size": 128,
    "medsam2_compatible": True,
    "overrides": {"image_encoder.trunk.embed_dim": 16, "image_encoder.trunk.stages": [1, 1, 2, 1],
                  "image_encoder.trunk.global_att_blocks": [3], "image_encoder.trunk.window_spec": [4, 4, 4, 2],
                  "image_encoder.trunk.window_pos_embed_bkg_spatial_size": [4, 4],
                  "image_encoder.neck.backbone_channel_list": [128, 64, 32, 16],
                  "memory_attention.layer.dim_feedforward": 256},
}
# the same trunk one stage deeper: "another size" of SAM 2.1
OTHER_ARCH = dict(TEST_ARCH, signature=(16, (1, 1, 3, 1)), label="hiera-test-b", medsam2_compatible=False,
                  overrides=dict(TEST_ARCH["overrides"], **{"image_encoder.trunk.stages": [1, 1, 3, 1]}))
KEY, BOX = 3, (16, 12, 40, 36)


@pytest.fixture(autouse=True)
def test_archs(monkeypatch):
    monkeypatch.setitem(m2.ARCHITECTURES, "test", TEST_ARCH)
    monkeypatch.setitem(m2.ARCHITECTURES, "test-b", OTHER_ARCH)


def _package_cfg(arch: dict, target: str, hole_area: int = 8):
    """The model config as MedSAM2's build_sam2_video_predictor_npz composes it (t512.yaml pattern)."""
    import importlib.resources

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(importlib.resources.files("sam2").joinpath(arch["config"]))).model
    for key, value in arch["overrides"].items():
        OmegaConf.update(cfg, key, value, merge=False)
    size = arch["image_size"]
    cfg._target_ = target
    cfg.image_size = size
    cfg.memory_attention.layer.self_attention.feat_sizes = [size // 16] * 2
    cfg.memory_attention.layer.cross_attention.feat_sizes = [size // 16] * 2
    cfg.sam_mask_decoder_extra_args = {"dynamic_multimask_via_stability": True,
                                       "dynamic_multimask_stability_delta": 0.05,
                                       "dynamic_multimask_stability_thresh": 0.98}
    cfg.binarize_mask_from_pts_for_mem_enc = True
    cfg.fill_hole_area = hole_area
    return cfg


def write_checkpoint(path, arch=TEST_ARCH, seed=0):
    """Random SAM 2.1 weights in MedSAM2's file layout ({"model": state_dict})."""
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    net = instantiate(_package_cfg(arch, "sam2.sam2_video_predictor.SAM2VideoPredictor"), _recursive_=True)
    sd = net.state_dict()
    # random object-score heads mostly say "no object"; a positive bias keeps masks visible
    sd["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(8.0)
    torch.save({"model": sd}, path)
    return path


def blob_volume(depth=7, h=48, w=56, seed=1):
    """A bright ellipsoid in noise, already 0-255 (float32), non-square slices."""
    zz, yy, xx = np.mgrid[:depth, :h, :w]
    vol = 170.0 * ((((zz - 3) / 2.6) ** 2 + ((yy - 24) / 11.0) ** 2 + ((xx - 28) / 13.0) ** 2) < 1)
    vol += np.random.RandomState(seed).rand(depth, h, w) * 60
    return vol.astype(np.float32)


# ----------------------------------------------------------------------
# the reference: medsam2_infer_3D_CT.py on the sam2 package
def _cpu_connected_components(mask):
    """What sam2._C.get_connected_componnets returns (8-connectivity labels and areas), via OpenCV."""
    import cv2

    m = mask.to(torch.uint8).cpu().numpy()
    labels, counts = np.zeros(m.shape, np.int32), np.zeros(m.shape, np.int32)
    for i in range(m.shape[0]):
        n, lab, stats, _ = cv2.connectedComponentsWithStats(m[i, 0], connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].copy()
        area[0] = 0
        labels[i, 0] = np.where(m[i, 0] > 0, lab, 0)
        counts[i, 0] = area[labels[i, 0]]
    return torch.from_numpy(labels), torch.from_numpy(counts)


def reference_medsam2(ckpt, vol_0_255, key, box, monkeypatch, propagate=True):
    from hydra.utils import instantiate
    from PIL import Image
    from skimage import measure

    import sam2.sam2_video_predictor as vp
    import sam2.utils.misc as misc

    monkeypatch.setattr(misc, "get_connected_components", _cpu_connected_components)
    predictor = instantiate(_package_cfg(TEST_ARCH, "sam2.sam2_video_predictor.SAM2VideoPredictor"), _recursive_=True)
    missing, unexpected = predictor.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    assert not missing and not unexpected
    predictor.eval()
    size = TEST_ARCH["image_size"]
    d, h, w = vol_0_255.shape
    frames = np.zeros((d, 3, size, size))  # float64, as upstream
    for i in range(d):
        img = Image.fromarray(vol_0_255[i].astype(np.uint8)).convert("RGB").resize((size, size))
        frames[i] = np.array(img).transpose(2, 0, 1)
    frames = torch.from_numpy(frames / 255.0)
    frames -= torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
    frames /= torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
    # MedSAM2's init_state(images, video_height, video_width): the frames come from memory
    monkeypatch.setattr(vp, "load_video_frames", lambda **kw: (frames, h, w))
    segs = np.zeros((d, h, w), np.uint8)
    with torch.inference_mode():
        state = predictor.init_state("in-memory")
        _, _, logits = predictor.add_new_points_or_box(state, frame_idx=key, obj_id=1, box=np.array(box))
        if not propagate:
            segs[key] = (logits[0] > 0).numpy()[0]
        else:
            for z, _, logits in predictor.propagate_in_video(state):
                segs[z, (logits[0] > 0.0).numpy()[0]] = 1
            predictor.reset_state(state)
            predictor.add_new_points_or_box(state, frame_idx=key, obj_id=1, box=np.array(box))
            for z, _, logits in predictor.propagate_in_video(state, reverse=True):
                segs[z, (logits[0] > 0.0).numpy()[0]] = 1
    if segs.max() > 0:
        lab = measure.label(segs)
        segs = (lab == np.argmax(np.bincount(lab.flat)[1:]) + 1).astype(np.uint8)
    return segs.astype(bool)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("medsam2")
    vol = blob_volume()
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(img, str(d / "blob.nii.gz"))
    ckpt = write_checkpoint(d / "MedSAM2_test.pt")
    with pytest.MonkeyPatch.context() as mp:  # the references once per module: they are the slow part
        mp.setitem(m2.ARCHITECTURES, "test", TEST_ARCH)
        ref = reference_medsam2(ckpt, vol, KEY, BOX, mp)
        ref_key = reference_medsam2(ckpt, vol, KEY, BOX, mp, propagate=False)
    return {"dir": d, "vol": vol, "image": d / "blob.nii.gz", "ckpt": ckpt, "ref": ref, "ref_key": ref_key}


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------
def test_cli_propagation_matches_medsam2_reference(files, tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    code, err = run_cli(capsys, "segment", files["image"], "-o", out, "--model", "medsam2", "--checkpoint", files["ckpt"],
                        "--slice", KEY, "--box", *BOX, "--propagate", "--window", "none")
    assert code == 0, err
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    ref = files["ref"]
    others = [z for z in np.flatnonzero(ref.any(axis=(1, 2))) if z != KEY]
    assert len(others) >= 3, "the reference must reach several slices besides the key slice"
    assert dice(ours, ref) >= 0.99
    assert np.array_equal(ours, ref)
    assert sitk.ReadImage(str(out)).GetSpacing() == pytest.approx((0.8, 0.8, 2.5))


def test_key_slice_only_without_propagate(files, tmp_path, capsys):
    out = tmp_path / "slice.nii.gz"
    code, err = run_cli(capsys, "segment", files["image"], "-o", out, "--model", "medsam2", "--checkpoint", files["ckpt"],
                        "--slice", KEY, "--box", *BOX, "--window", "none")
    assert code == 0, err
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    ref = files["ref_key"]
    assert ours[KEY].any() and not np.delete(ours, KEY, axis=0).any()
    assert np.array_equal(ours, ref)


def test_session_correction_repropagates_from_the_corrected_slice(files):
    from napari_samlab.models.registry import load_model
    from napari_samlab.propagate.memory import MemorySession

    model = load_model(files["ckpt"], family="medsam2")
    session = MemorySession(model, files["vol"], window="none", largest_component=False)
    session.add_box(KEY, BOX)
    first = session.propagate()
    encoded = []
    real_forward = model.net.forward_image
    model.net.forward_image = lambda x: encoded.append(1) or real_forward(x)
    depth = files["vol"].shape[0]
    session.add_points(5, [(28, 24)], [0])  # a background click in the middle of the object on slice 5
    after = session.result()
    # slices before the correction (and the other direction) keep their masks, the rest were re-tracked
    assert np.array_equal(after[:5], first[:5])
    assert not np.array_equal(after[5:], first[5:])
    assert len(encoded) <= depth - 5, "re-propagation must start at the corrected slice, not from scratch"


def test_cpu_hole_filling_matches_upstream_kernel_rule():
    """fill_small_holes == sam2's fill_holes_in_mask_scores with the CUDA kernel's 8-connected components."""
    import sam2.utils.misc as misc

    from napari_samlab.models.sam2_engine import fill_small_holes

    rng = np.random.RandomState(0)
    logits = torch.from_numpy(rng.randn(3, 1, 40, 40).astype(np.float32) + 0.8)  # many small background specks
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(misc, "get_connected_components", _cpu_connected_components)
        expected = misc.fill_holes_in_mask_scores(logits.clone(), 8)
    got = fill_small_holes(logits.clone(), 8)
    assert not torch.equal(expected, logits), "the input must have holes to fill"
    assert torch.equal(got, expected)


def test_slice_predictor_2d_path(files):
    from napari_samlab import SlicePredictor
    from napari_samlab.models.registry import load_model
    from napari_samlab.propagate.memory import keep_largest_component

    predictor = SlicePredictor(load_model(files["ckpt"], family="medsam2"))
    predictor.set_image(files["vol"][KEY], window="none")
    mask, score = predictor.predict(box=BOX)
    assert np.array_equal(keep_largest_component(mask), files["ref_key"][KEY])
    assert 0.0 <= score <= 1.0


def test_window_none_needs_0_255_and_auto_clips_ct(files):
    from napari_samlab.base.windowing import Window
    from napari_samlab.propagate.memory import volume_to_uint8

    with pytest.raises(SamlabError, match="0..255"):
        volume_to_uint8(np.array([[[-5.0, 300.0]]]), None)
    hu = np.array([[[-1000.0, -50.0, 0.0, 100.0, 150.0]]])
    lo, hi = -160.0, 240.0
    clipped = np.clip(hu, lo, hi)
    upstream = np.uint8((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255.0)  # min-max of the clipped data
    assert np.array_equal(volume_to_uint8(hu, Window(lo, hi)), upstream)


def test_detection_and_info(files, capsys):
    code, out = cli.main(["info", str(files["ckpt"]), "--json"]), capsys.readouterr().out
    assert code == 0
    import json

    info = json.loads(out)
    assert info["family"] == "sam2-or-medsam2" and info["backbone"] == "hiera-test"
    assert info["details"]["version"] == "2.1"
    with pytest.raises(SamlabError, match="share this layout: choose model .sam2. or model .medsam2."):
        from napari_samlab.models.registry import load_model

        load_model(files["ckpt"])


# ----------------------------------------------------------------------
# bad input: one line, non-zero exit, nothing written
def _fails(capsys, out, pattern, *args):
    code, err = run_cli(capsys, "segment", *args, "-o", out)
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert pattern.lower() in err.lower(), err
    assert not out.exists()


def test_other_size_as_medsam2_is_refused(files, tmp_path, capsys):
    other = write_checkpoint(tmp_path / "sam2.1_other.pt", OTHER_ARCH, seed=2)
    _fails(capsys, tmp_path / "o.nii.gz", "not MedSAM2: choose --model sam2", files["image"], "--model", "medsam2",
           "--checkpoint", other, "--slice", KEY, "--box", *BOX)
    # the file's own family builds it
    model = __import__("napari_samlab.models.registry", fromlist=["load_model"]).load_model(other, family="sam2")
    assert model.family == "sam2" and model.arch == "test-b"


def test_size_mismatch_and_missing_keys_are_refused(files, tmp_path):
    sd = torch.load(files["ckpt"], weights_only=True)["model"]
    # tiny-sized trunk but a memory encoder of another width: the config does not fit
    bad = dict(sd)
    bad["memory_encoder.out_proj.weight"] = torch.zeros(32, 256, 1, 1)
    with pytest.raises(SamlabError, match="does not fit"):
        m2.build_sam2_family(bad, "medsam2", "bad.pt", "x")
    partial = {k: v for k, v in sd.items() if not k.startswith("obj_ptr_proj.")}
    with pytest.raises(SamlabError, match="missing"):
        m2.build_sam2_family(partial, "medsam2", "partial.pt", "x")


def test_sam1_file_as_medsam2_is_refused(files, tmp_path, capsys):
    import checkpoint_factory as factory

    sam = factory.save(factory.sam_state_dict(seed=3), tmp_path / "medsam_vit_b.pth", layout="model")
    _fails(capsys, tmp_path / "o.nii.gz", "not MedSAM2", files["image"], "--model", "medsam2", "--checkpoint", sam,
           "--slice", KEY, "--box", *BOX)


def test_box_on_empty_slice_is_refused(files, tmp_path, capsys):
    vol = files["vol"].copy()
    vol[0] = 0
    path = tmp_path / "empty0.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(path))
    _fails(capsys, tmp_path / "o.nii.gz", "uniform value", path, "--model", "medsam2", "--checkpoint", files["ckpt"],
           "--slice", 0, "--box", *BOX, "--propagate", "--window", "none")


def test_one_slice_volume_is_2d(files, tmp_path, capsys):
    path = tmp_path / "one.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(files["vol"][KEY:KEY + 1]), str(path))
    _fails(capsys, tmp_path / "o.nii.gz", "single slice", path, "--model", "medsam2", "--checkpoint", files["ckpt"],
           "--box", *BOX, "--propagate", "--window", "none")
    out = tmp_path / "one_mask.nii.gz"
    code, err = run_cli(capsys, "segment", path, "-o", out, "--model", "medsam2", "--checkpoint", files["ckpt"],
                        "--box", *BOX, "--window", "none")
    assert code == 0, err
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    ref = files["ref_key"][KEY]
    assert ours.shape == (1,) + ref.shape and np.array_equal(ours[0], ref)
