"""Improved precision/recall against a brute-force double loop, including exact ties."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from siblings.metrics import knn_radii, precision_recall

# ``siblings.metrics.precision_recall`` is the function (SPEC §7); the module is here:
prm = importlib.import_module("siblings.metrics.precision_recall")


def brute_force(real: np.ndarray, fake: np.ndarray, k: int, strict: bool = False):
    """Kynkäänniemi et al. 2019 written as plainly as possible."""

    def dist(p, q):
        return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(p, q, strict=True)))

    def radii(points):
        out = []
        for i, p in enumerate(points):
            others = sorted(dist(p, q) for j, q in enumerate(points) if j != i)
            out.append(others[k - 1])
        return out

    def covered(p, centres, rad):
        for c, r in zip(centres, rad, strict=True):
            d = dist(p, c)
            if (d < r) if strict else (d <= r):
                return True
        return False

    r_real, r_fake = radii(real), radii(fake)
    precision = sum(covered(f, real, r_real) for f in fake) / len(fake)
    recall = sum(covered(r, fake, r_fake) for r in real) / len(real)
    return precision, recall


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force_on_random_sets(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(60, 12))
    fake = rng.normal(size=(45, 12)) * 0.7 + 1.0
    got = precision_recall(real, fake, k=k)
    want = brute_force(real, fake, k)
    assert got.precision == pytest.approx(want[0], abs=0)
    assert got.recall == pytest.approx(want[1], abs=0)
    assert 0.0 < got.precision < 1.0 and 0.0 < got.recall < 1.0  # a non-trivial case


def test_a_point_exactly_at_the_radius_is_covered():
    # Integer coordinates: every distance below is exact in floating point.
    real = np.array([[0.0, 0.0], [3.0, 4.0], [100.0, 100.0], [100.0, 103.0]])
    # k = 1 radii: 5, 5, 3, 3. Fake point 0 is at distance exactly 5 from real (0, 0) and
    # sqrt(80) from (3, 4); fake point 1 is exactly 3 from (100, 100).
    fake = np.array([[-5.0, 0.0], [97.0, 100.0], [50.0, 50.0], [51.0, 50.0]])
    assert knn_radii(real, 1).tolist() == [5.0, 5.0, 3.0, 3.0]
    got = precision_recall(real, fake, k=1)
    assert got.precision == 0.5  # the two tied points count, the two far ones do not
    assert brute_force(real, fake, 1) == (got.precision, got.recall)
    # prdc's strict "<" would drop both tied points.
    assert brute_force(real, fake, 1, strict=True)[0] == 0.0


def test_ties_at_the_radius_with_k3_and_duplicates():
    # A lattice has many equal distances; duplicated points sit at distance 0.
    g = np.array([[i, j] for i in range(4) for j in range(4)], dtype=float)
    real = np.vstack([g, g[:3]])  # three duplicates
    fake = np.vstack([g + np.array([0.0, 1.0]), [[5.0, 5.0], [1.5, 1.5]]])
    got = precision_recall(real, fake, k=3)
    assert (got.precision, got.recall) == brute_force(real, fake, 3)
    strict = brute_force(real, fake, 3, strict=True)
    assert strict != (got.precision, got.recall)  # the ties matter in this case


def test_radius_is_kth_nearest_other_point():
    pts = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    assert knn_radii(pts, 1).tolist() == [1.0, 1.0, 2.0, 4.0, 8.0]
    assert knn_radii(pts, 3).tolist() == [7.0, 6.0, 4.0, 7.0, 14.0]


def test_identical_sets_are_fully_covered_and_far_sets_not_at_all():
    x = np.random.default_rng(0).normal(size=(50, 12))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_block_computation_equals_one_block(monkeypatch):
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(70, 5)), rng.normal(size=(90, 5))
    whole = prm.precision_recall(real, fake, k=3)
    monkeypatch.setattr(prm, "_BLOCK_ENTRIES", 64)  # forces many row blocks
    assert prm.precision_recall(real, fake, k=3) == whole


def test_too_few_points_for_k_is_refused():
    x = np.zeros((3, 12))
    with pytest.raises(ValueError, match=r"at least k \+ 1 = 4"):
        precision_recall(np.random.default_rng(0).normal(size=(10, 12)), x, k=3)
    with pytest.raises(ValueError, match="features"):
        precision_recall(np.zeros((5, 12)), np.zeros((5, 11)))
