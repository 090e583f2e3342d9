"""Perturbational (§4.2: Table 2, Figs. 6–7) and localized (§4.3: Table 3, Figs. 8–9) editing.

Four seed twins are picked from the real cohort by LV/RV volume percentiles
(:mod:`.seeds`). Perturbational: each seed × ψ ∈ {0.35, 0.5, 0.65, 0.8, 1.0} × 60
siblings. Localized: each seed × regenerated tissue ∈ {LV, RV} × 60 siblings (the
myocardium is regenerated with the ventricle, SPEC §4). Every cohort has its own RNG seed
derived from ``--seed`` and its name, so cohorts are independent draws.

Besides TV% (the paper's Tables 2 and 3), each cohort gets FD, precision and recall
against the real cohort, and two distances in the real-normalised 12-d feature space:
the median distance of the siblings to their seed and to the real mean (a smaller
distance to the mean than the seed's means a pull towards common anatomy). Localized
cohorts also report the Dice of each kept tissue, seed against sibling.
"""

from __future__ import annotations

import numpy as np

from ..metrics.heatmaps import Occupancy
from ..report.plots import figure_png
from .cohorts import DECODE_COST, CohortSpec, derived_seed, heun_calls
from .context import ExperimentContext, Section
from .figures import change_grid, edited_volume_figure, pdiff_grid, seed_scatter_figure
from .seeds import Seed
from .tables import Estimate, Table


def _psi_name(psi: float) -> str:
    return f"psi{round(psi * 100):03d}"


def _lv_rv(features: np.ndarray) -> np.ndarray:
    from .. import anatomy

    cols = anatomy.MORPHOLOGY_COLUMNS
    return features[:, [cols.index("LV_volume_ml"), cols.index("RV_volume_ml")]]


def _seed_rows(ctx: ExperimentContext, seeds: list[Seed]) -> tuple[list, list, dict]:
    """Table rows "seed (real)" and "Original-VAE" (TV% of one map each)."""
    from ..metrics.topology import topology_checks

    real_row, vae_row, info = ["seed (real)"], ["Original-VAE"], {}
    for s in seeds:
        tv_seed = float(100.0 * ctx.real.violated[s.index].mean())
        checks = topology_checks(ctx.seed_through_vae(s))
        tv_vae = float(100.0 * np.mean(list(checks.values())))
        real_row.append(Estimate(tv_seed, None, 2))
        vae_row.append(Estimate(tv_vae, None, 2))
        info[s.key] = {
            **s.to_dict(),
            "tv_percent": tv_seed,
            "through_vae_tv_percent": tv_vae,
            "through_vae_violations": [k for k, v in checks.items() if v],
            "distance_to_real_mean": float(
                np.linalg.norm(ctx.normalised(ctx.real.features[s.index]))
            ),
        }
    return real_row, vae_row, info


def _cohort_numbers(ctx: ExperimentContext, seed: Seed, res) -> dict:
    m = ctx.compare(res.summary)
    z = ctx.normalised(res.summary.features)
    z_seed = ctx.normalised(ctx.real.features[seed.index])
    m["median_distance_to_seed"] = float(np.median(np.linalg.norm(z - z_seed, axis=1)))
    m["median_distance_to_real_mean"] = float(np.median(np.linalg.norm(z, axis=1)))
    m["generation_seconds"] = res.seconds
    return m


def _seed_occupancy(ctx: ExperimentContext, seed: Seed) -> Occupancy:
    occ = Occupancy()
    occ.add(ctx.seed_map(seed))
    return occ


