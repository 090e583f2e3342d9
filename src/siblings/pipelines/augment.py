"""The ``augment`` pipeline: a rare subgroup of a cohort grown with generated maps (paper §4.5).

:func:`augment` composes :mod:`siblings.augment` (the strategies, the attempt plan, the
checks and the records) with the files. It takes the run's settings checked once by
:func:`siblings.augment.check_settings`, checks the evaluation's options and the output
folder, then loads the model (a loaded model or a loader); reads the rare twins
(:func:`siblings.data.twin.read_rare_twins`), picks up an interrupted run (``resume``),
encodes the twins once, then attempts batch by batch, judging each map on the written
file and keeping it (map, then manifest) when it meets the condition; last, evaluates
the accepted cohort against the rare twins into ``out/report`` and writes
``augment.json``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import anatomy
from ..augment import (
    OUR_FILE,
    Attempt,
    AugmentResult,
    AugmentSettings,
    AugmentStopped,
    EncodedTwins,
    accepted_manifest,
    attempt_map,
    check_output,
    encode_twins,
    evaluation_skipped,
    generate,
    map_morphology,
    plan_attempt,
    resume_mismatch,
    run_signature,
    run_summary,
    stopped,
)
from ..data.twin import Twin, read_rare_twins
from ..errors import InputError, OutputExistsError
from ..io import LabelMap, read_json, read_label_map, stem, write_json, write_label_map
from ..labels import LabelScheme, load_scheme
from ..mesh.volume import DEFAULT_EDGE_MM, check_edge
from ..metrics.bootstrap import acceptance_rate
from ..metrics.cohort import HEADLINE_KEYS, evaluate_maps, measure_map, summarise_maps
from ..metrics.condition import Condition, parse_condition
from ..models.edits import ood_warning
from ..models.guided import DEFAULT_GUIDANCE_SCALE, load_guidance, parse_hold
from ..models.ldm import LatentDiffusionModel
from ..repair import DEFAULT_MAX_GAP, check_max_gap, repair_topology
from .evaluate import write_evaluation
from .export import check_format, export_into
from .inputs import ModelSource, resolve_model
from .repair import summarise_repairs

PathLike = str | os.PathLike

__all__ = [
    "AugmentResult",
    "AugmentStopped",
    "augment",
    "parse_condition",
    "reusable_samples",
]


def augment(
    model: ModelSource,
    data: PathLike,
    settings: AugmentSettings,
    out: PathLike = "augmented",
    *,
    resume: bool = False,
    evaluate: bool = True,
    k: int = 3,
    n_boot: int = 1000,
    figures: bool = True,
    progress: bool = False,
    reuse: Mapping[int, Path] | None = None,
    repair: bool = False,
    max_gap: int = DEFAULT_MAX_GAP,
    labels: str | PathLike | LabelScheme | None = None,
    export: str | None = None,
    export_edge_mm: float = DEFAULT_EDGE_MM,
    target: str | Condition | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    regressor: PathLike | None = None,
    hold: str | None = None,
) -> AugmentResult:
    """Grow the rare cohort of ``data`` (maps meeting the condition) by ``n`` accepted maps.

    Parameters
    ----------
    model : the latent diffusion model (:meth:`LatentDiffusionModel.load`), or a function
        loading it, called once the other arguments and the output folder are checked.
    data : folder of real label maps on the model's grid; the rare twins are those
        meeting the condition.
    settings : the run, checked once by :func:`siblings.augment.check_settings`:

        - ``where``: condition on the SPEC §7 morphology columns (:func:`parse_condition`);
        - ``strategy``: ``uncond``, ``perturb`` or ``local`` (:mod:`siblings.augment`),
          the sampler of a ``guided`` run (``guided``: True, checked by ``check_settings``
          from ``strategy="guided"`` and ``sampler``);
        - ``n``: number of maps to accept (≥ 1); ``seed``: attempt ``a`` depends only on
          ``(seed, a)``; ``steps``: sampler steps N (default 20); ``batch``: attempts
          generated together (does not change the output);
        - ``max_attempts``: stop after this many attempts (default ``max(1000, 50 n)``);
        - ``psis``: perturb's sampling ratios, cycled over twins and rounds (default 0.5,
          0.35);
        - ``regions``: local's regenerated tissues, one per twin in turn (default LV, RV;
          a region may name several tissues, ``"LV,RV"``); a ventricle also regenerates
          the myocardium (SPEC §4); ``dilate``: local's latent keep-mask dilations
          (default: the preset's); ``keep``: ``"exact"`` (default) composes each decoded
          map with its twin in label space before judging it, ``"latent"`` is eq. 5
          alone (the paper);
        - ``invert_steps``: perturb and local: each rare twin's latent is its posterior
          mean refined by this many steps of inversion
          (:func:`siblings.models.edits.encode_twin`; 0 = the paper's posterior mean).
          Its round-trip Dice before and after is in ``augment.json`` and every manifest;
          twins below :data:`~siblings.models.edits.OOD_DICE_THRESHOLD` for a tissue get
          one ``UserWarning`` line (also in ``augment.json``'s ``warnings``);
        - ``prefix``: file name prefix (default: the strategy).
    out : output folder, new or empty (or, with ``resume``, a previous run's).
    target, guidance_scale, regressor, hold : a guided run's target (default the condition
        itself; absolute numbers only), guidance scale, regressor and the features it
        must not move (:func:`siblings.models.guided.load_guidance`). ``augment.json`` then says
        ``"strategy": "guided"`` with the ``sampler`` and the ``guidance``; the result's
        ``strategy`` is the sampler (its attempts are that sampler's).
    labels : the label scheme of the maps in ``data`` (:func:`siblings.labels.load_scheme`;
        default ``siblings``); recorded in the run's signature (every manifest).
    export, export_edge_mm : also export every accepted map as surfaces or a tetrahedral
        mesh (:func:`siblings.pipelines.export.export_into`).
    resume : continue an interrupted run in ``out`` (same data, condition, strategy,
        seed, steps and model; ``n`` and ``max_attempts`` may grow). The result is the
        same, byte for byte, as an uninterrupted run. A finished run with the same
        ``n`` is returned as it is, without new work.
    evaluate : evaluate the accepted cohort against the rare cohort into ``out/report``
        (skipped, with the reason in ``augment.json``, when either has fewer than k + 1 maps).
    k, n_boot : precision/recall neighbour rank and bootstrap resamples of the evaluation.
    figures : PNG figures in the report.
    progress : show progress bars.
    reuse : ``uncond`` only: attempt index → the file of that same unconditional sample,
        already made (:func:`reusable_samples`: same checkpoint, precision, seed and
        steps). Such attempts are read instead of sampled again; the accepted maps are
        the same bytes either way, and ``augment.json`` records how many were reused.
    repair, max_gap : repair each attempt's topology (:func:`siblings.repair.repair_topology`)
        before it is written and judged; each accepted map's manifest records its repair
        under ``repair`` and ``augment.json`` the accepted cohort's figures. A resumed run
        must repair as the interrupted one did (``repair`` is part of the run's signature).
    export, export_edge_mm : at the end, export every accepted map into ``out/mesh/NAME/``
        (:func:`siblings.pipelines.export.export_into`: ``stl``, ``obj``, ``vtp``, ``vtu``
        or ``msh``); each manifest records the files under ``mesh``.

    Returns
    -------
    AugmentResult

    Raises
    ------
    ValueError (InputError, ConditionError, LabelMapError)
        bad options; an empty data folder, a bad map in it, a map off the model's grid;
        no map meeting the condition. Nothing is written.
    FileExistsError
        ``out`` is not empty (or, with ``resume``, holds another run). Nothing is written.
    AugmentStopped
        ``max_attempts`` reached before ``n`` accepted maps (what was accepted is kept).
    """
    if k < 1:
        raise InputError(f"{{k}} must be at least 1, got {k}", arguments=("k",))
    if n_boot < 0:
        raise InputError(f"{{n_boot}} must be 0 or more, got {n_boot}", arguments=("n_boot",))
    if target is not None and not settings.guided:
        raise InputError(
            "a {target} steers only the guided strategy; use {strategy} guided (and {sampler})",
            arguments=("target", "strategy", "sampler"),
        )
    if hold and not settings.guided:
        raise InputError(
            "{hold} applies to the guided strategy only; use {strategy} guided",
            arguments=("hold", "strategy"),
        )
    if reuse and (settings.strategy != "uncond" or settings.guided):
        raise ValueError("reuse holds unconditional samples: only the uncond strategy uses it")
    check_max_gap(max_gap)
    labels = load_scheme(labels)  # a bad scheme is refused before the model loads
    if export is not None:
        check_edge(export_edge_mm, "export_edge_mm")
        export = check_format(export, "export")
    if settings.guided:  # a bad or relative target is refused before the model loads
        goal = parse_condition(target) if target is not None else settings.condition
        if goal.relative:
            raise InputError(
                f"{{target}} {goal} is relative to a twin; augment needs absolute numbers",
                arguments=("target",),
            )
        parse_hold(hold, goal)
    out = Path(out)
    present = check_output(out, settings.prefix, resume)
    model = resolve_model(model)
    settings = settings.with_dilate(model.preset.inpaint_dilations)
    guidance = None
    if settings.guided:
        guidance = load_guidance(model, goal, guidance_scale, regressor, hold)
    twins = read_rare_twins(
        data,
        model.preset.size,
        model.preset.voxel_mm,
        settings.condition,
        map_morphology,
        grid_name=model.preset.name,
        progress=progress,
        labels=labels,
    )
    signature = run_signature(settings, twins, model)
    if repair:
        signature["repair"] = {"max_gap": max_gap}
    if guidance is not None:
        signature["guidance"] = {"sampler": settings.strategy, **guidance.record()}
    files: list[Path] = []
    attempts: list[int] = []
    if present:
        files, attempts = _resumed(out, settings, signature)
        finished = _finished(out, settings, signature, twins, files, attempts)
        if finished is not None:
            return finished
    encoded = EncodedTwins()
    run_warnings: list[str] = []
    if settings.strategy != "uncond" and len(files) < settings.n:
        encoded = encode_twins(model, twins, settings, progress)
        msg = ood_warning({twins[j].source.name: e for j, e in encoded.encodings.items()})
        if msg:
            run_warnings.append(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
    reused: list[int] = []
    attempted = _attempt(
        model, out, settings, signature, twins, encoded, files, attempts, progress,
        reuse or {}, reused, None if guidance is None else guidance.guide(model.device),
    )  # fmt: skip
    result = AugmentResult(
        out=out,
        strategy=settings.strategy,
        condition=settings.condition,
        seed=settings.seed,
        n=settings.n,
        files=files,
        attempts=attempts,
        attempted=attempted,
        rare_twins=[t.source for t in twins],
        complete=len(files) >= settings.n,
    )
    evaluation = _evaluate(result, twins, data, settings, evaluate=evaluate, k=k, n_boot=n_boot,
                           figures=figures)  # fmt: skip
    result.summary = run_summary(
        result, model, signature, twins, data, evaluation, settings, run_warnings,
        encoded.encodings,
    )  # fmt: skip
    if reuse:
        result.summary["reused_samples"] = {"offered": len(reuse), "read": len(reused)}
    if repair and files:
        logs = [read_json(p.parent / f"{stem(p)}.json")["repair"] for p in files]
        result.summary["repair"] = {"max_gap": max_gap, **summarise_repairs(logs)}
    if export is not None and files:
        export_into(out, files, export, edge_mm=export_edge_mm)
        result.summary["export"] = {"format": export, "edge_mm": export_edge_mm, "folder": "mesh"}
    if guidance is not None:
        result.summary["strategy"] = "guided"
        result.summary["sampler"] = settings.strategy
        result.summary["guidance"] = signature["guidance"]
    write_json(out / "augment.json", result.summary)
    if not result.complete:
        raise stopped(result, settings.max_attempts)
    return result


def reusable_samples(
    folder: PathLike, model: LatentDiffusionModel, seed: int, steps: int
) -> dict[int, Path]:
    """Unconditional samples in ``folder`` that are attempts of an ``uncond`` run.

    Attempt ``a`` of the ``uncond`` strategy is unconditional sample ``a`` of
    :meth:`LatentDiffusionModel.sample_latents` with the same seed, so a cohort written
    by ``siblings sample`` (or the unconditional experiment) with the same checkpoint,
    precision, seed and steps already holds those attempts. Returns index → map file for
    every map whose manifest says so (``method`` unconditional, no churn); others are
    left out.
    """
    found: dict[int, Path] = {}
    for js in sorted(Path(folder).glob("*.json")):
        nii = js.with_name(js.name[: -len(".json")] + ".nii.gz")
        if not nii.exists():
            continue
        meta = read_json(js)
        m = meta.get("model", {}) if isinstance(meta, dict) else {}
        if (
            meta.get("method") == "unconditional"
            and meta.get("seed") == seed
            and meta.get("steps") == steps
            and not meta.get("churn")
            and m.get("checkpoint_sha256") == model.checkpoint_sha256
            and bool(m.get("bf16")) == bool(model.amp)
            and isinstance(meta.get("index"), int)
        ):
            found[meta["index"]] = nii
    return found


def _resumed(out: Path, settings: AugmentSettings, signature: dict) -> tuple[list[Path], list[int]]:
    """Accepted maps of an interrupted run with the same ``signature``, checked again.

    Returns the files and their attempt indices; a half-written last map (a manifest
    without its map, or the reverse) is removed, to be made again.
    """
    prefix, condition = settings.prefix, settings.condition
    files: list[Path] = []
    attempts: list[int] = []
    k = 0
    while True:
        nii, js = out / f"{prefix}_{k:05d}.nii.gz", out / f"{prefix}_{k:05d}.json"
        if not (nii.exists() and js.exists()):
            break
        meta = read_json(js)
        run = meta.get("augment", {}).get("run")
        if run != signature:
            raise resume_mismatch(js, run, signature)
        feats, _ = measure_map(read_label_map(nii))
        if not condition(feats):
            raise OutputExistsError(
                f"{nii}: does not meet {condition}; use another {{out}}", arguments=("out",)
            )
        attempt = int(meta["augment"]["attempt"])
        if attempts and attempt <= attempts[-1]:
            raise OutputExistsError(
                f"{js}: attempt {attempt} is out of order; use another {{out}}",
                arguments=("out",),
            )
        files.append(nii)
        attempts.append(attempt)
        k += 1
    for p in out.iterdir() if out.exists() else []:
        m = OUR_FILE.match(p.name)
        if m is not None and m["prefix"] == prefix and int(m["k"]) >= k:
            p.unlink()  # the half-written map of the interruption
    if len(files) > settings.n:
        raise OutputExistsError(
            f"{out}: holds {len(files)} accepted maps, more than {{n}} = {settings.n}; "
            "use another {out}",
            arguments=("n", "out"),
        )
    return files, attempts


def _finished(
    out: Path,
    settings: AugmentSettings,
    signature: dict,
    twins: list[Twin],
    files: list[Path],
    attempts: list[int],
) -> AugmentResult | None:
    """The result of a finished run with the same settings, from its ``augment.json``."""
    done = out / "augment.json"
    if len(files) != settings.n or not done.exists():
        return None
    summary = read_json(done)
    if not (summary.get("complete") and summary.get("run") == signature):
        return None
    metrics_path = out / "report" / "metrics.json"
    return AugmentResult(
        out=out,
        strategy=summary["strategy"],
        condition=settings.condition,
        seed=summary["seed"],
        n=summary["n"],
        files=files,
        attempts=attempts,
        attempted=summary["attempted"],
        rare_twins=[t.source for t in twins],
        complete=True,
        summary=summary,
        metrics=read_json(metrics_path) if metrics_path.exists() else None,
    )


def _attempt(
    model: LatentDiffusionModel,
    out: Path,
    settings: AugmentSettings,
    signature: dict,
    twins: list[Twin],
    encoded: EncodedTwins,
    files: list[Path],
    attempts: list[int],
    progress: bool,
    reuse: Mapping[int, Path],
    reused: list[int],
    guide: Any = None,
) -> int:
    """Attempt batch by batch until ``n`` maps are accepted or the attempts run out.

    Appends each accepted map's path and attempt to ``files`` and ``attempts``, and the
    attempts read from ``reuse`` (instead of generated) to ``reused``; returns the
    attempts judged (all ``max_attempts`` when stopped early).
    """
    from tqdm.auto import tqdm

    n, max_attempts = settings.n, settings.max_attempts
    attempted = attempts[-1] + 1 if attempts else 0
    out.mkdir(parents=True, exist_ok=True)
    candidate = out / ".candidate.nii.gz"
    bar = tqdm(
        total=n,
        initial=len(files),
        desc=f"augment {settings.strategy} ({len(twins)} twins)",
        unit="map",
        disable=not progress,
    )
    try:
        a0 = attempted
        while len(files) < n and a0 < max_attempts:
            todo = [
                Attempt(a, *plan_attempt(a, settings.strategy, len(twins), settings.psis,
                                         settings.regions))
                for a in range(a0, min(a0 + settings.batch, max_attempts))
            ]  # fmt: skip
            a0 += len(todo)
            labels: dict[int, Any] = {}
            for att in todo:
                if len(files) >= n:
                    break
                attempted = att.index + 1
                if att.index in reuse:
                    label = read_label_map(reuse[att.index]).data
                    reused.append(att.index)
                else:
                    if att.index not in labels:  # the batch's remaining fresh attempts
                        fresh = [t for t in todo if t.index >= att.index and t.index not in reuse]
                        labels.update(generate(
                            model, settings.strategy, fresh, encoded.latents, encoded.masks,
                            settings.seed, settings.steps, guide,
                        ))  # fmt: skip
                    label = labels[att.index]
                if _keep_if_accepted(
                    model, out, candidate, settings, signature, att, label, twins, encoded,
                    files,
                ):  # fmt: skip
                    attempts.append(att.index)
                    bar.update(1)
            bar.set_postfix_str(
                f"{len(files)} accepted / {attempted} attempted "
                f"({100 * acceptance_rate(len(files), attempted):.1f}%)"
            )
    finally:
        bar.close()
        if candidate.exists():
            candidate.unlink()
    return attempted if len(files) >= n else max(attempted, max_attempts)


def _keep_if_accepted(
    model: LatentDiffusionModel,
    out: Path,
    candidate: Path,
    settings: AugmentSettings,
    signature: dict,
    att: Attempt,
    label: Any,
    twins: list[Twin],
    encoded: EncodedTwins,
    files: list[Path],
) -> bool:
    """Judge one attempt on its written file; keep it (map, then manifest) if it passes."""
    lab, seam = attempt_map(label, att, twins, settings)
    repaired = None
    if "repair" in signature:  # repaired before it is written and judged
        repaired = repair_topology(lab, max_gap=signature["repair"]["max_gap"])
        lab = repaired.labels
    # Judge the file itself: written, read back, measured as `evaluate` does.
    write_label_map(candidate, LabelMap(lab, model.affine))
    feats, violated = measure_map(read_label_map(candidate))
    morph = dict(zip(anatomy.MORPHOLOGY_COLUMNS, feats.tolist(), strict=True))
    if not settings.condition(morph):
        return False
    name = f"{settings.prefix}_{len(files):05d}"
    final = out / f"{name}.nii.gz"
    os.replace(candidate, final)
    manifest = accepted_manifest(
        model, signature, att, twins, settings.regen_sets, encoded.masks, len(files), morph,
        violated,
    )  # fmt: skip
    if seam is not None:
        manifest["seam"] = seam
    if repaired is not None:
        manifest["repair"] = {**signature["repair"], **repaired.record()}
    if att.twin is not None:
        manifest["encoding"] = encoded.encodings[att.twin].to_dict()
    write_json(out / f"{name}.json", manifest)  # last: marks the map complete
    files.append(final)
    return True


def _evaluate(
    result: AugmentResult,
    twins: list[Twin],
    data: PathLike,
    settings: AugmentSettings,
    *,
    evaluate: bool,
    k: int,
    n_boot: int,
    figures: bool,
) -> dict[str, Any]:
    """Evaluate the accepted cohort against the rare twins into ``out/report``; headline."""
    skipped = evaluation_skipped(evaluate, result.accepted, len(twins), k)
    if skipped is not None:
        return skipped
    ref = summarise_maps([t.label_map for t in twins], names=[t.source.name for t in twins])
    coh = summarise_maps(
        (read_label_map(p) for p in result.files), names=[p.name for p in result.files]
    )
    ev = evaluate_maps(coh, ref, k=k, n_boot=n_boot, seed=result.seed)
    ev.metrics["cohort_dir"] = str(result.out)
    ev.metrics["reference_dir"] = f"{data} where {result.condition}"
    write_evaluation(
        ev,
        result.out / "report",
        figures=figures,
        title=f"augment {result.strategy}: {result.condition} (accepted vs rare twins)",
    )
    result.metrics = ev.metrics
    evaluation: dict[str, Any] = {key: ev.metrics.get(key) for key in HEADLINE_KEYS}
    evaluation["report"] = "report/report.html"
    return evaluation
