"""Editing runs: from one twin file to N siblings on disk, in both spaces, with a report.

This is what ``siblings edit perturb`` and ``siblings edit local`` do; the maths is in
:mod:`siblings.diffusion.edit` (via :mod:`siblings.models.edits`). One run:

1. resolves the twin (:func:`resolve_twin`): a label map already in the model's space
   is used as is; a label map in any other space and voxel size is prepared as SPEC §2
   says (resampled, reoriented, centred, rigidly registered) and its transform kept; a
   TotalSegmentator subject folder is read (v1 or v2 layout) and prepared the same way;
2. checks every input before anything is computed or written (unknown tissue, ψ
   outside (0, 1], regenerating every tissue, bad counts, an output folder in use);
3. encodes the twin: its posterior mean refined by ``invert_steps`` of inversion (0 =
   the paper), with its round-trip Dice per tissue before and after, and a warning when
   that Dice is below :data:`~siblings.models.edits.OOD_DICE_THRESHOLD` for a tissue
   (out of the model's distribution);
4. makes the siblings in batches (progress bar), measures each (morphology, the 12
   topology checks, Dice against the twin, and kept-tissue Dice for localized edits);
5. writes, into a staging folder renamed onto ``out`` at the end (a failed run leaves
   nothing behind)::

       out/sibling_00000.nii.gz, sibling_00000.json, …   model space + manifest
       out/scanner/sibling_00000.nii.gz, ….json          twin's original grid (if it had one)
       out/twin/twin.nii.gz, twin.json                   the twin in model space, its record
       out/twin/twin.xfm.json                            its transform (if prepared here)
       out/twin/twin_vae_reconstruction.nii.gz           decode(the latent edits start from)
       out/report/report.html, siblings.png, metrics.json, per_map.csv, …
       out/run.json                                      the run: inputs, warnings, time

Example
-------
>>> from siblings.models.ldm import LatentDiffusionModel
>>> from siblings.editing import run_edit
>>> model = LatentDiffusionModel.load()                                    # doctest: +SKIP
>>> run = run_edit(model, "twin.nii.gz", "sibs_psi05", "perturb", psi=0.5, n=8)  # doctest: +SKIP
>>> run.out / "report" / "report.html"                                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import anatomy
from .boxes import bounding_box
from .data import geometry
from .data.twin import Twin, registration_reference, resolve_twin
from .diffusion.edit import regenerated_tissues, start_step
from .diffusion.inversion import DEFAULT_INVERT_STEPS
from .diffusion.keep import KEEP_MODES, KeepMode, compose_exact
from .errors import InputError, OutputExistsError
from .io import (
    LabelMap,
    LabelMapError,
    write_bytes,
    write_json,
    write_label_map,
)
from .manifest import provenance, software_versions
from .metrics.overlap import kept_tissue_dice
from .models.edits import EditResult, encode_twin, inpaint, ood_warning, perturb
from .models.ldm import LatentDiffusionModel

PathLike = str | os.PathLike
Method = Literal["perturb", "local"]
METHOD_NAMES = {"perturb": "perturbational", "local": "localized"}
SIBLING_PREFIX = "sibling"


# ---------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EditSettings:
    """Checked parameters of one run (see :func:`check_settings`)."""

    method: Method
    n: int
    steps: int
    seed: int
    batch: int
    psi: float | None = None
    regenerate: tuple[str, ...] = ()
    dilate: int | None = None
    keep_background: bool = False
    with_myocardium: bool = True
    fresh_noise: bool = False
    keep: KeepMode | None = None  # localized editing: "exact" or "latent"
    invert_steps: int = DEFAULT_INVERT_STEPS  # 0 = the paper's posterior mean

    def kept_labels(self) -> list[int]:
        """Labels a localized edit keeps (the background too with ``keep_background``)."""
        kept = [anatomy.LABELS[t] for t in anatomy.TISSUES if t not in self.regenerate]
        return kept + ([0] if self.keep_background else [])


def check_settings(
    method: str,
    *,
    n: int,
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
) -> EditSettings:
    """Validate a run's parameters; ``ValueError`` with a clear message otherwise.

    Catches: an unknown method or tissue name, ψ outside (0, 1], a localized edit that
    regenerates every tissue (that is unconditional sampling), counts below 1, a
    negative dilation or number of inversion steps, an unknown keep mode.
    """
    if method not in METHOD_NAMES:
        raise InputError(
            f"unknown editing {{method}} {method!r}; use 'perturb' or 'local'",
            arguments=("method",),
        )
    if int(invert_steps) < 0:
        raise InputError(
            f"{{invert_steps}} must be 0 or more, got {invert_steps}", arguments=("invert_steps",)
        )
    for name, value in (("n", n), ("steps", steps), ("batch", batch)):
        if int(value) < 1:
            raise InputError(f"{{{name}}} must be at least 1, got {value}", arguments=(name,))
    regen: tuple[str, ...] = ()
    if method == "perturb":
        if psi is None:
            raise InputError("perturbational editing needs {psi} in (0, 1]", arguments=("psi",))
        try:
            start_step(float(psi), int(steps))
        except ValueError as exc:
            raise InputError(f"{{psi}}: {exc}", arguments=("psi",)) from None
    else:
        if not regenerate:
            raise InputError(
                "localized editing needs {regenerate} TISSUE (e.g. LV, or LV,RV)",
                arguments=("regenerate",),
            )
        names: list[str] = []
        for item in [regenerate] if isinstance(regenerate, str) else regenerate:
            names += [s.strip() for s in str(item).split(",") if s.strip()]
        try:
            regen = tuple(sorted(regenerated_tissues(names, with_myocardium)))
        except InputError:
            raise
        except ValueError as exc:  # an unknown tissue name (anatomy's own error)
            raise InputError(str(exc)) from None
        if dilate is not None and int(dilate) < 0:
            raise InputError(f"{{dilate}} must be 0 or more, got {dilate}", arguments=("dilate",))
        if keep not in KEEP_MODES:
            raise InputError(
                f"{{keep}} must be 'exact' or 'latent', got {keep!r}", arguments=("keep",)
            )
    return EditSettings(
        method=method,  # type: ignore[arg-type]
        n=int(n),
        steps=int(steps),
        seed=int(seed),
        batch=int(batch),
        psi=None if psi is None or method != "perturb" else float(psi),
        regenerate=regen,
        dilate=None if dilate is None else int(dilate),
        keep_background=bool(keep_background),
        with_myocardium=bool(with_myocardium),
        fresh_noise=bool(fresh_noise),
        keep=keep if method == "local" else None,  # type: ignore[arg-type]
        invert_steps=int(invert_steps),
    )


# ---------------------------------------------------------------------------------
# Staging folder: everything is written there, then renamed onto ``out``.
# ---------------------------------------------------------------------------------
def check_output(out: PathLike, overwrite: bool = False) -> Path:
    """Refuse an output path that is a file, or a non-empty folder unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out}: folder exists and is not empty; choose a new folder or set {{overwrite}}",
            arguments=("overwrite",),
        )
    return out


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out``; renamed onto ``out`` on success, removed on error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.part-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        yield stage
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            os.replace(out, old)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------------------------
# A run.
# ---------------------------------------------------------------------------------
@dataclass
class EditRun:
    """What a run wrote and measured."""

    out: Path
    twin: Twin
    result: EditResult
    siblings: list[Path]
    scanner: list[Path]
    metrics: dict
    warnings: list[str]
    seconds: float


