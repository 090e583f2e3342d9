"""Figures of the experiments (paper Figs. 4–12) built on :mod:`siblings.report.plots`.

- :func:`sweep_figure`: FD, precision, recall and TV% against steps or cohort size,
  with 95% bootstrap bands (Figs. 11, 12);
- :func:`seed_scatter_figure`: one LV–RV panel per seed, cohorts over the real cohort's
  KDE, the seed as a star (Figs. 6, 8);
- :func:`edited_volume_figure`: 1-D distributions of the edited chamber's volume per seed
  and mask (the text of Fig. 8);
- :func:`pdiff_grid`: ``P_diff`` mid-slices, rows × seeds (Figs. 7, 9);
- :func:`augmentation_figure`: one panel per strategy, threshold lines dashed (Fig. 10).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..metrics.heatmaps import HEART, Occupancy, occupancy_difference
from ..report.axes import PanelAxes
from ..report.plots import (
    REFERENCE_COLOUR,
    SERIES_COLOURS,
    _kde_grid,
    _limits,
    _marginal,
    hdr_thresholds,
    mid_slices,
    occupancy_centre,
    volume_scatter,
)

METRIC_LABELS = (
    ("fd", "Fréchet distance"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("tv_percent", "TV (%)"),
)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sweep_figure(
    x: Sequence[float],
    metrics: Sequence[Mapping],
    xlabel: str,
    *,
    real_tv: float | None = None,
    title: str | None = None,
) -> Figure:
    """Four panels (FD, precision, recall, TV%) of ``metrics[i]`` at ``x[i]``, log x axis.

    Each metrics dict is :func:`siblings.metrics.compare` output: the line joins the
    estimates, the band spans the ``*_ci`` intervals.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    xs = np.asarray(x, dtype=float)
    for ax, (key, label) in zip(axes, METRIC_LABELS, strict=True):
        y = np.array([m[key] for m in metrics], dtype=float)
        ci = [m.get(f"{key}_ci") for m in metrics]
        if all(c is not None for c in ci):
            lo, hi = np.array([c[0] for c in ci]), np.array([c[1] for c in ci])
            ax.fill_between(
                xs, lo, hi, color=SERIES_COLOURS[1], alpha=0.2, lw=0, label="95% interval"
            )
        ax.plot(xs, y, "o-", color=SERIES_COLOURS[1], ms=4, lw=1.3, label="estimate")
        if key == "tv_percent" and real_tv is not None:
            ax.axhline(real_tv, color=REFERENCE_COLOUR, ls="--", lw=1, label="real cohort")
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in xs], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_title(label, fontsize=10)
        ax.grid(color="#e5e5e5", lw=0.6)
        if key in ("precision", "recall"):
            ax.set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _kde_line(ax, xy: np.ndarray, colour: str, xlim, ylim, mass: float = 0.5) -> None:
    """One highest-density contour (``mass``) of the cohort's KDE, in its colour."""
    if len(xy) < 3 or np.ptp(xy[:, 0]) == 0 or np.ptp(xy[:, 1]) == 0:
        return
    try:
        gx, gy, dens = _kde_grid(xy, xlim, ylim, n=90)
        (level,) = hdr_thresholds(dens, [mass])
        if np.isfinite(level) and 0 < level < dens.max():
            ax.contour(gx, gy, dens, levels=[level], colors=[colour], linewidths=1.1)
    except (ValueError, np.linalg.LinAlgError):
        pass


