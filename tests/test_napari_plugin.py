"""The npe2 contributions through napari itself (real viewer under Xvfb)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.gui


def test_manifest_is_valid_and_discovered():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-samlab")
    assert {w.display_name for w in manifest.contributions.widgets} == {"Model", "Segment", "Review", "Segment all"}
    assert len(manifest.contributions.sample_data) == 4


def test_top_level_manifest_is_the_packaged_one(samples):
    top = samples.parent / "napari.yaml"
    packaged = samples.parent / "src" / "napari_samlab" / "napari.yaml"
    assert top.read_text() == packaged.read_text()


@pytest.mark.parametrize("key,n_layers", [("ct_chest", 2), ("mri_brain", 2), ("nuclei", 2), ("histology", 1)])
def test_every_sample_opens_with_physical_scale(make_napari_viewer, key, n_layers):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samlab", key)
    assert len(viewer.layers) == n_layers
    image = viewer.layers[0]
    geo = image.metadata["samlab"]
    np.testing.assert_allclose(image.scale, geo["spacing"][::-1])
    if key == "ct_chest":
        assert image.data.shape == (61, 512, 512)
        np.testing.assert_allclose(image.scale, (5.0, 0.6269531, 0.6269531), rtol=1e-6)
        assert viewer.layers[1].__class__.__name__ == "Labels"
        # world extent of the CT is its physical size in mm
        extent = viewer.layers[0].extent.world
        assert extent[1][0] - extent[0][0] == pytest.approx(60 * 5.0, rel=1e-6)  # first to last slice centre
    if key == "histology":
        assert image.rgb


def test_viewer_open_uses_our_reader_and_keeps_oblique_geometry(make_napari_viewer, tmp_path):
    a = np.deg2rad(25)
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    img = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 500, (6, 20, 24)).astype(np.int16))
    img.SetSpacing((0.8, 0.9, 3.0))
    img.SetOrigin((10.0, -20.0, 5.0))
    img.SetDirection(tuple(direction.ravel()))
    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(img, str(path))
    ref = sitk.ReadImage(str(path))
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-samlab")
    layer = layers[0]
    for idx in [(0, 0, 0), (5, 19, 23), (3, 7, 11)]:
        world = np.asarray(layer.data_to_world(idx))
        phys = ref.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx[::-1]))
        np.testing.assert_allclose(world[::-1], phys, atol=1e-4)


def test_labels_layer_saved_through_napari_lines_up(make_napari_viewer, tmp_path, samples):
    viewer = make_napari_viewer()
    viewer.open(str(samples / "ct_chest_lung2.nrrd"), plugin="napari-samlab")
    image = viewer.layers[0]
    labels = np.zeros(image.data.shape, np.uint8)
    labels[20, 340:390, 320:380] = 2
    lab = viewer.add_labels(labels, name="drawn", scale=image.scale, translate=image.translate,
                            affine=image.affine, metadata=dict(image.metadata))
    for ext in (".nii.gz", ".nrrd"):
        out = tmp_path / f"drawn{ext}"
        written = lab.save(str(out), plugin="napari-samlab")
        assert written
        back = sitk.ReadImage(str(out))
        src = sitk.ReadImage(str(samples / "ct_chest_lung2.nrrd"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
        np.testing.assert_allclose(back.GetSpacing(), src.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(back.GetDirection(), src.GetDirection(), atol=1e-6)


def test_labels_without_our_metadata_use_the_layer_transform(make_napari_viewer, tmp_path, samples):
    viewer = make_napari_viewer()
    viewer.open(str(samples / "mri_brain_colin27_t1.nii.gz"), plugin="napari-samlab")
    image = viewer.layers[0]
    lab = viewer.add_labels(np.zeros(image.data.shape, np.uint8), scale=image.scale,
                            translate=image.translate, affine=image.affine)
    lab.data[90, 100:120, 80:100] = 1
    out = tmp_path / "brain.nii.gz"
    lab.save(str(out), plugin="napari-samlab")
    back, src = sitk.ReadImage(str(out)), sitk.ReadImage(str(samples / "mri_brain_colin27_t1.nii.gz"))
    np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), src.GetDirection(), atol=1e-6)


def test_reader_declines_what_it_cannot_read(tmp_path):
    from napari_samlab.napari_plugin.reader import get_reader

    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "missing.nii.gz")) is None


def test_damaged_file_gives_one_message_and_no_layer(make_napari_viewer, tmp_path, samples, monkeypatch):
    from napari_samlab.napari_plugin import reader

    shown = []
    monkeypatch.setattr(reader, "_notify", shown.append)
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes((samples / "mri_brain_colin27_t1.nii.gz").read_bytes()[:200000])
    viewer = make_napari_viewer()
    viewer.open(str(bad), plugin="napari-samlab")
    assert len(viewer.layers) == 0
    assert len(shown) == 1 and "truncated" in shown[0]


def test_dicom_series_opens_and_labels_save_as_dicom_seg(make_napari_viewer, tmp_path):
    import highdicom as hd
    import pydicom

    from dicom_helpers import pydicom_test_dir

    series = pydicom_test_dir("dicomdirtests/98892001/CT5N")
    viewer = make_napari_viewer()
    layers = viewer.open(str(series), plugin="napari-samlab")
    assert len(layers) == 1
    image = layers[0]
    assert image.data.shape[0] == 5
    labels = np.zeros(image.data.shape, np.uint8)
    labels[1:4, 4:10, 5:12] = 1
    lab = viewer.add_labels(labels, scale=image.scale, translate=image.translate, affine=image.affine,
                            metadata=dict(image.metadata))
    out = tmp_path / "seg.dcm"
    assert lab.save(str(out), plugin="napari-samlab")
    seg = hd.seg.segread(str(out))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    sorted_files = image.metadata["samlab"]["dicom_files"]
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in sorted_files}
    assert refs == uids
    from napari_samlab.io.dicom_seg import read_dicom_seg
    from napari_samlab.io.readers import read_image

    np.testing.assert_array_equal(read_dicom_seg(out, read_image(series)), labels)


def test_quickstart_gui_docks_widgets_and_loads_ct(qtbot, monkeypatch, artifacts):
    """The README's main command with a display (napari.run is the only thing skipped)."""
    import napari

    from napari_samlab import demo

    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    assert demo.run_gui() == 0
    viewer = napari.current_viewer()
    try:
        names = [layer.name for layer in viewer.layers]
        assert names[:2] == ["CT chest", "lung tumour (truth)"]
        docked = set(viewer.window.dock_widgets)
        assert any("Model" in d for d in docked) and any("Segment" in d for d in docked), docked
        # the slider sits on the demo's tumour slice
        z_world = viewer.dims.point[0]
        assert round(viewer.layers[0].world_to_data((z_world, 0, 0))[0]) == demo.DEMO_SLICE
        shot = viewer.screenshot(canvas_only=False)
        assert len(np.unique(shot.reshape(-1, shot.shape[-1]), axis=0)) > 20
    finally:
        viewer.close()