class _Editing:
    """An editing experiment: a variable (ψ or the regenerated tissue) × the four seeds."""

    name = ""
    kind = ""
    table = ""

    def values(self, ctx: ExperimentContext) -> list:
        raise NotImplementedError

    def label(self, value) -> str:
        raise NotImplementedError

    def cohort_name(self, seed: Seed, value) -> str:
        raise NotImplementedError

    def spec(self, ctx: ExperimentContext, seed: Seed, value) -> CohortSpec:
        raise NotImplementedError

    def plan(self, ctx: ExperimentContext) -> list[CohortSpec]:
        return [self.spec(ctx, s, v) for s in ctx.seeds() for v in self.values(ctx)]

    def run(self, ctx: ExperimentContext) -> Section:
        seeds = ctx.seeds()
        values = self.values(ctx)
        made = {(s.key, v): ctx.cohort(self.spec(ctx, s, v)) for s in seeds for v in values}
        real_row, vae_row, seed_info = _seed_rows(ctx, seeds)
        results: dict = {"seeds": seed_info, "cohorts": {}}
        tv_rows, long_rows = [], []
        for v in values:
            row: list = [self.label(v)]
            for s in seeds:
                res = made[(s.key, v)]
                m = _cohort_numbers(ctx, s, res)
                if res.extra.get("kept_dice_mean"):
                    m["kept_dice_mean"] = res.extra["kept_dice_mean"]
                results["cohorts"][res.spec.name] = {"seed": s.key, "value": v, **m}
                row.append(Estimate.of(m, "tv_percent", 2))
                long = [
                    s.label, self.label(v), len(res.summary),
                    Estimate.of(m, "fd"), Estimate.of(m, "precision"), Estimate.of(m, "recall"),
                    Estimate.of(m, "tv_percent", 2), m["median_distance_to_seed"],
                    m["median_distance_to_real_mean"],
                ]  # fmt: skip
                if self.kind == "inpaint":
                    dice = res.extra.get("kept_dice_mean", {})
                    long.append(float(np.mean(list(dice.values()))) if dice else float("nan"))
                long_rows.append(long)
            tv_rows.append(row)
        results["cohort_seconds"] = round(sum(r.seconds for r in made.values()), 2)
        header = ["", *[s.label for s in seeds]]
        long_header = [
            "seed", "cohort", "maps", "FD", "precision", "recall", "TV (%)",
            "median distance to seed", "median distance to real mean",
        ]  # fmt: skip
        if self.kind == "inpaint":
            long_header.append("mean Dice of kept tissues")
        sec = Section(self.name, results=results)
        sec.text.append(
            "Seeds (real cohort, LV/RV volume percentiles 90/10/50, nearest in rank space): "
            + "; ".join(
                f"{s.label} = {s.name} (LV {s.lv_volume_ml:.0f} mL, RV {s.rv_volume_ml:.0f} mL)"
                for s in seeds
            )
            + "."
        )
        sec.tables.append(
            Table(
                self.table,
                self.table_title,
                header,
                [real_row, vae_row, *tv_rows],
                caption=self.table_caption.format(n=ctx.counts.siblings),
            )
        )
        sec.tables.append(
            Table(
                f"{self.name}_metrics",
                f"{self.title}: every cohort against the real cohort",
                long_header,
                long_rows,
                caption=(
                    "FD, precision and recall against the real cohort and TV%, 95% bootstrap "
                    "intervals; distances in the 12-d feature space normalised by the real "
                    "cohort (the real mean is the origin)."
                ),
            )
        )
        self.figures(ctx, sec, seeds, values, made)
        return sec

    def figures(self, ctx, sec, seeds, values, made) -> None:
        real_xy = _lv_rv(ctx.real.features)
        panels = [
            (
                s.label,
                (s.lv_volume_ml, s.rv_volume_ml),
                {self.label(v): _lv_rv(made[(s.key, v)].summary.features) for v in values},
            )
            for s in seeds
        ]
        sec.figures[self.scatter_file] = (
            figure_png(seed_scatter_figure(real_xy, panels, title=self.scatter_title)),
            self.scatter_caption,
        )
        sec.figures[self.pdiff_file] = (
            figure_png(
                pdiff_grid(
                    [self.label(v) for v in values],
                    [s.label for s in seeds],
                    [[made[(s.key, v)].summary.occupancy for s in seeds] for v in values],
                    [_seed_occupancy(ctx, s) for s in seeds],
                    title=self.pdiff_title,
                    mask="both",
                )
            ),
            self.pdiff_caption,
        )
        sec.figures[self.pdiff_file.replace("_pdiff", "_change")] = (
            figure_png(
                change_grid(
                    [self.label(v) for v in values],
                    [s.label for s in seeds],
                    [[made[(s.key, v)].summary.occupancy for s in seeds] for v in values],
                    [ctx.seed_through_vae(s) for s in seeds],
                    title=f"{self.pdiff_title.split(':')[0]} (companion): where siblings differ "
                    "from their seed through the VAE",
                )
            ),
            "Companion to the P_diff grid: at each voxel, the fraction of siblings whose label "
            "differs from the seed's VAE reconstruction (0 = all keep its tissue), so what the "
            "VAE alone cannot reproduce (thin structures) does not show as an edit. Shows which "
            "chambers an edit changes and which it keeps.",
        )


