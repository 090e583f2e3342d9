"""Sensitivity of cohort quality to sampling steps and cohort size (appendix C, Figs. 11–12).

- Steps sweep: one cohort of ``steps_cohort`` maps (paper: 100) per number of steps in
  {5, 10, 20, 50, 100, 200}. Every cohort uses the same seed, so sample ``i`` starts from
  the same noise at every number of steps (the sweep isolates the discretisation). The
  20-step cohort is the first ``steps_cohort`` maps of the unconditional experiment's
  synthetic cohort (same seed, same steps), not a new one.
- Size sweep: cohorts of {5, 10, 20, 50, 100, 200} maps at 20 steps, taken as prefixes of
  that synthetic cohort (sample ``i`` depends only on (seed, i), so a prefix *is* the
  smaller cohort). Smaller cohorts are therefore nested, not independent draws.

Each cohort: FD, precision, recall, TV% against the real cohort with 95% bootstrap
intervals.
"""

from __future__ import annotations

from .cohorts import DECODE_COST, CohortSpec, heun_calls, prefix
from .context import ExperimentContext, Section
from .figures import sweep_figure
from .tables import METRIC_HEADERS, METRIC_KEYS, Table, estimates
from .unconditional import synthetic_spec

NAME = "sensitivity"


def _steps_spec(ctx: ExperimentContext, steps: int) -> CohortSpec:
    return CohortSpec(
        NAME, f"steps_{steps:03d}", "sample", ctx.counts.steps_cohort,
        {"steps": steps, "seed": ctx.seed}, heun_calls(steps) + DECODE_COST,
    )  # fmt: skip


def plan(ctx: ExperimentContext) -> list[CohortSpec]:
    specs = [synthetic_spec(ctx)]
    specs += [_steps_spec(ctx, s) for s in ctx.counts.sweep_steps if s != ctx.counts.steps]
    return specs


def run(ctx: ExperimentContext) -> Section:
    c = ctx.counts
    syn = ctx.cohort(synthetic_spec(ctx))
    results: dict = {"steps": {}, "sizes": {}, "steps_cohort": c.steps_cohort}
    step_rows, step_metrics, seconds = [], [], syn.seconds
    for s in c.sweep_steps:
        if s == c.steps:
            summary, source = (
                prefix(syn.summary, c.steps_cohort),
                (f"first {c.steps_cohort} maps of unconditional/synthetic"),
            )
            gen_s = None
        else:
            res = ctx.cohort(_steps_spec(ctx, s))
            summary, source, gen_s = res.summary, f"sensitivity/{res.spec.name}", res.seconds
            seconds += res.seconds
        m = ctx.compare(summary)
        step_metrics.append(m)
        step_rows.append([s, len(summary), *estimates(m, METRIC_KEYS), source])
        results["steps"][str(s)] = {**m, "source": source, "generation_seconds": gen_s}
    size_rows, size_metrics = [], []
    for n in c.sweep_sizes:
        m = ctx.compare(prefix(syn.summary, n))
        size_metrics.append(m)
        size_rows.append([n, c.steps, *estimates(m, METRIC_KEYS)])
        results["sizes"][str(n)] = {**m, "source": f"first {n} maps of unconditional/synthetic"}
    results["cohort_seconds"] = round(seconds, 2)
    real_tv = ctx.real.tv_percent
    sec = Section(NAME, results=results)
    sec.text.append(
        "Samples are reused where that is exact: the 20-step cohort of the steps sweep and "
        "every cohort of the size sweep are prefixes of the unconditional experiment's "
        "synthetic cohort (sample i depends only on the seed and i), so the size sweep's "
        "cohorts are nested. All step cohorts share one seed (same starting noise)."
    )
    sec.tables.append(
        Table(
            "sensitivity_steps",
            f"Steps sweep ({c.steps_cohort} maps per cohort)",
            ["steps", "maps", *METRIC_HEADERS, "maps from"],
            step_rows,
            caption="Against the real cohort; 95% bootstrap intervals. Paper: flat after 20 steps.",
        )
    )
    sec.tables.append(
        Table(
            "sensitivity_sizes",
            f"Cohort-size sweep ({c.steps} steps)",
            ["maps", "steps", *METRIC_HEADERS],
            size_rows,
            caption=(
                "Against the real cohort; 95% bootstrap intervals. Prefixes of one synthetic "
                "cohort. Paper: no improvement beyond about 60 maps."
            ),
        )
    )
    from ..report.plots import figure_png

    sec.figures["fig11_steps.png"] = (
        figure_png(
            sweep_figure(c.sweep_steps, step_metrics, "sampling steps", real_tv=real_tv,
                         title=f"Fig. 11: cohort quality vs sampling steps ({c.steps_cohort} maps)")
        ),
        "Fig. 11: FD, precision, recall and TV% against the number of sampling steps, with "
        "95% bootstrap bands; dashed: TV% of the real cohort.",
    )  # fmt: skip
    sec.figures["fig12_sizes.png"] = (
        figure_png(
            sweep_figure(c.sweep_sizes, size_metrics, "cohort size (maps)", real_tv=real_tv,
                         title=f"Fig. 12: cohort quality vs cohort size ({c.steps} steps)")
        ),
        "Fig. 12: FD, precision, recall and TV% against cohort size, with 95% bootstrap bands.",
    )  # fmt: skip
    return sec
