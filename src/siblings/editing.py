"""The parts of an editing run that compute: settings, records, metrics, figures (no files).

``siblings edit perturb|local`` is :func:`siblings.pipelines.edit.run_edit`, which reads
the twin, makes its siblings (:mod:`siblings.models.edits`) and writes what this module
builds. This module owns:

- the run's settings and their checks (:class:`EditSettings`, :func:`check_settings`);
- the records written with the siblings, as dicts: each sibling's manifest
  (:func:`sibling_manifest`), a sibling on the twin's original grid and its record
  (:func:`scanner_sibling`, :func:`scanner_manifest`), the twin's record
  (:func:`twin_record`), ``metrics.json`` (:func:`run_metrics`), the report's figures
  (:func:`report_figures`) and ``run.json`` (:func:`run_record`);
- the run's result (:class:`EditRun`) and its lines for the terminal (:func:`format_run`).

The output folder the pipeline writes::

    out/sibling_00000.nii.gz, sibling_00000.json, …   model space + manifest
    out/scanner/sibling_00000.nii.gz, ….json          twin's original grid (if it had one)
    out/twin/twin.nii.gz, twin.json                   the twin in model space, its record
    out/twin/twin.xfm.json                            its transform (if prepared here)
    out/twin/twin_vae_reconstruction.nii.gz           decode(the latent edits start from)
    out/report/report.html, siblings.png, metrics.json, per_map.csv, …
    out/run.json                                      the run: inputs, warnings, time

Example
-------
>>> from siblings.editing import check_settings
>>> check_settings("local", n=8, regenerate="LV").regenerate
('LV', 'Myo')
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
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
from .errors import InputError
from .io import LabelMap
from .manifest import provenance, software_versions
from .metrics.overlap import kept_tissue_dice
from .models.edits import EditResult
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
    """Validate a run's parameters once; :class:`InputError` naming the argument otherwise.

    Catches: an unknown method or tissue name, ψ outside (0, 1], a localized edit that
    regenerates every tissue (that is unconditional sampling), counts below 1, a
    negative dilation or number of inversion steps, an unknown keep mode. The settings
    of the other method are dropped (``psi`` for a localized edit; ``regenerate``,
    ``dilate``, ``keep_background``, ``with_myocardium``, ``fresh_noise`` and ``keep``
    for a perturbational one), so a caller may pass every option it has.
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
    counts = {"n": int(n), "steps": int(steps), "seed": int(seed), "batch": int(batch)}
    if method == "perturb":
        return EditSettings(
            "perturb",
            **counts,
            psi=float(psi),
            invert_steps=int(invert_steps),  # type: ignore[arg-type]
        )
    return EditSettings(
        "local",
        **counts,
        regenerate=regen,
        dilate=None if dilate is None else int(dilate),
        keep_background=bool(keep_background),
        with_myocardium=bool(with_myocardium),
        fresh_noise=bool(fresh_noise),
        keep=keep,  # type: ignore[arg-type]
        invert_steps=int(invert_steps),
    )


# ---------------------------------------------------------------------------------
# A run: what it made, and the records written with it (dicts; nothing is written here).
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


@dataclass(frozen=True)
class EditRecords:
    """What every file of one run shares: names, Dice tables, the twin's and method's entries."""

    names: list[str]
    dice: list[dict[str, float]]
    reconstruction_dice: dict[str, float]
    encoding: dict[str, Any]
    twin_entry: dict[str, Any]
    method_fields: dict[str, Any]


def missing_tissue_warning(twin: Twin) -> str | None:
    """The warning line naming the tissues ``twin`` lacks (None when it has them all)."""
    missing = twin.missing_tissues()
    if not missing:
        return None
    return (
        f"twin {twin.source} has no {', '.join(missing)} (missing "
        f"{'tissue' if len(missing) == 1 else 'tissues'}); its siblings are edited around "
        "the gap and their morphology and checks will show it"
    )


def edit_records(
    twin: Twin, settings: EditSettings, result: EditResult, reconstruction: np.ndarray
) -> EditRecords:
    """The shared parts of a run's records (:class:`EditRecords`)."""
    from .metrics.twin import dice_table

    arr = twin.label_map.data
    assert result.encoding is not None
    return EditRecords(
        names=[f"{SIBLING_PREFIX}_{i:05d}" for i in result.indices],
        dice=dice_table(arr, result.labels),
        reconstruction_dice=dice_table(arr, [reconstruction])[0],
        encoding=result.encoding.to_dict(),
        twin_entry=twin.describe(),
        method_fields=_method_fields(settings, result),
    )


