"""Fréchet distance between Gaussian fits of two feature sets (paper §3.5, SPEC §5).

``FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)``, the squared 2-Wasserstein distance
between the Gaussians, as FID uses it (so FD has the units of a squared feature). The
features are the 12-d morphology vectors normalised by the reference cohort's mean and
standard deviation (:func:`normalise`); covariances use ``ddof = 1`` as ``numpy.cov``.

``Tr (Σ₁ Σ₂)^½`` is computed as ``Σ sqrt(eig(Σ₁^½ Σ₂ Σ₁^½))``: the matrix ``Σ₁ Σ₂`` is
similar to the symmetric positive semi-definite ``Σ₁^½ Σ₂ Σ₁^½``, so its square root has
the same trace, and a symmetric eigen-decomposition gives it without the complex
round-off (and the occasional failure on singular covariances) of a general ``sqrtm``.
Identical inputs give 0 to rounding.

Example
-------
>>> import numpy as np
>>> from siblings.metrics import frechet_distance
>>> x = np.random.default_rng(0).normal(size=(500, 3))
>>> round(frechet_distance(x, x + [1.0, 0.0, 0.0]), 6)
1.0
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Parameters
    ----------
    mu1, mu2 : means, shape (d,).
    sigma1, sigma2 : covariances, shape (d, d), symmetric positive semi-definite.

    Returns
    -------
    float
        ``‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)`` (squared units of the features), ≥ 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, float)), np.atleast_1d(np.asarray(mu2, float))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, float)), np.atleast_2d(np.asarray(sigma2, float))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes do not agree: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}"
        )
    s1, s2 = (s1 + s1.T) / 2.0, (s2 + s2.T) / 2.0
    r = _psd_sqrt(s1)
    inner = r @ s2 @ r
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum())
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
    return max(fd, 0.0)


def gaussian_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``ddof = 1``) of the rows of ``x`` (n samples × d features)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected samples × features, got shape {x.shape}")
    if x.shape[0] < 2:
        raise InputError(f"a covariance needs at least 2 samples, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise InputError("features contain NaN or infinite values")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False, ddof=1))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two sets of feature vectors.

    Parameters
    ----------
    a, b : arrays of shape (n_a, d) and (n_b, d), one row per map, already normalised
        (see :func:`normalise`; the paper normalises by the real cohort).

    Returns
    -------
    float
        FD in squared normalised units; 0 for identical sets.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two samples × features arrays, got {a.shape} and {b.shape}")
    return gaussian_frechet_distance(*gaussian_fit(a), *gaussian_fit(b))


def normalisation(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (``ddof = 0``) of the reference features, per column.

    A feature with no spread in the reference (std 0) gets a scale of 1, so it is
    centred but not scaled (dividing by 0 would make every other cohort infinitely far).
    """
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[0] < 1:
        raise ValueError(f"expected a non-empty samples × features array, got {ref.shape}")
    mean = ref.mean(axis=0)
    std = ref.std(axis=0, ddof=0)
    return mean, np.where(std > 0, std, 1.0)


def normalise(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(features − mean_ref) / std_ref`` with the reference statistics of :func:`normalisation`."""
    mean, std = normalisation(reference)
    return (np.asarray(features, dtype=np.float64) - mean) / std
