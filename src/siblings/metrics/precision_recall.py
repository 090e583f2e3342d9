"""Improved precision and recall (Kynkäänniemi et al. 2019; paper §3.5, SPEC §5).

Each point of a set gets a ball whose radius is the Euclidean distance to its k-th
nearest *other* point of the same set (k = 3 by default). A point is covered by a set
when it lies in at least one of that set's balls, distance ``<=`` radius.

- precision: the fraction of generated ("fake") points covered by the real balls;
- recall: the fraction of real points covered by the generated balls.

Conventions: the comparison is ``<=`` as SPEC §5 fixes it; the ``prdc`` package
(Naeem et al. 2020) uses a strict ``<``, which differs only for points exactly at a
radius (ties, e.g. duplicated maps). The first author's later code used k = 5. Self is
excluded from its own neighbours, but a duplicate of a point is another point (at
distance 0).

Distances are exact Euclidean (``scipy.spatial.distance.cdist``), computed in row blocks
so memory stays bounded for large cohorts; radii and coverage use the same function, so
a tie at a radius is decided consistently.

Example
-------
>>> import numpy as np
>>> from siblings.metrics import precision_recall
>>> x = np.random.default_rng(0).normal(size=(200, 4))
>>> precision_recall(x, x)
PrecisionRecall(precision=1.0, recall=1.0)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from scipy.spatial.distance import cdist

from ..errors import InputError

# Distances computed per block: at most this many matrix entries (8 bytes each) at once.
_BLOCK_ENTRIES = 1 << 22


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _blocks(a: np.ndarray, b: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, cdist(a[rows], b))`` in blocks of bounded size."""
    step = max(1, _BLOCK_ENTRIES // max(1, b.shape[0]))
    for start in range(0, a.shape[0], step):
        rows = slice(start, min(start + step, a.shape[0]))
        yield rows, cdist(a[rows], b)


def _as_points(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected samples × features, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InputError(f"{name}: features contain NaN or infinite values")
    return x


def knn_radii(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set.

    Parameters
    ----------
    points : (n, d) array.
    k : neighbour rank, 1 ≤ k ≤ n − 1.

    Returns
    -------
    numpy.ndarray
        Radii, shape (n,), in the units of the features.
    """
    x = _as_points(points, "points")
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise InputError(f"k = {k} needs at least k + 1 = {k + 1} points, got {n}")
    radii = np.empty(n)
    for rows, d in _blocks(x, x):
        # Each row holds its own distance 0; the (k+1)-th smallest (index k) is then the
        # k-th nearest other point, whatever the order of tied zeros.
        radii[rows] = np.partition(d, k, axis=1)[:, k]
    return radii


def coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean per point of ``points``: inside at least one ball (``<=`` radius)."""
    p, c = _as_points(points, "points"), _as_points(centres, "centres")
    r = np.asarray(radii, dtype=np.float64)
    if p.shape[1] != c.shape[1] or r.shape != (c.shape[0],):
        raise ValueError(
            f"shapes do not agree: points {p.shape}, centres {c.shape}, radii {r.shape}"
        )
    out = np.empty(p.shape[0], dtype=bool)
    for rows, d in _blocks(p, c):
        out[rows] = (d <= r[None, :]).any(axis=1)
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` against ``real``.

    Parameters
    ----------
    real : (n_real, d) reference features (normalised, as for the Fréchet distance).
    fake : (n_fake, d) generated features.
    k : neighbour rank for the ball radii (default 3); both sets need at least k + 1 points.

    Returns
    -------
    PrecisionRecall
        ``(precision, recall)``, fractions in [0, 1].
    """
    r, f = _as_points(real, "real"), _as_points(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real has {r.shape[1]} features, fake has {f.shape[1]}")
    precision = coverage(f, r, knn_radii(r, k)).mean()
    recall = coverage(r, f, knn_radii(f, k)).mean()
    return PrecisionRecall(float(precision), float(recall))
