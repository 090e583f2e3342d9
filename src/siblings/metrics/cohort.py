"""Evaluate a cohort of label maps against a reference cohort (paper §3.5, SPEC §5/§7).

Two layers:

- in memory: :func:`summarise_maps` turns any iterable of label maps (arrays or
  :class:`~siblings.io.LabelMap`) into a :class:`CohortSummary` (features, checks and
  streaming occupancy), and :func:`compare` turns two summaries into the metrics dict.
  :func:`evaluate_maps` does both, so experiments evaluate decoded batches without
  writing files.
- folders: :func:`summarise_folder` reads ``*.nii.gz`` maps in worker processes (each
  returns features, checks and a cropped occupancy partial sum, so memory does not grow
  with the cohort), and :func:`evaluate` measures two folders. Writing the outputs
  (``metrics.json``, ``per_map.csv``, ``reference_per_map.csv``, figures and
  ``report.html``) is :func:`siblings.pipelines.evaluate.write_evaluation`'s.

Example
-------
>>> from siblings.data.phantom import make_phantom
>>> from siblings.metrics.cohort import evaluate_maps
>>> ref = [make_phantom(i, size=32)[0] for i in range(8)]
>>> gen = [make_phantom(i, size=32, seed=1)[0] for i in range(8)]
>>> ev = evaluate_maps(gen, ref, n_boot=50)
>>> ev.metrics["tv_percent"]
0.0
"""

from __future__ import annotations

import csv
import io as _io
import math
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import __version__, anatomy
from ..boxes import bounding_box
from ..errors import InputError
from ..io import LabelMap, LabelMapError, list_label_maps, read_label_map
from ..labels import LabelScheme, load_scheme
from .bootstrap import bootstrap_interval, bootstrap_metrics, percentile_interval
from .frechet import frechet_distance, normalisation
from .heatmaps import Occupancy, OccupancyPartial
from .morphology import linear_map, morphology_vector
from .precision_recall import precision_recall
from .topology import topology_checks

PathLike = str | os.PathLike

# Chunks of maps per worker task: partial occupancy sums are sent back once per chunk.
_MAX_CHUNK = 32

#: The headline numbers of :func:`compare`, in the order summaries list them: what
#: ``augment.json["evaluation"]`` and an edit run's ``metrics.json["against_reference"]``
#: copy from the full evaluation of a cohort against a reference.
HEADLINE_KEYS = (
    "n",
    "n_reference",
    "k",
    "fd",
    "fd_ci",
    "precision",
    "precision_ci",
    "recall",
    "recall_ci",
    "tv_percent",
    "tv_percent_ci",
)


# ---------------------------------------------------------------------------------
# One map.
# ---------------------------------------------------------------------------------
def measure_map(
    label_map: LabelMap | np.ndarray,
    spacing_mm: float | Sequence[float] | np.ndarray | None = None,
    *,
    min_component_voxels: int = 0,
    contact_connectivity: int = 26,
) -> tuple[np.ndarray, np.ndarray]:
    """Morphology and topology of one map.

    Returns
    -------
    (features, violated)
        ``features``: 12 floats in ``MORPHOLOGY_COLUMNS`` order (mL, mm);
        ``violated``: 12 booleans in ``TOPOLOGY_COLUMNS`` order (True = violated).
    """
    lab = label_map.data if isinstance(label_map, LabelMap) else np.asarray(label_map)
    return _measure(
        lab, linear_map(label_map, spacing_mm), None, min_component_voxels, contact_connectivity
    )


