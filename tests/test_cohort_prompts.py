"""Prompts files and `samlab segment --prompts` (SPEC: "Prompts files, cohorts, replay, comparison")."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cohort_helpers import ct_volume, read_labels, write_case

from napari_samlab import load_model, read_image
from napari_samlab.cli import main
from napari_samlab.cohort import PromptEntry, load_prompts, save_prompts
from napari_samlab.cohort.apply import segment_with_prompts
from napari_samlab.cohort.provenance import REQUIRED_KEYS, file_sha256, read_provenance, sidecar_path
from napari_samlab.errors import SamlabError


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, out_path, pattern):
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert pattern.lower() in err.lower(), err
    assert not os.path.exists(out_path) and not sidecar_path(out_path).exists()
    assert not [f for f in os.listdir(os.path.dirname(out_path)) if ".part" in f]


def test_save_load_roundtrip_fills_defaults(tmp_path):
    entries = [PromptEntry(slice=5, box=(1, 2, 30.5, 40), propagate=True),
               {"slice": 2, "points": [[3, 4]], "negatives": [[9, 9]], "label": 3}]
    path = save_prompts(tmp_path / "p.json", entries, image="scan.nrrd")
    doc = json.loads(path.read_text())
    assert doc["image"] == "scan.nrrd"
    assert doc["prompts"][0] == {"slice": 5, "box": [1, 2, 30.5, 40], "points": [], "negatives": [],
                                 "label": 1, "propagate": True}
    back = load_prompts(path)
    assert back[0] == entries[0]
    assert back[1] == PromptEntry(slice=2, points=((3.0, 4.0),), negatives=((9.0, 9.0),), label=3)
    # defaults: slice 0, label 1, no propagation
    (tmp_path / "d.json").write_text('{"prompts": [{"box": [0, 0, 5, 5]}]}')
    assert load_prompts(tmp_path / "d.json") == [PromptEntry(box=(0.0, 0.0, 5.0, 5.0))]


@pytest.mark.parametrize("text, pattern", [
    ('{"prompts": [{"slice": 1, "box": [0, 0, 5, 5]}', "not valid JSON"),
    ('{"prompts": [{"slice": 1}]}', "neither a box nor points"),
    ('{"prompts": [{"negatives": [[1, 1]]}]}', "only negatives"),
    ('{"prompts": [{"box": [0, 0, 5, 5], "label": 0}]}', "label"),
    ('{"prompts": [{"box": [0, 0, 5, 5], "label": 2.5}]}', "label"),
    ('{"prompts": [{"box": [0, 0, 5, 5], "label": true}]}', "label"),
    ('{"prompts": [{"box": [0, 0, 5, 5], "slice": 1.5}]}', "slice"),
    ('{"prompts": [{"box": [0, 0, 5]}]}', "box"),
    ('{"prompts": [{"box": [9, 0, 5, 5]}]}', "empty"),
    ('{"prompts": [{"box": [0, 0, 5, 5], "colour": 1}]}', "unknown key"),
    ('{"prompts": [{"box": [0, 0, 5, 5], "propagate": "yes"}]}', "propagate"),
    ('[1, 2]', "not a prompts file"),
])
def test_bad_prompts_files_are_refused_with_the_entry_named(tmp_path, text, pattern):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SamlabError, match="(?i)" + pattern) as info:
        load_prompts(path)
    assert "bad.json" in str(info.value)


def test_segment_prompts_later_entry_wins_and_sidecar_records_it(tmp_path, capsys):
    vol, z, box = ct_volume(1)
    image, _ = write_case(tmp_path, "ct", 1)
    # entry 2 (label 2, single slice) overlaps entry 1 (label 1, propagated) on slice z
    entries = [{"slice": z, "box": box, "propagate": True},
               {"slice": z, "box": box, "label": 2, "negatives": [[box[0] + 1, box[1] + 1]]}]
    prompts = tmp_path / "two.json"
    prompts.write_text(json.dumps({"prompts": entries}))
    out = tmp_path / "seg.nii.gz"
    code, stdout, err = run_cli(capsys, "segment", image, "-o", out, "--prompts", prompts)
    assert code == 0, err
    labels = read_labels(out)
    assert set(np.unique(labels[z])) == {0, 2}  # the later entry won its slice
    assert (labels[z - 1] == 1).any() and (labels[z + 1] == 1).any()  # the first one still propagated
    # equal to the API on the same entries
    api = segment_with_prompts(read_image(image), load_model(family="classic"), load_prompts(prompts))
    np.testing.assert_array_equal(labels, api)

    rec = read_provenance(tmp_path / "seg.json")
    assert set(REQUIRED_KEYS) <= set(rec)
    assert rec["image"] == str(image.resolve()) and rec["image_sha256"] == file_sha256(image)
    assert rec["model"] == "classic" and rec["checkpoint"] is None and rec["checkpoint_sha256"] is None
    assert rec["prompts"][1] == {"slice": z, "box": box, "points": [], "negatives": [[box[0] + 1, box[1] + 1]],
                                 "label": 2, "propagate": False}
    assert rec["engine"] == {"backend": "numpy", "precision": "float32", "device": "cpu"}
    assert rec["labels_sha256"] == file_sha256(out)


def test_segment_with_flags_writes_a_replayable_sidecar(tmp_path, capsys):
    vol, z, box = ct_volume(2)
    image, _ = write_case(tmp_path, "ct", 2)
    out = tmp_path / "flags.nrrd"
    code, _, err = run_cli(capsys, "segment", image, "-o", out, "--slice", z, "--box", *box, "--label", 4)
    assert code == 0, err
    rec = read_provenance(tmp_path / "flags.json")
    assert rec["prompts"] == [{"slice": z, "box": box, "points": [], "negatives": [], "label": 4, "propagate": False}]
    again = tmp_path / "again.nii.gz"
    code, _, err = run_cli(capsys, "replay", tmp_path / "flags.json", "-o", again)
    assert code == 0, err
    np.testing.assert_array_equal(read_labels(again), read_labels(out))


@pytest.mark.parametrize("entry, pattern", [
    ({"slice": 40, "box": [2, 2, 20, 20]}, "slice 40, outside the image"),
    ({"slice": 3, "box": [2, 2, 200, 20]}, "outside"),
    ({"slice": 3, "points": [[-1, 4]]}, "outside"),
])
def test_segment_prompts_outside_the_image_write_nothing(tmp_path, capsys, entry, pattern):
    image, _ = write_case(tmp_path, "ct", 3)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompts": [entry]}))
    out = tmp_path / "seg.nii.gz"
    code, _, err = run_cli(capsys, "segment", image, "-o", out, "--prompts", prompts)
    assert_refused(code, err, out, pattern)
    assert "p.json: entry 1" in err


def test_segment_prompts_not_json_and_mixed_flags(tmp_path, capsys):
    image, prompts = write_case(tmp_path, "ct", 4)
    out = tmp_path / "seg.nii.gz"
    bad = tmp_path / "bad.json"
    bad.write_text("slice 3 box 1 2 3 4")
    code, _, err = run_cli(capsys, "segment", image, "-o", out, "--prompts", bad)
    assert_refused(code, err, out, "not valid JSON")
    code, _, err = run_cli(capsys, "segment", image, "-o", out, "--prompts", prompts, "--box", 1, 2, 3, 4)
    assert_refused(code, err, out, "--prompts replaces --box")


def test_segment_never_overwrites_a_foreign_json_beside_out(tmp_path, capsys):
    """OUT=case.nii.gz would write case.json: when that is the user's prompts file, refuse up front."""
    image, _ = write_case(tmp_path, "ct", 5)
    vol, z, box = ct_volume(5)
    prompts = tmp_path / "case.json"
    prompts.write_text(json.dumps({"prompts": [{"slice": z, "box": box}]}))
    out = tmp_path / "case.nii.gz"
    code, _, err = run_cli(capsys, "segment", image, "-o", out, "--prompts", prompts)
    assert code != 0 and "case.json exists and is not a samlab provenance file" in err
    assert not out.exists() and json.loads(prompts.read_text())["prompts"][0]["box"] == box
    # an earlier provenance record there is simply replaced
    out2 = tmp_path / "seg.nii.gz"
    assert run_cli(capsys, "segment", image, "-o", out2, "--prompts", prompts)[0] == 0
    assert run_cli(capsys, "segment", image, "-o", out2, "--prompts", prompts)[0] == 0
