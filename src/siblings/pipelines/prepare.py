"""The ``prepare`` pipeline: segmentations to model-space label maps (SPEC §2).

:func:`prepare_totalsegmentator` (a TotalSegmentator dataset) and
:func:`prepare_labelmaps` (a folder of multi-label maps in any label scheme) share one
cohort run, :func:`prepare_subjects`. It composes :mod:`siblings.data.totalseg` (find, load,
check, survey and prepare each subject, in memory) with the files: pick the reference
(given, recorded by an earlier run, or the medoid subject, prepared first), prepare every
subject not finished with these settings in worker processes, each worker writing its
subject's map, transform and manifest atomically, then write ``exclusions.csv`` and
``prepare.json``. Every option is checked, and ``CHAMBER=MIN:MAX`` volume bounds
parsed, before the first subject is read.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from .. import anatomy
from ..data import geometry
from ..data.totalseg import (
    DEFAULT_VOLUME_BOUNDS_ML,
    MEDOID_SIZE,
    Subject,
    check_options,
    check_subjects,
    exclusions_csv,
    find_label_maps,
    find_subjects,
    finished_manifest,
    medoid,
    parse_volume_bounds,
    prepare_settings,
    prepare_subject,
    subject_job,
    subject_outputs,
    survey_subject,
)
from ..errors import InputError
from ..io import read_json, read_label_map, sha256_file, write_json, write_label_map, write_text
from ..labels import LabelScheme, load_scheme

PathLike = str | os.PathLike


def prepare_totalsegmentator(
    src: PathLike,
    out: PathLike,
    size: int = 128,
    workers: int | None = None,
    reference: PathLike | None = None,
    engine: geometry.Engine = "simpleitk",
    seed: int = 0,
    volume_bounds: Sequence[str] | dict[str, tuple[float, float]] | None = None,
    interpolation: geometry.Interpolation = "linear",
    register_size: int = 48,
    keep_axis: bool = True,
    split: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare a TotalSegmentator dataset as a cohort of model-space label maps (SPEC §2).

    Parameters
    ----------
    src : dataset root (one folder per subject, v1 or v2 layout), or one subject folder.
    out : output folder; gets ``<subject>.nii.gz`` (prepared map), ``<subject>.xfm.json``
        (forward transform), ``<subject>.json`` (manifest) for each kept subject,
        ``<subject>.json`` for each excluded one, ``exclusions.csv`` and ``prepare.json``.
    size : prepared grid (voxel 179.2 / size mm; 128 → 1.4 mm as in the paper).
    workers : processes (default: all cores; 1 runs in this process).
    reference : a prepared map (``size``³, 179.2 mm field of view) to register to;
        default: the medoid subject, the one with the highest mean Dice to the others
        after reorientation and centring, on a 32³ grid.
    engine : registration engine, ``"simpleitk"`` or ``"ants"``.
    seed : passed to engines that sample randomly (the default engine does not).
    volume_bounds : plausible chamber volumes in mL, a mapping chamber → (min, max) or
        ``CHAMBER=MIN:MAX`` strings (:func:`~siblings.data.totalseg.parse_volume_bounds`);
        default :data:`~siblings.data.totalseg.DEFAULT_VOLUME_BOUNDS_ML`.
    interpolation : ``"linear"`` (one-hot + argmax) or ``"nearest"``.
    register_size : grid of the registration (same field of view, coarser).
    keep_axis : put the LV→LA axis back on +z after registration.
    split : keep only subjects of this ``meta.csv`` split.
    progress : show progress bars.

    Re-running with the same settings skips finished subjects (kept or excluded) and
    keeps the recorded reference; changed settings redo everything.

    Returns
    -------
    dict
        ``subjects``, ``prepared``, ``excluded``, ``skipped`` (already finished),
        ``reasons`` (count per kind), ``reference`` and the paths written.
    """
    src, out = Path(src), Path(out)
    bounds = _checked(size, engine, interpolation, workers, register_size, volume_bounds)
    subjects = find_subjects(src, split)
    check_subjects(src, subjects)
    settings = prepare_settings(size, interpolation, engine, register_size, keep_axis, seed, bounds)
    return prepare_subjects(src, out, subjects, settings, bounds, reference, workers, progress)


def _checked(
    size: int,
    engine: str,
    interpolation: str,
    workers: int | None,
    register_size: int,
    volume_bounds: Sequence[str] | dict[str, tuple[float, float]] | None,
) -> dict[str, tuple[float, float]]:
    """Check the options every source shares and return the parsed volume bounds."""
    check_options(size, engine, interpolation)
    if workers is not None and workers < 1:
        raise InputError(f"{{workers}} must be at least 1, got {workers}", arguments=("workers",))
    if register_size < 8:
        raise InputError(
            f"{{register_size}} must be at least 8, got {register_size}",
            arguments=("register_size",),
        )
    if volume_bounds is None:
        return dict(DEFAULT_VOLUME_BOUNDS_ML)
    return volume_bounds if isinstance(volume_bounds, dict) else parse_volume_bounds(volume_bounds)


