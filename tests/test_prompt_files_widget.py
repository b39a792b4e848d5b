"""Segment panel files in a real napari viewer (Xvfb): prompts round trip, Save labels, "Segment all" committed.

The CT is a small crop of the sample around its tumour (written as NRRD so
the provenance sidecar has a file to hash); the classic engine needs no weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import tifffile

from napari_samlab.cohort.prompts import load_prompts
from napari_samlab.cohort.provenance import read_provenance
from napari_samlab.io.readers import read_image
from napari_samlab.napari_plugin.layers import image_layer_data

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"
Z0, Y0, X0 = 16, 300, 280  # the crop's corner in the sample (tumour on slices 15..25, rows 337..393, cols 319..383)


def _ct_crop(folder: Path) -> Path:
    ct = read_image(SAMPLES / "ct_chest_lung2.nrrd")
    crop = np.ascontiguousarray(ct.array[Z0:Z0 + 8, Y0:Y0 + 128, X0:X0 + 128])
    img = sitk.GetImageFromArray(crop)
    img.SetSpacing(tuple(float(s) for s in ct.spacing))
    path = folder / "ct_crop.nrrd"
    sitk.WriteImage(img, str(path))
    return path


def _panel(make_napari_viewer, path: Path):
    from napari_samlab.widgets import SegmentationWidget

    viewer = make_napari_viewer()
    data, kwargs, _ = image_layer_data(read_image(path), name="ct crop")
    viewer.add_image(data, **kwargs)
    seg = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment")
    assert seg.image_layer is not None and seg.image_layer.name == "ct crop"
    return viewer, seg


def test_prompts_round_trip_and_save_labels(make_napari_viewer, qtbot, tmp_path):
    ct_path = _ct_crop(tmp_path)
    viewer, seg = _panel(make_napari_viewer, ct_path)
    # object 1: a box on slice 4, committed; object 2: a box with an inside and an outside click on slice 5
    seg.set_slice(4, axis=0)
    seg.set_box(319 - X0, 337 - Y0, 383 - X0, 393 - Y0)
    seg.segment(wait=True)
    seg.commit(name="tumour", label=1, color=(1.0, 0.0, 0.0))
    first = np.asarray(seg.target_layer.data) == 1
    assert first.sum() > 100
    seg.set_slice(5, axis=0)
    seg.label_spin.setValue(2)
    seg.set_box(325 - X0, 340 - Y0, 380 - X0, 390 - Y0)
    seg.add_point(350 - X0, 365 - Y0, positive=True)
    seg.add_point(330 - X0, 345 - Y0, positive=False)
    second = seg.segment(wait=True)
    assert second.sum() > 100
    seg.propagate(wait=True)  # the propagate flag of object 2 is what the user did
    prompts = tmp_path / "p.json"
    seg.save_prompts(prompts)
    entries = load_prompts(prompts)
    assert [(e.slice, e.label, e.propagate) for e in entries] == [(4, 1, False), (5, 2, True)]
    assert entries[0].box == (39.0, 37.0, 103.0, 93.0)
    assert entries[1].points == ((70.0, 65.0),) and entries[1].negatives == ((50.0, 45.0),)
    assert json.loads(prompts.read_text())["image"].endswith("ct_crop.nrrd")

    # Save labels: names and colours in the file's label table, provenance beside it, layer metadata in sync
    assert seg.target_layer.metadata["samlab_segments"] == {1: {"name": "tumour", "color": [1.0, 0.0, 0.0]}}
    out = seg.save_labels(tmp_path / "tumour.nii.gz")
    assert out["sidecar"] == tmp_path / "tumour.json" and out["sidecar"].is_file()
    record = read_provenance(out["sidecar"])
    assert record["model"] == "classic" and record["image"].endswith("ct_crop.nrrd")
    assert [(p["slice"], p["label"]) for p in record["prompts"]] == [(4, 1)]  # only what was saved
    back = read_image(out["labels"])
    from napari_samlab.cohort.replay import replay_labels

    assert np.array_equal(replay_labels(out["sidecar"])[0], back.array)  # the record reproduces the file
    assert np.array_equal(back.array == 1, first)
    assert [(s["label"], s["name"]) for s in back.metadata["segments"]] == [(1, "tumour")]
    from napari_samlab.napari_plugin.writer import write_labels_layer  # File > Save Selected Layer

    layer = seg.target_layer
    written = write_labels_layer(str(tmp_path / "via_napari.seg.nrrd"), layer.data, {
        "metadata": layer.metadata, "scale": layer.scale, "translate": layer.translate})
    assert [(s["label"], s["name"]) for s in read_image(written[0]).metadata["segments"]] == [(1, "tumour")]
    seg.segments_panel.sidecar_check.setChecked(False)
    assert seg.save_labels(tmp_path / "plain.nii.gz")["sidecar"] is None
    assert not (tmp_path / "plain.json").exists()

    # a fresh viewer: the loaded prompts give the same segmentation, one label at a time
    viewer2, seg2 = _panel(make_napari_viewer, ct_path)
    got = seg2.load_prompts(prompts)
    assert got["label"] == 1 and got["remaining"] == [2]
    assert viewer2.dims.current_step[0] == 4 and seg2.label_spin.value() == 1
    seg2.segment(wait=True)
    seg2.commit(name="tumour")
    assert np.array_equal(np.asarray(seg2.target_layer.data) == 1, first)
    got = seg2.load_prompts(prompts)
    assert got["label"] == 2 and got["propagate"] and seg2.label_spin.value() == 2
    assert np.array_equal(seg2.segment(wait=True), second)
    seg2.undo()  # loading was one step: the prompts go, label 1 stays
    assert not seg2.layers.collect() and seg2.store.segments.keys() == {1}

    # bad files: one line in the panel's status, nothing changes
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    seg2.segments_panel.load_prompts_requested.emit(str(bad))
    assert "not valid JSON" in seg2.status.text() and "\n" not in seg2.status.text()
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"prompts": [{"slice": 30, "box": [1, 1, 9, 9]}]}))
    seg2.segments_panel.load_prompts_requested.emit(str(outside))
    assert "outside the image" in seg2.status.text()


def test_segment_all_result_is_undoable(make_napari_viewer, qtbot):
    from napari_samlab.widgets._session import segment_panel_for
    from napari_samlab.widgets.everything_widget import EverythingWidget

    img = tifffile.imread(SAMPLES / "nuclei.tif")[:160, :160]
    viewer = make_napari_viewer()
    viewer.add_image(img, name="nuclei")
    w = EverythingWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment all")
    w.set_image_layer("nuclei")
    w.set_object_size(22)
    layer = w.run(wait=True, timeout=120)
    found = np.array(layer.data, copy=True)
    n = int(found.max())
    assert n >= 5
    # delete and merge are steps of the dock's own history
    w.delete([1])
    w.merge([1, 2])
    assert int(layer.data.max()) == n - 2
    assert w.undo() == "merge 2 objects" and int(layer.data.max()) == n - 1
    assert w.undo() == "delete 1 objects" and np.array_equal(layer.data, found)
    assert w.table.rowCount() == n
    w.redo()
    assert int(layer.data.max()) == n - 1
    # Commit: every object a segment of the Segment panel (opened for it), one undo step there
    edited = np.array(layer.data, copy=True)
    out = w.commit()
    seg = segment_panel_for(viewer)
    assert seg is not None and out["labels"] == list(range(1, n))
    assert np.array_equal(np.asarray(seg.target_layer.data), edited)
    assert len(seg.segments) == n - 1 and seg.segments[0]["name"] == "object 1"
    assert seg.undo() == "apply object"
    assert not np.any(seg.target_layer.data) and seg.segments == []
    seg.redo()
    assert np.array_equal(np.asarray(seg.target_layer.data), edited)