def _measure(
    lab: np.ndarray,
    lin: np.ndarray,
    occupancy: Occupancy | None,
    min_component_voxels: int,
    contact_connectivity: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and checks of one map (and its occupancy count), sharing one crop.

    Features and checks do not change under translation, so both are computed on the
    bounding box of the non-background voxels (about a quarter of a prepared 128³ map).
    """
    if lab.flags.f_contiguous and not lab.flags.c_contiguous:
        # NIfTI arrays come Fortran-ordered. Their transpose is C-ordered (no copy) and
        # the features and checks do not depend on the order of the axes, as long as the
        # voxel-to-mm matrix is permuted with them.
        work, lin = lab.T, lin[:, ::-1]
    else:
        work = np.ascontiguousarray(lab)
    box = bounding_box(work)
    crop = work if box is None else np.ascontiguousarray(work[box])
    features = morphology_vector(crop, lin)
    checks = topology_checks(
        crop, min_component_voxels=min_component_voxels, contact_connectivity=contact_connectivity
    )
    if occupancy is not None:
        occupancy.add(lab)
    return features, np.array([checks[c] for c in anatomy.TOPOLOGY_COLUMNS], dtype=bool)


def _validated_labels(array: object, name: str) -> np.ndarray:
    """A 3D integer label array with values 0–6 (raises ValueError naming the map)."""
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().cpu().numpy()  # type: ignore[union-attr]
    lab = np.asarray(array)
    if lab.ndim != 3:
        raise InputError(f"{name}: expected a 3D label map, got shape {lab.shape}")
    if lab.dtype.kind == "f":
        if not np.array_equal(lab, np.round(lab)):
            raise InputError(f"{name}: non-integer values; a label map holds integers 0–6")
    elif lab.dtype.kind not in "iub":
        raise InputError(f"{name}: data type {lab.dtype}; a label map holds integers 0–6")
    lo, hi = (lab.min(), lab.max()) if lab.size else (0, 0)
    if lo < 0 or hi >= anatomy.NUM_LABELS:
        raise InputError(f"{name}: labels outside 0–{anatomy.NUM_LABELS - 1} (min {lo}, max {hi})")
    return lab if lab.dtype == np.uint8 else lab.astype(np.uint8)


# ---------------------------------------------------------------------------------
# A cohort.
# ---------------------------------------------------------------------------------
@dataclass
class CohortSummary:
    """What evaluation needs of a cohort, without its maps.

    Attributes
    ----------
    names : one name per map (file name for folders, ``map_XXXX`` otherwise).
    features : (n, 12) morphology, ``MORPHOLOGY_COLUMNS`` order (mL, mm).
    violated : (n, 12) booleans, ``TOPOLOGY_COLUMNS`` order, True = violated.
    occupancy : streaming one-hot counts (heatmap ``P``).
    source : folder the maps came from, if any.
    """

    names: list[str]
    features: np.ndarray
    violated: np.ndarray
    occupancy: Occupancy
    source: Path | None = None
    spacing_mm: tuple[float, float, float] | None = None
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def tv_percent(self) -> float:
        """100 × mean fraction of the 12 checks violated (SPEC §5)."""
        return float(100.0 * self.violated.mean()) if len(self) else float("nan")

    def violation_rates(self) -> dict[str, float]:
        """Fraction of maps violating each check."""
        return dict(zip(anatomy.TOPOLOGY_COLUMNS, self.violated.mean(axis=0).tolist(), strict=True))

    def feature(self, column: str) -> np.ndarray:
        """One morphology column, e.g. ``"LV_volume_ml"``."""
        return self.features[:, anatomy.MORPHOLOGY_COLUMNS.index(column)]

    def per_map_csv(self) -> str:
        """``file``, the 12 morphology columns, the 12 check columns (1 = violated)."""
        buf = _io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", *anatomy.MORPHOLOGY_COLUMNS, *anatomy.TOPOLOGY_COLUMNS])
        for name, f, v in zip(self.names, self.features, self.violated, strict=True):
            w.writerow([name, *(f"{x:.6g}" for x in f), *(int(b) for b in v)])
        return buf.getvalue()


def summarise_maps(
    maps: Iterable[LabelMap | np.ndarray],
    spacing_mm: float | Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    *,
    min_component_voxels: int = 0,
    contact_connectivity: int = 26,
) -> CohortSummary:
    """Summarise an iterable of label maps, one at a time (a generator is fine).

    Parameters
    ----------
    maps : :class:`~siblings.io.LabelMap` objects or 3D integer arrays/tensors (0–6);
        a batch array ``(B, D, H, W)`` iterates over its maps.
    spacing_mm : voxel size (mm) for bare arrays; a ``LabelMap`` uses its affine.
    names : one name per map (default ``map_0000``, ``map_0001``, …).
    min_component_voxels, contact_connectivity : see :func:`topology_checks`.
    """
    feats, viol, out_names = [], [], []
    occ = Occupancy()
    spacing = None
    for i, item in enumerate(maps):
        name = names[i] if names is not None else f"map_{i:04d}"
        if isinstance(item, LabelMap):
            lm = LabelMap(_validated_labels(item.data, name), item.affine, item.path)
            sp = lm.spacing
        else:
            if spacing_mm is None:
                raise InputError(f"{name}: a bare label array needs spacing_mm (voxel size in mm)")
            lm = _validated_labels(item, name)
            sp = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing_mm, float), (3,)))
        if spacing is None:
            spacing = sp
        elif not np.allclose(sp, spacing, atol=1e-3):
            raise InputError(f"{name}: voxel size {sp} mm differs from the cohort's {spacing} mm")
        lab = lm.data if isinstance(lm, LabelMap) else lm
        if occ.shape is not None and lab.shape != occ.shape:
            raise InputError(f"{name}: grid is {lab.shape}, the cohort's is {occ.shape}")
        f, v = _measure(
            lab,
            linear_map(lm, None if isinstance(lm, LabelMap) else spacing_mm),
            occ,
            min_component_voxels,
            contact_connectivity,
        )
        feats.append(f)
        viol.append(v)
        out_names.append(name)
    return CohortSummary(
        names=out_names,
        features=np.array(feats, dtype=np.float64).reshape(-1, len(anatomy.MORPHOLOGY_COLUMNS)),
        violated=np.array(viol, dtype=bool).reshape(-1, len(anatomy.TOPOLOGY_COLUMNS)),
        occupancy=occ,
        spacing_mm=spacing,
        settings={
            "min_component_voxels": min_component_voxels,
            "contact_connectivity": contact_connectivity,
        },
    )


# ---------------------------------------------------------------------------------
# Folders, in worker processes.
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """The grid every map of an evaluation must share (from the first reference map)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: tuple[str, str, str]
    source: Path
    affine: tuple[tuple[float, ...], ...] | None = None
    """The first reference map's affine (recorded in ``metrics.json``: the figures name
    their slices' directions from it, :func:`siblings.report.axes.panel_axes`)."""

    @classmethod
    def of(cls, lm: LabelMap) -> Grid:
        affine = tuple(tuple(float(v) for v in row) for row in np.asarray(lm.affine))
        return cls(lm.shape, lm.spacing, tuple(nib.aff2axcodes(lm.affine)), lm.path, affine)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Task:
    cohort: int
    chunk: int
    paths: tuple[str, ...]
    grid: Grid
    min_component_voxels: int
    contact_connectivity: int
    labels: LabelScheme | None = None


def _grid_error(path: Path, reason: str, grid: Grid) -> LabelMapError:
    return LabelMapError(path, f"{reason} (the grid of {grid.source}, the first reference map)")


def _read_on_grid(path: Path, grid: Grid, labels: LabelScheme | None = None) -> LabelMap:
    lm = read_label_map(path, labels=labels)  # raises LabelMapError naming the file
    if lm.shape != grid.shape:
        raise _grid_error(
            path,
            f"grid is {'x'.join(map(str, lm.shape))}, expected {'x'.join(map(str, grid.shape))}",
            grid,
        )
    if not np.allclose(lm.spacing, grid.spacing_mm, atol=1e-3):
        got = " x ".join(f"{s:.4g}" for s in lm.spacing)
        want = " x ".join(f"{s:.4g}" for s in grid.spacing_mm)
        raise _grid_error(path, f"voxel size is {got} mm, expected {want} mm", grid)
    codes = tuple(nib.aff2axcodes(lm.affine))
    if codes != grid.orientation:
        raise _grid_error(
            path,
            f"orientation is {''.join(codes)}, expected {''.join(grid.orientation)}",
            grid,
        )
    return lm


def _run_task(task: _Task) -> dict:
    """Worker: measure a chunk of maps; return rows and a cropped occupancy partial sum."""
    occ = Occupancy(task.grid.shape)
    feats, viol = [], []
    for p in task.paths:
        try:
            lm = _read_on_grid(Path(p), task.grid, task.labels)
        except LabelMapError as exc:  # sent whole (it pickles), so its arguments stay worded
            if exc.path is None:
                exc = LabelMapError(p, exc.reason, arguments=exc.arguments)
            return {"error": exc}
        f, v = _measure(
            lm.data,
            linear_map(lm, None),
            occ,
            task.min_component_voxels,
            task.contact_connectivity,
        )
        feats.append(f)
        viol.append(v)
    return {
        "cohort": task.cohort,
        "chunk": task.chunk,
        "features": np.array(feats),
        "violated": np.array(viol, dtype=bool),
        "occupancy": occ.partial(),
    }


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _summarise_files(
    file_lists: Sequence[Sequence[Path]],
    grid: Grid,
    *,
    workers: int | None = None,
    progress: bool = False,
    min_component_voxels: int = 0,
    contact_connectivity: int = 26,
    desc: str = "evaluate",
    labels: Sequence[LabelScheme | None] | None = None,
) -> list[CohortSummary]:
    """Summarise several lists of files in one pool (so no worker idles between cohorts).

    ``labels`` gives each list's label scheme (default: ``siblings`` for all)."""
    schemes = list(labels) if labels is not None else [None] * len(file_lists)
    workers = _default_workers() if workers is None else max(1, int(workers))
    total = sum(len(f) for f in file_lists)
    size = max(1, min(_MAX_CHUNK, math.ceil(total / (4 * workers))))
    tasks = [
        _Task(
            c,
            j,
            tuple(str(p) for p in files[s : s + size]),
            grid,
            min_component_voxels,
            contact_connectivity,
            schemes[c],
        )
        for c, files in enumerate(file_lists)
        for j, s in enumerate(range(0, len(files), size))
    ]
    occ = [Occupancy(grid.shape) for _ in file_lists]
    rows: list[dict[int, dict]] = [{} for _ in file_lists]

    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="map", disable=not progress)

    def take(result: dict, n_maps: int) -> None:
        if "error" in result:
            raise result["error"]
        c = result["cohort"]
        part: OccupancyPartial = result.pop("occupancy")
        occ[c].merge(part)
        rows[c][result["chunk"]] = result
        bar.update(n_maps)

    try:
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                take(_run_task(t), len(t.paths))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                pending: dict[Future, _Task] = {}
                queue = list(reversed(tasks))
                try:
                    while queue or pending:
                        # At most two tasks per worker in flight: bounded memory.
                        while queue and len(pending) < 2 * workers:
                            t = queue.pop()
                            pending[pool.submit(_run_task, t)] = t
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            t = pending.pop(fut)
                            take(fut.result(), len(t.paths))
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()

    out = []
    for c, files in enumerate(file_lists):
        chunks = [rows[c][j] for j in sorted(rows[c])]
        out.append(
            CohortSummary(
                names=[Path(p).name for p in files],
                features=np.concatenate([r["features"] for r in chunks]).reshape(
                    -1, len(anatomy.MORPHOLOGY_COLUMNS)
                ),
                violated=np.concatenate([r["violated"] for r in chunks]).reshape(
                    -1, len(anatomy.TOPOLOGY_COLUMNS)
                ),
                occupancy=occ[c],
                spacing_mm=grid.spacing_mm,
                settings={
                    "min_component_voxels": min_component_voxels,
                    "contact_connectivity": contact_connectivity,
                },
            )
        )
    return out


