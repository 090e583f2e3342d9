"""Occupancy heatmaps: streaming counts equal the mean of the one-hot maps."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from siblings import anatomy
from siblings.io import one_hot
from siblings.metrics import Occupancy, occupancy_difference


def _random_maps(n: int, shape=(12, 10, 9), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        lab = np.zeros(shape, dtype=np.uint8)
        lo = rng.integers(0, 4, size=3)
        hi = lo + rng.integers(2, 6, size=3)
        block = rng.integers(0, anatomy.NUM_LABELS, size=tuple(hi - lo), dtype=np.uint8)
        lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = block
        maps.append(lab)
    return maps


def test_streaming_mean_equals_mean_of_one_hot_maps():
    maps = _random_maps(25)
    occ = Occupancy()
    for lab in maps:
        occ.add(lab)
    expected = np.mean([one_hot(lab) for lab in maps], axis=0)
    assert occ.n == 25
    np.testing.assert_allclose(occ.probabilities(), expected, atol=1e-7)
    np.testing.assert_allclose(occ.probabilities().sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(occ.probability("heart"), 1.0 - expected[0], atol=1e-7)
    np.testing.assert_allclose(occ.probability("background"), expected[0], atol=1e-7)
    np.testing.assert_allclose(occ.probability("LV"), expected[anatomy.LABELS["LV"]], atol=1e-7)
    assert occ.counts().dtype.kind == "i" and occ.counts().sum() == 25 * maps[0].size


def test_partial_sums_merge_exactly_in_any_order():
    maps = _random_maps(30, seed=1)
    whole = Occupancy()
    for lab in maps:
        whole.add(lab)
    parts = []
    for chunk in (maps[:7], maps[7:8], maps[8:30]):
        o = Occupancy()
        for lab in chunk:
            o.add(lab)
        parts.append(pickle.loads(pickle.dumps(o.partial())))  # as sent by a worker
    merged = Occupancy()
    for part in reversed(parts):
        merged.merge(part)
    assert merged.n == 30
    np.testing.assert_array_equal(merged.counts(), whole.counts())
    # The partial holds only the bounding box of its maps (small to send).
    assert parts[1].counts.size < whole.counts()[1:].size


def test_memory_does_not_grow_with_the_number_of_maps():
    occ = Occupancy()
    maps = _random_maps(5, seed=2)
    occ.add(maps[0])
    size = occ.nbytes
    for _ in range(40):
        for lab in maps:
            occ.add(lab)
    assert occ.nbytes == size == 6 * maps[0].size * 4  # uint32 per tissue and voxel
    assert occ.n == 201


def test_empty_maps_and_grid_mismatch():
    occ = Occupancy()
    occ.add(np.zeros((4, 4, 4), np.uint8))
    assert occ.probability("heart").max() == 0.0
    assert occ.partial().box is None
    with pytest.raises(ValueError, match="grid is 5x4x4"):
        occ.add(np.zeros((5, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="no label maps"):
        Occupancy().probabilities()
    with pytest.raises(ValueError, match="unknown channel"):
        occ.probability("aorta")


def test_difference_is_masked_where_either_occupancy_is_zero():
    real = np.array([0.0, 0.5, 0.5, 1.0, 0.0])
    synth = np.array([0.0, 0.0, 0.75, 0.5, 0.25])
    d = occupancy_difference(synth, real)
    assert d.mask.tolist() == [True, True, False, False, True]
    assert d.compressed().tolist() == [0.25, -0.5]
