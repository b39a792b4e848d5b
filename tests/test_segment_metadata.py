"""Segment names and colours survive a save (issue 17 item 9): 3D Slicer's
.seg.nrrd fields and an ITK-SNAP label file beside NIfTI, read back by our reader."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_samlab.errors import SamlabError
from napari_samlab.io.readers import read_image
from napari_samlab.io.segments import read_itksnap, sidecar_path
from napari_samlab.io.writers import write_labels

from conftest import CT_TUMOUR

SEGMENTS = [{"label": 1, "name": "tumour", "color": (230, 40, 30)},
            {"label": 3, "name": "vessel \"main\"", "color": (0.1, 0.4, 0.9)}]


@pytest.fixture(scope="module")
def oblique():
    """The real tumour label (crop) on the CT's grid, with a second label and an oblique direction."""
    src = read_image(CT_TUMOUR)
    labels = np.array(src.array[12:28, 200:400, 220:420])
    labels[3:6, 10:40, 10:30] = 3
    c, s = np.cos(0.3), np.sin(0.3)
    src.array = labels
    src.origin = (-12.5, 40.25, -300.0)
    src.direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    return labels, src


def test_seg_nrrd_has_slicer_fields_and_reads_back(oblique, tmp_path):
    labels, ref = oblique
    out = write_labels(labels, ref, tmp_path / "lesions.seg.nrrd", segments=SEGMENTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lesions.seg.nrrd"]  # no sidecar for .seg.nrrd
    header = out.read_bytes()[:4000].split(b"\n\n")[0].decode()
    # the fields as 3D Slicer writes them for a one-layer segmentation
    assert "Segment0_Name:=tumour\n" in header and "Segment1_Name:=vessel \"main\"\n" in header
    assert "Segment0_LabelValue:=1\n" in header and "Segment1_LabelValue:=3\n" in header
    assert "Segment0_Layer:=0\n" in header and "Segment0_ID:=Segment_1\n" in header
    assert "Segment0_Color:=0.902 0.1569 0.1176\n" in header
    assert "Segmentation_MasterRepresentation:=Binary labelmap\n" in header
    zs, ys, xs = np.nonzero(labels == 3)
    want = f"{xs.min()} {xs.max()} {ys.min()} {ys.max()} {zs.min()} {zs.max()}"
    assert f"Segment1_Extent:={want}\n" in header
    # SimpleITK reads the same voxels on the same grid
    itk = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), labels)
    assert np.allclose(itk.GetSpacing(), ref.spacing) and np.allclose(itk.GetOrigin(), ref.origin)
    assert np.allclose(itk.GetDirection(), ref.direction)
    # and our reader gives the names and colours back
    back = read_image(out)
    assert back.metadata["segments"] == [
        {"label": 1, "name": "tumour", "color": (0.902, 0.1569, 0.1176)},
        {"label": 3, "name": "vessel \"main\"", "color": (0.1, 0.4, 0.9)},
    ]


def test_seg_nrrd_names_every_label_even_unnamed(oblique, tmp_path):
    labels, ref = oblique
    out = write_labels(labels, ref, tmp_path / "x.seg.nrrd", segment_names={3: "vessel"})
    segs = read_image(out).metadata["segments"]
    assert [(s["label"], s["name"]) for s in segs] == [(1, "Segment 1"), (3, "vessel")]
    assert segs[0]["color"] != segs[1]["color"]


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_nifti_and_nrrd_get_an_itksnap_label_file(oblique, tmp_path, ext):
    labels, ref = oblique
    out = write_labels(labels, ref, tmp_path / f"lesions{ext}", segments=SEGMENTS)
    side = tmp_path / "lesions.label.txt"
    assert sidecar_path(out) == side and side.is_file()
    text = side.read_text()
    assert "# ITK-SnAP Label Description File" in text
    assert '    1   230   40   30        1  1  1    "tumour"' in text
    assert '"Clear Label"' in text
    back = read_image(out)
    np.testing.assert_array_equal(back.array, labels)
    assert [(s["label"], s["name"]) for s in back.metadata["segments"]] == [(1, "tumour"), (3, "vessel 'main'")]
    assert back.metadata["segments"][0]["color"] == pytest.approx((230 / 255, 40 / 255, 30 / 255), abs=1e-3)
    # saving again without names removes the stale label file
    write_labels(labels, ref, out)
    assert not side.exists() and "segments" not in read_image(out).metadata


def test_no_names_no_label_file(oblique, tmp_path):
    labels, ref = oblique
    write_labels(labels, ref, tmp_path / "plain.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["plain.nii.gz"]


def test_bad_segments_refused_and_nothing_written(oblique, tmp_path):
    labels, ref = oblique
    for bad, words in [([{"name": "x"}], "label"), ([{"label": 1, "color": (300, 0, 0)}], "above 255"),
                       ([{"label": 0, "name": "bg"}], "positive"), ([{"label": 1, "color": (1, 0)}], "colour")]:
        with pytest.raises(SamlabError, match=words):
            write_labels(labels, ref, tmp_path / "o.seg.nrrd", segments=bad)
        with pytest.raises(SamlabError, match=words):
            write_labels(labels, ref, tmp_path / "o.nii.gz", segments=bad)
    assert list(tmp_path.iterdir()) == []


def test_damaged_label_file_is_refused(oblique, tmp_path):
    labels, ref = oblique
    out = write_labels(labels, ref, tmp_path / "a.nii.gz", segments=SEGMENTS)
    sidecar_path(out).write_text("1 255 zero 0 1 1 1 \"x\"\n")
    with pytest.raises(SamlabError, match="label description"):
        read_image(out)
    with pytest.raises(SamlabError, match="line 1"):
        read_itksnap(sidecar_path(out))


def test_napari_reader_and_writer_keep_names_and_colours(oblique, tmp_path):
    from napari.layers import Labels

    from napari_samlab.napari_plugin.layers import image_layer_data
    from napari_samlab.napari_plugin.writer import write_labels_layer

    labels, ref = oblique
    out = write_labels(labels, ref, tmp_path / "a.seg.nrrd", segments=SEGMENTS)
    data, kwargs, kind = image_layer_data(read_image(out), as_labels=True)
    assert kind == "labels"
    layer = Labels(data, **kwargs)  # what napari makes of the reader's tuple
    assert list(layer.features["name"]) == ["tumour", "vessel \"main\""]
    assert np.allclose(layer.colormap.map(3)[:3], (0.1, 0.4, 0.9), atol=1e-3)
    # napari's writer gets the layer's data and attributes: names and colours go on to the file
    data, attrs, _ = layer.as_layer_data_tuple()
    (written,) = write_labels_layer(str(tmp_path / "b.nii.gz"), data, attrs)
    segs = read_image(written).metadata["segments"]
    assert [(s["label"], s["name"]) for s in segs] == [(1, "tumour"), (3, "vessel 'main'")]
    assert segs[1]["color"] == pytest.approx((0.1, 0.4, 0.9), abs=3e-3)