def _cohort_files(folder: PathLike, min_count: int, role: str, k: int | None = None) -> list[Path]:
    folder = Path(folder)
    files = list_label_maps(folder, min_count=0)
    if not files:
        raise LabelMapError(folder, f"holds no label maps (*.nii.gz or *.nii); the {role} is empty")
    if len(files) < min_count:
        why = f"precision/recall with k = {k} need" if k is not None else "need"
        raise LabelMapError(
            folder,
            f"holds {len(files)} label map(s); {why} at least {min_count} in the {role} "
            "(add maps or lower {k})",
            arguments=("k",),
        )
    return files


def summarise_folder(
    folder: PathLike,
    *,
    grid: Grid | None = None,
    workers: int | None = None,
    progress: bool = False,
    min_component_voxels: int = 0,
    contact_connectivity: int = 26,
    labels: str | PathLike | LabelScheme | None = None,
) -> CohortSummary:
    """Summarise the ``*.nii.gz`` maps of a folder (worker processes, bounded memory).

    All maps must share the grid of ``grid`` (default: the folder's first map); a bad
    file raises :class:`~siblings.io.LabelMapError` naming it. ``labels`` is the maps'
    label scheme (:func:`siblings.labels.load_scheme`; default ``siblings``).
    """
    scheme = load_scheme(labels)
    files = _cohort_files(folder, 1, "cohort")
    grid = grid or Grid.of(read_label_map(files[0], labels=scheme))
    summary = _summarise_files(
        [files],
        grid,
        workers=workers,
        progress=progress,
        min_component_voxels=min_component_voxels,
        contact_connectivity=contact_connectivity,
        labels=[scheme],
    )[0]
    summary.source = Path(folder)
    return summary


