"""Fréchet distance: zero for identical sets, closed forms for Gaussians, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from siblings.metrics import frechet_distance, gaussian_frechet_distance, normalisation, normalise


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_identical_sets_have_zero_distance():
    rng = np.random.default_rng(0)
    for n, d in ((360, 12), (5, 12), (50, 3)):  # incl. a singular covariance (n < d)
        x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d)
        assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
        assert frechet_distance(x, x[::-1]) == pytest.approx(0.0, abs=1e-9)


def test_one_dimensional_closed_form():
    # FD(N(m1, s1²), N(m2, s2²)) = (m1 − m2)² + (s1 − s2)².
    assert gaussian_frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_diagonal_covariances_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert gaussian_frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected)


def test_non_commuting_2x2_closed_form():
    # For 2×2 SPD matrices Tr((S1 S2)^½) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[1.0, -0.5], [-0.5, 3.0]])
    mu1, mu2 = np.array([0.5, -1.0]), np.array([0.0, 0.0])
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = 0.25 + 1.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_agrees_with_scipy_sqrtm_on_random_covariances():
    rng = np.random.default_rng(1)
    for _ in range(5):
        d = 12
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        covmean = linalg.sqrtm(s1 @ s2).real
        ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
        assert gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
        assert gaussian_frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ref, rel=1e-8)


def test_samples_of_two_gaussians_approach_the_closed_form():
    rng = np.random.default_rng(2)
    s1 = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, 0.4], [0.0, 0.4, 0.5]])
    s2 = np.array([[1.5, -0.2, 0.1], [-0.2, 0.7, 0.0], [0.1, 0.0, 1.2]])
    mu1, mu2 = np.array([0.0, 0.0, 0.0]), np.array([1.0, -0.5, 0.25])
    a = rng.multivariate_normal(mu1, s1, size=200_000)
    b = rng.multivariate_normal(mu2, s2, size=200_000)
    exact = gaussian_frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.02)


def test_a_translation_costs_its_squared_length():
    x = np.random.default_rng(3).normal(size=(100, 4))
    shift = np.array([1.0, 2.0, 0.0, -2.0])
    assert frechet_distance(x, x + shift) == pytest.approx(9.0, rel=1e-9)


def test_normalisation_uses_reference_mean_and_population_std():
    ref = np.array([[1.0, 10.0, 5.0], [3.0, 10.0, 5.0], [5.0, 10.0, 5.0]])
    mean, std = normalisation(ref)
    assert mean.tolist() == [3.0, 10.0, 5.0]
    assert std[0] == pytest.approx(np.sqrt(8.0 / 3.0))  # ddof = 0
    assert std[1] == 1.0  # no spread: centred, not scaled
    z = normalise(np.array([[3.0 + np.sqrt(8.0 / 3.0), 12.0, 5.0]]), ref)
    assert z[0].tolist() == pytest.approx([1.0, 2.0, 0.0])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="samples"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((5, 2)))
