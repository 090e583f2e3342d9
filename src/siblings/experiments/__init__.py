"""The paper's experiments as functions (paper §4 and appendix C, SPEC §6).

``run_experiments("all", data, out)`` runs the sensitivity analysis, unconditional
sampling, perturbational and localized editing and cohort augmentation, and writes
``OUT/report.html`` (every table and figure) and ``OUT/results.json``. Counts default to
the paper's (:data:`PAPER`); ``scale`` shrinks them. Finished cohorts are not made again.

Example
-------
>>> from siblings.experiments import run_experiments, pick_seeds
>>> res = run_experiments("unconditional", "data/phantom64", "runs/exp", scale=0.05)  # doctest: +SKIP
>>> res["experiments"]["unconditional"]["cohorts"]["synthetic"]["tv_percent"]           # doctest: +SKIP
"""

from .counts import PAPER, Counts, scale_count
from .run import EXPERIMENTS, ExperimentContext, assemble, plan_cost, resolve, run_experiments
from .seeds import SEED_KINDS, Seed, SeedKind, percentile_ranks, pick_seeds

__all__ = [
    "EXPERIMENTS",
    "PAPER",
    "SEED_KINDS",
    "Counts",
    "ExperimentContext",
    "Seed",
    "SeedKind",
    "assemble",
    "percentile_ranks",
    "pick_seeds",
    "plan_cost",
    "resolve",
    "run_experiments",
    "scale_count",
]