def seed_scatter_figure(
    real_xy: np.ndarray,
    panels: Sequence[tuple[str, np.ndarray, Mapping[str, np.ndarray]]],
    *,
    keep_fraction: float = 0.5,
    kde_mass: float = 0.5,
    xlabel: str = "LV volume (mL)",
    ylabel: str = "RV volume (mL)",
    title: str | None = None,
) -> Figure:
    """One panel per seed: real KDE (grey), each cohort's points and 50% KDE contour, seed ★.

    Parameters
    ----------
    real_xy : (n, 2) LV, RV volumes of the real cohort.
    panels : (seed label, seed (LV, RV), {cohort label: (m, 2) volumes}) per seed.
    keep_fraction : fraction of each cohort's points drawn (the paper shows half); the
        KDE contour uses all of them.
    """
    plt = _plt()
    r = np.asarray(real_xy, dtype=float).reshape(-1, 2)
    every = [np.asarray(v, float).reshape(-1, 2) for _, _, c in panels for v in c.values()]
    seeds = np.array([s for _, s, _ in panels], dtype=float).reshape(-1, 2)
    xlim = _limits(r[:, 0], seeds[:, 0], *[e[:, 0] for e in every])
    ylim = _limits(r[:, 1], seeds[:, 1], *[e[:, 1] for e in every])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.3), squeeze=False)
    for ax, (label, seed_xy, cohorts) in zip(axes[0], panels, strict=True):
        volume_scatter(
            ax, np.empty((0, 2)), r, reference_label="real", show_reference_points=False,
            xlim=xlim, ylim=ylim, cohort_label="",
        )  # fmt: skip
        for j, (name, xy) in enumerate(cohorts.items()):
            xy = np.asarray(xy, dtype=float).reshape(-1, 2)
            colour = SERIES_COLOURS[(j + 1) % len(SERIES_COLOURS)]
            shown = xy[:: max(1, round(1 / keep_fraction))] if keep_fraction < 1 else xy
            ax.scatter(shown[:, 0], shown[:, 1], s=9, color=colour, alpha=0.75, lw=0, label=name)
            _kde_line(ax, xy, colour, xlim, ylim, kde_mass)
        ax.scatter(*seed_xy, marker="*", s=260, color="gold", edgecolor="black", lw=0.8,
                   zorder=5, label="seed")  # fmt: skip
        ax.set_title(f"seed {label}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    keep = [
        (h, lab) for h, lab in zip(handles, labels, strict=True) if lab and "(n = 0)" not in lab
    ]
    note = (
        f"{round(keep_fraction * 100)}% of each cohort's points shown; lines: "
        f"{int(kde_mass * 100)}% KDE region of each cohort; grey: real cohort KDE"
    )
    fig.text(0.5, 0.0, note, ha="center", va="bottom", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(
        *zip(*keep, strict=True), loc="lower center", bbox_to_anchor=(0.5, 0.025),
        ncol=min(len(keep), 8), fontsize=8, frameon=False,
    )  # fmt: skip
    return fig


def edited_volume_figure(
    real: Mapping[str, np.ndarray],
    panels: Sequence[tuple[str, Mapping[str, float], Mapping[str, Mapping[str, np.ndarray]]]],
    *,
    title: str | None = None,
) -> Figure:
    """1-D distributions of each edited chamber's volume: rows = chambers, columns = seeds.

    Parameters
    ----------
    real : chamber → volumes of the real cohort (mL).
    panels : (seed label, {chamber: seed volume}, {chamber: {cohort label: volumes}}).
    """
    plt = _plt()
    chambers = list(real)
    fig, axes = plt.subplots(
        len(chambers), len(panels), figsize=(3.6 * len(panels), 2.4 * len(chambers)), squeeze=False
    )
    for i, ch in enumerate(chambers):
        for j, (label, seed_vol, cohorts) in enumerate(panels):
            ax = axes[i, j]
            vals = [np.asarray(real[ch], float)] + [
                np.asarray(v, float) for v in cohorts[ch].values()
            ]
            grid = np.linspace(*_limits(*vals, np.array([seed_vol[ch]])), 300)
            d = _marginal(np.asarray(real[ch], float), grid)
            if d is not None:
                ax.fill_between(grid, d, color=REFERENCE_COLOUR, alpha=0.25, lw=0, label="real")
            for k, (name, v) in enumerate(cohorts[ch].items()):
                colour = SERIES_COLOURS[(k + 1) % len(SERIES_COLOURS)]
                d = _marginal(np.asarray(v, float), grid)
                if d is not None:
                    ax.plot(grid, d, color=colour, lw=1.4, label=name)
                else:  # all siblings equal: a spike
                    ax.axvline(float(np.mean(v)), color=colour, lw=1.4, label=name)
            ax.axvline(seed_vol[ch], color="black", ls="--", lw=1, label="seed")
            ax.set_yticks([])
            ax.set_xlabel(f"{ch} volume (mL)", fontsize=8)
            if i == 0:
                ax.set_title(f"seed {label}", fontsize=10)
            if j == 0:
                ax.legend(fontsize=6.5, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def pdiff_grid(
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    cohorts: Sequence[Sequence[Occupancy]],
    references: Sequence[Occupancy],
    *,
    channel: str = HEART,
    view: int = 1,
    title: str | None = None,
    names: tuple[str, str] = ("seed", "siblings"),
    mask: str = "either",
) -> Figure:
    """``P_diff = P_cohort − P_reference`` of ``channel``: rows × columns of one mid-slice.

    ``cohorts[r][c]`` is compared with ``references[c]`` (the seed of column ``c``);
    masked (grey) where either occupancy is zero, as :func:`occupancy_difference`. One
    colour scale for the whole grid. ``view``: the model axis held fixed (0, 1 or 2),
    through the occupancy centroid of each column's reference; the experiments' cohorts
    are on the model grid, whose axes are not the patient's (:mod:`siblings.report.axes`),
    so the caption names the slice by its model axes. ``mask="both"`` masks only where
    both occupancies are zero: against a single seed map (P is 0 or 1) masking where
    either is zero would hide every voxel the siblings occupy outside the seed.
    """
    plt = _plt()
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#f2f2f2")
    slices = []
    for r in range(len(row_labels)):
        row = []
        for c in range(len(col_labels)):
            p_ref = references[c].probability(channel)
            p_coh = cohorts[r][c].probability(channel)
            diff = occupancy_difference(p_coh, p_ref)
            if mask == "both":
                diff = np.ma.MaskedArray(diff.data, mask=(p_coh == 0) & (p_ref == 0))
            row.append(mid_slices(diff, occupancy_centre(p_ref))[view])
        slices.append(row)
    lim = (
        max([float(np.ma.abs(s).max()) if s.count() else 0.0 for row in slices for s in row])
        or 1e-3
    )
    fig, axes = plt.subplots(
        len(row_labels), len(col_labels), figsize=(2.3 * len(col_labels) + 0.8, 2.3 * len(row_labels)),
        squeeze=False,
    )  # fmt: skip
    im = None
    for r, label in enumerate(row_labels):
        for c, col in enumerate(col_labels):
            ax = axes[r, c]
            im = ax.imshow(slices[r][c], origin="lower", cmap=cmap, vmin=-lim, vmax=lim,
                           interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"seed {col}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.6, ticks=[-lim, 0, lim])
        cb.ax.set_yticklabels([f"{-lim:.2f}", "0", f"{lim:.2f}"], fontsize=7)
    view_name = PanelAxes().views()[view].name
    ch = "heart (1 − P_bg)" if channel == HEART else channel
    fig.text(
        0.45, 0.0,
        f"P_diff of {ch}, {view_name} slice through the seed's centroid: P_{names[1]} − P_{names[0]} (red: more "
        f"{names[1]}, blue: more {names[0]}); grey: masked where {mask} P is 0.",
        ha="center", va="bottom", fontsize=8,
    )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def augmentation_figure(
    rare_xy: np.ndarray,
    panels: Mapping[str, np.ndarray],
    *,
    lines: Mapping[str, float] | None = None,
    xlabel: str = "LV volume (mL)",
    ylabel: str = "RV volume (mL)",
    title: str | None = None,
) -> Figure:
    """One panel per strategy: its accepted maps over the rare cohort's KDE and points.

    ``lines``: ``{"x": value, "y": value}`` thresholds drawn dashed (e.g. RV = 115 mL).
    """
    plt = _plt()
    r = np.asarray(rare_xy, dtype=float).reshape(-1, 2)
    every = [np.asarray(v, float).reshape(-1, 2) for v in panels.values()]
    xlim = _limits(r[:, 0], *[e[:, 0] for e in every])
    ylim = _limits(r[:, 1], *[e[:, 1] for e in every])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.3), squeeze=False)
    for j, (ax, (name, xy)) in enumerate(zip(axes[0], panels.items(), strict=True)):
        volume_scatter(
            ax, np.asarray(xy, float).reshape(-1, 2), r, cohort_label=name,
            reference_label="rare cohort", colour=SERIES_COLOURS[j % len(SERIES_COLOURS)],
            xlim=xlim, ylim=ylim,
        )  # fmt: skip
        for axis, value in (lines or {}).items():
            (ax.axvline if axis == "x" else ax.axhline)(value, color="black", ls="--", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=6.5, loc="upper left", framealpha=0.85)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def change_grid(
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    cohorts: Sequence[Sequence[Occupancy]],
    seeds: Sequence[np.ndarray],
    *,
    view: int = 1,
    title: str | None = None,
) -> Figure:
    """Where siblings differ from their seed: the fraction whose label differs, per voxel.

    ``1 − P_cohort[seed label]`` at each voxel (0: every sibling has the seed's label
    there, 1: none has), for ``cohorts[r][c]`` against ``seeds[c]`` (a label map); one
    slice (``view``: the model axis held fixed, as :func:`pdiff_grid`) through the seed's
    heart centroid, background-only voxels where nothing changed left blank. Unlike
    ``P_diff`` of one channel it shows a changed chamber even when the heart as a whole
    keeps its place.
    """
    plt = _plt()
    cmap = plt.get_cmap("magma_r").with_extremes(bad="#f2f2f2")
    slices = []
    for r in range(len(row_labels)):
        row = []
        for c in range(len(col_labels)):
            seed = np.asarray(seeds[c])
            p = cohorts[r][c].probabilities()
            same = np.take_along_axis(p, seed[None].astype(np.intp), axis=0)[0]
            change = np.ma.MaskedArray(1.0 - same, mask=(seed == 0) & (p[0] == 1.0))
            row.append(mid_slices(change, occupancy_centre((seed > 0).astype(float)))[view])
        slices.append(row)
    fig, axes = plt.subplots(
        len(row_labels), len(col_labels), figsize=(2.3 * len(col_labels) + 0.8, 2.3 * len(row_labels)),
        squeeze=False,
    )  # fmt: skip
    im = None
    for r, label in enumerate(row_labels):
        for c, col in enumerate(col_labels):
            ax = axes[r, c]
            im = ax.imshow(slices[r][c], origin="lower", cmap=cmap, vmin=0, vmax=1,
                           interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"seed {col}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, ticks=[0, 0.5, 1]).ax.tick_params(labelsize=7)
    view_name = PanelAxes().views()[view].name
    fig.text(
        0.45, 0.0,
        f"Fraction of siblings whose label differs from the reference's ({view_name} slice "
        "through its heart centroid); grey: background in the reference and in every sibling.",
        ha="center", va="bottom", fontsize=8,
    )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
