"""The classic engine's fast morphology gives the pixels of the slow one.

Propagation and the 2D recipe run their openings, closings and bands
through row passes and a labelling instead of distance maps, SciPy's
structuring-element morphology and iterated dilations; every mask must
stay the same, so each fast path is compared with the reference it
replaced on many random masks (sizes down to one row, radii 0..ROWS_MAX_R,
the rounding of ``d * d <= r * r + r`` included).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_samlab.models.classic_ops import (ROWS_MAX_R, dilate_disk, disk, dist_inside, dist_outside,
                                              erode_disk, fill_holes, grow, shrink)


def _masks(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = rng.integers(1, 48, 2)
        m = rng.random((h, w)) < rng.uniform(0.0, 0.95)
        yield ndi.binary_opening(m) if i % 3 == 0 else m  # blobs as well as speckle


def _grown_by_distance(m, r):
    d = dist_outside(m)  # the distance-map test the row passes replaced
    return d * d <= r * r + r


def _shrunk_by_distance(m, r):
    d = dist_inside(m)
    return m & (d * d > r * r + r)


@pytest.mark.parametrize("r", range(0, ROWS_MAX_R + 1))
def test_grow_and_shrink_match_the_distance_map(r):
    for m in _masks(r, 40):
        want = _grown_by_distance(m, r) if m.any() else np.zeros_like(m)
        assert np.array_equal(grow(m, r), want)
        if not m.all():  # (the distance map of a mask with no background is undefined)
            assert np.array_equal(shrink(m, r), _shrunk_by_distance(m, r))


def test_radii_whose_disk_edge_rounds_out():
    # sqrt(20)**2 > 20 in floating point: grow(m, 4) leaves out the offsets
    # (2, 4) that a disk of r*r + r = 20 would hold, and so must the rows
    m = np.zeros((11, 11), bool)
    m[5, 5] = True
    assert not grow(m, 4)[7, 9] and not _grown_by_distance(m, 4)[7, 9]
    assert not grow(m, 1)[6, 6]
    assert grow(m, 3)[7, 7] and grow(m, 4)[7, 8]


def test_shrink_keeps_a_mask_without_background():
    m = np.ones((6, 7), bool)
    assert shrink(m, 2).all() and shrink(m, ROWS_MAX_R + 5).all()


def test_fill_holes_matches_scipy():
    for m in _masks(99, 400):
        assert np.array_equal(fill_holes(m), ndi.binary_fill_holes(m))


@pytest.mark.parametrize("r", [1, 2, 3, 4, 6, 9, 14])
def test_disk_morphology_matches_scipy(r):
    fp = disk(r)
    for m in _masks(100 + r, 40):
        assert np.array_equal(dilate_disk(m, r), ndi.binary_dilation(m, fp))
        assert np.array_equal(erode_disk(m, r), ndi.binary_erosion(m, fp))  # the border erodes there too
        assert np.array_equal(dilate_disk(erode_disk(m, r), r), ndi.binary_opening(m, fp))
        assert np.array_equal(erode_disk(dilate_disk(m, r), r), ndi.binary_closing(m, fp))
