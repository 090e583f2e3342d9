"""Bootstrap intervals for the cohort metrics (FD, precision, recall, TV%).

Choice: the *evaluated* cohort is resampled with replacement (``n_boot`` times, seeded
RNG); the reference cohort is held fixed, as are its normalisation, its Gaussian fit and
its k-NN balls. The intervals therefore answer "how much would these numbers move with
another cohort of this size from the same generator", not "how well is the reference
known".

Intervals (default 95%): the 2.5th and 97.5th percentiles of the replicates
(:func:`percentile_interval`) for precision, recall, TV% and the per-check rates; for FD
the same interval re-centred on the estimate (:func:`bootstrap_interval`: shifted by
``estimate − mean(replicates)``, clipped at 0). A resample holds fewer distinct maps,
which inflates FD, so the plain percentile interval of FD sits too high. In the
simulation of ``benchmarks/bootstrap_coverage.py`` (12-d Gaussians, reference 512 maps,
200 cohorts per size, 1000 resamples) the FD replicates were biased by +0.99 (60 maps)
and +0.17 (360 maps); the plain interval covered the mean FD of fresh cohorts in 43% and
84% of trials, re-centred in 100% and 97%. For precision, recall and TV% the replicates
are unbiased (|bias| < 0.004) and re-centring only adds the noise of the shift: recall's
coverage fell from 96–98% to 91%, so they keep the plain interval (94–98% coverage).

Per replicate:

- FD: Gaussian fit (``ddof = 1``) of the resampled features against the fixed reference fit;
- precision: mean of the fixed per-map indicator "covered by a reference ball";
- recall: a map drawn several times is still one map, so the balls are those of the
  *distinct* maps drawn, each with its radius to the k-th nearest other distinct map
  drawn. Counting copies as extra points instead (at distance 0 from themselves, or as
  extra neighbours) shrinks the union of balls and biased the replicates low by 0.07–0.11
  in a development simulation (12-d Gaussians, 360 vs 512 maps), so the 95% interval
  missed the true mean recall in most cohorts; with distinct maps the replicates' mean is
  within 0.004 of the estimate (``benchmarks/bootstrap_coverage.py``). If fewer than k other
  distinct maps are drawn (tiny cohorts only) the radius is the distance to the farthest;
- TV%: mean of the per-map violated fraction; per-check rates likewise.

With every weight 1 (no resampling) these reduce exactly to :func:`frechet_distance`,
:func:`precision_recall` and :func:`tv_percent`.

Binomial proportions (an augmentation's acceptance rate, the share of maps outside a
region) get the Wilson score interval instead (:func:`wilson_interval`, Wilson 1927;
Brown, Cai & DasGupta 2001), with :func:`acceptance_rate` the proportion itself.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import cdist

from ..errors import InputError
from .frechet import gaussian_fit, gaussian_frechet_distance
from .precision_recall import coverage, knn_radii

# Neighbour lists kept per generated map for the resampled radii. A radius needs the
# k-th nearest drawn neighbour; with 32 candidates the chance that fewer than k of them
# are drawn is about 2e-11 per map and resample for k = 3; such a row is recomputed exactly.
_NEIGHBOURS = 32


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> list[float]:
    """``[lo, hi]`` percentile interval of bootstrap replicates (along axis 0)."""
    if not 0 < level < 1:
        raise InputError(f"interval level must be in (0, 1), got {level}")
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(
        np.asarray(replicates, dtype=np.float64), [100 * a, 100 * (1 - a)], axis=0
    )
    return [lo.tolist(), hi.tolist()] if np.ndim(lo) else [float(lo), float(hi)]


def bootstrap_interval(
    replicates: np.ndarray,
    estimate: float | np.ndarray,
    level: float = 0.95,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> list:
    """Percentile interval of the replicates re-centred on ``estimate``, clipped to ``bounds``.

    ``[q_lo + s, q_hi + s]`` with ``s = estimate − mean(replicates)`` (the bootstrap's bias
    estimate removed), so the interval describes the spread of the metric around its
    value for cohorts of this size. Vectorised over trailing axes (per-check rates).
    """
    reps = np.asarray(replicates, dtype=np.float64)
    shift = np.asarray(estimate, dtype=np.float64) - reps.mean(axis=0)
    lo, hi = (np.clip(np.asarray(q) + shift, *bounds) for q in percentile_interval(reps, level))
    return [lo.tolist(), hi.tolist()]


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` indices drawn with replacement from a seeded generator."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


class _ResampledRadii:
    """k-NN radii of the distinct points of a resample, among those distinct points."""

    def __init__(self, points: np.ndarray, k: int):
        self.x, self.k = points, k
        n = points.shape[0]
        self.m = m = min(n - 1, max(_NEIGHBOURS, 4 * k))
        self.nbr = np.empty((n, m), dtype=np.intp)
        self.nbr_d = np.empty((n, m))
        step = max(1, (1 << 22) // n)  # row blocks: bounded memory for large cohorts
        for start in range(0, n, step):
            rows = np.arange(start, min(start + step, n))
            d = cdist(points[rows], points)
            d[np.arange(len(rows)), rows] = np.inf  # a point is not its own neighbour
            part = np.argpartition(d, m - 1, axis=1)[:, :m]
            part_d = np.take_along_axis(d, part, axis=1)
            order = np.argsort(part_d, axis=1, kind="stable")
            self.nbr[rows] = np.take_along_axis(part, order, axis=1)
            self.nbr_d[rows] = np.take_along_axis(part_d, order, axis=1)

    def __call__(self, unique: np.ndarray) -> np.ndarray:
        drawn = np.zeros(self.x.shape[0], dtype=bool)
        drawn[unique] = True
        cum = np.cumsum(drawn[self.nbr[unique]], axis=1)
        reached = cum >= self.k
        radii = self.nbr_d[unique, np.argmax(reached, axis=1)]
        for i in np.flatnonzero(~reached[:, -1]):  # rare: recompute against all drawn maps
            radii[i] = self._exact(unique[i], unique)
        return radii

    def _exact(self, j: int, unique: np.ndarray) -> float:
        others = unique[unique != j]
        if others.size == 0:
            return 0.0
        d = np.sort(cdist(self.x[j : j + 1], self.x[others])[0])
        return float(d[min(self.k, d.size) - 1])


def bootstrap_metrics(
    fake: np.ndarray,
    real: np.ndarray,
    violations: np.ndarray,
    k: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of FD, precision, recall, TV% and per-check rates.

    Parameters
    ----------
    fake : (n, d) normalised features of the evaluated cohort.
    real : (m, d) normalised features of the reference cohort (held fixed).
    violations : (n, 12) booleans, True = check violated, rows as ``fake``.
    k : neighbour rank of the precision/recall balls.
    n_boot : number of resamples.
    seed : RNG seed of the resampling.
    indices : explicit ``(n_boot, n)`` resample indices (overrides ``n_boot``/``seed``).

    Returns
    -------
    dict
        Arrays of replicates: ``fd``, ``precision``, ``recall``, ``tv_percent`` (n_boot,)
        and ``violation_rate`` (n_boot, 12).
    """
    fake = np.asarray(fake, dtype=np.float64)
    real = np.asarray(real, dtype=np.float64)
    viol = np.asarray(violations, dtype=bool)
    n = fake.shape[0]
    if viol.shape[0] != n:
        raise ValueError(f"{viol.shape[0]} rows of checks for {n} feature rows")
    idx = bootstrap_indices(n, n_boot, seed) if indices is None else np.asarray(indices)
    mu_r, cov_r = gaussian_fit(real)
    covered_fake = coverage(fake, real, knn_radii(real, k))  # fixed reference balls
    d_real_fake = cdist(real, fake)
    radii_of = _ResampledRadii(fake, k)
    per_map_tv = viol.mean(axis=1)

    out = {
        "fd": np.empty(len(idx)),
        "precision": np.empty(len(idx)),
        "recall": np.empty(len(idx)),
        "tv_percent": np.empty(len(idx)),
        "violation_rate": np.empty((len(idx), viol.shape[1])),
    }
    for b, draw in enumerate(idx):
        unique = np.unique(draw)
        out["fd"][b] = gaussian_frechet_distance(*gaussian_fit(fake[draw]), mu_r, cov_r)
        out["precision"][b] = covered_fake[draw].mean()
        radii = radii_of(unique)
        out["recall"][b] = (d_real_fake[:, unique] <= radii[None, :]).any(axis=1).mean()
        out["tv_percent"][b] = 100.0 * per_map_tv[draw].mean()
        out["violation_rate"][b] = viol[draw].mean(axis=0)
    return out


