"""Checkpoint loading: safety, unwrapping, family detection, error messages."""
from __future__ import annotations

import re

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_factory as cf  # noqa: E402

from napari_samlab.errors import SamlabError  # noqa: E402
from napari_samlab.models.checkpoint import load_checkpoint, load_checkpoint_file, weights_fingerprint  # noqa: E402
from napari_samlab.models.registry import describe_checkpoint, detect_family, load_model  # noqa: E402


@pytest.fixture(scope="module")
def sam_sd():
    return cf.sam_state_dict()


@pytest.fixture(scope="module")
def lite_sd():
    return cf.litemedsam_state_dict()


class Custom:  # a class a malicious checkpoint could smuggle in
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("layout", ["plain", "model", "module", "state_dict", "msa"])
def test_unwrap_training_layouts(tmp_path, sam_sd, layout):
    path = cf.save(sam_sd, tmp_path / f"{layout}.pth", layout)
    ckpt = load_checkpoint(path)
    assert sorted(ckpt.state_dict) == sorted(sam_sd)
    for k in ("image_encoder.pos_embed", "mask_decoder.iou_token.weight"):
        assert torch.equal(ckpt.state_dict[k], sam_sd[k])
    if layout == "module":
        assert ckpt.meta["prefix"] == "module."
    if layout == "msa":
        # MSA: "model" is the network name string, weights under "state_dict"
        assert ckpt.meta["wrapper"] == "state_dict"
        assert ckpt.meta["extra"]["model"] == "sam"
    assert weights_fingerprint(ckpt.state_dict) == weights_fingerprint(sam_sd)


def test_numpy_scalars_in_training_checkpoint_are_fine(tmp_path, sam_sd):
    path = tmp_path / "np.pth"
    torch.save({"model": sam_sd, "best_loss": np.float64(0.25), "epoch": np.int64(9)}, path)
    assert len(load_checkpoint_file(path)) == len(sam_sd)


