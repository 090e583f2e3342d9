"""The ``edit`` pipeline: digital siblings of one twin, written with a report (SPEC §4).

:func:`run_edit` takes the edit's settings checked once by
:func:`siblings.editing.check_settings` and, nothing written before the last step:
checks the run's other arguments and the output folder, then loads the model (a loaded
model or a loader); resolves the twin onto the model grid
(:func:`siblings.data.twin.resolve_twin`) and the optional reference cohort; encodes the
twin and makes the siblings in memory (:mod:`siblings.models.edits`); writes the
siblings, their manifests, the twin and the report into a staging folder renamed onto
``out`` (:func:`siblings.pipelines.staging.staging`). The records are built by
:mod:`siblings.editing`; this module only reads, composes and writes.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..data import geometry
from ..data.twin import Twin, check_truncation, resolve_twin
from ..editing import (
    EditRecords,
    EditRun,
    EditSettings,
    edit_records,
    missing_tissue_warning,
    report_figures,
    run_metrics,
    run_record,
    scanner_manifest,
    scanner_sibling,
    sibling_manifest,
    twin_panel_axes,
    twin_record,
)
from ..errors import InputError, MissingTissueWarning
from ..io import (
    LabelMap,
    LabelMapError,
    centred_affine,
    read_label_map,
    write_bytes,
    write_json,
    write_label_map,
)
from ..labels import LabelScheme, load_scheme
from ..mesh.volume import DEFAULT_EDGE_MM, check_edge
from ..metrics.condition import parse_condition
from ..models.edits import EditResult, TwinEncoding, encode_twin, inpaint, ood_warning, perturb
from ..models.guided import DEFAULT_GUIDANCE_SCALE, Guidance, load_guidance, parse_hold
from ..models.ldm import LatentDiffusionModel
from ..repair import DEFAULT_MAX_GAP, check_max_gap, repair_topology
from .inputs import ModelSource, resolve_model
from .repair import repair_records, summarise_repairs
from .staging import check_output, staging

PathLike = str | os.PathLike


def run_edit(
    model: ModelSource,
    twin: PathLike | Twin,
    out: PathLike,
    settings: EditSettings,
    *,
    register_to: PathLike | Literal["phantom", "none"] | None = "phantom",
    interpolation: geometry.Interpolation = "linear",
    reference: PathLike | None = None,
    n_boot: int = 1000,
    figure_siblings: int = 5,
    overwrite: bool = False,
    progress: bool = True,
    encoding: TwinEncoding | None = None,
    repair: bool = False,
    max_gap: int = DEFAULT_MAX_GAP,
    labels: str | PathLike | LabelScheme | None = None,
    allow_truncated: bool = False,
    export: str | None = None,
    export_edge_mm: float = DEFAULT_EDGE_MM,
    target: str | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    regressor: PathLike | None = None,
    hold: str | None = None,
) -> EditRun:
    """Make the siblings of ``twin`` that ``settings`` asks for; write them, their manifests
    and a report.

    Parameters
    ----------
    model : the latent diffusion model (:meth:`LatentDiffusionModel.load`), or a function
        loading it, called once the other arguments and the output folder are checked.
    twin : a twin file or TotalSegmentator subject folder
        (:func:`siblings.data.twin.resolve_twin`), or a resolved :class:`Twin`.
    out : output folder (must not exist or be empty, unless ``overwrite``).
    settings : the edit, checked once by :func:`siblings.editing.check_settings`: the
        method (``"perturb"`` with ψ, ``"local"`` with the tissues to regenerate, its keep
        mode and mask options), ``n``, ``steps``, ``seed`` and ``batch`` (sibling ``i``
        depends only on the twin, the method's parameters, the seed and ``i``), and
        ``invert_steps``: the twin's latent is its posterior mean refined by this many
        steps of inversion (:func:`siblings.models.edits.encode_twin`; 0 = the paper's
        posterior mean). Its round-trip Dice per tissue before and after is in
        ``run.json``, every manifest and the report; below
        :data:`~siblings.models.edits.OOD_DICE_THRESHOLD` for any tissue, the run warns
        that the twin is out of the model's distribution. With ``keep="exact"`` (local,
        the default) every sibling is composed with the twin in label space
        (:func:`siblings.diffusion.keep.compose_exact`), on the model grid and again on
        the twin's own grid with its original voxels.
    register_to, interpolation : preparation of a twin from another space.
    reference : optional folder of real maps on the model grid: the siblings are also
        evaluated against it (FD, precision, recall), in ``out/report/reference/``.
    n_boot : bootstrap resamples for the report's intervals.
    figure_siblings : siblings shown beside the twin in ``report/siblings.png``.
    overwrite : replace an existing non-empty ``out``.
    progress : progress bar.
    encoding : this twin's encoding from an earlier run with the same ``invert_steps``
        (``EditRun.result.encoding``), so that a second edit of one resolved twin
        (``EditRun.twin``) neither prepares nor inverts it again; by default it is
        encoded here.
    repair, max_gap : repair every sibling's topology before it is written and measured
        (:func:`siblings.repair.repair_topology`); each manifest records its repair
        (checks before and after, voxels changed per label) under ``repair``, and
        ``run.json`` the run's figures. Kept-tissue Dice is measured before the repair,
        which may relabel kept voxels too (the manifest says which). With another space,
        each sibling is repaired again on the twin's grid, where resampling can leave
        specks.
    labels : the twin file's label scheme (:func:`siblings.labels.load_scheme`; default
        ``siblings``), recorded in every manifest.
    allow_truncated : edit a twin whose chambers or myocardium its scan cuts (refused by
        default, with the reason ``prepare`` gives; checked before the model loads).
    export, export_edge_mm : also export every sibling as surfaces or a tetrahedral mesh
        (``stl``, ``obj``, ``vtp``, ``vtu``, ``msh``; :func:`siblings.pipelines.export.
        export_into`) into ``out/mesh/NAME/`` (and ``out/scanner/mesh/NAME/`` for the
        siblings on the twin's own grid); each manifest records the files.
    target, guidance_scale, regressor, hold : guided editing: steer the siblings towards a
        morphology ``target`` in the condition language (``"RV_volume_ml = 130 ± 5"``,
        ``"LV_volume_ml > 1.2*twin"``) with classifier guidance of scale
        ``guidance_scale`` by the morphology regressor (default the checkpoint's;
        :func:`siblings.models.guided.load_guidance`). The target, scale and regressor
        hash go into every manifest; the share of siblings within the target into
        ``run.json`` (``target``), with a warning when under half. ``hold``: features the
        guidance must not move (:func:`siblings.models.guided.parse_hold`).

    Returns
    -------
    EditRun
        What was written and measured (:func:`siblings.editing.format_run` prints it).

    Warnings (``UserWarning``, also in ``run.json``'s ``warnings``) name the tissues a
    twin lacks, and the tissues its round trip does not reconstruct (out of the model's
    distribution), one line each. The settings, the counts, the output folder, the twin
    file (read with its scheme, checked for truncation), the export format and the target
    are checked before the model is loaded, the reference before the first sibling is
    computed; files appear in ``out`` only when the whole run has succeeded.

    Example
    -------
    >>> from siblings.editing import check_settings
    >>> settings = check_settings("local", n=4, regenerate="LV")
    >>> run_edit(model, "twin.nii.gz", "sibs", settings)  # doctest: +SKIP
    """
    if n_boot < 0:
        raise InputError(f"{{n_boot}} must be 0 or more, got {n_boot}", arguments=("n_boot",))
    if figure_siblings < 1:
        raise InputError(
            f"{{figure_siblings}} must be at least 1, got {figure_siblings}",
            arguments=("figure_siblings",),
        )
    check_max_gap(max_gap)
    if encoding is not None and encoding.invert_steps != settings.invert_steps:
        raise InputError(
            f"the encoding given was made with {encoding.invert_steps} inversion steps, "
            f"not {{invert_steps}} = {settings.invert_steps}",
            arguments=("invert_steps",),
        )
    out = check_output(out, overwrite)
    scheme = load_scheme(labels)
    if not isinstance(twin, Twin):
        _check_twin_file(twin, scheme, allow_truncated)
    export = _check_export(export, export_edge_mm)
    if target is not None:  # a bad target is refused before the model loads
        parse_hold(hold, parse_condition(target))
    elif hold:
        raise InputError("{hold} needs a {target}", arguments=("hold", "target"))
    model = resolve_model(model)
    t0 = time.perf_counter()
    guidance = (
        None if target is None else load_guidance(model, target, guidance_scale, regressor, hold)
    )
    twin = _resolve(model, twin, register_to, interpolation, progress, scheme, allow_truncated)
    ref_summary = _reference_summary(model, twin, reference)
    run_warnings: list[str] = []
    msg = missing_tissue_warning(twin)
    if msg:
        run_warnings.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    if encoding is None:
        encoding = _encode(model, twin, settings)
    msg = ood_warning({str(twin.source): encoding})
    if msg:
        run_warnings.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    result = _make_siblings(model, twin, settings, encoding, progress, guidance)
    if result.target and result.target.get("note"):
        run_warnings.append(result.target["note"])
        warnings.warn(result.target["note"], UserWarning, stacklevel=2)
    repair_log: list[dict[str, Any]] = []
    if repair:
        result.labels, repairs = repair_records(result.labels, max_gap)
        repair_log = [{"max_gap": max_gap, **r.record()} for r in repairs]
    recon = encoding.reconstruction
    run = _Run(
        model, twin, out, settings, result, recon, edit_records(twin, settings, result, recon),
        ref_summary, reference, n_boot, figure_siblings, run_warnings, t0, repair_log, max_gap,
        (export, export_edge_mm),
    )  # fmt: skip
    return _write_run(run, progress)


def _check_export(export: str | None, edge_mm: float) -> str | None:
    """The ``--export`` format (lower case) or None; checked before any work."""
    if export is None:
        return None
    from .export import check_format

    check_edge(edge_mm, "export_edge_mm")
    return check_format(export, "export")


def _check_twin_file(twin: PathLike, scheme: LabelScheme, allow_truncated: bool) -> None:
    """Read a twin file before the model loads: a bad file costs no model load."""
    path = Path(twin)
    if not path.is_file():
        return  # a folder (or nothing) is resolved, and refused, by resolve_twin
    lm = read_label_map(path, labels=scheme)
    if lm.shape[0] == lm.shape[1] == lm.shape[2] and np.allclose(
        lm.affine, centred_affine(lm.shape[0]), atol=1e-3
    ):
        return  # on a model grid
    check_truncation(lm, path, allow_truncated)


def _resolve(
    model: LatentDiffusionModel,
    twin: PathLike | Twin,
    register_to: PathLike | str | None,
    interpolation: geometry.Interpolation,
    progress: bool,
    labels: LabelScheme | None = None,
    allow_truncated: bool = False,
) -> Twin:
    """The twin on the model's grid: read and, from another space, prepared."""
    size = model.preset.size
    if not isinstance(twin, Twin):
        twin = resolve_twin(
            twin,
            size,
            register_to=register_to,
            interpolation=interpolation,
            progress=progress,
            labels=labels,
            allow_truncated=allow_truncated,
        )
    if twin.label_map.shape != (size,) * 3:
        raise LabelMapError(twin.source, f"twin is not on the model's {size}³ grid")
    return twin


def _reference_summary(
    model: LatentDiffusionModel, twin: Twin, reference: PathLike | None
) -> Any | None:
    """The measured reference cohort on the twin's grid (None without ``reference``)."""
    if reference is None:
        return None
    from ..metrics.cohort import Grid, summarise_folder

    grid = Grid.of(LabelMap(twin.label_map.data, model.affine))
    return summarise_folder(reference, grid=grid, workers=1)


def _encode(model: LatentDiffusionModel, twin: Twin, settings: EditSettings) -> TwinEncoding:
    """The latent the edits start from, and whether the model reconstructs this twin."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingTissueWarning)  # reported by run_edit
        return encode_twin(model, twin.label_map.data, settings.invert_steps)


def _make_siblings(
    model: LatentDiffusionModel,
    twin: Twin,
    settings: EditSettings,
    encoding: TwinEncoding,
    progress: bool,
    guidance: Guidance | None = None,
) -> EditResult:
    """The siblings, in memory (the model-space maps are small: 60 × 64³ bytes = 16 MB)."""
    arr = twin.label_map.data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingTissueWarning)  # reported by run_edit
        if settings.method == "perturb":
            assert settings.psi is not None
            return perturb(
                model,
                arr,
                settings.psi,
                settings.n,
                settings.steps,
                settings.seed,
                batch=settings.batch,
                progress=progress,
                encoding=encoding,
                guidance=guidance,
            )
        return inpaint(
            model,
            arr,
            regenerate=settings.regenerate,
            n=settings.n,
            dilate=settings.dilate,
            keep_background=settings.keep_background,
            with_myocardium=settings.with_myocardium,
            fresh_noise=settings.fresh_noise,
            steps=settings.steps,
            seed=settings.seed,
            batch=settings.batch,
            progress=progress,
            keep=settings.keep or "exact",
            encoding=encoding,
            guidance=guidance,
        )


@dataclass
class _Run:
    """One run's inputs and results, as its writers need them."""

    model: LatentDiffusionModel
    twin: Twin
    out: Path
    settings: EditSettings
    result: EditResult
    reconstruction: np.ndarray
    records: EditRecords
    ref_summary: Any | None
    reference: PathLike | None
    n_boot: int
    figure_siblings: int
    warnings: list[str]
    t0: float
    repair_log: list[dict[str, Any]]  # one record per sibling; empty without repair
    max_gap: int
    export: tuple[str | None, float]  # format (None: no export) and volume-mesh edge, mm


def _write_run(run: _Run, progress: bool) -> EditRun:
    """Everything the run writes, through a staging folder renamed onto ``out``."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(run.records.names) * (2 if run.twin.in_other_space else 1),
        desc="write",
        unit="map",
        disable=not progress,
    )
    with staging(run.out) as stage:
        sib_paths = _write_siblings(stage, run, bar)
        scan_paths, scanner_kept_dice = _write_scanner_siblings(stage, run, bar)
        bar.close()
        fmt, edge = run.export
        if fmt is not None:
            from .export import export_into

            export_into(stage, [stage / p.name for p in sib_paths], fmt, edge_mm=edge)
            if scan_paths:
                scanner = stage / "scanner"
                export_into(scanner, [scanner / p.name for p in scan_paths], fmt, edge_mm=edge)
        _write_twin(stage, run)
        metrics, seconds = _write_report(stage, run, scanner_kept_dice)
    return EditRun(
        out=run.out,
        twin=run.twin,
        result=run.result,
        siblings=sib_paths,
        scanner=scan_paths,
        metrics=metrics,
        warnings=run.warnings,
        seconds=seconds,
    )


def _write_siblings(stage: Path, run: _Run, bar: Any) -> list[Path]:
    """Model-space siblings and their manifests (with their repairs, if repaired); their
    final paths under ``out``."""
    model, records, result = run.model, run.records, run.result
    paths = []
    for k, (name, lab) in enumerate(zip(records.names, result.labels, strict=True)):
        write_label_map(stage / f"{name}.nii.gz", LabelMap(lab, model.affine))
        manifest = sibling_manifest(
            model, run.settings, result, records, k, run.twin.in_other_space
        )
        if run.repair_log:
            manifest["repair"] = run.repair_log[k]
        write_json(stage / f"{name}.json", manifest)
        paths.append(run.out / f"{name}.nii.gz")
        bar.update(1)
    return paths


def _write_scanner_siblings(
    stage: Path, run: _Run, bar: Any
) -> tuple[list[Path], list[dict[str, float]]]:
    """The siblings on the twin's original grid, one at a time (scan grids are large).

    When the run repairs (``--repair``) each is repaired again on that grid, where
    resampling can leave specks, and its record holds that repair under ``repair``
    (kept-tissue Dice is measured before it). Returns their final paths and their
    kept-tissue Dice (empty without another space).
    """
    twin, records = run.twin, run.records
    paths: list[Path] = []
    kept_dice: list[dict[str, float]] = []
    if not twin.in_other_space:
        return paths, kept_dice
    for name, lab in zip(records.names, run.result.labels, strict=True):
        back, record = scanner_sibling(lab, twin, run.settings, kept=run.result.kept)
        if run.repair_log:
            rep = repair_topology(back.data, max_gap=run.max_gap)
            back = LabelMap(rep.labels, back.affine, xform_codes=back.xform_codes)
            record = {**record, "repair": {"max_gap": run.max_gap, **rep.record()}}
        write_label_map(stage / "scanner" / f"{name}.nii.gz", back)
        if "kept_dice" in record:
            kept_dice.append(record["kept_dice"])
        write_json(
            stage / "scanner" / f"{name}.json", scanner_manifest(name, twin, records, back, record)
        )
        paths.append(run.out / "scanner" / f"{name}.nii.gz")
        bar.update(1)
    return paths, kept_dice


def _write_twin(stage: Path, run: _Run) -> None:
    """``twin/``: the twin in model space, its VAE reconstruction, transform and record."""
    affine, twin = run.model.affine, run.twin
    write_label_map(stage / "twin" / "twin.nii.gz", LabelMap(twin.label_map.data, affine))
    write_label_map(
        stage / "twin" / "twin_vae_reconstruction.nii.gz", LabelMap(run.reconstruction, affine)
    )
    if twin.transform is not None:
        twin.transform.save(stage / "twin" / "twin.xfm.json")
    write_json(stage / "twin" / "twin.json", twin_record(twin, affine, run.records))


def _write_report(
    stage: Path, run: _Run, scanner_kept_dice: list[dict[str, float]]
) -> tuple[dict[str, Any], float]:
    """``report/`` and ``run.json`` (with the repairs' figures, if repaired); the run's
    metrics and its seconds."""
    from ..metrics.cohort import HEADLINE_KEYS, evaluate_maps, summarise_maps
    from ..report import editing as report
    from .evaluate import write_evaluation

    model, twin, settings, result, records = (
        run.model, run.twin, run.settings, run.result, run.records
    )  # fmt: skip
    affine = model.affine
    sib_summary = summarise_maps(
        [LabelMap(x, affine) for x in result.labels],
        names=[f"{m}.nii.gz" for m in records.names],
    )
    twin_summary = summarise_maps([LabelMap(twin.label_map.data, affine)], names=["twin.nii.gz"])
    metrics = run_metrics(
        sib_summary,
        twin_summary,
        settings,
        result,
        records,
        run.reconstruction,
        scanner_kept_dice,
        run.n_boot,
    )
    axes = twin_panel_axes(twin)
    metrics["grid"]["axes"] = axes.record()
    if run.ref_summary is not None:
        ev = evaluate_maps(sib_summary, run.ref_summary, n_boot=run.n_boot, seed=settings.seed)
        ev.metrics["cohort_dir"] = f"{run.out} (siblings)"
        ev.metrics["reference_dir"] = str(run.reference)
        write_evaluation(
            ev, stage / "report" / "reference", title="siblings against a reference cohort"
        )
        metrics["against_reference"] = {key: ev.metrics.get(key) for key in HEADLINE_KEYS}
        metrics["against_reference"]["reference_dir"] = str(run.reference)
    figures = report_figures(
        twin, settings, result, sib_summary, twin_summary, metrics, run.figure_siblings
    )
    seconds = time.perf_counter() - run.t0
    record = run_record(model, twin, settings, result, records, run.warnings, seconds)
    if run.repair_log:
        record["repair"] = {"max_gap": run.max_gap, **summarise_repairs(run.repair_log)}
    page = report.edit_report_html(
        metrics,
        figures,
        record,
        sib_summary,
        view3d=_view3d(twin, result, records, affine, run.figure_siblings, axes),
    )
    for fname, data in figures.items():
        write_bytes(stage / "report" / fname, data)
    write_bytes(stage / "report" / "per_map.csv", sib_summary.per_map_csv().encode())
    write_bytes(stage / "report" / "twin_per_map.csv", twin_summary.per_map_csv().encode())
    write_json(stage / "report" / "metrics.json", metrics)
    write_bytes(stage / "report" / "report.html", page.encode())
    write_json(stage / "run.json", record)
    return metrics, seconds


def _view3d(
    twin: Twin, result: EditResult, records: EditRecords, affine: np.ndarray, n: int, axes: Any
) -> str:
    """The report's rotatable 3D view: the twin and the first ``n`` siblings.

    With the twin's transform at hand the surfaces are drawn in the patient's scanner
    world, so the first view is really anterior; otherwise in the model grid's world,
    seen along model axis 1 (``axes``: :func:`siblings.editing.twin_panel_axes`).
    """
    from ..report.viewer3d import viewer_html

    maps = [("twin", twin.label_map.data)]
    maps += list(zip(records.names[:n], result.labels[:n], strict=False))
    to_patient = twin.to_patient()
    how = (
        "nets, Taubin-smoothed), seen from the front (anterior) at first; drag to rotate "
        "all of them together, untick a tissue to hide it and see inside."
    )
    if to_patient is not None:
        return viewer_html(
            maps,
            to_patient @ affine,
            caption="The twin and its first siblings as surfaces in the patient's scanner "
            "world mm, through the twin's transform (multi-label surface " + how,
        )
    return viewer_html(
        maps,
        affine,
        start_view="first view",
        caption="The twin and its first siblings as surfaces in the model grid's world mm "
        "(multi-label surface nets, Taubin-smoothed), seen from the + side of model axis 1 "
        "at first (axis 2 up, axis 0 to the left); " + axes.note() + " Drag to rotate all of "
        "them together, untick a tissue to hide it and see inside.",
    )