class _Perturbational(_Editing):
    name = "perturb"
    kind = "perturb"
    title = "Perturbational editing"
    table = "table2_perturbational"
    table_title = "Table 2: TV (%) of perturbational siblings"
    table_caption = (
        "Rows: the seed itself, the seed through the VAE, and {n} siblings per ψ (95% bootstrap "
        "intervals). Paper: Original-VAE 8.3; ψ rows 13.8–31.8."
    )
    scatter_file = "fig6_scatter.png"
    scatter_title = "Fig. 6: perturbational siblings per seed and ψ"
    scatter_caption = (
        "Fig. 6: LV vs RV volume of the perturbational cohorts of each seed (star), one colour "
        "per ψ with its 50% KDE contour, over the real cohort's KDE (grey)."
    )
    pdiff_file = "fig7_pdiff.png"
    pdiff_title = "Fig. 7: P_diff of perturbational siblings (rows ψ, columns seeds)"
    pdiff_caption = (
        "Fig. 7: P_diff = P_siblings − P_seed of the heart channel, slice of model axes 0, 2 (model axes, not the patient's directions) through the seed's centroid, masked where both are 0 (against one seed map, masking where either is 0 would hide all growth); rows ψ, "
        "columns seeds."
    )

    def values(self, ctx: ExperimentContext) -> list:
        return list(ctx.counts.psis)

    def label(self, value) -> str:
        return f"ψ = {value:.2f}"

    def spec(self, ctx: ExperimentContext, seed: Seed, value) -> CohortSpec:
        from ..diffusion.edit import start_step

        steps = ctx.counts.steps
        name = f"{seed.key}_{_psi_name(value)}"
        recomputed = steps - start_step(value, steps)
        return CohortSpec(
            self.name, name, "perturb", ctx.counts.siblings,
            {"seed_kind": seed.key, "twin": seed.name, "psi": value, "steps": steps,
             "seed": derived_seed(ctx.seed, f"{self.name}/{name}")},
            heun_calls(recomputed) + DECODE_COST,
        )  # fmt: skip


class _Localized(_Editing):
    name = "local"
    kind = "inpaint"
    title = "Localized editing"
    table = "table3_localized"
    table_title = "Table 3: TV (%) of localized siblings"
    table_caption = (
        "Rows: the seed itself, the seed through the VAE, and {n} siblings per regenerated "
        "tissue (the myocardium is regenerated with it; 95% bootstrap intervals). Paper: "
        "Original-VAE 8.3; RV edit 10.3–16.9; LV edit 9.3–11.5."
    )
    scatter_file = "fig8_scatter.png"
    scatter_title = "Fig. 8: localized siblings per seed and mask"
    scatter_caption = (
        "Fig. 8: LV vs RV volume of the localized cohorts of each seed (star), one colour per "
        "regenerated tissue with its 50% KDE contour, over the real cohort's KDE (grey)."
    )
    pdiff_file = "fig9_pdiff.png"
    pdiff_title = "Fig. 9: P_diff of localized siblings (rows masks, columns seeds)"
    pdiff_caption = (
        "Fig. 9: P_diff = P_siblings − P_seed of the heart channel, slice of model axes 0, 2 (model axes, not the patient's directions) through the seed's centroid, masked where both are 0; rows: "
        "regenerated tissue, columns seeds."
    )

    def values(self, ctx: ExperimentContext) -> list:
        # Paper order in Table 3: RV edit, then LV edit.
        return sorted(ctx.counts.regions, key=lambda r: (r != "RV", r))

    def label(self, value) -> str:
        return f"{value} edit"

    def spec(self, ctx: ExperimentContext, seed: Seed, value) -> CohortSpec:
        steps = ctx.counts.steps
        name = f"{seed.key}_{value}"
        return CohortSpec(
            self.name, name, "inpaint", ctx.counts.siblings,
            {"seed_kind": seed.key, "twin": seed.name, "regenerate": [value], "steps": steps,
             "seed": derived_seed(ctx.seed, f"{self.name}/{name}")},
            heun_calls(steps) + DECODE_COST,
        )  # fmt: skip

    def figures(self, ctx, sec, seeds, values, made) -> None:
        super().figures(ctx, sec, seeds, values, made)
        chambers = [v for v in values if v in ("LV", "RV", "LA", "RA")]
        if not chambers:
            return
        col = {c: f"{c}_volume_ml" for c in chambers}
        panels = [
            (
                s.label,
                {c: float(ctx.real.features[s.index][_col_index(col[c])]) for c in chambers},
                {c: {self.label(c): made[(s.key, c)].summary.feature(col[c])} for c in chambers},
            )
            for s in seeds
        ]
        sec.figures["fig8_edited_volumes.png"] = (
            figure_png(
                edited_volume_figure(
                    {c: ctx.real.feature(col[c]) for c in chambers}, panels,
                    title="Fig. 8 (1-D): volume of the edited chamber",
                )
            ),
            "Fig. 8, 1-D view: distribution of the regenerated chamber's volume per seed "
            "(lines), the real cohort's (grey) and the seed's (dashed).",
        )  # fmt: skip


def _col_index(column: str) -> int:
    from .. import anatomy

    return anatomy.MORPHOLOGY_COLUMNS.index(column)


perturbational = _Perturbational()
localized = _Localized()