def _method_fields(settings: EditSettings, result: EditResult) -> dict[str, Any]:
    p = result.params
    # Guided edits (issue 17): the target, scale and regressor hash in every record.
    guided = {"guidance": p["guidance"]} if "guidance" in p else {}
    if settings.method == "perturb":
        return {
            "psi": p["psi"],
            "start_step": p["start_step"],
            "recomputed_steps": p["recomputed_steps"],
            "sigma_start": p["sigma_start"],
            **guided,
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
        **guided,
    }


def sibling_manifest(
    model: LatentDiffusionModel,
    settings: EditSettings,
    result: EditResult,
    records: EditRecords,
    k: int,
    in_other_space: bool,
) -> dict[str, Any]:
    """The provenance manifest of sibling ``k`` of ``result`` (``sibling_XXXXX.json``)."""
    from .metrics.morphology import morphology
    from .metrics.topology import topology_checks

    lab, name = result.labels[k], records.names[k]
    checks = topology_checks(lab)
    return provenance(
        model,
        METHOD_NAMES[settings.method],
        twin=records.twin_entry,
        seed=settings.seed,
        index=result.indices[k],
        steps=settings.steps,
        **records.method_fields,
        encoding=records.encoding,
        morphology=morphology(LabelMap(lab, model.affine)),
        topology=checks,
        topology_violations=[c for c, v in checks.items() if v],
        dice_vs_twin=records.dice[k],
        **({"kept_dice": result.kept_dice[k]} if result.kept_dice else {}),
        **(
            {"kept_dice_decoded": result.decoded_kept_dice[k], "seam": result.seams[k]}
            if result.seams
            else {}
        ),
        files={
            "model_space": f"{name}.nii.gz",
            "scanner": f"scanner/{name}.nii.gz" if in_other_space else None,
        },
    )


def scanner_manifest(
    name: str, twin: Twin, records: EditRecords, back: LabelMap, record: dict[str, Any]
) -> dict[str, Any]:
    """The record of sibling ``name`` on the twin's original grid (``scanner/NAME.json``)."""
    assert twin.transform is not None
    return {
        "method": "unprepare",
        "sibling": f"../{name}.nii.gz",
        "sibling_manifest": f"../{name}.json",
        "twin": records.twin_entry,
        "transform": "../twin/twin.xfm.json",
        "interpolation": "linear",
        **record,
        "grid": {
            "shape": list(back.shape),
            "affine": back.affine.tolist(),
            "xform_codes": list(back.xform_codes or (2, 2)),
        },
        "transform_matrix": twin.transform.to_dict()["matrix"],
    }


def twin_record(twin: Twin, affine: np.ndarray, records: EditRecords) -> dict[str, Any]:
    """The twin's record in model space (``twin/twin.json``)."""
    from .metrics.morphology import morphology
    from .metrics.topology import topology_checks

    arr = twin.label_map.data
    checks = topology_checks(arr)
    return {
        **records.twin_entry,
        "missing_tissues": twin.missing_tissues(),
        "morphology": morphology(LabelMap(arr, affine)),
        "topology": checks,
        "topology_violations": [c for c, v in checks.items() if v],
        "vae_reconstruction_dice": records.reconstruction_dice,
        "encoding": records.encoding,
        **twin.record,
    }


def run_metrics(
    sib_summary: Any,
    twin_summary: Any,
    settings: EditSettings,
    result: EditResult,
    records: EditRecords,
    reconstruction: np.ndarray,
    scanner_kept_dice: list[dict[str, float]],
    n_boot: int,
) -> dict[str, Any]:
    """``report/metrics.json`` of a run (without its comparison against a reference)."""
    from .metrics.twin import dice_table, twin_metrics

    metrics = twin_metrics(
        sib_summary,
        twin_summary,
        dice=records.dice,
        kept_dice=result.kept_dice,
        reconstruction_dice=records.reconstruction_dice,
        dice_vs_reconstruction=dice_table(reconstruction, result.labels),
        n_boot=n_boot,
        seed=settings.seed,
    )
    metrics["encoding"] = records.encoding
    if settings.method == "local":
        metrics["keep"] = settings.keep
        if result.decoded_kept_dice:  # what eq. 5 alone kept, before composition
            metrics["kept_dice_decoded"] = _dice_summary(result.decoded_kept_dice)
        if scanner_kept_dice:
            metrics["kept_dice_scanner"] = _dice_summary(scanner_kept_dice)
    return metrics


