"""The outputs of ``siblings evaluate``, rendered in memory: CSVs, figures and report.html.

:func:`evaluation_files` renders every file (and completes the metrics.json it goes
with); it writes nothing: :func:`siblings.pipelines.evaluate.write_evaluation` writes
them, each atomically, so a failure never leaves a half-written report.
:func:`evaluation_figures` and :func:`evaluation_html` are separate so experiments can
reuse them.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

import numpy as np

from .. import anatomy
from . import html as H
from .axes import grid_axes
from .html import interval as _ci
from .html import number as _fmt

if TYPE_CHECKING:
    from ..metrics.cohort import Evaluation

FIGURES = {
    "volumes.png": "LV vs RV volume of each cohort map (orange) over the highest-density "
    "regions of a Gaussian KDE of the reference (grey, 25–95% of its mass); margins: "
    "1-D densities.",
    "occupancy_heart.png": "Heart occupancy P = 1 − P_background of the reference and the "
    "cohort, and P_diff = P_cohort − P_reference (masked where either P is zero), in three "
    "orthogonal slices through the heart's occupancy centroid.",
    "occupancy.png": "Occupancy per tissue: P of the reference and the cohort and P_diff "
    "(masked where either P is zero), three orthogonal slices through each tissue's "
    "occupancy centroid.",
    "violations.png": "Maps violating each topology check (%): cohort with 95% bootstrap "
    "intervals (cohort resampled, reference fixed), and reference.",
}


def _after(ci, digits: int) -> str:
    """`` [lo, hi]`` to follow a number in a title, or nothing without an interval."""
    return f" {_ci(ci, digits)}" if ci else ""


def evaluation_figures(ev, dpi: int = 100) -> dict[str, bytes]:
    """PNG bytes of the four evaluation figures, keyed by file name."""
    from .plots import figure_png, occupancy_figure, violation_bars, volume_scatter_figure

    m = ev.metrics
    coh_name, ref_name = f"cohort (n = {m['n']})", f"reference (n = {m['n_reference']})"
    lv, rv = "LV_volume_ml", "RV_volume_ml"
    # Letters only for a cohort on a scanner grid; a model grid's axes are not the patient's.
    orientation = grid_axes(m.get("grid"))
    figs = {}
    figs["volumes.png"] = figure_png(
        volume_scatter_figure(
            np.column_stack([ev.cohort.feature(lv), ev.cohort.feature(rv)]),
            np.column_stack([ev.reference.feature(lv), ev.reference.feature(rv)]),
            cohort_label="cohort",
            reference_label="reference",
            title=f"FD {m['fd']:.2f}{_after(m['fd_ci'], 2)} · precision {m['precision']:.2f} · "
            f"recall {m['recall']:.2f} (k = {m['k']})",
        ),
        dpi=dpi,
    )
    figs["occupancy_heart.png"] = figure_png(
        occupancy_figure(
            ev.reference.occupancy,
            ev.cohort.occupancy,
            channels=("heart",),
            orientation=orientation,
        ),
        dpi=dpi,
    )
    figs["occupancy.png"] = figure_png(
        occupancy_figure(
            ev.reference.occupancy,
            ev.cohort.occupancy,
            channels=anatomy.TISSUES,
            orientation=orientation,
        ),
        dpi=dpi,
    )
    figs["violations.png"] = figure_png(
        violation_bars(
            {ref_name: m["reference"]["violation_rate"], coh_name: m["violation_rate"]},
            {coh_name: m.get("violation_rate_ci")},
            title=f"TV%: cohort {m['tv_percent']:.1f}{_after(m['tv_percent_ci'], 1)}, "
            f"reference {m['reference']['tv_percent']:.1f}",
        ),
        dpi=dpi,
    )
    return figs


def evaluation_html(ev, figures: dict[str, bytes], title: str | None = None) -> str:
    """The self-contained report page of an evaluation."""
    m = ev.metrics
    rules = {r.column: r for r in anatomy.TOPOLOGY_RULES}
    ref = m["reference"]
    summary = H.table(
        ["metric", "cohort", "95% interval", "reference"],
        [
            ["maps", m["n"], "", m["n_reference"]],
            [
                "Fréchet distance (normalised features)",
                _fmt(m["fd"]),
                _ci(m["fd_ci"]),
                "0 (by definition)",
            ],
            [f"precision (k = {m['k']})", _fmt(m["precision"]), _ci(m["precision_ci"]), ""],
            [f"recall (k = {m['k']})", _fmt(m["recall"]), _ci(m["recall_ci"]), ""],
            *H.violation_rows(m),
        ],
    )
    ci = m.get("violation_rate_ci") or {}
    check_rows, classes = [], []
    for col in anatomy.TOPOLOGY_COLUMNS:
        rate = m["violation_rate"][col]
        check_rows.append(
            [
                f"<code>{H.esc(col)}</code>",
                H.esc(rules[col].description),
                f"{100 * rate:.1f}",
                _ci(ci.get(col), 1, 100.0),
                f"{100 * ref['violation_rate'][col]:.1f}",
            ]
        )
        classes.append("bad" if rate > 0 else "")
    checks = H.table(
        ["check", "rule", "cohort (% of maps)", "95% interval", "reference (% of maps)"],
        check_rows,
        row_classes=classes,
        raw=True,
    )
    feats = H.table(
        ["feature", "cohort mean ± sd", "reference mean ± sd"],
        [
            [
                col,
                f"{f['mean']:.1f} ± {f['std']:.1f}",
                f"{f['reference_mean']:.1f} ± {f['reference_std']:.1f}",
            ]
            for col, f in m["features"].items()
        ],
    )
    # The maps with the most violations, to open first.
    counts = ev.cohort.violated.sum(axis=1)
    worst = [i for i in np.argsort(-counts, kind="stable") if counts[i] > 0][:15]
    worst_html = (
        H.table(
            ["file", "checks violated"],
            [
                [
                    ev.cohort.names[i],
                    ", ".join(
                        c
                        for c, v in zip(
                            anatomy.TOPOLOGY_COLUMNS, ev.cohort.violated[i], strict=True
                        )
                        if v
                    ),
                ]
                for i in worst
            ],
        )
        if worst
        else "<p>No map violates any check.</p>"
    )
    boot = m.get("bootstrap", {})
    conv = m.get("conventions", {})
    settings = H.table(
        ["setting", "value"],
        [
            ["cohort", m.get("cohort_dir", "(in memory)")],
            ["reference", m.get("reference_dir", "(in memory)")],
            [
                "grid",
                f"{'x'.join(map(str, m['grid']['shape']))} voxels of "
                f"{' x '.join(f'{s:.4g}' for s in (m['grid']['spacing_mm'] or []))} mm"
                + (f", affine {m['grid']['orientation']}" if m["grid"].get("orientation") else ""),
            ],
            ["slice directions", grid_axes(m.get("grid")).note()],
            [
                "bootstrap",
                f"{boot.get('n_boot')} resamples of the {boot.get('resampled')}, "
                f"seed {boot.get('seed')}, {boot.get('interval')}",
            ],
            *[[k, v] for k, v in conv.items()],
            ["software", m.get("software", "")],
            ["compute time", f"{m['compute_seconds']:.1f} s" if "compute_seconds" in m else "–"],
        ],
    )

    axes_note = grid_axes(m.get("grid")).note()

    def fig(name: str) -> str:
        if name not in figures:
            return ""
        slices = name.startswith("occupancy")
        return H.figure(figures[name], FIGURES[name] + (f" {axes_note}" if slices else ""))

    sections = [
        (
            "Summary",
            summary + '<p class="meta">FD, precision and recall compare the 12-d '
            "morphology vectors (volume, major and minor axis of LV, RV, LA, RA) normalised by "
            "the reference mean and standard deviation. Intervals: bootstrap over the cohort, "
            "reference fixed; percentile intervals, FD's re-centred on the estimate.</p>",
        ),
        ("Morphology", fig("volumes.png") + feats),
        (
            "Topology",
            fig("violations.png") + checks + "<h3>Maps with the most violations</h3>" + worst_html,
        ),
        ("Occupancy", fig("occupancy_heart.png") + fig("occupancy.png")),
        ("Settings", settings),
    ]
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    subtitle = (
        f"{H.esc(m.get('cohort_dir', 'cohort'))} against {H.esc(m.get('reference_dir', 'reference'))}"
        f" · {when}"
    )
    return H.page(title or "digital-siblings evaluation", sections, subtitle)


def evaluation_files(
    ev: Evaluation, *, figures: bool = True, title: str | None = None
) -> dict[str, bytes]:
    """per_map.csv, reference_per_map.csv, the PNGs and report.html, rendered in memory.

    Records in ``ev.metrics`` what they show (``figures``; a folder evaluation's
    ``compute_seconds``, measured before the figures), so that ``ev.metrics`` is the
    ``metrics.json`` to write with them (:func:`siblings.pipelines.evaluate.write_evaluation`).
    """
    if ev.seconds is not None:  # a folder evaluation: its compute time, before the figures
        ev.metrics["compute_seconds"] = round(ev.seconds, 3)
    pngs = evaluation_figures(ev) if figures else {}
    ev.metrics["figures"] = sorted(pngs)
    page = evaluation_html(ev, pngs, title)
    return {
        "per_map.csv": ev.cohort.per_map_csv().encode(),
        "reference_per_map.csv": ev.reference.per_map_csv().encode(),
        **pngs,
        "report.html": page.encode(),
    }


__all__ = ["FIGURES", "evaluation_figures", "evaluation_files", "evaluation_html"]
