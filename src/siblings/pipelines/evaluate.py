"""The ``evaluate`` pipeline: a folder of maps against a reference folder, report written.

Composes :func:`siblings.metrics.cohort.evaluate` (read and measure both folders, compare:
numbers only) and :func:`write_evaluation` (the per-map CSVs, PNG figures and report.html
rendered by :func:`siblings.report.evaluation.evaluation_files`, then metrics.json, each
written atomically). Nothing is written if any input map is invalid, as the numbers are
complete before the first file. The edit and augment pipelines write their evaluations
against a reference with :func:`write_evaluation` too.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..io import write_bytes, write_json
from ..labels import LabelScheme, load_scheme
from ..metrics.cohort import Evaluation, evaluate
from ..report.evaluation import evaluation_files

PathLike = str | os.PathLike


def write_evaluation(
    ev: Evaluation, out_dir: PathLike, *, figures: bool = True, title: str | None = None
) -> dict[str, Path]:
    """Write per_map.csv, reference_per_map.csv, the PNGs, report.html and metrics.json.

    Everything is rendered before the first file is written; each write is atomic.
    Returns the written paths by name.
    """
    out = Path(out_dir)
    files = evaluation_files(ev, figures=figures, title=title)
    written = {name: write_bytes(out / name, data) for name, data in files.items()}
    written["metrics.json"] = write_json(out / "metrics.json", ev.metrics)
    return written


def check_options(k: int, n_boot: int, min_component_voxels: int, workers: int | None) -> None:
    """Refuse ``k`` below 1, negative ``n_boot`` or ``min_component_voxels``, ``workers`` < 1."""
    if k < 1:
        raise InputError(f"{{k}} must be at least 1, got {k}", arguments=("k",))
    if n_boot < 0:
        raise InputError(f"{{n_boot}} must be 0 or more, got {n_boot}", arguments=("n_boot",))
    if min_component_voxels < 0:
        raise InputError(
            f"{{min_component_voxels}} must be 0 or more, got {min_component_voxels}",
            arguments=("min_component_voxels",),
        )
    if workers is not None and workers < 1:
        raise InputError(f"{{workers}} must be at least 1, got {workers}", arguments=("workers",))


def evaluate_cohort(
    cohort_dir: PathLike,
    reference_dir: PathLike,
    out: PathLike,
    *,
    k: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
    min_component_voxels: int = 0,
    contact_connectivity: int = 26,
    figures: bool = True,
    labels: str | os.PathLike | LabelScheme | None = None,
    reference_labels: str | os.PathLike | LabelScheme | None = None,
) -> Evaluation:
    """``siblings evaluate``: measure ``cohort_dir`` against ``reference_dir``, write to ``out``.

    Parameters are those of :func:`siblings.metrics.cohort.evaluate`, plus ``out`` (the
    output folder) and ``figures`` (PNG figures in the report). Returns the evaluation.
    """
    check_options(k, n_boot, min_component_voxels, workers)
    labels, reference_labels = load_scheme(labels), load_scheme(reference_labels)
    ev = evaluate(
        cohort_dir,
        reference_dir,
        k=k,
        n_boot=n_boot,
        seed=seed,
        workers=workers,
        progress=progress,
        min_component_voxels=min_component_voxels,
        contact_connectivity=contact_connectivity,
        labels=labels,
        reference_labels=reference_labels,
    )
    write_evaluation(ev, out, figures=figures)
    return ev
