"""Cohort augmentation (paper §4.4): Table 4 and Fig. 10.

The rare cohort is the real maps meeting ``where`` (default ``RV_volume_ml > 115``; the
paper's 47 twins). It is grown by 140 accepted maps with each strategy of
:func:`siblings.pipelines.augment.augment` (``uncond``: samples, filtered, at most 3600 drawn as in
the paper; ``perturb``: siblings of the rare twins at ψ 0.5 and 0.35, filtered;
``local``: LV or RV regenerated, filtered), and each grown cohort is evaluated against
the rare cohort. This module only calls that API; it does not reimplement it.

An extra row beyond the paper's strategies (issue 17), ``guided``: unconditional samples guided
towards ``where`` itself by the checkpoint's morphology regressor at
:data:`GUIDANCE_SCALE`, filtered on the written maps like the others, at most
``augment_pool`` attempts. It is planned only when the checkpoint has a regressor
(``regressor.safetensors``, as the shipped weights); its identity holds the scale and the
regressor's SHA-256, so another regressor makes another cohort. The paper's rows, their
cohorts and their identities are the same with or without it.
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import read_label_map
from ..metrics.cohort import CohortSummary
from ..report.html import interval, number
from ..report.plots import figure_png
from .cohorts import DECODE_COST, CohortSpec, heun_calls
from .context import ExperimentContext, Section
from .figures import augmentation_figure
from .tables import METRIC_HEADERS, METRIC_KEYS, Table, estimates
from .unconditional import synthetic_spec

NAME = "augment"
STRATEGIES: tuple[str, ...] = ("uncond", "perturb", "local")
GUIDED = "guided"
# The guided row's classifier-guidance scale γ, fixed before the row was made by a rule
# that does not look at the rare cohort (docs/guidance.md, "The guidance scale"): the
# smallest γ of 1, 2, 4, 8 at which at least 6 of 8 pilot samples (seeds 100–107) of
# the shipped regressor meet RV > 115 mL.
GUIDANCE_SCALE = 4.0
LABELS = {
    "uncond": "Uncond. + filtering",
    "perturb": "Pert. + filtering",
    "local": "Local. + filtering",
    GUIDED: "Guided uncond. + filtering",
}


def _api():
    try:
        from ..pipelines.augment import augment, parse_condition, reusable_samples
    except ImportError as exc:  # pragma: no cover - only before siblings.augment exists
        raise NotImplementedError(
            "the augment experiment needs siblings.pipelines.augment.augment (the `siblings augment` API), "
            f"which is not available in this install ({exc}); the other experiments run without it"
        ) from None
    return augment, parse_condition, reusable_samples


def _percent(rate: float, lo: float, hi: float) -> str:
    """An acceptance rate as a percentage with its Wilson 95% interval."""
    if not np.isfinite(rate):
        return "–"
    return f"{number(100 * rate, 2)}% {interval((lo, hi), 2, 100.0)}"


def _rare_mask(ctx: ExperimentContext) -> np.ndarray:
    _, parse_condition, _ = _api()
    return parse_condition(ctx.where).mask(ctx.real.features)


def _spec(ctx: ExperimentContext, strategy: str, rare_fraction: float) -> CohortSpec:
    c = ctx.counts
    # Attempt a of `uncond` is unconditional sample a (same seed and steps): the
    # unconditional experiment's cohort already holds its first attempts.
    synthetic = synthetic_spec(ctx)
    reuse = strategy == "uncond" and synthetic.params == {"steps": c.steps, "seed": ctx.seed}
    # Progress weight per accepted map: attempts per acceptance (unknown in advance; the
    # rare fraction of the real cohort for unconditional sampling, ~0.7 for edits).
    accept = max(rare_fraction, 1e-3) if strategy == "uncond" else 0.7
    if strategy == "uncond":  # never more than the pool
        accept = max(accept, c.augment / c.augment_pool)
    return CohortSpec(
        NAME, strategy, "augment", c.augment,
        {"strategy": strategy, "where": ctx.where, "steps": c.steps, "seed": ctx.seed,
         "max_attempts": c.augment_pool if strategy == "uncond" else None},
        (heun_calls(c.steps) + DECODE_COST) / accept,
        after=(synthetic.key,) if reuse else (),
    )  # fmt: skip


def regressor_file(ctx: ExperimentContext) -> Path | None:
    """The checkpoint's morphology regressor, or None (no guided row then)."""
    from ..models.regressor import regressor_path

    if not ctx.model.checkpoint:
        return None
    path = regressor_path(ctx.model.checkpoint)
    return path if path.is_file() else None


