"""A reused embedding is the computed one (issue 12): across processes, per encoder backend.

Each run is a separate Python process (as a user's sessions are): cold
cache, warm cache (the encoder must not run) and no cache give bitwise
equal masks and exactly equal scores; a cache primed with one encoder
backend is never served to another.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import checkpoint_factory as factory

RUN = r"""
import hashlib, json, sys
import numpy as np
from napari_samlab import SlicePredictor, load_model
from napari_samlab.models.base import encoder_report
ckpt, image, cache = sys.argv[1], sys.argv[2], sys.argv[3]
model = load_model(ckpt, family="medsam")
predictor = SlicePredictor(model, cache_dir=None if cache == "-" else cache)
predictor.set_image(np.load(image), window="auto")
masks, scores = [], []
for box in [(40, 50, 150, 160), (90, 20, 180, 120)]:
    mask, score = predictor.predict(box=box)
    masks.append(hashlib.sha256(np.packbits(mask).tobytes()).hexdigest())
    scores.append(repr(score))
print(json.dumps({"masks": masks, "scores": scores, "encoder_calls": predictor.encoder_calls,
                  "disk_hits": predictor.disk_hits, "backend": encoder_report(model)["backend"],
                  "features": hashlib.sha256(predictor.embedding["features"].tobytes()).hexdigest()}))
"""


@pytest.fixture(scope="module")
def case(tmp_path_factory, samples):
    d = tmp_path_factory.mktemp("exact")
    ckpt = factory.save(factory.sam_state_dict(seed=3), d / "medsam_vit_b.pth")
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(samples / "ct_chest_lung2.nrrd")))[20, 256:448, 256:448]
    image = d / "slice.npy"
    np.save(image, ct)
    return d, ckpt, image


def run(case, cache, backend=None):
    d, ckpt, image = case
    env = dict(os.environ)
    env.pop("SAMLAB_ENCODER_BACKEND", None)
    if backend:
        env["SAMLAB_ENCODER_BACKEND"] = backend
    res = subprocess.run([sys.executable, "-c", RUN, str(ckpt), str(image), str(cache)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def same(a, b):
    return a["masks"] == b["masks"] and a["scores"] == b["scores"] and a["features"] == b["features"]


def test_cold_warm_no_cache_and_backend_switching_agree_bitwise(case):
    cache = case[0] / "cache"
    cold = run(case, cache)                      # default backend (an exported encoder), cache empty
    torch1 = run(case, cache, backend="torch")   # the default's entry must not answer for torch
    warm = run(case, cache)                      # its own entry: the encoder does not run
    torch2 = run(case, cache, backend="torch")
    none = run(case, "-")
    assert cold["backend"] in ("openvino", "onnxruntime") and torch1["backend"] == "torch"
    assert (cold["encoder_calls"], torch1["encoder_calls"]) == (1, 1)
    assert (warm["encoder_calls"], warm["disk_hits"], torch2["encoder_calls"]) == (0, 1, 0)
    assert same(cold, warm) and same(cold, none) and same(torch1, torch2)
    assert cold["features"] != torch1["features"]  # the two backends' embeddings do differ (rounding)


def test_cli_refuses_a_foreign_cache_dir_and_names_the_encoder(case, samples, tmp_path, capsys):
    from napari_samlab import cli

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    out = tmp_path / "o.tif"
    rc = cli.main(["segment", str(samples / "nuclei.tif"), "-o", str(out), "--point", "30", "30",
                   "--cache-dir", str(foreign)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "not a napari-samlab embedding cache" in err and "--cache-dir" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["todo.txt"] and not out.exists()

    d, ckpt, image = case
    rc = cli.main(["info", str(ckpt), "--json"])
    enc = json.loads(capsys.readouterr().out)["encoder"]
    assert rc == 0 and enc["requested"] == "auto" and enc["backend"] in ("openvino", "onnxruntime")
    assert enc["precision"] == "fp32" and enc["checked_against_torch"] == 1e-3
    rc = cli.main(["info", str(ckpt), "--json", "--encoder", "torch"])
    assert json.loads(capsys.readouterr().out)["encoder"]["backend"] == "torch"

    vol = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.load(image)[None].repeat(2, 0)), str(vol))
    for encoder, expect in (("torch", "encoder: torch fp32 on cpu (upstream PyTorch)"), (None, "fp32 on cpu (exported")):
        args = ["segment", str(vol), "-o", str(tmp_path / "m.nii.gz"), "--model", "medsam", "--checkpoint", str(ckpt),
                "--slice", "1", "--box", "40", "50", "150", "160"] + (["--encoder", encoder] if encoder else [])
        rc = cli.main(args)
        err = capsys.readouterr().err.strip()
        enc_lines = [line for line in err.splitlines() if "encoder:" in line]  # the other line names the window
        assert rc == 0 and len(enc_lines) == 1 and expect in enc_lines[0], err
