"""The one Dice (metrics.overlap) and the one bounding box (siblings.boxes): known answers
on volumes built by hand, each empty-mask rule, and the boxes every layer crops to."""

from __future__ import annotations

import math

import numpy as np
import pytest

from siblings import anatomy
from siblings.boxes import bounding_box
from siblings.metrics.overlap import dice, dice_matrix, kept_tissue_dice, tissue_dice

L = anatomy.LABELS


def _slab(lo: int, hi: int, label: int = L["LV"], shape=(6, 5, 4)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[lo:hi] = label
    return lab


def test_dice_known_answers():
    a, b = _slab(0, 2) > 0, _slab(1, 3) > 0  # 2 slices each, 1 shared: 2·1/(2+2)
    assert dice(a, b, empty=1.0) == 0.5
    assert dice(a, a, empty=0.0) == 1.0
    assert dice(a, ~a, empty=1.0) == 0.0
    c = _slab(0, 3) > 0  # 3 slices vs 2 inside them: 2·2/5
    assert dice(a, c, empty=math.nan) == pytest.approx(0.8, abs=0)
    assert isinstance(dice(a, c, empty=1.0), float)


@pytest.mark.parametrize("empty", [1.0, 0.0])
def test_dice_of_two_empty_masks_is_the_rule_given(empty):
    none = np.zeros((3, 3, 3), bool)
    assert dice(none, none, empty=empty) == empty
    assert math.isnan(dice(none, none, empty=float("nan")))
    # One empty mask against a non-empty one is 0 whatever the rule.
    assert dice(none, ~none, empty=empty) == 0.0


def test_dice_needs_the_rule_spelled_out():
    with pytest.raises(TypeError):
        dice(np.ones(2, bool), np.ones(2, bool))  # type: ignore[call-arg]


def test_tissue_dice_per_label_with_each_rule():
    a = _slab(0, 2)
    b = _slab(1, 3)
    a[5, 0, 0] = b[5, 0, 0] = L["RV"]  # one shared RV voxel
    got = tissue_dice(a, b, empty=float("nan"))
    assert list(got) == list(anatomy.TISSUES)
    assert got["LV"] == 0.5 and got["RV"] == 1.0
    assert all(math.isnan(got[t]) for t in anatomy.TISSUES if t not in ("LV", "RV"))
    ones = tissue_dice(a, b, ("Myo", "LV"), empty=1.0)
    assert ones == {"Myo": 1.0, "LV": 0.5}


def test_kept_tissue_dice_counts_a_tissue_both_lack_as_kept():
    twin, sib = _slab(0, 2), _slab(0, 1)  # half the LV kept: 2·1/(2+1)
    got = kept_tissue_dice(twin, sib, ("LV", "RA"))
    assert got == {"LV": pytest.approx(2 / 3, abs=0), "RA": 1.0}


def test_dice_matrix_matches_pairwise_dice_and_its_empty_rule():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 200)) < 0.3
    masks[3] = False  # an empty mask: its row is 0 with empty=0 (its diagonal too)
    d = dice_matrix(masks, empty=0.0)
    assert d.dtype == np.float32 and d.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            want = dice(masks[i], masks[j], empty=0.0)
            assert d[i, j] == pytest.approx(want, rel=1e-6), (i, j)
    assert d[3, 3] == 0.0 and dice_matrix(masks, empty=1.0)[3, 3] == 1.0
    np.testing.assert_array_equal(d, d.T)


def test_dice_matrix_is_the_float32_formula_the_medoid_always_used():
    # The TotalSegmentator medoid's numbers (rounded in its manifest) must not move.
    rng = np.random.default_rng(1)
    masks = rng.random((4, 1000)) < 0.5
    x = masks.astype(np.float32)
    inter = x @ x.T
    size = x.sum(axis=1)
    denom = size[:, None] + size[None, :]
    old = np.divide(2.0 * inter, denom, out=np.zeros_like(inter), where=denom > 0)
    np.testing.assert_array_equal(dice_matrix(masks, empty=0.0), old)


# ---------------------------------------------------------------------------------
# Bounding boxes.
# ---------------------------------------------------------------------------------
def test_bounding_box_known_answers():
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:4, 3, 5:7] = L["LV"]
    assert bounding_box(lab) == (slice(2, 4), slice(3, 4), slice(5, 7))
    # Grown by pad and clipped to the grid.
    assert bounding_box(lab, pad=2) == (slice(0, 6), slice(1, 6), slice(3, 8))
    assert bounding_box(np.zeros((8, 8, 8), bool)) is None


def test_bounding_box_of_several_maps_is_their_union():
    a, b = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), np.uint8)
    a[1, 1, 1] = True
    b[4, 2, 5] = 3
    assert bounding_box(a, b) == (slice(1, 5), slice(1, 3), slice(1, 6))
    assert bounding_box(a, np.zeros_like(b)) == bounding_box(a)
    assert bounding_box(np.zeros_like(a), np.zeros_like(b)) is None


def test_bounding_box_matches_argwhere_on_random_maps():
    rng = np.random.default_rng(2)
    for _ in range(20):
        lab = np.zeros((7, 9, 5), np.uint8)
        n = rng.integers(1, 6)
        lab[tuple(rng.integers(0, s, n) for s in lab.shape)] = rng.integers(1, 7, n)
        pad = int(rng.integers(0, 3))
        idx = np.argwhere(lab > 0)
        lo = np.maximum(idx.min(0) - pad, 0)
        hi = np.minimum(idx.max(0) + 1 + pad, lab.shape)
        assert bounding_box(lab, pad=pad) == tuple(
            slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)
        )


def test_bounding_box_refuses_other_than_3d_and_mixed_grids():
    with pytest.raises(ValueError, match="3D"):
        bounding_box(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="shapes"):
        bounding_box(np.ones((4, 4, 4), bool), np.ones((4, 4, 5), bool))
