"""The family registry: a family is one module plus one registry entry, and every front end reads it.

``toy_family.py`` (in tests/) is such a module; registering it makes it a
``--model`` choice, detected by ``samlab info`` and ``load_model``, built,
windowed and propagated with what it declares.  The one prompt validator
phrases its errors per front end.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import toy_family
from napari_samlab import cli
from napari_samlab.base.prompts import Prompt, validate_prompt
from napari_samlab.errors import PromptError, SamlabError
from napari_samlab.models.families import (BUILTIN, families, family_names, get_family, register_family,
                                           unregister_family)
from napari_samlab.models.registry import describe_checkpoint, detect_family, load_model


@pytest.fixture
def toy(tmp_path):
    register_family(toy_family.FAMILY)
    path = tmp_path / "toy.pth"
    torch.save({"toy.level": torch.tensor([128.0])}, path)
    yield path
    unregister_family("toy")


@pytest.fixture
def ramp(tmp_path):
    """A 3-slice volume whose right half is bright (the toy segments it)."""
    vol = np.zeros((3, 40, 60), np.int16)
    vol[:, :, 30:] = 1000
    path = tmp_path / "ramp.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(path))
    return path, vol


def test_builtin_families_are_listed_once_in_order():
    assert family_names()[:len(BUILTIN)] == BUILTIN
    assert get_family("Lite_MedSAM").name == "litemedsam" and get_family("samed_h").name == "samed"
    with pytest.raises(SamlabError, match="unknown model 'nope'"):
        get_family("nope")


def test_family_declarations_match_their_engines():
    from napari_samlab.models.classic import ClassicModel
    from napari_samlab.models.litemedsam import LiteMedSAMModel
    from napari_samlab.models.medsam2 import Sam2Model
    from napari_samlab.models.msa import MsaModel
    from napari_samlab.models.sam_family import MedSAMModel, SamModel
    from napari_samlab.models.samed import SamedModel

    engines = {"classic": ClassicModel, "sam": SamModel, "medsam": MedSAMModel, "litemedsam": LiteMedSAMModel,
               "samed": SamedModel, "msa": MsaModel, "sam2": Sam2Model, "medsam2": Sam2Model}
    assert set(engines) == set(BUILTIN)
    for fam in families():
        cls = engines[fam.name]
        assert getattr(cls, "family", fam.name) in (fam.name, "")  # Sam2Model names its family per instance
        assert getattr(cls, "memory_propagation", False) == fam.memory_propagation, fam.name
        assert (cls.needs_prompt, cls.supports_boxes, cls.supports_points) == \
            (fam.needs_prompt, fam.accepts("box"), fam.accepts("points")), fam.name


def test_a_registered_family_is_detected_built_and_described(toy):
    assert "toy" in family_names()
    sd = {"toy.level": torch.tensor([128.0])}
    info = detect_family(sd)
    assert (info.family, info.backbone, info.details["level"]) == ("toy", "threshold", 128.0)
    model = load_model(toy)
    assert isinstance(model, toy_family.ToyModel) and model.level == 128.0
    assert load_model(toy, family="Toy-Threshold").family == "toy"
    assert model.encoder_backend == "torch"  # not declared exported_encoder
    d = describe_checkpoint(toy)
    assert d["family"] == "toy" and d["family_name"] == "Toy threshold"
    with pytest.raises(SamlabError, match="is a Toy threshold checkpoint, not MedSAM"):
        load_model(toy, family="medsam")
    with pytest.raises(ValueError, match="registered already"):
        register_family(toy_family.FAMILY)


def test_unregistered_family_is_gone(toy):
    unregister_family("toy")
    assert "toy" not in family_names()
    with pytest.raises(SamlabError, match="match no supported model"):
        load_model(toy)
    register_family(toy_family.FAMILY)  # the fixture unregisters it again


def test_cli_uses_a_registered_family(toy, ramp, tmp_path, capsys):
    path, vol = ramp
    out = tmp_path / "toy.nii.gz"
    rc = cli.main(["segment", str(path), "-o", str(out), "--model", "toy", "--checkpoint", str(toy),
                   "--slice", "1", "--box", "10", "5", "49", "30"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    expected = np.zeros(vol.shape, np.uint8)
    expected[1, 5:31, 30:50] = 1  # the family's window maps 1000 to 255 >= 128, 0 to 0
    np.testing.assert_array_equal(labels, expected)
    assert "encoder: none (toy engine" in captured.err  # one line naming the encoder in use

    rc = cli.main(["info", str(toy), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert rc == 0 and info["family"] == "toy" and info["encoder"]["backend"] == "torch"

    # detection without --model, and propagation with the declared strategy
    out3 = tmp_path / "toy3.nii.gz"
    rc = cli.main(["segment", str(path), "-o", str(out3), "--checkpoint", str(toy), "--slice", "1",
                   "--box", "10", "5", "49", "30", "--propagate"])
    assert rc == 0, capsys.readouterr().err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out3)))
    assert labels[:, 5:31, 30:50].all() and not labels[:, :, :30].any()  # every slice, bright pixels only


def test_prompt_errors_are_phrased_per_front_end(toy, ramp, tmp_path, capsys):
    path, _ = ramp
    out = tmp_path / "o.nii.gz"
    rc = cli.main(["segment", str(path), "-o", str(out), "--model", "toy", "--checkpoint", str(toy),
                   "--slice", "1", "--point", "40", "20"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and not out.exists() and len(err.splitlines()) == 1
    assert "does not take points" in err and "--box X0 Y0 X1 Y1" in err

    model = load_model(toy)
    with pytest.raises(PromptError) as e:
        validate_prompt(Prompt(points=[(40, 20)]), (40, 60), model)
    assert e.value.field == "point"
    assert "--" not in e.value.for_gui() and "box tool" in e.value.for_gui()
    assert "--" not in str(e.value)
    assert e.value.for_gui({"box": ("the Box button", "the Box button")}).endswith("draw the Box button around the object instead")
    with pytest.raises(PromptError, match="outside the image") as e:
        validate_prompt(Prompt(box=(0, 0, 60, 10)), (40, 60), model, where=" on slice 3")
    assert "on slice 3" in str(e.value) and e.value.field == "box"
    with pytest.raises(PromptError, match="only background points") as e:
        validate_prompt(Prompt(points=[(3, 3)], point_labels=[0]), (40, 60))
    assert "--point X Y" in e.value.for_cli()