def _guided_spec(ctx: ExperimentContext, regressor: Path) -> CohortSpec:
    from ..checkpoint import file_hash

    c = ctx.counts
    return CohortSpec(
        NAME, GUIDED, "augment", c.augment,
        {"strategy": GUIDED, "sampler": "uncond", "where": ctx.where, "target": None,
         "guidance_scale": GUIDANCE_SCALE, "regressor_sha256": file_hash(regressor),
         "steps": c.steps, "seed": ctx.seed, "max_attempts": c.augment_pool},
        # The regressor's gradient at each call costs little (docs/guidance.md: +4%).
        (heun_calls(c.steps) + DECODE_COST) / 0.7,
    )  # fmt: skip


def plan(ctx: ExperimentContext) -> list[CohortSpec]:
    rare = _rare_mask(ctx)
    if rare.sum() < ctx.k + 1:
        raise InputError(
            f"augment: {int(rare.sum())} of {len(ctx.real)} real maps meet {ctx.where!r}; "
            f"evaluating against the rare cohort needs at least {ctx.k + 1}"
        )
    specs = [_spec(ctx, s, float(rare.mean())) for s in STRATEGIES]
    regressor = regressor_file(ctx)
    if regressor is not None:
        specs.append(_guided_spec(ctx, regressor))
    return specs


def make_augmented(
    ctx: ExperimentContext, spec: CohortSpec, folder: Path
) -> tuple[CohortSummary, dict]:
    """Run :func:`siblings.pipelines.augment.augment` into ``folder``; summarise what it accepted."""
    augment, _, reusable_samples = _api()
    from ..augment import AugmentStopped, check_settings

    p = spec.params
    sampler = p.get("sampler", p["strategy"])  # what makes the attempts
    settings = check_settings(
        p["where"], p["strategy"], spec.n, seed=p["seed"], steps=p["steps"], batch=ctx.batch,
        max_attempts=p["max_attempts"], sampler=sampler,
        invert_steps=0,  # the paper's posterior mean, not the product's inversion
        keep="latent",  # local: the paper's method as published, not exact keep
    )  # fmt: skip
    kwargs: dict = dict(evaluate=False, progress=ctx.progress)
    if p["strategy"] == GUIDED:  # towards `where` itself (target None) with this regressor
        regressor = regressor_file(ctx)
        from ..checkpoint import file_hash

        if regressor is None or file_hash(regressor) != p["regressor_sha256"]:
            raise InputError(f"{spec.key}: the checkpoint's regressor changed since it was planned")
        kwargs.update(target=p["target"], guidance_scale=p["guidance_scale"], regressor=regressor)
    reuse: dict[int, Path] = {}
    for key in spec.after:  # finished cohorts only (another process may be writing)
        if (ctx.out / key / "done.json").exists():
            reuse.update(reusable_samples(ctx.out / key, ctx.model, p["seed"], p["steps"]))
    if reuse:
        kwargs["reuse"] = reuse
    if folder.exists():
        # An interrupted earlier run: let augment continue it (byte-identical to an
        # uninterrupted run), after removing what this module writes beside its files.
        for name in ("summary.npz", "cohort.json", "done.json"):
            (folder / name).unlink(missing_ok=True)
        if "resume" in inspect.signature(augment).parameters:
            kwargs["resume"] = True
        else:
            shutil.rmtree(folder)

    def call():
        return augment(ctx.model, ctx.data, settings, folder, **kwargs)

    try:
        try:
            res = call()
        except FileExistsError:  # not resumable after all: start again
            shutil.rmtree(folder)
            kwargs.pop("resume", None)
            res = call()
        complete = True
    except AugmentStopped as stop:
        res, complete = stop.result, False
    ctx.tick(spec.n * spec.cost, spec.key)
    # Nothing accepted is a result too (Table 4 shows it); an empty cohort is stored.
    maps = [read_label_map(f) for f in res.files]
    summary = ctx.summarise(maps, [f.name for f in res.files])
    extra = {
        "accepted": res.accepted,
        "attempted": res.attempted,
        "acceptance_rate": res.acceptance_rate,
        "complete": complete,
        "rare_twins": len(res.rare_twins),
    }
    return summary, extra


