"""Cohort augmentation (paper §4.4): Table 4 and Fig. 10.

The rare cohort is the real maps meeting ``where`` (default ``RV_volume_ml > 115``; the
paper's 47 twins). It is grown by 140 accepted maps with each strategy of
:func:`siblings.pipelines.augment.augment` (``uncond``: samples, filtered, at most 3600 drawn as in
the paper; ``perturb``: siblings of the rare twins at ψ 0.5 and 0.35, filtered;
``local``: LV or RV regenerated, filtered), and each grown cohort is evaluated against
the rare cohort. This module only calls that API; it does not reimplement it.
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
LABELS = {
    "uncond": "Uncond. + filtering",
    "perturb": "Pert. + filtering",
    "local": "Local. + filtering",
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


def plan(ctx: ExperimentContext) -> list[CohortSpec]:
    rare = _rare_mask(ctx)
    if rare.sum() < ctx.k + 1:
        raise InputError(
            f"augment: {int(rare.sum())} of {len(ctx.real)} real maps meet {ctx.where!r}; "
            f"evaluating against the rare cohort needs at least {ctx.k + 1}"
        )
    return [_spec(ctx, s, float(rare.mean())) for s in STRATEGIES]


def make_augmented(
    ctx: ExperimentContext, spec: CohortSpec, folder: Path
) -> tuple[CohortSummary, dict]:
    """Run :func:`siblings.pipelines.augment.augment` into ``folder``; summarise what it accepted."""
    augment, _, reusable_samples = _api()
    from ..augment import AugmentStopped, check_settings

    p = spec.params
    settings = check_settings(
        p["where"], p["strategy"], spec.n, seed=p["seed"], steps=p["steps"], batch=ctx.batch,
        max_attempts=p["max_attempts"],
        invert_steps=0,  # the paper's posterior mean, not the product's inversion
        keep="latent",  # local: the paper's method as published, not exact keep
    )  # fmt: skip
    kwargs: dict = dict(evaluate=False, progress=ctx.progress)
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
    for strategy in STRATEGIES:
        spec = next(s for s in plan(ctx) if s.name == strategy)
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
            f"{ctx.k + 1} accepted maps."
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