def _method_fields(settings: EditSettings, result: EditResult) -> dict[str, Any]:
    p = result.params
    if settings.method == "perturb":
        return {
            "psi": p["psi"],
            "start_step": p["start_step"],
            "recomputed_steps": p["recomputed_steps"],
            "sigma_start": p["sigma_start"],
        }
    keep = result.keep_mask
    assert keep is not None
    return {
        "regenerate": p["regenerate"],
        "kept": list(result.kept),
        "keep": settings.keep,
        "keep_background": p["keep_background"],
        "myocardium_with_ventricles": settings.with_myocardium,
        "dilate": p["dilate"],
        "fresh_noise": p["fresh_noise"],
        "keep_mask": {
            "grid": list(keep.shape),
            "kept_latent_fraction": p["kept_latent_fraction"],
            "sha256": hashlib.sha256(np.packbits(keep).tobytes()).hexdigest(),
        },
    }


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
) -> EditRun:
    """Make ``n`` siblings of ``twin`` and write them, their manifests and a report.

    Parameters
    ----------
    model : the latent diffusion model (:meth:`LatentDiffusionModel.load`).
    twin : a twin file or TotalSegmentator subject folder (see :func:`resolve_twin`), or
        a resolved :class:`Twin`.
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

    Warnings (``UserWarning``, also in ``run.json``'s ``warnings``) name the tissues a
    twin lacks, and the tissues its round trip does not reconstruct (out of the model's
    distribution), one line each. Every input is checked
    before the first sibling is computed; files appear in ``out`` only when the whole
    run has succeeded.
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
    out = check_output(out, overwrite)
    size = model.preset.size
    if not isinstance(twin, Twin):
        twin = resolve_twin(
            twin, size, register_to=register_to, interpolation=interpolation, progress=progress
        )
    if twin.label_map.shape != (size,) * 3:
        raise LabelMapError(twin.source, f"twin is not on the model's {size}³ grid")
    ref_summary = None
    if reference is not None:
        from .metrics.cohort import Grid, summarise_folder

        grid = Grid.of(LabelMap(twin.label_map.data, model.affine))
        ref_summary = summarise_folder(reference, grid=grid, workers=1)
    run_warnings: list[str] = []
    missing = twin.missing_tissues()
    if missing:
        msg = (
            f"twin {twin.source} has no {', '.join(missing)} (missing "
            f"{'tissue' if len(missing) == 1 else 'tissues'}); its siblings are edited around "
            "the gap and their morphology and checks will show it"
        )
        run_warnings.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)

    # The latent the edits start from, and whether the model reconstructs this twin.
    arr = twin.label_map.data
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="twin has no")  # reported above
        encoding = encode_twin(model, arr, settings.invert_steps)
    msg = ood_warning({str(twin.source): encoding})
    if msg:
        run_warnings.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)

    # Siblings, in memory (the model-space maps are small: 60 × 64³ bytes = 16 MB).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="twin has no")  # reported above
        if settings.method == "perturb":
            assert settings.psi is not None
            result = perturb(
                model,
                arr,
                settings.psi,
                settings.n,
                settings.steps,
                settings.seed,
                batch=settings.batch,
                progress=progress,
                encoding=encoding,
            )
        else:
            result = inpaint(
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
            )
    reconstruction = encoding.reconstruction
    run = _write_run(
        model,
        twin,
        out,
        settings,
        result,
        reconstruction,
        ref_summary,
        reference,
        n_boot=n_boot,
        figure_siblings=figure_siblings,
        warnings_=run_warnings,
        t0=t0,
        progress=progress,
    )
    return run


def _write_run(
    model: LatentDiffusionModel,
    twin: Twin,
    out: Path,
    settings: EditSettings,
    result: EditResult,
    reconstruction: np.ndarray,
    ref_summary,
    reference: PathLike | None,
    *,
    n_boot: int,
    figure_siblings: int,
    warnings_: list[str],
    t0: float,
    progress: bool,
) -> EditRun:
    from tqdm.auto import tqdm

    from .metrics.cohort import HEADLINE_KEYS, evaluate_maps, summarise_maps
    from .metrics.morphology import morphology
    from .metrics.topology import topology_checks
    from .metrics.twin import dice_table, twin_metrics
    from .report.editing import edit_report_html, siblings_figure, twin_figures
    from .report.evaluation import write_evaluation
    from .report.plots import figure_png

    method = METHOD_NAMES[settings.method]
    arr = twin.label_map.data
    affine = model.affine
    names = [f"{SIBLING_PREFIX}_{i:05d}" for i in result.indices]
    dice = dice_table(arr, result.labels)
    recon_dice = dice_table(arr, [reconstruction])[0]
    assert result.encoding is not None
    encoding = result.encoding.to_dict()
    twin_entry = twin.describe()
    method_fields = _method_fields(settings, result)
    sib_paths: list[Path] = []
    scan_paths: list[Path] = []
    scanner_kept_dice: list[dict[str, float]] = []
    with staging(out) as stage:
        # Model-space siblings and their manifests.
        bar = tqdm(
            total=len(names) * (2 if twin.in_other_space else 1),
            desc="write",
            unit="map",
            disable=not progress,
        )
        for k, (name, lab) in enumerate(zip(names, result.labels, strict=True)):
            lm = LabelMap(lab, affine)
            write_label_map(stage / f"{name}.nii.gz", lm)
            checks = topology_checks(lab)
            manifest = provenance(
                model,
                method,
                twin=twin_entry,
                seed=settings.seed,
                index=result.indices[k],
                steps=settings.steps,
                **method_fields,
                encoding=encoding,
                morphology=morphology(lm),
                topology=checks,
                topology_violations=[c for c, v in checks.items() if v],
                dice_vs_twin=dice[k],
                **({"kept_dice": result.kept_dice[k]} if result.kept_dice else {}),
                **(
                    {
                        "kept_dice_decoded": result.decoded_kept_dice[k],
                        "seam": result.seams[k],
                    }
                    if result.seams
                    else {}
                ),
                files={
                    "model_space": f"{name}.nii.gz",
                    "scanner": f"scanner/{name}.nii.gz" if twin.in_other_space else None,
                },
            )
            write_json(stage / f"{name}.json", manifest)
            sib_paths.append(out / f"{name}.nii.gz")
            bar.update(1)
        # The same siblings on the twin's original grid.
        if twin.in_other_space:
            assert twin.transform is not None
            xfm = twin.transform.to_dict()
            for name, lab in zip(names, result.labels, strict=True):
                back, record = scanner_sibling(lab, twin, settings, kept=result.kept)
                write_label_map(stage / "scanner" / f"{name}.nii.gz", back)
                if "kept_dice" in record:
                    scanner_kept_dice.append(record["kept_dice"])
                write_json(
                    stage / "scanner" / f"{name}.json",
                    {
                        "method": "unprepare",
                        "sibling": f"../{name}.nii.gz",
                        "sibling_manifest": f"../{name}.json",
                        "twin": twin_entry,
                        "transform": "../twin/twin.xfm.json",
                        "interpolation": "linear",
                        **record,
                        "grid": {
                            "shape": list(back.shape),
                            "affine": back.affine.tolist(),
                            "xform_codes": list(back.xform_codes or (2, 2)),
                        },
                        "transform_matrix": xfm["matrix"],
                    },
                )
                scan_paths.append(out / "scanner" / f"{name}.nii.gz")
                bar.update(1)
        bar.close()
        # The twin.
        write_label_map(stage / "twin" / "twin.nii.gz", LabelMap(arr, affine))
        write_label_map(
            stage / "twin" / "twin_vae_reconstruction.nii.gz", LabelMap(reconstruction, affine)
        )
        if twin.transform is not None:
            twin.transform.save(stage / "twin" / "twin.xfm.json")
        twin_checks = topology_checks(arr)
        write_json(
            stage / "twin" / "twin.json",
            {
                **twin_entry,
                "missing_tissues": twin.missing_tissues(),
                "morphology": morphology(LabelMap(arr, affine)),
                "topology": twin_checks,
                "topology_violations": [c for c, v in twin_checks.items() if v],
                "vae_reconstruction_dice": recon_dice,
                "encoding": encoding,
                **twin.record,
            },
        )
        # Report.
        sib_summary = summarise_maps(
            [LabelMap(x, affine) for x in result.labels], names=[f"{m}.nii.gz" for m in names]
        )
        twin_summary = summarise_maps([LabelMap(arr, affine)], names=["twin.nii.gz"])
        metrics = twin_metrics(
            sib_summary,
            twin_summary,
            dice=dice,
            kept_dice=result.kept_dice,
            reconstruction_dice=recon_dice,
            dice_vs_reconstruction=dice_table(reconstruction, result.labels),
            n_boot=n_boot,
            seed=settings.seed,
        )
        metrics["encoding"] = encoding
        if settings.method == "local":
            metrics["keep"] = settings.keep
            if result.decoded_kept_dice:  # what eq. 5 alone kept, before composition
                metrics["kept_dice_decoded"] = _dice_summary(result.decoded_kept_dice)
            if scanner_kept_dice:
                metrics["kept_dice_scanner"] = _dice_summary(scanner_kept_dice)
        if ref_summary is not None:
            ev = evaluate_maps(sib_summary, ref_summary, n_boot=n_boot, seed=settings.seed)
            ev.metrics["cohort_dir"] = f"{out} (siblings)"
            ev.metrics["reference_dir"] = str(reference)
            write_evaluation(
                ev, stage / "report" / "reference", title="siblings against a reference cohort"
            )
            metrics["against_reference"] = {key: ev.metrics.get(key) for key in HEADLINE_KEYS}
            metrics["against_reference"]["reference_dir"] = str(reference)
        shown = list(range(min(figure_siblings, len(names))))
        label = (
            f"ψ = {settings.psi:g}"
            if settings.method == "perturb"
            else f"regenerate {', '.join(settings.regenerate)}"
        )
        figures = {
            "siblings.png": figure_png(
                siblings_figure(
                    arr,
                    [result.labels[i] for i in shown],
                    [f"sibling {result.indices[i]}" for i in shown],
                    title=f"{method} editing, {label}",
                ),
                dpi=110,
            ),
            **twin_figures(sib_summary, twin_summary, metrics),
        }
        seconds = time.perf_counter() - t0
        run_record = {
            "method": method,
            "parameters": {
                "n": settings.n,
                "steps": settings.steps,
                "seed": settings.seed,
                "batch": settings.batch,
                "invert_steps": settings.invert_steps,
                **method_fields,
                **({"kept": list(result.kept)} if settings.method == "local" else {}),
            },
            "twin": {**twin_entry, **twin.record},
            "encoding": encoding,
            "model": provenance(model, method)["model"],
            "outputs": {
                "siblings": [f"{m}.nii.gz" for m in names],
                "scanner": [f"scanner/{m}.nii.gz" for m in names] if twin.in_other_space else [],
                "report": "report/report.html",
            },
            "warnings": warnings_,
            "software": software_versions(),
            "seconds": round(seconds, 2),
        }
        page = edit_report_html(metrics, figures, run_record, sib_summary)
        for fname, data in figures.items():
            write_bytes(stage / "report" / fname, data)
        write_bytes(stage / "report" / "per_map.csv", sib_summary.per_map_csv().encode())
        write_bytes(stage / "report" / "twin_per_map.csv", twin_summary.per_map_csv().encode())
        write_json(stage / "report" / "metrics.json", metrics)
        write_bytes(stage / "report" / "report.html", page.encode())
        write_json(stage / "run.json", run_record)
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


def scanner_sibling(
    sibling: np.ndarray, twin: Twin, settings: EditSettings, kept: Iterable[str] = ()
) -> tuple[LabelMap, dict[str, Any]]:
    """A model-space sibling on the twin's original grid, and its record.

    The sibling is resampled back (:func:`siblings.data.geometry.unprepare`, with the
    twin's qform/sform codes). For a localized edit with exact keep it is then composed
    again (:func:`siblings.diffusion.keep.compose_exact`) with the twin's *original*
    map on that grid, so its kept tissues are the twin's own scanner voxels, not a
    resampled copy of them. The record holds the keep mode, the seam counts and the
    kept-tissue Dice against the original twin.
    """
    assert twin.transform is not None and twin.original is not None
    back = geometry.unprepare(LabelMap(sibling, twin.label_map.affine), twin.transform)
    if settings.method != "local":
        return back, {}
    record: dict[str, Any] = {"keep": settings.keep}
    original = np.asarray(twin.original.data)
    if settings.keep == "exact":
        composed = compose_exact(original, back.data, settings.kept_labels())
        back = LabelMap(composed.labels, back.affine, xform_codes=back.xform_codes)
        record["seam"] = composed.record()
    box = bounding_box(original, back.data)  # Dice needs nothing outside it
    record["kept_dice"] = (
        {t: 1.0 for t in kept}  # both maps are all background (an empty twin)
        if box is None
        else kept_tissue_dice(original[box], np.asarray(back.data)[box], kept)
    )
    return back, record


def _dice_summary(per_sibling: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, min and max over the siblings of each tissue's Dice."""
    return {
        t: {
            "mean": float(np.mean([d[t] for d in per_sibling])),
            "min": float(np.min([d[t] for d in per_sibling])),
            "max": float(np.max([d[t] for d in per_sibling])),
        }
        for t in per_sibling[0]
    }


def format_run(run: EditRun) -> str:
    """A few lines for the terminal: where things are, TV%, Dice of kept tissues."""
    m = run.metrics
    lines = [
        f"wrote {len(run.siblings)} siblings of {run.twin.source} to {run.out}",
    ]
    if run.scanner:
        lines.append(
            f"  on the twin's original grid: {run.out / 'scanner'} ({len(run.scanner)} maps)"
        )
    lines.append(f"  TV% siblings {m['tv_percent']:.2f} (twin {m['reference']['tv_percent']:.2f})")
    if m.get("kept_dice"):
        kd = ", ".join(f"{t} {s['mean']:.3f}" for t, s in m["kept_dice"].items())
        lines.append(f"  kept-tissue Dice vs twin (mean, keep {m.get('keep', 'latent')}): {kd}")
        if m.get("kept_dice_scanner"):
            kd = ", ".join(f"{t} {s['mean']:.3f}" for t, s in m["kept_dice_scanner"].items())
            lines.append(f"  the same on the twin's original grid: {kd}")
        if m.get("kept_dice_decoded"):
            kd = ", ".join(f"{t} {s['mean']:.3f}" for t, s in m["kept_dice_decoded"].items())
            lines.append(f"  before composition (the decoded maps, eq. 5 alone): {kd}")
        rd = m.get("vae_reconstruction_dice", {})
        lines.append(
            "  twin's own VAE reconstruction Dice: "
            + ", ".join(f"{t} {rd[t]:.3f}" for t in m["kept_dice"] if t in rd)
        )
        vr = m.get("dice_vs_vae_reconstruction", {})
        lines.append(
            "  kept-tissue Dice vs that reconstruction (mean): "
            + ", ".join(f"{t} {vr[t]['mean']:.3f}" for t in m["kept_dice"] if t in vr)
        )
    lines.append(f"  report: {run.out / 'report' / 'report.html'}")
    return "\n".join(lines)


__all__ = [
    "EditRun",
    "EditSettings",
    "Twin",
    "check_output",
    "check_settings",
    "format_run",
    "registration_reference",
    "resolve_twin",
    "run_edit",
]