def run(ctx: ExperimentContext) -> Section:
    from ..metrics.bootstrap import wilson_interval

    rare_idx = np.flatnonzero(_rare_mask(ctx))
    rare = ctx.summarise(
        [m for m in ctx.read_real(rare_idx)], [ctx.real.names[i] for i in rare_idx]
    )
    rows, results, panels = [], {"cohorts": {}, "where": ctx.where, "rare_n": len(rare)}, {}
    seconds = 0.0
    specs = {s.name: s for s in plan(ctx)}
    for strategy in (*STRATEGIES, GUIDED):
        if strategy not in specs:  # no regressor: no guided row
            continue
        spec = specs[strategy]
        res = ctx.cohort(spec)
        seconds += res.seconds
        ex = res.extra
        if len(res.summary) >= ctx.k + 1:
            m = ctx.compare(res.summary, rare)
            metric_cells = estimates(m, METRIC_KEYS)
        else:
            m = {"n": len(res.summary)}
            metric_cells = ["–"] * len(METRIC_KEYS)
        attempted = ex.get("attempted") or 0
        lo, hi = wilson_interval(len(res.summary), attempted) if attempted else (0.0, 1.0)
        rate = _percent(ex.get("acceptance_rate", float("nan")), lo, hi)
        ex = {**ex, "acceptance_rate_ci95_wilson": [lo, hi]}
        accepted = f"{len(res.summary)} of {spec.n}"
        if not ex.get("complete", True):
            accepted += f" (stopped after {ex.get('attempted')} attempts)"
        rows.append([LABELS[strategy], accepted, ex.get("attempted"), rate, *metric_cells])
        results["cohorts"][strategy] = {**m, **ex, "generation_seconds": res.seconds}
        panels[LABELS[strategy]] = np.column_stack(
            [res.summary.feature("LV_volume_ml"), res.summary.feature("RV_volume_ml")]
        )
    results["cohort_seconds"] = round(seconds, 2)
    if GUIDED in specs:
        g = specs[GUIDED].params
        results["cohorts"][GUIDED].update(
            sampler=g["sampler"], guidance_scale=g["guidance_scale"],
            regressor_sha256=g["regressor_sha256"],
        )  # fmt: skip
        guided_note = (
            f"Guided (not in the paper, issue 17): unconditional samples guided towards "
            f"{ctx.where} by the checkpoint's morphology regressor "
            f"({g['regressor_sha256'][:12]}) at guidance scale {g['guidance_scale']:g}, "
            f"then filtered on the written maps as the others, at most "
            f"{g['max_attempts']} attempts."
        )
    else:
        guided_note = (
            "No guided row: the checkpoint has no morphology regressor "
            "(regressor.safetensors; `siblings train regressor`)."
        )
    table = Table(
        "table4_augmentation",
        "Table 4: augmentation strategies against the rare cohort",
        ["strategy", "accepted", "attempted", "acceptance (%, Wilson 95%)", *METRIC_HEADERS],
        rows,
        caption=(
            f"Rare cohort: {len(rare)} real maps with {ctx.where}. Each strategy's accepted maps "
            "against the rare cohort (features normalised by the rare cohort); 95% bootstrap "
            "intervals. Paper: FD 2.86/2.72/2.64, P .94/.96/.91, R .76/.93/.95, TV 19.6/21.6/15.1."
        ),
        notes=[
            f"The unconditional strategy draws at most {ctx.counts.augment_pool} samples (the "
            "paper's 3600); a strategy that stops before its count says so in the accepted "
            "column and in results.json (complete: false). Metrics need at least "
            f"{ctx.k + 1} accepted maps.",
            guided_note,
        ],
    )
    sec = Section(NAME, tables=[table], results=results)
    _, parse_condition, _ = _api()
    lines = {}
    for clause in parse_condition(ctx.where).clauses:
        if clause.column == "LV_volume_ml":
            lines["x"] = clause.value
        elif clause.column == "RV_volume_ml":
            lines["y"] = clause.value
    rare_xy = np.column_stack([rare.feature("LV_volume_ml"), rare.feature("RV_volume_ml")])
    sec.figures["fig10_augmentation.png"] = (
        figure_png(
            augmentation_figure(rare_xy, panels, lines=lines,
                                title=f"Fig. 10: augmenting the rare cohort ({ctx.where})")
        ),
        "Fig. 10: LV vs RV volume of each strategy's accepted maps over the rare cohort "
        "(grey points and KDE); dashed: the condition's threshold.",
    )  # fmt: skip
    return sec