def twin_panel_axes(twin: Twin) -> Any:
    """What the report's slice panels may say about direction
    (:class:`siblings.report.axes.PanelAxes`): the patient direction nearest each model
    axis, derived through the twin's transform, when it was prepared here from a scan;
    model axes otherwise (a twin read on the model grid, e.g. a ``prepare`` output)."""
    from .report.axes import panel_axes

    lm = twin.label_map
    return panel_axes(lm.shape, lm.affine, to_patient=twin.to_patient())


def report_figures(
    twin: Twin,
    settings: EditSettings,
    result: EditResult,
    sib_summary: Any,
    twin_summary: Any,
    metrics: dict[str, Any],
    figure_siblings: int,
) -> dict[str, bytes]:
    """The report's PNG figures by file name: siblings beside the twin, then the evaluation's
    (slices labelled by :func:`twin_panel_axes`)."""
    from .report.editing import siblings_figure, twin_figures
    from .report.plots import figure_png

    axes = twin_panel_axes(twin)

    shown = list(range(min(figure_siblings, len(result.labels))))
    label = (
        f"ψ = {settings.psi:g}"
        if settings.method == "perturb"
        else f"regenerate {', '.join(settings.regenerate)}"
    )
    return {
        "siblings.png": figure_png(
            siblings_figure(
                twin.label_map.data,
                [result.labels[i] for i in shown],
                [f"sibling {result.indices[i]}" for i in shown],
                orientation=axes,
                title=f"{METHOD_NAMES[settings.method]} editing, {label}",
            ),
            dpi=110,
        ),
        **twin_figures(sib_summary, twin_summary, metrics, orientation=axes),
    }


def run_record(
    model: LatentDiffusionModel,
    twin: Twin,
    settings: EditSettings,
    result: EditResult,
    records: EditRecords,
    warnings_: list[str],
    seconds: float,
) -> dict[str, Any]:
    """``run.json``: the run's inputs, outputs, warnings, software and time."""
    method = METHOD_NAMES[settings.method]
    names = records.names
    return {
        "method": method,
        "parameters": {
            "n": settings.n,
            "steps": settings.steps,
            "seed": settings.seed,
            "batch": settings.batch,
            "invert_steps": settings.invert_steps,
            **records.method_fields,
            **({"kept": list(result.kept)} if settings.method == "local" else {}),
        },
        "twin": {**records.twin_entry, **twin.record},
        "encoding": records.encoding,
        "model": provenance(model, method)["model"],
        "outputs": {
            "siblings": [f"{m}.nii.gz" for m in names],
            "scanner": [f"scanner/{m}.nii.gz" for m in names] if twin.in_other_space else [],
            "report": "report/report.html",
        },
        **({"target": result.target} if result.target else {}),
        "warnings": warnings_,
        "software": software_versions(),
        "seconds": round(seconds, 2),
    }


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
            f"  on the twin's original grid: {run.out / 'scanner'} "
            f"({len(run.scanner)} {'map' if len(run.scanner) == 1 else 'maps'})"
        )
    lines.append(f"  TV% siblings {m['tv_percent']:.2f} (twin {m['reference']['tv_percent']:.2f})")
    target = run.result.target
    if target:
        lines.append(
            f"  target {target['target']}: {target['within']} of {target['n']} siblings within "
            f"({100 * target['share_within']:.0f}%)"
        )
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
    "METHOD_NAMES",
    "EditRecords",
    "EditRun",
    "EditSettings",
    "Twin",
    "check_settings",
    "edit_records",
    "format_run",
    "missing_tissue_warning",
    "registration_reference",
    "report_figures",
    "resolve_twin",
    "run_metrics",
    "run_record",
    "scanner_manifest",
    "scanner_sibling",
    "sibling_manifest",
    "twin_panel_axes",
    "twin_record",
]
