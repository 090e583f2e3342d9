"""Figures for cohort evaluation, as reusable functions (matplotlib, Agg backend).

- :func:`volume_scatter` / :func:`volume_scatter_figure`: LV vs RV volume of a cohort
  over KDE contours of the reference (paper Fig. 4, 8, 10);
- :func:`occupancy_figure`: three orthogonal slices (through each tissue's occupancy
  centroid) of ``P_reference``,
  ``P_cohort`` and ``P_diff`` per channel, ``P_diff`` masked where either ``P`` is zero
  (paper Fig. 5, 7, 9);
- :func:`violation_bars`: the per-check violation rates of one or more cohorts.

Each ``*_figure`` function returns a :class:`matplotlib.figure.Figure`;
:func:`figure_png` turns it into PNG bytes. Axes-level functions take an ``ax`` so
experiments can compose panels.

Example
-------
>>> import numpy as np
>>> from siblings.report.plots import volume_scatter_figure, figure_png
>>> rng = np.random.default_rng(0)
>>> fig = volume_scatter_figure(rng.normal(100, 15, (60, 2)), rng.normal(100, 20, (300, 2)))
>>> figure_png(fig)[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .. import anatomy
from ..metrics.heatmaps import HEART, Occupancy, occupancy_difference
from .axes import MODEL_AXES, PanelAxes

COHORT_COLOUR = "#D55E00"
REFERENCE_COLOUR = "#4D4D4D"
SERIES_COLOURS = ("#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")
HEART_COLOUR = "#B22222"
MASKED_GREY = "#d9d9d9"


def tissue_colour(name: str) -> str:
    """Hex colour of a tissue (``anatomy.COLOURS``); dark red for the heart channel."""
    if name == HEART:
        return HEART_COLOUR
    return to_hex(np.array(anatomy.COLOURS[name]) / 255.0)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------
# LV–RV volume scatter over reference KDE contours.
# ---------------------------------------------------------------------------------
def hdr_thresholds(density: np.ndarray, masses: Sequence[float]) -> list[float]:
    """Density values enclosing the given probability masses (highest-density regions).

    ``density`` is evaluated on a regular grid; the region ``density >= t`` holds the
    fraction ``mass`` of the grid's total. Returned in the order of ``masses``.
    """
    d = np.sort(np.asarray(density, dtype=np.float64).ravel())[::-1]
    cum = np.cumsum(d)
    if cum[-1] <= 0:
        return [float("nan")] * len(masses)
    cum /= cum[-1]
    return [float(d[min(np.searchsorted(cum, m), d.size - 1)]) for m in masses]


def _kde_grid(points: np.ndarray, xlim, ylim, n: int = 120):
    from scipy.stats import gaussian_kde

    kde = gaussian_kde(points.T)
    gx, gy = np.meshgrid(np.linspace(*xlim, n), np.linspace(*ylim, n))
    return gx, gy, kde(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)


def _limits(*arrays: np.ndarray, pad: float = 0.12) -> tuple[float, float]:
    v = np.concatenate([a for a in arrays if a.size])
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return lo - pad * span, hi + pad * span


def volume_scatter(
    ax,
    cohort_xy: np.ndarray,
    reference_xy: np.ndarray,
    *,
    cohort_label: str = "cohort",
    reference_label: str = "reference",
    masses: Sequence[float] = (0.25, 0.5, 0.75, 0.95),
    colour: str = COHORT_COLOUR,
    show_reference_points: bool = True,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
) -> None:
    """Scatter ``cohort_xy`` (n, 2) over KDE highest-density contours of ``reference_xy``.

    Contours enclose ``masses`` of the reference's Gaussian KDE (Scott's bandwidth).
    A reference too small or degenerate for a KDE is shown as points only.
    """
    c = np.asarray(cohort_xy, dtype=float).reshape(-1, 2)
    r = np.asarray(reference_xy, dtype=float).reshape(-1, 2)
    xlim = xlim or _limits(c[:, 0], r[:, 0])
    ylim = ylim or _limits(c[:, 1], r[:, 1])
    try:
        if len(r) < 3:
            raise ValueError("too few points")
        gx, gy, dens = _kde_grid(r, xlim, ylim)
        levels = sorted(set(hdr_thresholds(dens, masses)))
        if len(levels) < 2 or not np.all(np.isfinite(levels)):
            raise ValueError("flat density")
        ax.contourf(gx, gy, dens, levels=[*levels, dens.max() * 1.0001], cmap="Greys", alpha=0.55)
        ax.contour(gx, gy, dens, levels=levels, colors=REFERENCE_COLOUR, linewidths=0.7)
        kde_note = f"{reference_label} KDE ({', '.join(f'{m:.0%}' for m in masses)} regions)"
        ax.plot([], [], color=REFERENCE_COLOUR, lw=0.7, label=kde_note)
    except (ValueError, np.linalg.LinAlgError):
        pass
    if show_reference_points:
        ax.scatter(
            r[:, 0],
            r[:, 1],
            s=5,
            color=REFERENCE_COLOUR,
            alpha=0.35,
            lw=0,
            label=f"{reference_label} (n = {len(r)})",
        )
    ax.scatter(
        c[:, 0],
        c[:, 1],
        s=14,
        color=colour,
        alpha=0.8,
        edgecolor="white",
        lw=0.3,
        label=f"{cohort_label} (n = {len(c)})",
    )
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)


def volume_scatter_figure(
    cohort_xy: np.ndarray,
    reference_xy: np.ndarray,
    *,
    xlabel: str = "LV volume (mL)",
    ylabel: str = "RV volume (mL)",
    cohort_label: str = "cohort",
    reference_label: str = "reference",
    title: str | None = None,
) -> Figure:
    """LV–RV volume scatter with marginal densities (reference grey, cohort coloured)."""
    c = np.asarray(cohort_xy, dtype=float).reshape(-1, 2)
    r = np.asarray(reference_xy, dtype=float).reshape(-1, 2)
    fig = plt.figure(figsize=(6.2, 6.0))
    gs = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4), wspace=0.04, hspace=0.04)
    ax = fig.add_subplot(gs[1, 0])
    top = fig.add_subplot(gs[0, 0], sharex=ax)
    right = fig.add_subplot(gs[1, 1], sharey=ax)
    volume_scatter(ax, c, r, cohort_label=cohort_label, reference_label=reference_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", fontsize=8, frameon=True, framealpha=0.85)
    for axis, col, horizontal in ((top, 0, True), (right, 1, False)):
        lim = ax.get_xlim() if horizontal else ax.get_ylim()
        grid = np.linspace(*lim, 200)
        for pts, colour in ((r[:, col], REFERENCE_COLOUR), (c[:, col], COHORT_COLOUR)):
            dens = _marginal(pts, grid)
            if dens is None:
                continue
            if horizontal:
                axis.fill_between(grid, dens, color=colour, alpha=0.3, lw=0)
                axis.plot(grid, dens, color=colour, lw=1)
            else:
                axis.fill_betweenx(grid, dens, color=colour, alpha=0.3, lw=0)
                axis.plot(dens, grid, color=colour, lw=1)
        axis.axis("off")
    if title:
        top.set_title(title, fontsize=10)
    return fig


def _marginal(points: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    from scipy.stats import gaussian_kde

    if points.size < 2 or np.ptp(points) == 0:
        return None
    try:
        return gaussian_kde(points)(grid)
    except (ValueError, np.linalg.LinAlgError):
        return None


# ---------------------------------------------------------------------------------
# Occupancy heatmaps: three orthogonal mid-slices.
# ---------------------------------------------------------------------------------
def mid_slices(volume: np.ndarray, index: Sequence[int] | None = None) -> list[np.ndarray]:
    """The slices holding array axis 0, 1 and 2 fixed through ``index`` (default the grid
    centre), each transposed so the higher remaining axis is vertical. Their names and
    edge labels (sagittal, coronal, axial for a RAS scan; model axes on the model grid)
    are :meth:`siblings.report.axes.PanelAxes.views`."""
    v = np.asarray(volume) if not isinstance(volume, np.ma.MaskedArray) else volume
    i, j, k = index if index is not None else [s // 2 for s in v.shape]
    return [v[i, :, :].T, v[:, j, :].T, v[:, :, k].T]


def occupancy_centre(*volumes: np.ndarray) -> tuple[int, int, int]:
    """Voxel nearest the occupancy-weighted centroid of the first non-empty volume.

    Slices through the grid centre miss tissues that sit off-centre (the atria, the
    aorta), so each row of :func:`occupancy_figure` is cut through its own centroid.
    Falls back to the grid centre when every volume is empty.
    """
    for vol in volumes:
        w = np.asarray(vol, dtype=np.float64)
        total = w.sum()
        if total > 0:
            centre = []
            for axis in range(3):
                profile = w.sum(axis=tuple(a for a in range(3) if a != axis))
                c = float(profile @ np.arange(w.shape[axis])) / total
                centre.append(int(np.clip(round(c), 0, w.shape[axis] - 1)))
            return tuple(centre)  # type: ignore[return-value]
    return tuple(s // 2 for s in np.shape(volumes[0]))  # type: ignore[return-value]


def draw_edges(ax, edges: Sequence[str], **text_kw) -> list:
    """Write the (left, right, bottom, top) edge labels of a slice panel inside ``ax``
    (an empty label draws nothing); returns the text artists, left to top."""
    places = (
        (0.02, 0.5, "left", "center"),
        (0.98, 0.5, "right", "center"),
        (0.5, 0.02, "center", "bottom"),
        (0.5, 0.98, "center", "top"),
    )
    return [
        ax.text(x, y, label, ha=ha, va=va, transform=ax.transAxes, **text_kw)
        for label, (x, y, ha, va) in zip(edges, places, strict=True)
        if label
    ]


def _channel_volume(
    source: Occupancy | Mapping[str, np.ndarray] | np.ndarray, channel: str
) -> np.ndarray:
    if isinstance(source, Occupancy):
        return source.probability(channel)
    if isinstance(source, np.ndarray):  # P of shape (7, D, H, W)
        if channel == HEART:
            return 1.0 - source[0]
        return source[anatomy.LABELS[channel]]
    return np.asarray(source[channel])


def occupancy_figure(
    reference: Occupancy | Mapping[str, np.ndarray] | np.ndarray,
    cohort: Occupancy | Mapping[str, np.ndarray] | np.ndarray,
    *,
    channels: Sequence[str] = (HEART, *anatomy.TISSUES),
    names: tuple[str, str] = ("reference", "cohort"),
    index: Sequence[int] | None = None,
    orientation: PanelAxes | str = MODEL_AXES,
    diff_limit: float | None = None,
    title: str | None = None,
) -> Figure:
    """Rows = channels; columns = ``P_reference``, ``P_cohort``, ``P_diff`` × 3 orthogonal slices.

    Parameters
    ----------
    reference, cohort : :class:`~siblings.metrics.heatmaps.Occupancy`, a ``P`` array of
        shape (7, D, H, W), or a mapping channel → 3D array.
    channels : ``"heart"`` (``1 − P_background``) and/or tissue names.
    names : labels of the two cohorts.
    index : voxel all slices pass through. Default: per row, the voxel nearest the
        occupancy-weighted centroid of the reference (:func:`occupancy_centre`), so an
        off-centre tissue is cut through its middle; the voxel is printed in the row's
        first panel.
    orientation : what the panels may say about direction
        (:func:`siblings.report.axes.panel_axes` decides it from the data): model axes
        (the default: bare arrays on the model grid are not in the patient's axes), axis
        codes such as ``"RAS"``, or a :class:`~siblings.report.axes.PanelAxes`; the
        caption says which.
    diff_limit : colour limit of ``P_diff`` (default per row: largest ``|P_diff|`` in the
        three slices shown). ``P_diff = P_cohort − P_reference``, masked where either is 0:
        red = more cohort occupancy, blue = more reference occupancy.
    """
    n_rows = len(channels)
    # The column headings take 0.55 in; a title gets its own 0.3 in above them.
    head_in, foot_in, row_in = (0.85 if title else 0.55), 0.6, 1.45
    height = row_in * n_rows + head_in + foot_in
    fig = plt.figure(figsize=(15.0, height))
    # Columns: reference ×3, its colour bar, gap, cohort ×3, gap, P_diff ×3, its colour bar.
    gs = fig.add_gridspec(
        n_rows,
        13,
        width_ratios=[1, 1, 1, 0.06, 0.42, 1, 1, 1, 0.12, 1, 1, 1, 0.06],
        wspace=0.06,
        hspace=0.12,
        left=0.05,
        right=0.95,
        top=1.0 - head_in / height,
        bottom=foot_in / height,
    )
    cols = [0, 1, 2, 5, 6, 7, 9, 10, 11]
    axes_ = PanelAxes.of(orientation)
    views = axes_.views()
    p_cmap = plt.get_cmap("viridis").with_extremes(bad=MASKED_GREY)
    d_cmap = plt.get_cmap("RdBu_r").with_extremes(bad=MASKED_GREY)
    letter_box = dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8)
    for r, channel in enumerate(channels):
        p_ref = _channel_volume(reference, channel)
        p_coh = _channel_volume(cohort, channel)
        diff = occupancy_difference(p_coh, p_ref)
        at = tuple(index) if index is not None else occupancy_centre(p_ref, p_coh)
        s_ref, s_coh, s_diff = (mid_slices(p_ref, at), mid_slices(p_coh, at), mid_slices(diff, at))
        lim = diff_limit
        if lim is None:
            lim = max(float(np.ma.abs(s).max()) if s.count() else 0.0 for s in s_diff) or 1e-3
        ims = []
        for g, group in enumerate((s_ref, s_coh, s_diff)):
            for v, sl in enumerate(group):
                ax = fig.add_subplot(gs[r, cols[3 * g + v]])
                if g < 2:
                    img = np.ma.masked_equal(np.asarray(sl, dtype=float), 0.0)
                    im = ax.imshow(
                        img, origin="lower", cmap=p_cmap, vmin=0, vmax=1, interpolation="nearest"
                    )
                else:
                    im = ax.imshow(
                        sl,
                        origin="lower",
                        cmap=d_cmap,
                        vmin=-lim,
                        vmax=lim,
                        interpolation="nearest",
                    )
                ims.append(im)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    head = ("P_" + names[0], "P_" + names[1], "P_diff")[g]
                    name = views[v].name
                    ax.set_title(f"{head}\n{name}" if v == 1 else name, fontsize=9)
                if r == 0:  # edge labels on the first row (same for every row)
                    draw_edges(ax, views[v].edges, fontsize=7, color="#333333", bbox=letter_box)
                if g == 0 and v == 0:
                    label = "heart\n(1 − P_bg)" if channel == HEART else channel
                    ax.set_ylabel(
                        label,
                        fontsize=10,
                        fontweight="bold",
                        bbox=dict(boxstyle="round,pad=0.25", fc=tissue_colour(channel), alpha=0.45),
                    )
                    ax.text(
                        0.02,
                        0.02 if r else 0.12,
                        "voxel ({}, {}, {})".format(*at),
                        transform=ax.transAxes,
                        fontsize=7,
                        color="#333333",
                        ha="left",
                        va="bottom",
                    )
        cb = fig.colorbar(ims[0], cax=fig.add_subplot(gs[r, 3]), ticks=[0, 0.5, 1])
        cb.ax.tick_params(labelsize=7)
        if r == 0:
            cb.ax.set_title("P", fontsize=8)
        cb = fig.colorbar(ims[-1], cax=fig.add_subplot(gs[r, 12]), ticks=[-lim, 0, lim])
        cb.ax.tick_params(labelsize=7)
        cb.ax.set_yticklabels([f"{-lim:+.2f}", "0", f"{lim:+.2f}"])
        cb.set_label("P_diff", fontsize=8, labelpad=1)
    where = (
        "through voxel ({}, {}, {})".format(*index)
        if index is not None
        else "through each row's occupancy centroid (voxel in its first panel)"
    )
    fig.text(
        0.5,
        0.3 / height,
        f"P = fraction of maps with the tissue at a voxel; grey: P = 0. "
        f"P_diff = P_{names[1]} − P_{names[0]} (red: more {names[1]}, blue: more {names[0]}; "
        f"colour scale per row), grey where either P is 0. Slices {where}.\n{axes_.note()}",
        ha="center",
        va="center",
        fontsize=8,
    )
    if title:
        fig.suptitle(title, fontsize=11, y=1.0 - 0.08 / height, va="top")
    return fig


# ---------------------------------------------------------------------------------
# Per-check violation rates.
# ---------------------------------------------------------------------------------
def violation_bars(
    rates: Mapping[str, Mapping[str, float]],
    intervals: Mapping[str, Mapping[str, Sequence[float]] | None] | None = None,
    *,
    colours: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Horizontal grouped bars: % of maps violating each of the 12 checks, per series.

    Parameters
    ----------
    rates : series name → {check column → fraction of maps violating it}.
    intervals : series name → {check column → [lo, hi]} fractions, drawn as error bars.
    colours : series name → colour (default: reference-like names grey, others in turn).
    """
    names = list(rates)
    cols = anatomy.TOPOLOGY_COLUMNS
    rules = {rule.column: rule for rule in anatomy.TOPOLOGY_RULES}
    height = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(cols) + 1.2))
    y = np.arange(len(cols))[::-1].astype(float)
    palette = iter(SERIES_COLOURS)
    xmax, with_interval = 1.0, False
    for s, name in enumerate(names):
        colour = (colours or {}).get(name)
        if colour is None:
            colour = (
                REFERENCE_COLOUR
                if name.lower().startswith(("reference", "real"))
                else next(palette)
            )
        vals = np.array([100.0 * rates[name][c] for c in cols])
        pos = y + (len(names) - 1 - 2 * s) * height / 2
        xerr, ends = None, vals
        iv = (intervals or {}).get(name)
        if iv:
            lo = np.array([100.0 * iv[c][0] for c in cols])
            hi = np.array([100.0 * iv[c][1] for c in cols])
            xerr = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
            ends = np.maximum(vals, hi)
            with_interval = True
        ax.barh(
            pos,
            vals,
            height=height * 0.92,
            color=colour,
            label=name,
            xerr=xerr,
            error_kw=dict(lw=0.8, capsize=2, ecolor="#222222"),
        )
        # The value sits after the bar or its whisker, whichever ends later.
        for p, v, e in zip(pos, vals, ends, strict=True):
            ax.text(e, p, f" {v:.1f}", va="center", ha="left", fontsize=7, color="#333333")
        xmax = max(xmax, float(ends.max()))
    ax.set_yticks(y)
    ax.set_yticklabels([f"{c}  ({rules[c].description})" for c in cols], fontsize=8)
    ax.set_xlabel("maps violating the check (%)")
    ax.set_xlim(0, min(100.0, xmax * 1.15 + 1))
    ax.grid(axis="x", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    if with_interval:
        handles.append(Line2D([], [], color="#222222", lw=0.8, marker="|", markersize=6))
        labels.append("95% bootstrap interval")
    ax.legend(
        handles,
        labels,
        fontsize=8,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncol=len(labels),
        frameon=False,
    )
    for sep in (6.5, 1.5):  # between components / required / forbidden contacts
        ax.axhline(sep, color="#999999", lw=0.6, ls=":")
    if title:
        ax.set_title(title, fontsize=10, pad=22)
    fig.tight_layout()
    return fig