# ---------------------------------------------------------------------------------
# Comparison.
# ---------------------------------------------------------------------------------
def _check_size(summary: CohortSummary, k: int, role: str) -> None:
    if len(summary) < k + 1:
        where = f"{summary.source}: " if summary.source is not None else ""
        raise InputError(
            f"{where}the {role} has {len(summary)} map(s); precision/recall with k = {k} "
            f"need at least {k + 1}"
        )


def compare(
    cohort: CohortSummary,
    reference: CohortSummary,
    *,
    k: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """The metrics of ``cohort`` against ``reference`` (SPEC §5, §7).

    Features are normalised by the reference mean and std (ddof = 0); FD, precision and
    recall use the normalised 12-d vectors; intervals come from ``n_boot`` resamples of
    the cohort with the reference fixed (:mod:`siblings.metrics.bootstrap`).

    Returns
    -------
    dict
        ``n``, ``fd``, ``precision``, ``recall``, ``tv_percent`` each with ``*_ci``
        (``[lo, hi]``, or None when ``n_boot`` is 0), ``violation_rate`` and
        ``violation_rate_ci`` per check, the reference's TV% and rates, feature means and
        standard deviations, and the settings used.
    """
    if k < 1:
        raise InputError(f"{{k}} must be at least 1, got {k}", arguments=("k",))
    _check_size(cohort, k, "cohort")
    _check_size(reference, k, "reference")
    if cohort.occupancy.shape != reference.occupancy.shape:
        raise InputError(
            f"cohort grid {cohort.occupancy.shape} differs from reference grid "
            f"{reference.occupancy.shape}"
        )
    mean, std = normalisation(reference.features)
    fake = (cohort.features - mean) / std
    real = (reference.features - mean) / std
    fd = frechet_distance(fake, real)
    pr = precision_recall(real, fake, k=k)
    tv = cohort.tv_percent
    rates = cohort.violated.mean(axis=0)
    metrics: dict = {
        "n": len(cohort),
        "n_reference": len(reference),
        "k": k,
        "fd": fd,
        "precision": pr.precision,
        "recall": pr.recall,
        "tv_percent": tv,
    }
    if n_boot > 0:
        reps = bootstrap_metrics(fake, real, cohort.violated, k=k, n_boot=n_boot, seed=seed)
        # FD's replicates are biased upwards (a resample holds fewer distinct maps), so
        # its interval is re-centred on the estimate; the others keep the plain
        # percentile interval, which covered better (benchmarks/bootstrap_coverage.py).
        metrics["fd_ci"] = bootstrap_interval(reps["fd"], fd, level, (0.0, np.inf))
        metrics["precision_ci"] = percentile_interval(reps["precision"], level)
        metrics["recall_ci"] = percentile_interval(reps["recall"], level)
        metrics["tv_percent_ci"] = percentile_interval(reps["tv_percent"], level)
        rate_ci = percentile_interval(reps["violation_rate"], level)
        bias = {
            key: float(reps[key].mean() - metrics[key])
            for key in ("fd", "precision", "recall", "tv_percent")
        }
    else:
        for key in ("fd", "precision", "recall", "tv_percent"):
            metrics[f"{key}_ci"] = None
        rate_ci, bias = None, None
    cols = anatomy.TOPOLOGY_COLUMNS
    metrics["violation_rate"] = dict(zip(cols, rates.tolist(), strict=True))
    metrics["violation_rate_ci"] = (
        None
        if rate_ci is None
        else {c: [lo, hi] for c, lo, hi in zip(cols, rate_ci[0], rate_ci[1], strict=True)}
    )
    metrics["maps_violating_percent"] = float(100.0 * cohort.violated.any(axis=1).mean())
    metrics["reference"] = {
        "n": len(reference),
        "tv_percent": reference.tv_percent,
        "violation_rate": reference.violation_rates(),
        "maps_violating_percent": float(100.0 * reference.violated.any(axis=1).mean()),
    }
    metrics["features"] = {
        col: {
            "mean": float(cohort.features[:, j].mean()),
            "std": float(cohort.features[:, j].std()),
            "reference_mean": float(reference.features[:, j].mean()),
            "reference_std": float(reference.features[:, j].std()),
        }
        for j, col in enumerate(anatomy.MORPHOLOGY_COLUMNS)
    }
    metrics["bootstrap"] = {
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "resampled": "cohort (reference fixed)",
        "interval": "percentile; FD re-centred on the estimate",
        "replicate_mean_minus_estimate": bias,
    }
    metrics["conventions"] = {
        "normalisation": "reference mean and std (ddof=0)",
        "covariance_ddof": 1,
        "coverage": "distance <= k-NN radius (prdc uses <)",
        "axis_lengths": "scikit-image regionprops 3D: sqrt(20 * covariance eigenvalue), mm",
        **cohort.settings,
    }
    metrics["grid"] = {
        "shape": list(cohort.occupancy.shape or ()),
        "spacing_mm": list(cohort.spacing_mm) if cohort.spacing_mm else None,
    }
    metrics["software"] = f"digital-siblings {__version__}"
    return metrics


@dataclass
class Evaluation:
    """Metrics plus the two summaries they came from (for figures and reports)."""

    metrics: dict
    cohort: CohortSummary
    reference: CohortSummary
    seconds: float | None = None
    """Compute time of :func:`evaluate` (reading and measuring the folders); None for
    :func:`evaluate_maps`. :func:`siblings.pipelines.evaluate.write_evaluation` records
    it as ``compute_seconds``."""


def evaluate_maps(
    cohort: Iterable[LabelMap | np.ndarray] | CohortSummary,
    reference: Iterable[LabelMap | np.ndarray] | CohortSummary,
    spacing_mm: float | Sequence[float] | None = None,
    *,
    k: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_component_voxels: int = 0,
    contact_connectivity: int = 26,
) -> Evaluation:
    """Evaluate in-memory maps (or ready summaries) against a reference; no files.

    A reference :class:`CohortSummary` can be computed once with :func:`summarise_maps`
    or :func:`summarise_folder` and reused for many cohorts.
    """
    opts = dict(
        min_component_voxels=min_component_voxels, contact_connectivity=contact_connectivity
    )
    ref = (
        reference
        if isinstance(reference, CohortSummary)
        else summarise_maps(reference, spacing_mm, **opts)
    )
    coh = (
        cohort if isinstance(cohort, CohortSummary) else summarise_maps(cohort, spacing_mm, **opts)
    )
    if (
        ref.spacing_mm
        and coh.spacing_mm
        and not np.allclose(ref.spacing_mm, coh.spacing_mm, atol=1e-3)
    ):
        raise InputError(
            f"cohort voxel size {coh.spacing_mm} mm differs from the reference's {ref.spacing_mm} mm"
        )
    metrics = compare(coh, ref, k=k, n_boot=n_boot, seed=seed, level=level)
    return Evaluation(metrics, coh, ref)


def evaluate(
    cohort_dir: PathLike,
    reference_dir: PathLike,
    *,
    k: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    workers: int | None = None,
    progress: bool = False,
    min_component_voxels: int = 0,
    contact_connectivity: int = 26,
    labels: str | PathLike | LabelScheme | None = None,
    reference_labels: str | PathLike | LabelScheme | None = None,
) -> Evaluation:
    """The numbers of ``siblings evaluate``: a folder of maps against a reference folder.

    Reads and measures; writes nothing (:func:`siblings.pipelines.evaluate.write_evaluation`
    writes the outputs of an :class:`Evaluation`).

    Parameters
    ----------
    cohort_dir, reference_dir : folders of ``*.nii.gz`` label maps (values 0–6) on one grid.
    k : neighbour rank of improved precision/recall (default 3).
    n_boot : bootstrap resamples for the 95% intervals (default 1000; 0 for none).
    seed : bootstrap seed.
    level : interval level (default 0.95).
    workers : worker processes reading and measuring maps (default: all cores; 1 = none).
    progress : show a progress bar.
    min_component_voxels, contact_connectivity : see :func:`topology_checks`.
    labels, reference_labels : the label schemes of the cohort's and the reference's maps
        (:func:`siblings.labels.load_scheme`; default ``siblings``), recorded in the
        metrics' ``labels``.

    Raises
    ------
    LabelMapError
        naming the file or folder: an empty folder, fewer than k + 1 maps, a corrupt
        file, labels outside 0–6, a grid, voxel size or orientation other than the
        first reference map's.
    """
    if k < 1:
        raise InputError(f"{{k}} must be at least 1, got {k}", arguments=("k",))
    t0 = time.perf_counter()
    schemes = load_scheme(reference_labels), load_scheme(labels)
    ref_files = _cohort_files(reference_dir, k + 1, "reference", k)
    coh_files = _cohort_files(cohort_dir, k + 1, "cohort", k)
    grid = Grid.of(read_label_map(ref_files[0], labels=schemes[0]))
    ref, coh = _summarise_files(
        [ref_files, coh_files],
        grid,
        workers=workers,
        progress=progress,
        min_component_voxels=min_component_voxels,
        contact_connectivity=contact_connectivity,
        labels=schemes,
    )
    ref.source, coh.source = Path(reference_dir), Path(cohort_dir)
    metrics = compare(coh, ref, k=k, n_boot=n_boot, seed=seed, level=level)
    metrics["cohort_dir"] = str(cohort_dir)
    metrics["reference_dir"] = str(reference_dir)
    metrics["grid"]["orientation"] = "".join(grid.orientation)
    if grid.affine is not None:
        metrics["grid"]["affine"] = [list(row) for row in grid.affine]
    metrics["labels"] = {"cohort": schemes[1].record(), "reference": schemes[0].record()}
    return Evaluation(metrics, coh, ref, seconds=time.perf_counter() - t0)
