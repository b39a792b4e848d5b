"""`samlab info` and `samlab segment` with checkpoints of every family.

Checkpoints are written by the tests in each upstream file layout (small
widths, random weights); the masks themselves are checked against upstream
computations in the per-family tests — here the CLI wiring is.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

import checkpoint_factory as factory
from napari_samlab.models.base import Prompt
from test_cli import CT_BOX, assert_clean_failure, samlab
from test_msa import write_msa
from test_samed import write_base, write_samed


@pytest.fixture(scope="module")
def ct_crop(tmp_path_factory, samples):
    """A 5-slice crop of the CT sample around the tumour (keeps the run short)."""
    src = sitk.ReadImage(str(samples / "ct_chest_lung2.nrrd"))
    crop = src[256:448, 256:448, 18:23]  # x, y, z
    path = tmp_path_factory.mktemp("ct") / "crop.nrrd"
    sitk.WriteImage(crop, str(path), True)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "medsam": factory.save(factory.sam_state_dict(seed=3), d / "medsam_vit_b.pth", layout="model"),
        "litemedsam": factory.save(factory.litemedsam_state_dict(seed=4), d / "lite_medsam.pth"),
        "msa": write_msa(d, "C"),
        "samed": write_samed(d),
        "base": write_base(d),
    }


def api_prediction(image_path, checkpoint, z, prompt, **load_kw):
    """What the Python API gives for one slice, with the window the CLI resolves on the whole volume."""
    from napari_samlab import SlicePredictor, load_model, read_image
    from napari_samlab.base.windowing import detect_modality, resolve_window

    image = read_image(image_path)
    vol = image.array
    model = load_model(checkpoint, **load_kw)
    win = resolve_window("auto", vol, model, detect_modality(vol, metadata=image.metadata).kind)
    predictor = SlicePredictor(model)
    predictor.set_image(vol[z], window=win)
    return predictor.predict_prompt(prompt)


def read_labels(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_info_names_each_family(checkpoints):
    expected = {"medsam": "sam-or-medsam", "litemedsam": "litemedsam", "msa": "msa", "samed": "samed"}
    for key, family in expected.items():
        res = samlab("info", checkpoints[key], "--json")
        assert res.returncode == 0, res.stderr
        info = json.loads(res.stdout)
        assert family in json.dumps(info).lower(), info
        assert "image_size" in info or "image size" in json.dumps(info)
    res = samlab("info", checkpoints["samed"])
    assert res.returncode == 0
    text = res.stdout.lower()
    assert "lora rank: 4" in text and "backbone:" in text and "num classes: 8" in text


def test_medsam_box_on_ct(ct_crop, checkpoints, tmp_path):
    # box 2 px inside the crop around the tumour on slice 2 of the crop
    out = tmp_path / "medsam.nii.gz"
    res = samlab("segment", ct_crop, "-o", out, "--model", "medsam", "--checkpoint", checkpoints["medsam"],
                 "--slice", 2, "--box", 63, 81, 127, 137)
    assert res.returncode == 0, res.stderr
    labels = read_labels(out)
    assert labels.shape == (5, 192, 192) and labels[[0, 1, 3, 4]].sum() == 0
    api = api_prediction(ct_crop, checkpoints["medsam"], 2, Prompt(box=(63, 81, 127, 137)), family="medsam")
    assert labels[2].any() and np.array_equal(labels[2] > 0, api.mask)


def test_plain_sam_checkpoint_needs_model_choice(ct_crop, checkpoints, tmp_path):
    out = tmp_path / "o.nii.gz"
    res = samlab("segment", ct_crop, "-o", out, "--checkpoint", checkpoints["medsam"], "--slice", 2, "--box", 63, 81, 127, 137)
    assert_clean_failure(res, str(out), "--model")


def test_medsam_refuses_points(ct_crop, checkpoints, tmp_path):
    out = tmp_path / "o.nii.gz"
    res = samlab("segment", ct_crop, "-o", out, "--model", "medsam", "--checkpoint", checkpoints["medsam"],
                 "--slice", 2, "--point", 90, 100)
    assert_clean_failure(res, str(out), "box")


def test_wrong_family_for_the_file(ct_crop, checkpoints, tmp_path):
    out = tmp_path / "o.nii.gz"
    res = samlab("segment", ct_crop, "-o", out, "--model", "medsam", "--checkpoint", checkpoints["litemedsam"],
                 "--slice", 2, "--box", 63, 81, 127, 137)
    assert_clean_failure(res, str(out), "litemedsam")


def test_litemedsam_and_msa_segment(ct_crop, checkpoints, tmp_path):
    out = tmp_path / "lite.nrrd"
    res = samlab("segment", ct_crop, "-o", out, "--checkpoint", checkpoints["litemedsam"], "--slice", 1,
                 "--box", 63, 81, 127, 137)
    assert res.returncode == 0, res.stderr
    labels = read_labels(out)
    api = api_prediction(ct_crop, checkpoints["litemedsam"], 1, Prompt(box=(63, 81, 127, 137)))
    assert labels[1].any() and np.array_equal(labels[1] > 0, api.mask) and labels[[0, 2, 3, 4]].sum() == 0
    out = tmp_path / "msa.nrrd"
    res = samlab("segment", ct_crop, "-o", out, "--checkpoint", checkpoints["msa"], "--slice", 1, "--point", 95, 108)
    assert res.returncode == 0, res.stderr
    assert sitk.ReadImage(str(out)).GetSize() == (192, 192, 5)
    labels = read_labels(out)
    api = api_prediction(ct_crop, checkpoints["msa"], 1, Prompt(points=[(95, 108)], point_labels=[1]))
    assert labels[1].any() and np.array_equal(labels[1] > 0, api.mask) and labels[[0, 2, 3, 4]].sum() == 0


def test_samed_needs_base_and_segments_every_slice(ct_crop, checkpoints, tmp_path):
    out = tmp_path / "organs.nii.gz"
    res = samlab("segment", ct_crop, "-o", out, "--checkpoint", checkpoints["samed"])
    assert_clean_failure(res, str(out), "base")
    res = samlab("segment", ct_crop, "-o", out, "--checkpoint", checkpoints["samed"],
                 "--base-checkpoint", checkpoints["base"])
    assert res.returncode == 0, res.stderr
    labels = read_labels(out)
    assert labels.shape == (5, 192, 192) and labels.max() <= 8
    assert labels.any()
    for z in (0, 4):  # the class map of every slice is what the API gives (channel 0 = background)
        api = api_prediction(ct_crop, checkpoints["samed"], z, Prompt(), base_checkpoint=checkpoints["base"])
        assert np.array_equal(labels[z], api.labels)
    # a SAMed file is no base
    res = samlab("segment", ct_crop, "-o", out.with_name("x.nii.gz"), "--checkpoint", checkpoints["samed"],
                 "--base-checkpoint", checkpoints["samed"])
    assert res.returncode != 0 and "Traceback" not in res.stderr


def test_pickle_with_code_is_refused(tmp_path, ct_crop):
    import pickle

    import torch

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path, pickle_module=pickle)
    out = tmp_path / "o.nii.gz"
    res = samlab("segment", ct_crop, "-o", out, "--model", "medsam", "--checkpoint", path, "--slice", 2,
                 "--box", 63, 81, 127, 137)
    assert "this must never run" not in res.stdout
    assert_clean_failure(res, str(out), "code")