def prepare_labelmaps(
    src: PathLike,
    out: PathLike,
    labels: str | PathLike | LabelScheme | None = None,
    size: int = 128,
    workers: int | None = None,
    reference: PathLike | None = None,
    engine: geometry.Engine = "simpleitk",
    seed: int = 0,
    volume_bounds: Sequence[str] | dict[str, tuple[float, float]] | None = None,
    interpolation: geometry.Interpolation = "linear",
    register_size: int = 48,
    keep_axis: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare a folder of multi-label maps (one file per subject) as a cohort (SPEC §2).

    The same preparation as :func:`prepare_totalsegmentator` (quality control,
    exclusions, resampling, reorientation, registration to the medoid or ``reference``,
    transforms, resumption) for ``SRC/<subject>.nii.gz`` files whose values follow the
    scheme ``labels`` (:func:`siblings.labels.load_scheme`: ``mmwhs``,
    ``totalsegmentator-heartchambers``, a JSON mapping, an nnU-Net ``dataset.json``;
    default ``siblings``). The scheme is recorded in every manifest and in
    ``prepare.json`` (``settings.labels``); a file holding values the scheme does not map
    is excluded with those values and their voxel counts as its reason.

    Parameters
    ----------
    src : folder of label maps (or one map).
    out, size, workers, reference, engine, seed, volume_bounds, interpolation,
    register_size, keep_axis, progress : as for :func:`prepare_totalsegmentator`.

    Returns
    -------
    dict
        As :func:`prepare_totalsegmentator`.
    """
    src, out = Path(src), Path(out)
    scheme = load_scheme(labels)  # a bad scheme is refused before the bounds are parsed
    bounds = _checked(size, engine, interpolation, workers, register_size, volume_bounds)
    subjects = find_label_maps(src)
    if not subjects:
        raise InputError(f"{src}: holds no label maps (*.nii.gz or *.nii)")
    settings = prepare_settings(size, interpolation, engine, register_size, keep_axis, seed, bounds)
    settings["labels"] = scheme.record()
    return prepare_subjects(src, out, subjects, settings, bounds, reference, workers, progress)


def prepare_subjects(
    src: Path,
    out: Path,
    subjects: list[Subject],
    settings: dict[str, Any],
    bounds: dict[str, tuple[float, float]],
    reference: PathLike | None,
    workers: int | None,
    progress: bool,
) -> dict[str, Any]:
    """The cohort run shared by every source: reference, subjects in workers, summaries."""
    workers = workers or os.cpu_count() or 1
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "prepare.json"
    existed = {s.name for s in subjects if subject_outputs(out, s.name)["manifest"].is_file()}
    ref_info, ref_path, medoid_scores = _reference(
        src, out, subjects, settings, bounds, reference, workers, progress
    )
    write_json(
        summary_path,
        {"source": str(src), "settings": settings, "reference": ref_info, "status": "running"},
    )
    manifests, skipped = _prepare_all(
        out, subjects, settings, bounds, ref_info, ref_path, existed, workers, progress
    )
    rows = sorted((n, m["reason"]) for n, m in manifests.items() if m["status"] != "prepared")
    write_text(out / "exclusions.csv", exclusions_csv(rows))
    kept = sorted(n for n, m in manifests.items() if m["status"] == "prepared")
    reasons = Counter(r.split(":", 1)[0] for _, r in rows)
    summary = {
        "source": str(src),
        "settings": settings,
        "reference": ref_info,
        "medoid_mean_dice": medoid_scores or None,
        "status": "done",
        "subjects": len(subjects),
        "prepared": len(kept),
        "excluded": len(rows),
        "skipped": skipped,
        "reasons": dict(sorted(reasons.items())),
        "kept": kept,
    }
    write_json(summary_path, summary)
    summary["out"] = str(out)
    return summary


def _job(
    subject: Subject,
    out: Path,
    settings: dict,
    bounds: dict,
    reference: dict,
    reference_path: Path | None,
    is_reference: bool,
) -> dict:
    """One subject's work for a worker process (picklable)."""
    return {
        "subject": subject_job(subject),
        "bounds": bounds,
        "settings": settings,
        "out": str(out),
        "reference": reference,
        "reference_path": str(reference_path) if reference_path else None,
        "is_reference": is_reference,
    }


def _reference(
    src: Path,
    out: Path,
    subjects: list[Subject],
    settings: dict,
    bounds: dict,
    reference: PathLike | None,
    workers: int,
    progress: bool,
) -> tuple[dict[str, Any], Path | None, dict[str, float]]:
    """The reference: given, recorded by an earlier run with these settings, or the medoid.

    Returns its record, its prepared map's path and every surveyed subject's mean Dice.
    The medoid's own prepared map (reoriented and centred, not registered) is the
    reference; should the medoid fail its last check, the next best one serves.
    """
    size = settings["size"]
    if reference is not None:
        ref_path = Path(reference)
        read_label_map(ref_path, shape=(size,) * 3, spacing=anatomy.voxel_size_mm(size))
        return (
            {"kind": "file", "file": str(ref_path), "sha256": sha256_file(ref_path)},
            ref_path,
            {},
        )
    by_name = {s.name: s for s in subjects}
    summary_path = out / "prepare.json"
    previous = read_json(summary_path) if summary_path.is_file() else {}
    recorded = previous.get("reference", {}) if previous.get("settings") == settings else {}
    medoid_scores: dict[str, float] = {}
    if recorded.get("kind") == "medoid" and recorded.get("subject") in by_name:
        candidates = [(recorded["subject"], recorded["mean_dice"])]
    else:
        survey = [
            {"subject": subject_job(s), "bounds": bounds, "settings": settings, "out": str(out)}
            for s in subjects
            if finished_manifest(out, s.name, settings, {}) is None
        ]
        coarse: dict[str, np.ndarray] = {}
        for r in _run_jobs(_survey_job, survey, workers, "survey", progress):
            if r["ok"]:
                coarse[r["subject"]] = r["coarse"]
        candidates = []
        if coarse:
            _, medoid_scores = medoid(coarse)
            candidates = sorted(medoid_scores.items(), key=lambda kv: (-kv[1], kv[0]))
    for name, score in candidates:
        info = {"kind": "medoid", "subject": name, "mean_dice": score, "grid": MEDOID_SIZE}
        if finished_manifest(out, name, settings, info) is None:
            m = _prepare_job(_job(by_name[name], out, settings, bounds, info, None, True))
            if m["status"] != "prepared":
                continue
        return info, subject_outputs(out, name)["map"], medoid_scores
    return {"kind": "none", "reason": "no subject passed quality control"}, None, medoid_scores


def _prepare_all(
    out: Path,
    subjects: list[Subject],
    settings: dict,
    bounds: dict,
    ref_info: dict,
    ref_path: Path | None,
    existed: set[str],
    workers: int,
    progress: bool,
) -> tuple[dict[str, dict], int]:
    """Every subject's manifest (finished ones read, the others prepared); the skipped count."""
    manifests: dict[str, dict] = {}
    todo = []
    skipped = 0
    for s in subjects:
        done = finished_manifest(out, s.name, settings, ref_info)
        if done is not None:
            manifests[s.name] = done
            skipped += s.name in existed
        else:
            is_ref = ref_info.get("subject") == s.name
            todo.append(_job(s, out, settings, bounds, ref_info, ref_path, is_ref))
    for m in _run_jobs(_prepare_job, todo, workers, "prepare", progress):
        manifests[m["subject"]] = m
    return manifests, skipped


def _write_manifest(out: Path, manifest: dict) -> None:
    """A subject's manifest; an excluded subject loses any map or transform of a past run."""
    paths = subject_outputs(out, manifest["subject"])
    if manifest["status"] == "excluded":
        for key in ("map", "transform"):  # no stale outputs from an earlier run
            paths[key].unlink(missing_ok=True)
    write_json(paths["manifest"], manifest)


def _survey_job(job: dict) -> dict:
    """Pass 1 in a worker: survey one subject; write the manifest of one failing QC."""
    result = survey_subject(job)
    manifest = result.pop("manifest", None)
    if manifest is not None:
        _write_manifest(Path(job["out"]), manifest)
    return result


def _prepare_job(job: dict) -> dict:
    """Pass 2 in a worker: prepare one subject and write its map, transform and manifest."""
    manifest, prepared, transform = prepare_subject(job)
    if prepared is not None:
        paths = subject_outputs(Path(job["out"]), manifest["subject"])
        try:
            write_label_map(paths["map"], prepared)
            transform.save(paths["transform"])
            manifest.update(
                status="prepared",
                reason="",
                files={"map": paths["map"].name, "transform": paths["transform"].name},
            )
        except Exception as exc:  # report, never drop silently
            manifest.update(
                status="excluded",
                reason=f"error: {type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )
    _write_manifest(Path(job["out"]), manifest)
    return manifest


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Worker processes use one BLAS/OpenMP thread each: the parallelism is across
    subjects, and oversubscribed BLAS threads spin-wait (slower by several times)."""
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_jobs(
    fn: Callable[[dict], dict], jobs: list[dict], workers: int, desc: str, progress: bool
) -> Iterator[dict]:
    from tqdm.auto import tqdm

    """``fn`` of every job, in this process or in ``workers`` spawned processes."""
    bar = tqdm(total=len(jobs), desc=desc, unit="subject", disable=not progress or not jobs)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield fn(job)
                bar.update()
            return
        ctx = multiprocessing.get_context("spawn")
        with (
            _single_threaded_children(),
            ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool,
        ):
            futures = [pool.submit(fn, job) for job in jobs]
            for fut in as_completed(futures):
                yield fut.result()
                bar.update()
    finally:
        bar.close()
