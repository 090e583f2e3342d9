"""The report of one editing run: siblings of a twin, measured against that twin.

- :func:`siblings_figure`: the twin and several siblings side by side in three
  orthogonal slices through the twin's heart, the twin's outline drawn on every
  sibling (the paper's Fig. 3);
- :func:`twin_figures`: the evaluation figures with the twin as reference;
- :func:`edit_report_html`: the self-contained ``report.html``, one section each from
  :func:`summary_html`, :func:`encoding_html`, :func:`dice_html`, :func:`features_html`,
  :func:`checks_html` and :func:`settings_html`.

It formats and draws; the numbers (Dice against the twin, TV% and its interval, feature
changes) come from :func:`siblings.metrics.twin.twin_metrics`.

Example
-------
>>> import numpy as np
>>> from siblings.data.phantom import make_phantom
>>> from siblings.report.editing import siblings_figure
>>> from siblings.report.plots import figure_png
>>> twin = make_phantom(0, size=32)[0].data
>>> png = figure_png(siblings_figure(twin, [twin, make_phantom(1, size=32)[0].data]))
>>> png[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import datetime as _dt
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .. import anatomy
from ..boxes import bounding_box
from ..metrics.cohort import CohortSummary
from ..metrics.twin import UNDEFINED_AGAINST_ONE_MAP
from . import html as H
from .axes import MODEL_AXES, PanelAxes, grid_axes
from .html import interval as _ci
from .html import number as _fmt
from .plots import draw_edges, tissue_colour

FIGURES = {
    "siblings.png": "The twin and siblings in three orthogonal slices through the twin's heart "
    "centre; black lines: the twin's tissue outlines, drawn on every sibling.",
    "volumes.png": "LV vs RV volume of the siblings; grey: the twin.",
    "violations.png": "Siblings violating each topology check (%, 95% bootstrap interval), and "
    "the twin (0 or 100%).",
    "occupancy_heart.png": "Heart occupancy (1 − P_background) of the twin and of the siblings, "
    "and P_diff = P_siblings − P_twin (masked where either is 0).",
    "occupancy.png": "Occupancy per tissue: twin, siblings and P_diff.",
}


# ---------------------------------------------------------------------------------
# Fig. 3: twin and siblings side by side.
# ---------------------------------------------------------------------------------
def label_colormap() -> ListedColormap:
    """Label value → colour (``anatomy.COLOURS``), background white."""
    colours = [(1.0, 1.0, 1.0)] + [
        tuple(c / 255.0 for c in anatomy.COLOURS[t]) for t in anatomy.TISSUES
    ]
    return ListedColormap(colours, name="cardiac_labels")


def heart_box(maps: Sequence[np.ndarray], margin: int = 3) -> tuple[slice, slice, slice]:
    """The smallest box holding every non-background voxel of ``maps``, plus ``margin``
    (the whole grid when every map is background)."""
    box = bounding_box(*(np.asarray(m) > 0 for m in maps), pad=margin)
    return box if box is not None else tuple(slice(0, int(s)) for s in np.shape(maps[0]))  # type: ignore[return-value]


def heart_centre_index(label_map: np.ndarray) -> tuple[int, int, int]:
    """Voxel nearest the centroid of the heart (all non-background voxels)."""
    idx = np.argwhere(np.asarray(label_map) > 0)
    if idx.size == 0:
        return tuple(int(s) // 2 for s in label_map.shape)  # type: ignore[return-value]
    return tuple(round(float(v)) for v in idx.mean(axis=0))  # type: ignore[return-value]


def siblings_figure(
    twin: np.ndarray,
    siblings: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    index: Sequence[int] | None = None,
    orientation: PanelAxes | str = MODEL_AXES,
    outline: bool = True,
    crop: bool = True,
    title: str | None = None,
) -> Figure:
    """Twin and siblings side by side (paper Fig. 3): rows = the views holding array axis
    0, 1, 2 fixed (sagittal, coronal, axial for RAS arrays).

    Parameters
    ----------
    twin : the twin's label map (3D, values 0–6), on the siblings' grid.
    siblings : label maps of the siblings to show (one column each).
    names : column titles of the siblings (default ``sibling 0``, ``sibling 1``, …).
    index : voxel the three slices pass through (default: the twin's heart centroid).
    orientation : what the panels may say about direction
        (:func:`siblings.report.axes.panel_axes` decides it from the data): model axes
        (the default: a map on the model grid is not in the patient's axes), axis codes
        such as ``"RAS"``, or a :class:`~siblings.report.axes.PanelAxes`; a line under
        the figure says which.
    outline : draw the twin's tissue outlines (black) on every sibling.
    crop : show only the box holding the hearts of all maps shown.
    """
    twin = np.asarray(twin)
    sibs = [np.asarray(s) for s in siblings]
    for s in sibs:
        if s.shape != twin.shape:
            raise ValueError(f"sibling grid {s.shape} differs from the twin's {twin.shape}")
    names = list(names) if names is not None else [f"sibling {i}" for i in range(len(sibs))]
    centre = np.asarray(index if index is not None else heart_centre_index(twin))
    box = heart_box([twin, *sibs]) if crop else tuple(slice(0, s) for s in twin.shape)
    lo = np.array([b.start for b in box])
    centre = np.clip(centre - lo, 0, np.array([b.stop - b.start for b in box]) - 1)
    cols = [twin[box], *(s[box] for s in sibs)]
    titles = ["twin", *names]
    cmap = label_colormap()
    axes_ = PanelAxes.of(orientation)
    views = axes_.views()
    n_cols = len(cols)
    fig, axes = plt.subplots(
        3, n_cols, figsize=(1.9 * n_cols + 0.4, 6.2), squeeze=False, constrained_layout=True
    )
    twin_slices = [
        (np.asarray(sl) if sl is not None else None)
        for sl in _slices(cols[0], centre)  # type: ignore[arg-type]
    ]
    for c, vol in enumerate(cols):
        for r, sl in enumerate(_slices(vol, centre)):
            ax = axes[r, c]
            ax.imshow(sl, origin="lower", cmap=cmap, vmin=-0.5, vmax=6.5, interpolation="nearest")
            if outline and c > 0:
                ref = twin_slices[r]
                for t in anatomy.TISSUES:
                    mask = (ref == anatomy.LABELS[t]).astype(float)
                    if mask.any() and not mask.all():
                        ax.contour(mask, levels=[0.5], colors="black", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9, fontweight="bold" if c == 0 else "normal")
            if c == 0:
                ax.set_ylabel(views[r].name, fontsize=9)
                draw_edges(
                    ax,
                    views[r].edges,
                    fontsize=6,
                    color="#555555",
                    bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8),
                )
    handles = [Patch(color=tissue_colour(t), label=t) for t in anatomy.TISSUES]
    if outline and n_cols > 1:
        handles.append(plt.Line2D([], [], color="black", lw=0.8, label="twin outline"))
    # The legend's title says what the panels' edge labels mean (letters or model axes).
    width = max(60, int(1.9 * n_cols * 19))  # characters of 6.5 pt text across the figure
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=len(handles),
        fontsize=7,
        title=textwrap.fill(axes_.note(), width),
        title_fontsize=6.5,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _slices(volume: np.ndarray, centre: np.ndarray) -> list[np.ndarray]:
    i, j, k = (int(v) for v in centre)
    return [volume[i, :, :].T, volume[:, j, :].T, volume[:, :, k].T]


# ---------------------------------------------------------------------------------
# Figures and page.
# ---------------------------------------------------------------------------------
def twin_figures(
    siblings: CohortSummary,
    twin: CohortSummary,
    metrics: dict,
    dpi: int = 100,
    *,
    orientation: PanelAxes | str = MODEL_AXES,
) -> dict[str, bytes]:
    """The evaluation figures with the twin as reference: volumes, violations, occupancy
    (its slices labelled by ``orientation``, as in :func:`siblings_figure`)."""
    from .plots import figure_png, occupancy_figure, violation_bars, volume_scatter_figure

    lv, rv = "LV_volume_ml", "RV_volume_ml"
    sib_name = f"siblings (n = {metrics['n']})"
    figs = {
        "volumes.png": figure_png(
            volume_scatter_figure(
                np.column_stack([siblings.feature(lv), siblings.feature(rv)]),
                np.column_stack([twin.feature(lv), twin.feature(rv)]),
                cohort_label="siblings",
                reference_label="twin",
            ),
            dpi=dpi,
        ),
        "violations.png": figure_png(
            violation_bars(
                {
                    "twin": metrics["reference"]["violation_rate"],
                    sib_name: metrics["violation_rate"],
                },
                {sib_name: metrics.get("violation_rate_ci")},
                colours={"twin": "#4D4D4D"},
                title=f"TV%: siblings {metrics['tv_percent']:.1f}, twin "
                f"{metrics['reference']['tv_percent']:.1f}",
            ),
            dpi=dpi,
        ),
        "occupancy_heart.png": figure_png(
            occupancy_figure(
                twin.occupancy,
                siblings.occupancy,
                channels=("heart",),
                names=("twin", "siblings"),
                orientation=orientation,
            ),
            dpi=dpi,
        ),
        "occupancy.png": figure_png(
            occupancy_figure(
                twin.occupancy,
                siblings.occupancy,
                names=("twin", "siblings"),
                orientation=orientation,
            ),
            dpi=dpi,
        ),
    }
    return figs


def encoding_html(encoding: dict | None) -> str:
    """The table of the twin's round-trip Dice per tissue, before and after inversion."""
    if not encoding:
        return '<p class="meta">Not recorded.</p>'
    before = encoding["roundtrip_dice_posterior_mean"]
    after = encoding["roundtrip_dice"]
    low = encoding.get("out_of_distribution", {})
    threshold = encoding.get("ood_threshold")
    steps = encoding["invert_steps"]
    rec = encoding.get("inversion") or {}
    rows = [
        [t, _fmt(before[t]), _fmt(after[t]) if steps else "–", f"{after[t] - before[t]:+.3f}"]
        for t in after
    ]
    table = H.table(
        ["tissue", "posterior mean (the paper)", f"after inversion ({steps} steps)", "change"],
        rows,
        row_classes=["bad" if t in low else "" for t in after],
    )
    if steps:
        loss = {"dice": "soft Dice loss", "cross_entropy": "cross-entropy"}.get(
            rec.get("loss", ""), rec.get("loss", "loss")
        )
        how = (
            f"The edits start from the posterior mean refined by inversion: "
            f"{rec.get('steps', steps)} of {steps} Adam steps (learning rate "
            f"{rec.get('lr', 0):g}"
            + (", stopped early" if rec.get("stopped_early") else "")
            + f") on the {loss} of decode(z)/{rec.get('temperature', 1):g} against the twin "
            f"({rec.get('loss_before', float('nan')):.4f} → "
            f"{rec.get('loss_after', float('nan')):.4f}), keeping the step "
            f"({rec.get('best_step', 0)}) with the best mean round-trip Dice."
        )
    else:
        how = "The edits start from the encoder's posterior mean (the paper; --invert-steps 0)."
    note = (
        "Round-trip Dice per tissue, twin vs decode(encode(twin)) (1.0 where both lack the "
        f"tissue). {how} Below {_fmt(threshold, 2)} for any tissue (shaded), the twin is out "
        "of the model's distribution."
    )
    return table + f'<p class="meta">{H.esc(note)}</p>'


def method_text(run: dict) -> str:
    """The run's method in words: ψ and recomputed steps, or what is regenerated and kept."""
    params = run["parameters"]
    if run["method"] == "perturbational":
        return (
            f"perturbational editing, ψ = {params['psi']:g} (the last "
            f"{params['recomputed_steps']} of {params['steps']} steps recomputed)"
        )
    return (
        f"localized editing, regenerating {', '.join(params['regenerate'])}"
        f" (kept: {', '.join(params['kept']) or 'nothing'}; keep mask dilated "
        f"{params['dilate']}×{', background kept' if params['keep_background'] else ''})"
    )


def summary_html(m: dict) -> str:
    """The summary table (counts, violations, FD/P/R against a reference) and its note."""
    summary_rows = [
        ["siblings", m["n"], "", "1 twin"],
        *H.violation_rows(m),
        ["Fréchet distance, precision, recall", "–", "", "undefined against one map (below)"],
    ]
    against = m.get("against_reference")
    if against:
        summary_rows += [
            [
                f"FD vs reference cohort (n = {against['n_reference']})",
                _fmt(against["fd"]),
                _ci(against.get("fd_ci"), 3),
                "",
            ],
            [
                f"precision (k = {against['k']})",
                _fmt(against["precision"]),
                _ci(against.get("precision_ci"), 3),
                "",
            ],
            [
                f"recall (k = {against['k']})",
                _fmt(against["recall"]),
                _ci(against.get("recall_ci"), 3),
                "",
            ],
        ]
    summary = H.table(["metric", "siblings", "95% interval", "twin"], summary_rows)
    note = (
        f'<p class="meta">FD, precision and recall: {H.esc(UNDEFINED_AGAINST_ONE_MAP)}.'
        + (
            f" Against the reference cohort <code>{H.esc(against['reference_dir'])}</code>: "
            f"see <code>reference/report.html</code>."
            if against
            else ""
        )
        + "</p>"
    )
    return summary + note


def dice_html(m: dict) -> str:
    """Dice of each tissue against the twin and its VAE reconstruction ("" without any)."""
    dice_rows = []
    kept = m.get("kept_dice", {})
    recon = m.get("vae_reconstruction_dice", {})
    vs_recon = m.get("dice_vs_vae_reconstruction", {})
    for t, s in (m.get("dice_vs_twin") or {}).items():
        dice_rows.append(
            [
                t + (" (kept)" if t in kept else ""),
                f"{s['mean']:.3f}",
                f"{s['min']:.3f}",
                f"{s['max']:.3f}",
                _fmt(recon.get(t)),
                _fmt(vs_recon[t]["mean"]) if t in vs_recon else "–",
            ]
        )
    if not dice_rows:
        return ""
    return (
        H.table(
            [
                "tissue",
                "Dice vs twin, mean",
                "min",
                "max",
                "twin's VAE reconstruction vs twin",
                "siblings vs that reconstruction, mean",
            ],
            dice_rows,
        )
        + '<p class="meta">Dice of each tissue, sibling vs twin, over the siblings. The twin\'s '
        "VAE reconstruction (encode, decode) is what a kept tissue can at best keep through "
        "the autoencoder; the last column compares the siblings with that reconstruction, "
        "i.e. what the edit itself changed.</p>"
    )


def features_html(m: dict) -> str:
    """The morphology table: each feature of the twin against the siblings' mean and change."""
    return H.table(
        ["feature", "twin", "siblings mean ± sd", "mean change", "mean |change| (%)"],
        [
            [
                col,
                f"{f['twin']:.1f}",
                f"{f['mean']:.1f} ± {f['std']:.1f}",
                f"{f['mean_change']:+.1f}",
                _fmt(f["mean_abs_change_percent"], 1),
            ]
            for col, f in m["features"].items()
        ],
    )


def checks_html(m: dict) -> str:
    """The topology table: each check's rule, siblings' violation rate and the twin's."""
    rules = {r.column: r for r in anatomy.TOPOLOGY_RULES}
    ci = m.get("violation_rate_ci") or {}
    return H.table(
        ["check", "rule", "siblings (% of maps)", "95% interval", "twin"],
        [
            [
                f"<code>{H.esc(c)}</code>",
                H.esc(rules[c].description),
                f"{100 * m['violation_rate'][c]:.1f}",
                _ci(ci.get(c), 1, 100.0),
                "violated" if c in m["reference"]["violated"] else "ok",
            ]
            for c in anatomy.TOPOLOGY_COLUMNS
        ],
        row_classes=["bad" if m["violation_rate"][c] > 0 else "" for c in anatomy.TOPOLOGY_COLUMNS],
        raw=True,
    )


def settings_html(m: dict, run: dict, siblings: CohortSummary) -> str:
    """The settings table (twin, method, model, bootstrap, software, time) and file names."""
    params, model, twin = run["parameters"], run["model"], run["twin"]
    settings = H.table(
        ["setting", "value"],
        [
            ["twin", f"{twin['file']} ({twin['kind']})"],
            ["twin sha256", twin["sha256"]],
            ["twin space", twin["space"]],
            ["slice directions", grid_axes(m.get("grid")).note()],
            ["method", method_text(run)],
            ["siblings", f"{m['n']}, seed {params['seed']}, {params['steps']} steps"],
            [
                "model",
                f"{model['checkpoint']} (preset {model['preset']}, {model['grid']}³ at "
                f"{model['voxel_mm']:.3g} mm)",
            ],
            ["checkpoint sha256", model["checkpoint_sha256"]],
            [
                "bootstrap",
                f"{m['bootstrap']['n_boot']} resamples of the siblings, seed "
                f"{m['bootstrap']['seed']}",
            ],
            ["software", f"digital-siblings {run['software']['digital_siblings']}"],
            ["compute time", f"{run['seconds']:.1f} s" if "seconds" in run else "–"],
        ],
    )
    names = ", ".join(siblings.names[:3]) + (" …" if len(siblings) > 3 else "")
    return settings + f'<p class="meta">Sibling files: {H.esc(names)}</p>'


def edit_report_html(
    metrics: dict,
    figures: dict[str, bytes],
    run: dict,
    siblings: CohortSummary,
    title: str | None = None,
    view3d: str = "",
) -> str:
    """The self-contained report page of one editing run.

    ``view3d`` is the rotatable 3D view of the twin and siblings
    (:func:`siblings.report.viewer3d.viewer_html`), shown beside the slices.
    """

    axes_note = grid_axes(metrics.get("grid")).note()

    def fig(name: str) -> str:
        if name not in figures:
            return ""
        slices = name in ("siblings.png", "occupancy_heart.png", "occupancy.png")
        return H.figure(figures[name], FIGURES[name] + (f" {axes_note}" if slices else ""))

    warnings_html = "".join(
        f'<p class="warning">warning: {H.esc(w)}</p>' for w in run.get("warnings", [])
    )
    sections = [
        *([("Warnings", warnings_html)] if warnings_html else []),
        ("Twin and siblings", fig("siblings.png") + view3d),
        ("Summary", summary_html(metrics)),
        ("Encoding of the twin", encoding_html(run.get("encoding"))),
        ("Preservation of the twin", dice_html(metrics)),
        ("Morphology", fig("volumes.png") + features_html(metrics)),
        ("Topology", fig("violations.png") + checks_html(metrics)),
        ("Occupancy", fig("occupancy_heart.png") + fig("occupancy.png")),
        ("Settings", settings_html(metrics, run, siblings)),
    ]
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    subtitle = f"{H.esc(method_text(run))} of {H.esc(run['twin']['file'])} · {when}"
    return H.page(title or "digital-siblings: siblings of a twin", sections, subtitle)


__all__ = [
    "FIGURES",
    "checks_html",
    "dice_html",
    "edit_report_html",
    "encoding_html",
    "features_html",
    "heart_box",
    "heart_centre_index",
    "label_colormap",
    "method_text",
    "settings_html",
    "siblings_figure",
    "summary_html",
    "twin_figures",
]
