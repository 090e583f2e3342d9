"""Morphological and topological evaluation of label maps and cohorts (SPEC §5, §7).

Per map: :func:`morphology` (12 features, mL and mm) and :func:`topology_checks`
(12 checks, True = violated). Per cohort: :func:`frechet_distance` and
:func:`precision_recall` on normalised features, :func:`tv_percent`, streaming
occupancy heatmaps (:class:`Occupancy`), and :func:`evaluate` / :func:`evaluate_maps`
for everything at once with bootstrap intervals.

Example
-------
>>> from siblings.data.phantom import make_phantom
>>> from siblings.metrics import morphology, topology_checks
>>> lm, _ = make_phantom(0, size=32)
>>> round(morphology(lm)["LV_volume_ml"]) > 0, any(topology_checks(lm.data).values())
(True, False)
"""

from ..boxes import bounding_box
from .bootstrap import bootstrap_interval, bootstrap_metrics
from .cohort import (
    CohortSummary,
    Evaluation,
    compare,
    evaluate,
    evaluate_maps,
    measure_map,
    summarise_folder,
    summarise_maps,
)
from .frechet import frechet_distance, gaussian_frechet_distance, normalisation, normalise
from .heatmaps import Occupancy, occupancy_difference
from .morphology import morphology, morphology_vector
from .precision_recall import PrecisionRecall, knn_radii, precision_recall
from .topology import (
    checks_array,
    component_counts,
    contact_matrix,
    tissue_contacts,
    topology_checks,
    tv_percent,
    violation_rates,
)

__all__ = [
    "CohortSummary",
    "Evaluation",
    "Occupancy",
    "PrecisionRecall",
    "bootstrap_interval",
    "bootstrap_metrics",
    "bounding_box",
    "checks_array",
    "compare",
    "component_counts",
    "contact_matrix",
    "evaluate",
    "evaluate_maps",
    "frechet_distance",
    "gaussian_frechet_distance",
    "knn_radii",
    "measure_map",
    "morphology",
    "morphology_vector",
    "normalisation",
    "normalise",
    "occupancy_difference",
    "precision_recall",
    "summarise_folder",
    "summarise_maps",
    "tissue_contacts",
    "topology_checks",
    "tv_percent",
    "violation_rates",
]
