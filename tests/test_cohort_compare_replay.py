"""`samlab compare` against an independent computation, and `samlab replay`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial import cKDTree

from cohort_helpers import read_labels, write_case

from napari_samlab.cli import main
from napari_samlab.cohort.compare import compare_labels, disagreement_map, largest_disagreement_slice
from napari_samlab.cohort.provenance import file_sha256, read_provenance


def write(path, arr, spacing=(0.7, 0.9, 2.5), origin=(1.0, -2.0, 30.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path), True)
    return path


def brute_force_hd95(a, b, spacing_zyx):
    """Surface voxels (6-neighbourhood, image edge = background) matched by a k-d tree in mm."""
    def surface_points(m):
        padded = np.pad(m, 1)
        inner = padded[1:-1, 1:-1, 1:-1].copy()
        for axis in range(3):
            for shift in (1, -1):
                inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~inner) * np.asarray(spacing_zyx)

    pa, pb = surface_points(a), surface_points(b)
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


def blobs(seed, shape=(14, 40, 44)):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    out = np.zeros(shape, np.uint8)
    for label in (1, 2):
        c = rng.uniform([4, 10, 10], [10, 30, 34])
        r = rng.uniform([2, 5, 5], [4, 9, 9])
        out[((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1] = label
    return out


def test_compare_agrees_with_an_independent_computation(tmp_path, capsys):
    spacing_xyz = (0.7, 0.9, 2.5)
    ref, test = blobs(1), blobs(2)
    test[0, :3, :3] = 3  # label 3 only in TEST, touching the image corner
    ref[ref == 2] = 0
    ref[5:8, 2:6, 2:6] = 2  # a different label-2 object
    code = main(["compare", str(write(tmp_path / "ref.nrrd", ref, spacing_xyz)),
                 str(write(tmp_path / "test.nii.gz", test, spacing_xyz)), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads(out)
    assert [r["label"] for r in rows] == [1, 2, 3]
    assert all(set(r) == {"label", "dice", "hd95_mm", "volume_ref_ml", "volume_test_ml"} for r in rows)
    spacing_zyx = spacing_xyz[::-1]
    voxel_ml = np.prod(spacing_xyz) / 1000
    for r in rows[:2]:
        a, b = ref == r["label"], test == r["label"]
        assert r["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
        assert r["hd95_mm"] == pytest.approx(brute_force_hd95(a, b, spacing_zyx), rel=1e-6)
        assert r["volume_ref_ml"] == pytest.approx(a.sum() * voxel_ml, rel=1e-6)
        assert r["volume_test_ml"] == pytest.approx(b.sum() * voxel_ml, rel=1e-6)
    assert rows[2]["hd95_mm"] is None and rows[2]["dice"] == 0.0 and rows[2]["volume_ref_ml"] == 0.0
    # a shifted copy: HD95 is exactly the shift along z in mm
    shifted = np.roll(ref == 1, 1, axis=0)
    assert compare_labels(ref == 1, shifted, spacing_zyx)[0]["hd95_mm"] == pytest.approx(2.5)
    # the plain table prints too
    assert main(["compare", str(tmp_path / "ref.nrrd"), str(tmp_path / "test.nii.gz")]) == 0
    assert "hd95_mm" in capsys.readouterr().out


def test_compare_refuses_different_geometry(tmp_path, capsys):
    a = write(tmp_path / "a.nrrd", blobs(3))
    b = write(tmp_path / "b.nrrd", blobs(3), spacing=(0.7, 0.9, 3.0))
    c = write(tmp_path / "c.nrrd", blobs(3)[1:])
    for other, pattern in ((b, "different spacing"), (c, "voxels but")):
        code = main(["compare", str(a), str(other)])
        _, err = capsys.readouterr()
        assert code != 0 and len(err.strip().splitlines()) == 1 and pattern in err, err


def test_disagreement_helpers():
    ref = np.zeros((5, 6, 6), np.uint8)
    test = np.zeros_like(ref)
    ref[1, 1:3, 1:3] = 1
    ref[3, :4, :4] = 1
    test[3, :2, :2] = 1
    assert largest_disagreement_slice(ref, test, 1) == 3  # 12 voxels differ there, 4 on slice 1
    assert largest_disagreement_slice(ref, ref, 1) is None
    dm = disagreement_map(ref, test)
    assert dm[1].sum() == 4 and (dm[3] == 1).sum() == 12 and (dm == 2).sum() == 0


def test_replay_gives_the_same_labels_and_refuses_changed_inputs(tmp_path, capsys):
    image, prompts = write_case(tmp_path, "ct", 7)
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(image), "-o", str(out), "--prompts", str(prompts)]) == 0
    record = tmp_path / "seg.json"
    again = tmp_path / "again.nii.gz"
    assert main(["replay", str(record), "-o", str(again)]) == 0
    np.testing.assert_array_equal(read_labels(again), read_labels(out))
    assert read_labels(out).any()
    capsys.readouterr()

    # a changed checkpoint is refused before anything is loaded
    ckpt = tmp_path / "weights.pth"
    ckpt.write_bytes(b"not the recorded weights")
    rec = read_provenance(record)
    rec.update(model="medsam", checkpoint=str(ckpt), checkpoint_sha256="0" * 64)
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(rec))
    refused = tmp_path / "refused.nii.gz"
    code = main(["replay", str(forged), "-o", str(refused)])
    _, err = capsys.readouterr()
    assert code != 0 and "checkpoint weights.pth has changed" in err and len(err.strip().splitlines()) == 1
    assert not refused.exists()

    # one voxel of the image changes: refused, nothing written
    img = sitk.ReadImage(str(image))
    img[0, 0, 0] = img[0, 0, 0] + 1
    sitk.WriteImage(img, str(image), True)
    assert file_sha256(image) != rec["image_sha256"]
    code = main(["replay", str(record), "-o", str(refused)])
    _, err = capsys.readouterr()
    assert code != 0 and "image ct.nrrd has changed" in err and len(err.strip().splitlines()) == 1
    assert not refused.exists()
    # not a provenance file
    code = main(["replay", str(prompts), "-o", str(refused)])
    _, err = capsys.readouterr()
    assert code != 0 and "not a samlab provenance file" in err


def test_replay_of_a_segment_everything_run(tmp_path, samples, capsys):
    # --everything has no prompts: its record keeps its own settings, and replay reruns them
    import tifffile

    crop = tifffile.imread(samples / "nuclei.tif")[:160, :160]
    image = tmp_path / "nuclei.tif"
    tifffile.imwrite(image, crop)
    out = tmp_path / "instances.tif"
    assert main(["segment", str(image), "-o", str(out), "--everything", "--min-size", "20"]) == 0
    rec = read_provenance(tmp_path / "instances.json")
    assert rec["prompts"] == [] and rec["everything"]["min_size"] == 20
    again = tmp_path / "again.tif"
    assert main(["replay", str(tmp_path / "instances.json"), "-o", str(again)]) == 0
    first = tifffile.imread(out)
    assert first.max() > 5
    np.testing.assert_array_equal(tifffile.imread(again), first)
    capsys.readouterr()