def test_refuses_code_carrying_pickle(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": Custom()}, path)
    with pytest.raises(SamlabError) as e:
        load_checkpoint_file(path)
    msg = str(e.value)
    assert "evil.pth is not a plain weights file" in msg and "does not execute checkpoint code" in msg
    assert "torch.save(model.state_dict())" in msg and "\n" not in msg


def test_truncated_file(tmp_path, sam_sd):
    good = cf.save(sam_sd, tmp_path / "good.pth")
    data = good.read_bytes()
    bad = tmp_path / "cut.pth"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(SamlabError, match="cut.pth is truncated or corrupt"):
        load_checkpoint_file(bad)


def test_random_and_text_files(tmp_path):
    rnd = tmp_path / "random.pth"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()[1:] + b"x")
    with pytest.raises(SamlabError, match="random.pth is not a PyTorch checkpoint"):
        load_checkpoint_file(rnd)
    txt = tmp_path / "notes.pth"
    txt.write_text("not weights\n")
    with pytest.raises(SamlabError, match="not a PyTorch checkpoint"):
        load_checkpoint_file(txt)
    with pytest.raises(SamlabError, match="does not exist"):
        load_checkpoint_file(tmp_path / "missing.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(SamlabError, match="empty"):
        load_checkpoint_file(tmp_path / "empty.pth")


def test_no_tensors(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(SamlabError, match="holds no weight tensors"):
        load_checkpoint_file(path)


def test_fingerprint_sensitivity(sam_sd):
    fp = weights_fingerprint(sam_sd)
    changed = dict(sam_sd)
    t = sam_sd["mask_decoder.iou_prediction_head.layers.0.weight"].clone()
    t[17, 3] += 1e-3  # one value, probably not in the strided sample: the sum catches it
    changed["mask_decoder.iou_prediction_head.layers.0.weight"] = t
    assert weights_fingerprint(changed) != fp
    assert len(fp) == 40


def test_detect_and_describe(tmp_path, sam_sd, lite_sd):
    info = detect_family(sam_sd)
    assert info.family == "sam-or-medsam" and info.image_size == 1024
    assert info.details["vit"]["global_attn_indexes"] == (1,)
    assert detect_family(lite_sd).family == "litemedsam"
    d = describe_checkpoint(cf.save(lite_sd, tmp_path / "lite_medsam.pth", "model"))
    assert d["family"] == "litemedsam" and d["image_size"] == 256 and d["num_classes"] == 1
    assert d["num_tensors"] == len(lite_sd) and d["wrapper"] == "model"
    assert d["num_parameters"] == sum(v.numel() for v in lite_sd.values())
    d = describe_checkpoint(cf.save(sam_sd, tmp_path / "x.pth"))
    assert d["family"] == "sam-or-medsam" and "--" not in d["note"] and "'medsam'" in d["note"]
    from napari_samlab.errors import CLI_NAMES

    d = describe_checkpoint(cf.save(sam_sd, tmp_path / "x.pth"), names=CLI_NAMES)
    assert "--model medsam" in d["note"]
    import json

    json.dumps(d)  # `samlab info --json` must be able to print it


def test_samed_like_needs_base(tmp_path):
    # SAMed layout: LoRA A/B per q and v of 12 blocks, prompt encoder and a 9-token decoder
    from napari_samlab.models.sam_family import build_prompt_decoder, default_decoder_config

    dec = dict(default_decoder_config(), num_multimask_outputs=8)
    pe, md = build_prompt_decoder(512, 32, dec)
    sd = {f"prompt_encoder.{k}": v for k, v in pe.state_dict().items()}
    sd.update({f"mask_decoder.{k}": v for k, v in md.state_dict().items()})
    for i in range(24):
        sd[f"w_a_{i:03d}"] = torch.zeros(4, 768)
        sd[f"w_b_{i:03d}"] = torch.zeros(768, 4)
    path = tmp_path / "epoch_159.pth"
    torch.save(sd, path)
    info = detect_family(sd)
    assert info.family == "samed" and info.lora_rank == 4 and info.num_classes == 8
    with pytest.raises(SamlabError) as e:
        load_model(path)
    assert "--base-checkpoint" in e.value.for_cli() and "--" not in str(e.value)


def test_wrong_family_messages(tmp_path, sam_sd, lite_sd):
    lite = cf.save(lite_sd, tmp_path / "lite_medsam.pth")
    def cli(call, *args, **kwargs):
        # model errors name inputs per front end: CLI flags only in the CLI's phrasing
        with pytest.raises(SamlabError) as e:
            call(*args, **kwargs)
        assert "--" not in str(e.value) and "--" not in e.value.for_gui(), str(e.value)
        return e.value.for_cli()

    assert cli(load_model, lite, family="medsam") == \
        "lite_medsam.pth is a LiteMedSAM checkpoint, not MedSAM: choose --model litemedsam"
    sam = cf.save(sam_sd, tmp_path / "medsam_vit_b.pth")
    assert re.fullmatch(r"medsam_vit_b.pth is a \S+ state dict of the SAM/MedSAM layout, not LiteMedSAM: "
                        r"choose --model sam or --model medsam", cli(load_model, sam, family="litemedsam"))
    assert "SAM and MedSAM share this layout: choose --model sam or --model medsam" in cli(load_model, sam)
    assert "not MedSAM2" in cli(load_model, sam, family="medsam2")  # a SAM 1 file is not MedSAM2 (issue 13)
    assert "unknown model 'medsam3'" in cli(load_model, sam, family="medsam3")
    assert "needs its weights: pass --checkpoint PATH" in cli(load_model, family="medsam")
    assert "classic engine needs no checkpoint" in cli(load_model, sam, family="classic")
    assert load_model(sam, family="MedSAM").family == "medsam"
    assert load_model(lite).family == "litemedsam"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu(tmp_path, sam_sd):
    path = cf.save(sam_sd, tmp_path / "m.pth")
    with pytest.raises(SamlabError, match="no usable CUDA GPU: use --device cpu"):
        load_model(path, family="medsam", device="cuda")
    with pytest.raises(SamlabError, match="unknown device"):
        load_model(path, family="medsam", device="tpu")


def test_classic_default():
    pytest.importorskip("napari_samlab.models.classic")
    assert load_model().family == "classic"
    assert load_model(family="classic").family == "classic"
