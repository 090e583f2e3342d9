"""Seed twins for the editing experiments, picked from the real cohort (SPEC §6, paper §4.2).

Four kinds of anatomy, by LV and RV volume percentiles (large = 90th, small = 10th,
mean = 50th): L↑R↑, L↓R↓, L↑R↔, L↔R↔. Each subject's volumes are turned into percentile
ranks, ``100 · (rank − 1) / (n − 1)`` with ties sharing their average rank, and the seed
of a kind is the subject nearest (Euclidean) to the target percentiles in that rank
space. Rank space makes LV and RV comparable whatever their units and spread. Seeds are
distinct: a subject already picked for an earlier kind is skipped; ties go to the first
subject in cohort order.

Example
-------
>>> import numpy as np
>>> v = np.arange(101.0)                      # LV = RV = 0 … 100 mL
>>> [s.index for s in pick_seeds(v, v)]       # targets (90,90) (10,10) (90,50) (50,50)
[90, 10, 70, 50]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class SeedKind:
    """A kind of seed anatomy: key (file-safe), label (as in the paper), target percentiles."""

    key: str
    label: str
    lv_percentile: float
    rv_percentile: float


# Paper §4.2 order: L↑R↑, L↓R↓, L↑R↔, L↔R↔.
SEED_KINDS: tuple[SeedKind, ...] = (
    SeedKind("Lhi_Rhi", "L↑R↑", 90.0, 90.0),
    SeedKind("Llo_Rlo", "L↓R↓", 10.0, 10.0),
    SeedKind("Lhi_Rmid", "L↑R↔", 90.0, 50.0),
    SeedKind("Lmid_Rmid", "L↔R↔", 50.0, 50.0),
)


@dataclass(frozen=True)
class Seed:
    """A picked seed: its kind, index in the cohort, name, volumes and percentile ranks."""

    kind: SeedKind
    index: int
    name: str
    lv_volume_ml: float
    rv_volume_ml: float
    lv_rank: float
    rv_rank: float

    @property
    def key(self) -> str:
        return self.kind.key

    @property
    def label(self) -> str:
        return self.kind.label

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "target_percentiles": [self.kind.lv_percentile, self.kind.rv_percentile],
            "index": self.index,
            "name": self.name,
            "LV_volume_ml": self.lv_volume_ml,
            "RV_volume_ml": self.rv_volume_ml,
            "LV_percentile_rank": self.lv_rank,
            "RV_percentile_rank": self.rv_rank,
        }


def percentile_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``100 · (rank − 1) / (n − 1)`` with average ranks for ties (0 = smallest, 100 = largest)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("need a non-empty 1-D array of volumes")
    if not np.all(np.isfinite(v)):
        raise ValueError("volumes must be finite")
    if v.size == 1:
        return np.array([50.0])
    return 100.0 * (rankdata(v, method="average") - 1.0) / (v.size - 1.0)


def pick_seeds(
    lv_volumes: Sequence[float] | np.ndarray,
    rv_volumes: Sequence[float] | np.ndarray,
    names: Sequence[str] | None = None,
    kinds: Sequence[SeedKind] = SEED_KINDS,
) -> list[Seed]:
    """One distinct seed per kind: the subject nearest the kind's target in rank space.

    Parameters
    ----------
    lv_volumes, rv_volumes : LV and RV blood-pool volumes (mL) of the real cohort.
    names : subject names (default ``map_XXXX``).
    kinds : the kinds to pick (default :data:`SEED_KINDS`).
    """
    lv = np.asarray(lv_volumes, dtype=np.float64)
    rv = np.asarray(rv_volumes, dtype=np.float64)
    if lv.shape != rv.shape:
        raise ValueError(f"{lv.size} LV volumes but {rv.size} RV volumes")
    if lv.size < len(kinds):
        raise ValueError(
            f"the real cohort has {lv.size} map(s); picking {len(kinds)} distinct seeds needs "
            f"at least {len(kinds)}"
        )
    names = list(names) if names is not None else [f"map_{i:04d}" for i in range(lv.size)]
    lr, rr = percentile_ranks(lv), percentile_ranks(rv)
    taken = np.zeros(lv.size, dtype=bool)
    seeds = []
    for kind in kinds:
        d = np.hypot(lr - kind.lv_percentile, rr - kind.rv_percentile)
        d[taken] = np.inf
        i = int(np.argmin(d))  # first index among ties
        taken[i] = True
        seeds.append(
            Seed(kind, i, names[i], float(lv[i]), float(rv[i]), float(lr[i]), float(rr[i]))
        )
    return seeds