# ---------------------------------------------------------------------------------
# Binomial proportions.
# ---------------------------------------------------------------------------------
def acceptance_rate(accepted: int, attempted: int) -> float:
    """``accepted / attempted`` (NaN when nothing was attempted)."""
    if accepted < 0 or attempted < 0 or accepted > attempted:
        raise ValueError(f"need 0 <= accepted <= attempted, got {accepted} of {attempted}")
    return accepted / attempted if attempted else float("nan")


def wilson_interval(
    successes: int, n: int, z: float = 1.959964, *, exact_ends: bool = True
) -> tuple[float, float]:
    """Wilson score interval (95% by default) of the binomial proportion ``successes / n``.

    ``(p + z²/2n ± z·sqrt(p(1 − p)/n + z²/4n²)) / (1 + z²/n)``, clipped to [0, 1].

    Parameters
    ----------
    successes, n : counts, ``0 <= successes <= n``.
    z : the standard normal quantile of the level (1.959964 for 95%).
    exact_ends : the lower bound is exactly 0 at ``successes = 0`` and the upper bound
        exactly 1 at ``successes = n`` (rounding would give e.g. 1 − 1e-16); False keeps
        the rounded bounds (the findings experiment's recorded numbers).

    Returns
    -------
    (lo, hi)
        NaN, NaN when ``n`` is 0.
    """
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    if exact_ends:
        lo = 0.0 if successes == 0 else lo
        hi = 1.0 if successes == n else hi
    return (lo, hi)
