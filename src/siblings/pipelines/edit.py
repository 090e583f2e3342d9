"""The ``edit`` pipeline: digital siblings of one twin, written with a report (SPEC §4).

:func:`run_edit` in four steps, nothing written before the last: check the settings
(:func:`siblings.editing.check_settings`) and the output folder; resolve the twin onto
the model grid (:func:`siblings.data.twin.resolve_twin`) and the optional reference
cohort; encode the twin and make the siblings in memory (:mod:`siblings.models.edits`);
write the siblings, their manifests, the twin and the report into a staging folder
renamed onto ``out`` (:func:`siblings.pipelines.staging.staging`). The records are built
by :mod:`siblings.editing`; this module only reads, composes and writes.
:func:`edit_twin` is the command's entry: it checks every argument before it loads the
model.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..data import geometry
from ..data.twin import Twin, check_truncation, resolve_twin
from ..diffusion.inversion import DEFAULT_INVERT_STEPS
from ..diffusion.keep import KeepMode
from ..editing import (
    EditRecords,
    EditRun,
    EditSettings,
    check_output,
    check_settings,
    edit_records,
    missing_tissue_warning,
    report_figures,
    run_metrics,
    run_record,
    scanner_manifest,
    scanner_sibling,
    sibling_manifest,
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
from ..models.guided import DEFAULT_GUIDANCE_SCALE, Guidance, load_guidance
from ..models.ldm import LatentDiffusionModel
from ..repair import DEFAULT_MAX_GAP, TopologyRepair, check_max_gap, repair_topology
from .inputs import ModelSource, resolve_model
from .repair import repair_records, summarise_repairs
from .staging import staging

PathLike = str | os.PathLike


def run_edit(
    model: LatentDiffusionModel,
    twin: PathLike | Twin,
    out: PathLike,
    method: str,
    *,
    n: int = 60,
    steps: int = 20,
    seed: int = 0,
    batch: int = 8,
    psi: float | None = None,
    regenerate: Iterable[str] | str | None = None,
    dilate: int | None = None,
    keep_background: bool = False,
    with_myocardium: bool = True,
    fresh_noise: bool = False,
    keep: KeepMode = "exact",
    invert_steps: int = DEFAULT_INVERT_STEPS,
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
) -> EditRun:
    """Make ``n`` siblings of ``twin`` and write them, their manifests and a report.

    Parameters
    ----------
    model : the latent diffusion model (:meth:`LatentDiffusionModel.load`).
    twin : a twin file or TotalSegmentator subject folder
        (:func:`siblings.data.twin.resolve_twin`), or a resolved :class:`Twin`.
    out : output folder (must not exist or be empty, unless ``overwrite``).
    method : ``"perturb"`` (needs ``psi``) or ``"local"`` (needs ``regenerate``).
    n, steps, seed, batch : number of siblings, sampler steps, RNG seed, maps per batch.
        Sibling ``i`` depends only on (twin, method parameters, seed, i).
    psi : sampling ratio ψ ∈ (0, 1] of perturbational editing.
    regenerate, dilate, keep_background, with_myocardium, fresh_noise : localized
        editing (:func:`siblings.models.edits.inpaint`).
    keep : localized editing: ``"exact"`` (default) composes every sibling with the twin
        in label space (:func:`siblings.diffusion.keep.compose_exact`), on the model grid
        and again on the twin's own grid with its original voxels, so kept tissues are
        the twin's exactly in both; ``"latent"`` is the paper's eq. 5 alone.
    invert_steps : the twin's latent is its posterior mean refined by this many steps of
        inversion (:func:`siblings.models.edits.encode_twin`; 0 = the paper's posterior
        mean). Its round-trip Dice per tissue before and after is in ``run.json``, every
        manifest and the report; below
        :data:`~siblings.models.edits.OOD_DICE_THRESHOLD` for any tissue, the run warns
        that the twin is out of the model's distribution.
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
        which may relabel kept voxels too (the manifest says which).
    labels : the twin file's label scheme (:func:`siblings.labels.load_scheme`; default
        ``siblings``), recorded in every manifest.
    allow_truncated : edit a twin whose chambers or myocardium its scan cuts (refused by
        default, with the reason ``prepare`` gives).
    export, export_edge_mm : also export every sibling as surfaces or a tetrahedral mesh
        (``stl``, ``obj``, ``vtp``, ``vtu``, ``msh``; :func:`siblings.pipelines.export.
        export_into`) into ``out/mesh/NAME/`` (and ``out/scanner/mesh/NAME/`` for the
        siblings on the twin's own grid); each manifest records the files.
    target, guidance_scale, regressor : guided editing (issue 17): steer the siblings
        towards a morphology ``target`` in the condition language
        (``"RV_volume_ml = 130 ± 5"``, ``"LV_volume_ml > 1.2*twin"``) with classifier
        guidance of scale ``guidance_scale`` by the morphology regressor (default the
        checkpoint's; :func:`siblings.models.guided.load_guidance`). The target, scale
        and regressor hash go into every manifest; the share of siblings within the
        target into ``run.json`` (``target``), with a warning when under half.

    Returns
    -------
    EditRun
        What was written and measured.

    Warnings (``UserWarning``, also in ``run.json``'s ``warnings``) name the tissues a
    twin lacks, and the tissues its round trip does not reconstruct (out of the model's
    distribution), one line each. Every input is checked before the first sibling is
    computed; files appear in ``out`` only when the whole run has succeeded.
    """
    t0 = time.perf_counter()
    settings = check_settings(
        method,
        n=n,
        steps=steps,
        seed=seed,
        batch=batch,
        psi=psi,
        regenerate=regenerate,
        dilate=dilate,
        keep_background=keep_background,
        with_myocardium=with_myocardium,
        fresh_noise=fresh_noise,
        keep=keep,
        invert_steps=invert_steps,
    )
    if n_boot < 0:
        raise InputError(f"{{n_boot}} must be 0 or more, got {n_boot}", arguments=("n_boot",))
    check_max_gap(max_gap)
    out = check_output(out, overwrite)
    export = _check_export(export, export_edge_mm)
    guidance = None if target is None else load_guidance(model, target, guidance_scale, regressor)
    twin = _resolve(model, twin, register_to, interpolation, progress, labels, allow_truncated)
    ref_summary = _reference_summary(model, twin, reference)
    run_warnings: list[str] = []
    msg = missing_tissue_warning(twin)
    if msg:
        run_warnings.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    if encoding is None:
        encoding = _encode(model, twin, settings)
    elif encoding.invert_steps != settings.invert_steps:
        raise InputError(
            f"the encoding given was made with {encoding.invert_steps} inversion steps, "
            f"not {{invert_steps}} = {settings.invert_steps}",
            arguments=("invert_steps",),
        )
    msg = ood_warning({str(twin.source): encoding})
    if msg:
        run_warnings.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    result = _make_siblings(model, twin, settings, encoding, progress, guidance)
    if result.target and result.target.get("note"):
        run_warnings.append(result.target["note"])
        warnings.warn(result.target["note"], UserWarning, stacklevel=2)
    repairs: list[TopologyRepair] = []
    if repair:
        result.labels, repairs = repair_records(result.labels, max_gap)
    return _write_run(
        model,
        twin,
        out,
        settings,
        result,
        encoding.reconstruction,
        ref_summary,
        reference,
        n_boot=n_boot,
        figure_siblings=figure_siblings,
        warnings_=run_warnings,
        t0=t0,
        progress=progress,
        repairs=repairs,
        max_gap=max_gap,
        export=(export, export_edge_mm),
    )


def _check_export(export: str | None, edge_mm: float) -> str | None:
    """The ``--export`` format (lower case) or None; checked before any work."""
    if export is None:
        return None
    from .export import check_format

    check_edge(edge_mm, "export_edge_mm")
    return check_format(export, "export")


def _resolve(
    model: LatentDiffusionModel,
    twin: PathLike | Twin,
    register_to: PathLike | str | None,
    interpolation: geometry.Interpolation,
    progress: bool,
    labels: str | PathLike | LabelScheme | None = None,
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


def _write_run(
    model: LatentDiffusionModel,
    twin: Twin,
    out: Path,
    settings: EditSettings,
    result: EditResult,
    reconstruction: np.ndarray,
    ref_summary: Any | None,
    reference: PathLike | None,
    *,
    n_boot: int,
    figure_siblings: int,
    warnings_: list[str],
    t0: float,
    progress: bool,
    repairs: list[TopologyRepair] | None = None,
    max_gap: int = DEFAULT_MAX_GAP,
    export: tuple[str | None, float] = (None, DEFAULT_EDGE_MM),
) -> EditRun:
    """Everything the run writes, through a staging folder renamed onto ``out``."""
    repair_log = [{"max_gap": max_gap, **r.record()} for r in repairs or []]
    from tqdm.auto import tqdm

    records = edit_records(twin, settings, result, reconstruction)
    bar = tqdm(
        total=len(records.names) * (2 if twin.in_other_space else 1),
        desc="write",
        unit="map",
        disable=not progress,
    )
    with staging(out) as stage:
        sib_paths = _write_siblings(
            stage, out, model, twin, settings, result, records, bar, repair_log
        )
        scan_paths, scanner_kept_dice = _write_scanner_siblings(
            stage, out, twin, settings, result, records, bar, max_gap if repairs else None
        )
        bar.close()
        if export[0] is not None:
            from .export import export_into

            fmt, edge = export
            export_into(stage, [stage / p.name for p in sib_paths], fmt, edge_mm=edge)
            if scan_paths:
                scanner = stage / "scanner"
                export_into(scanner, [scanner / p.name for p in scan_paths], fmt, edge_mm=edge)
        _write_twin(stage, model, twin, reconstruction, records)
        metrics, seconds = _write_report(
            stage,
            out,
            model,
            twin,
            settings,
            result,
            records,
            reconstruction,
            scanner_kept_dice,
            ref_summary,
            reference,
            n_boot=n_boot,
            figure_siblings=figure_siblings,
            warnings_=warnings_,
            t0=t0,
            repair_summary=(
                {"max_gap": max_gap, **summarise_repairs(repair_log)} if repair_log else None
            ),
        )
    return EditRun(
        out=out,
        twin=twin,
        result=result,
        siblings=sib_paths,
        scanner=scan_paths,
        metrics=metrics,
        warnings=warnings_,
        seconds=seconds,
    )


def _write_siblings(
    stage: Path,
    out: Path,
    model: LatentDiffusionModel,
    twin: Twin,
    settings: EditSettings,
    result: EditResult,
    records: EditRecords,
    bar: Any,
    repair_log: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """Model-space siblings and their manifests (with their repairs, if repaired); their
    final paths under ``out``."""
    paths = []
    for k, (name, lab) in enumerate(zip(records.names, result.labels, strict=True)):
        write_label_map(stage / f"{name}.nii.gz", LabelMap(lab, model.affine))
        manifest = sibling_manifest(model, settings, result, records, k, twin.in_other_space)
        if repair_log:
            manifest["repair"] = repair_log[k]
        write_json(stage / f"{name}.json", manifest)
        paths.append(out / f"{name}.nii.gz")
        bar.update(1)
    return paths


def _write_scanner_siblings(
    stage: Path,
    out: Path,
    twin: Twin,
    settings: EditSettings,
    result: EditResult,
    records: EditRecords,
    bar: Any,
    max_gap: int | None = None,
) -> tuple[list[Path], list[dict[str, float]]]:
    """The siblings on the twin's original grid, one at a time (scan grids are large).

    With ``max_gap`` (``--repair``) each is repaired again on that grid, where resampling
    can leave specks, and its record holds that repair under ``repair`` (kept-tissue
    Dice is measured before it). Returns their final paths and their kept-tissue Dice
    (empty without another space).
    """
    paths: list[Path] = []
    kept_dice: list[dict[str, float]] = []
    if not twin.in_other_space:
        return paths, kept_dice
    for name, lab in zip(records.names, result.labels, strict=True):
        back, record = scanner_sibling(lab, twin, settings, kept=result.kept)
        if max_gap is not None:
            rep = repair_topology(back.data, max_gap=max_gap)
            back = LabelMap(rep.labels, back.affine, xform_codes=back.xform_codes)
            record = {**record, "repair": {"max_gap": max_gap, **rep.record()}}
        write_label_map(stage / "scanner" / f"{name}.nii.gz", back)
        if "kept_dice" in record:
            kept_dice.append(record["kept_dice"])
        write_json(
            stage / "scanner" / f"{name}.json", scanner_manifest(name, twin, records, back, record)
        )
        paths.append(out / "scanner" / f"{name}.nii.gz")
        bar.update(1)
    return paths, kept_dice


def _write_twin(
    stage: Path,
    model: LatentDiffusionModel,
    twin: Twin,
    reconstruction: np.ndarray,
    records: EditRecords,
) -> None:
    """``twin/``: the twin in model space, its VAE reconstruction, transform and record."""
    affine = model.affine
    write_label_map(stage / "twin" / "twin.nii.gz", LabelMap(twin.label_map.data, affine))
    write_label_map(
        stage / "twin" / "twin_vae_reconstruction.nii.gz", LabelMap(reconstruction, affine)
    )
    if twin.transform is not None:
        twin.transform.save(stage / "twin" / "twin.xfm.json")
    write_json(stage / "twin" / "twin.json", twin_record(twin, affine, records))


def _write_report(
    stage: Path,
    out: Path,
    model: LatentDiffusionModel,
    twin: Twin,
    settings: EditSettings,
    result: EditResult,
    records: EditRecords,
    reconstruction: np.ndarray,
    scanner_kept_dice: list[dict[str, float]],
    ref_summary: Any | None,
    reference: PathLike | None,
    *,
    n_boot: int,
    figure_siblings: int,
    warnings_: list[str],
    t0: float,
    repair_summary: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], float]:
    """``report/`` and ``run.json`` (with the repairs' figures, if repaired); the run's
    metrics and its seconds."""
    from ..metrics.cohort import HEADLINE_KEYS, evaluate_maps, summarise_maps
    from ..report import editing as report
    from ..report.evaluation import write_evaluation

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
        reconstruction,
        scanner_kept_dice,
        n_boot,
    )
    if ref_summary is not None:
        ev = evaluate_maps(sib_summary, ref_summary, n_boot=n_boot, seed=settings.seed)
        ev.metrics["cohort_dir"] = f"{out} (siblings)"
        ev.metrics["reference_dir"] = str(reference)
        write_evaluation(
            ev, stage / "report" / "reference", title="siblings against a reference cohort"
        )
        metrics["against_reference"] = {key: ev.metrics.get(key) for key in HEADLINE_KEYS}
        metrics["against_reference"]["reference_dir"] = str(reference)
    figures = report_figures(
        twin, settings, result, sib_summary, twin_summary, metrics, figure_siblings
    )
    seconds = time.perf_counter() - t0
    record = run_record(model, twin, settings, result, records, warnings_, seconds)
    if repair_summary is not None:
        record["repair"] = repair_summary
    page = report.edit_report_html(
        metrics,
        figures,
        record,
        sib_summary,
        view3d=_view3d(twin, result, records, affine, figure_siblings),
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
    twin: Twin, result: EditResult, records: EditRecords, affine: np.ndarray, n: int
) -> str:
    """The report's rotatable 3D view: the twin and the first ``n`` siblings."""
    from ..report.viewer3d import viewer_html

    maps = [("twin", twin.label_map.data)]
    maps += list(zip(records.names[:n], result.labels[:n], strict=False))
    return viewer_html(
        maps,
        affine,
        caption="The twin and its first siblings as surfaces in world mm (multi-label surface "
        "nets, Taubin-smoothed), seen from the front (anterior) at first; drag to rotate "
        "all of them together, untick a tissue to hide it and see inside.",
    )


def edit_twin(
    model: ModelSource,
    twin: PathLike,
    out: PathLike,
    method: str,
    *,
    n: int = 60,
    steps: int = 20,
    seed: int = 0,
    batch: int = 8,
    psi: float | None = None,
    regenerate: Iterable[str] | str | None = None,
    dilate: int | None = None,
    keep_background: bool = False,
    with_myocardium: bool = True,
    fresh_noise: bool = False,
    keep: str = "exact",
    invert_steps: int = DEFAULT_INVERT_STEPS,
    register_to: PathLike | str | None = "phantom",
    reference: PathLike | None = None,
    n_boot: int = 1000,
    figure_siblings: int = 5,
    overwrite: bool = False,
    progress: bool = True,
    repair: bool = False,
    max_gap: int = DEFAULT_MAX_GAP,
    labels: str | PathLike | LabelScheme | None = None,
    allow_truncated: bool = False,
    export: str | None = None,
    export_edge_mm: float = DEFAULT_EDGE_MM,
    target: str | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    regressor: PathLike | None = None,
) -> EditRun:
    """``siblings edit perturb|local``: siblings of ``twin`` into ``out``.

    ``model`` is a loaded model or a function loading it, called once every argument, the
    twin file (read with its scheme ``labels``, checked for truncation) and the output
    folder have been checked. The other parameters are those of :func:`run_edit`.
    Returns the run (what :func:`siblings.editing.format_run` prints).
    """
    local = method == "local"
    check_settings(
        method,
        n=n,
        steps=steps,
        seed=seed,
        batch=batch,
        psi=None if local else psi,
        regenerate=regenerate if local else None,
        dilate=dilate if local else None,
        with_myocardium=with_myocardium if local else True,
        keep=keep if local else "exact",
        invert_steps=invert_steps,
    )
    if n_boot < 0:
        raise InputError(f"{{n_boot}} must be 0 or more, got {n_boot}", arguments=("n_boot",))
    if figure_siblings < 1:
        raise InputError(
            f"{{figure_siblings}} must be at least 1, got {figure_siblings}",
            arguments=("figure_siblings",),
        )
    check_max_gap(max_gap)
    check_output(out, overwrite)
    scheme = load_scheme(labels)
    _check_twin_file(twin, scheme, allow_truncated)
    _check_export(export, export_edge_mm)
    if target is not None:  # a bad target is refused before the model loads
        parse_condition(target)
    return run_edit(
        resolve_model(model),
        twin,
        out,
        method,
        n=n,
        steps=steps,
        seed=seed,
        batch=batch,
        psi=None if local else psi,
        regenerate=regenerate if local else None,
        dilate=dilate if local else None,
        keep_background=keep_background if local else False,
        with_myocardium=with_myocardium if local else True,
        fresh_noise=fresh_noise if local else False,
        keep=keep if local else "exact",
        invert_steps=invert_steps,
        register_to=register_to,
        reference=reference,
        n_boot=n_boot,
        figure_siblings=figure_siblings,
        overwrite=overwrite,
        progress=progress,
        repair=repair,
        max_gap=max_gap,
        labels=scheme,
        allow_truncated=allow_truncated,
        export=export,
        export_edge_mm=export_edge_mm,
        target=target,
        guidance_scale=guidance_scale,
        regressor=regressor,
    )


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
