"""Metrics of siblings against their one twin (the statistics of an editing run).

The cohort metrics of ``siblings evaluate`` that need a reference *cohort* are undefined
against one map: features are normalised by the reference standard deviation (zero for
one map), the Fréchet distance needs the reference covariance (ddof = 1, at least two
maps) and precision/recall need k + 1 reference maps. :func:`twin_metrics` reports them
as null with that reason (:data:`UNDEFINED_AGAINST_ONE_MAP`) and reports what is
defined: TV% with its bootstrap interval, per-check rates, feature changes, Dice against
the twin (:func:`dice_table`, summarised by :func:`summary_stats`) and the grid.
:mod:`siblings.report.editing` formats these numbers; it computes none.

Example
-------
>>> from siblings.data.phantom import make_phantom
>>> from siblings.metrics.twin import dice_table
>>> twin = make_phantom(0, size=32)[0].data
>>> dice_table(twin, [twin])[0]["LV"]
1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import anatomy
from .bootstrap import bootstrap_indices, percentile_interval
from .cohort import CohortSummary
from .overlap import tissue_dice

UNDEFINED_AGAINST_ONE_MAP = (
    "undefined against a single twin: features are normalised by the reference's standard "
    "deviation (0 for one map), the Fréchet distance needs the reference covariance (ddof = 1, "
    "at least 2 maps) and precision/recall need k + 1 reference maps; evaluate against a "
    "reference cohort (the edit's reference argument) to compute them"
)


def dice_table(twin: np.ndarray, maps: np.ndarray | Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Dice of every tissue, twin vs each map (1.0 where both lack the tissue).

    One row per map of ``maps`` (an ``(n, S, S, S)`` array or a sequence of maps), each a
    dict tissue → Dice (:func:`siblings.metrics.overlap.tissue_dice`, ``empty=1.0``).
    """
    twin = np.asarray(twin)
    return [tissue_dice(twin, np.asarray(m), empty=1.0) for m in maps]


def summary_stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (ddof = 0), minimum and maximum of ``values``."""
    v = np.asarray(values, float)
    return {
        "mean": float(v.mean()),
        "sd": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def twin_metrics(
    siblings: CohortSummary,
    twin: CohortSummary,
    *,
    dice: Sequence[dict[str, float]] = (),
    kept_dice: Sequence[dict[str, float]] = (),
    reconstruction_dice: dict[str, float] | None = None,
    dice_vs_reconstruction: Sequence[dict[str, float]] = (),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Metrics of the siblings against their twin (one map), in the keys of
    :func:`siblings.metrics.cohort.compare` where they are defined.

    ``fd``, ``precision`` and ``recall`` are None with the reason in ``undefined``.
    ``features`` holds, per morphology column, the siblings' mean and sd, the twin's
    value and the mean change and mean absolute relative change (%) from the twin.
    ``dice_vs_twin`` and ``kept_dice`` summarise per-tissue Dice over the siblings;
    ``vae_reconstruction_dice`` is the Dice of the twin's own VAE reconstruction (the
    best a kept tissue can be preserved through the autoencoder), and
    ``dice_vs_vae_reconstruction`` summarises each sibling against that reconstruction
    (what the edit itself changed, the autoencoder's loss taken out).
    """
    if len(twin) != 1:
        raise ValueError(f"expected one twin map, got {len(twin)}")
    n = len(siblings)
    tv = siblings.tv_percent
    rates = siblings.violated.mean(axis=0)
    cols = anatomy.TOPOLOGY_COLUMNS
    metrics: dict = {
        "n": n,
        "n_reference": 1,
        "reference_kind": "twin",
        "fd": None,
        "precision": None,
        "recall": None,
        "fd_ci": None,
        "precision_ci": None,
        "recall_ci": None,
        "undefined": {"fd, precision, recall": UNDEFINED_AGAINST_ONE_MAP},
        "tv_percent": tv,
        "tv_percent_ci": None,
        "violation_rate": dict(zip(cols, rates.tolist(), strict=True)),
        "violation_rate_ci": None,
        "maps_violating_percent": float(100.0 * siblings.violated.any(axis=1).mean()),
    }
    if n_boot > 0 and n > 1:
        # The replicates and the plain percentile interval of `evaluate` (compare,
        # bootstrap_metrics): TV%'s and the rates' replicates are unbiased, so only FD's
        # interval is re-centred there (docs/evaluation.md); same seed, same interval.
        idx = bootstrap_indices(n, n_boot, seed)
        per_map_tv = siblings.violated.mean(axis=1)
        metrics["tv_percent_ci"] = percentile_interval(100.0 * per_map_tv[idx].mean(axis=1), level)
        lo, hi = percentile_interval(siblings.violated[idx].mean(axis=1), level)
        metrics["violation_rate_ci"] = {c: [a, b] for c, a, b in zip(cols, lo, hi, strict=True)}
    metrics["reference"] = {
        "n": 1,
        "tv_percent": twin.tv_percent,
        "violation_rate": twin.violation_rates(),
        "maps_violating_percent": float(100.0 * twin.violated.any(axis=1).mean()),
        "violated": [c for c, v in zip(cols, twin.violated[0], strict=True) if v],
    }
    feats = {}
    for j, col in enumerate(anatomy.MORPHOLOGY_COLUMNS):
        x, t = siblings.features[:, j], float(twin.features[0, j])
        rel = 100.0 * np.abs(x - t) / t if t > 0 else np.full_like(x, np.nan)
        feats[col] = {
            "mean": float(x.mean()),
            "std": float(x.std()),
            "twin": t,
            "mean_change": float((x - t).mean()),
            "mean_abs_change_percent": None if t <= 0 else float(rel.mean()),
            # The keys evaluate's report uses, for code that reads either.
            "reference_mean": t,
            "reference_std": 0.0,
        }
    metrics["features"] = feats
    if dice:
        metrics["dice_vs_twin"] = {t: summary_stats([d[t] for d in dice]) for t in dice[0]}
    if kept_dice:
        metrics["kept_dice"] = {t: summary_stats([d[t] for d in kept_dice]) for t in kept_dice[0]}
        metrics["kept_dice_min_over_tissues_mean"] = (
            float(min(v["mean"] for v in metrics["kept_dice"].values()))
            if metrics["kept_dice"]
            else None
        )
    if reconstruction_dice is not None:
        metrics["vae_reconstruction_dice"] = dict(reconstruction_dice)
    if dice_vs_reconstruction:
        metrics["dice_vs_vae_reconstruction"] = {
            t: summary_stats([d[t] for d in dice_vs_reconstruction])
            for t in dice_vs_reconstruction[0]
        }
    metrics["bootstrap"] = {
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "resampled": "siblings (twin fixed)",
        "interval": "percentile",
    }
    metrics["grid"] = {
        "shape": list(siblings.occupancy.shape or ()),
        "spacing_mm": list(siblings.spacing_mm) if siblings.spacing_mm else None,
        "orientation": "RAS",
    }
    return metrics


__all__ = ["UNDEFINED_AGAINST_ONE_MAP", "dice_table", "summary_stats", "twin_metrics"]
