"""Evaluation figures: where the slices are cut, which way they face, what they show."""

from __future__ import annotations

import numpy as np

from siblings import anatomy
from siblings.report.axes import PanelAxes
from siblings.report.plots import (
    figure_png,
    mid_slices,
    occupancy_centre,
    occupancy_figure,
    violation_bars,
)


def test_slices_are_cut_through_the_occupancy_centroid_of_an_off_centre_tissue():
    p = np.zeros((32, 32, 32), np.float32)
    p[4:9, 20:25, 26:29] = 1.0  # centroid (6, 22, 27), far from the grid centre
    assert occupancy_centre(p) == (6, 22, 27)
    # The first non-empty volume decides; an all-zero grid falls back to its centre.
    assert occupancy_centre(np.zeros_like(p), p) == (6, 22, 27)
    assert occupancy_centre(np.zeros_like(p)) == (16, 16, 16)
    # Weights count: a voxel with P = 0.75 pulls three times as hard as one with 0.25.
    q = np.zeros((9, 9, 9))
    q[0, 4, 4], q[8, 4, 4] = 0.75, 0.25
    assert occupancy_centre(q) == (2, 4, 4)


def test_slices_face_the_way_their_edge_letters_say_for_ras_and_lps():
    v = np.zeros((8, 8, 8))
    v[7, 1, 6] = 1.0  # high x, low y, high z
    sag, cor, ax = mid_slices(v, (7, 1, 6))
    # imshow(origin="lower"): column index grows to the right, row index upwards.
    assert np.argwhere(sag).tolist() == [[6, 1]]  # row z = 6 (up), column y = 1 (left)
    assert np.argwhere(cor).tolist() == [[6, 7]]  # row z (up), column x = 7 (right)
    assert np.argwhere(ax).tolist() == [[1, 7]]  # row y = 1 (down), column x (right)
    # (left, right, bottom, top) per view: RAS arrays put R, A, S at the high index.
    edges = [v.edges for v in PanelAxes.of("RAS").views()]
    assert edges == [("P", "A", "I", "S"), ("L", "R", "I", "S"), ("L", "R", "P", "A")]
    edges = [v.edges for v in PanelAxes.of("LPS").views()]
    assert edges == [("A", "P", "I", "S"), ("R", "L", "I", "S"), ("R", "L", "A", "P")]


def test_occupancy_figure_masks_p_diff_where_either_occupancy_is_zero():
    ref = np.zeros((7, 16, 16, 16), np.float32)
    coh = np.zeros_like(ref)
    ref[0], coh[0] = 1.0, 1.0
    ref[4, 4:10, 4:10, 4:10], ref[0, 4:10, 4:10, 4:10] = 0.5, 0.5
    coh[4, 6:12, 6:12, 6:12], coh[0, 6:12, 6:12, 6:12] = 1.0, 0.0
    fig = occupancy_figure(ref, coh, channels=("LV",), index=(8, 8, 8))
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 9  # reference, cohort, P_diff × 3 views
    diff = images[-1].get_array()  # axial slice of P_diff at z = 8, as drawn (y, x)
    shown = ~np.ma.getmaskarray(diff)
    expected = np.zeros((16, 16), bool)
    expected[6:10, 6:10] = True  # only where both cohorts have LV
    assert np.array_equal(shown, expected)
    assert np.allclose(diff[shown], 0.5)  # 1.0 − 0.5: more cohort
    # Colour limits are symmetric, so zero is white.
    lo, hi = images[-1].get_clim()
    assert lo == -hi == -0.5
    assert figure_png(fig)[:4] == b"\x89PNG"


def test_violation_bars_show_the_whole_interval_and_say_what_the_whiskers_are():
    cols = anatomy.TOPOLOGY_COLUMNS
    rates = {"reference": dict.fromkeys(cols, 0.0), "cohort": dict.fromkeys(cols, 0.1)}
    ci = {"cohort": {c: [0.05, 0.4] for c in cols}}
    fig = violation_bars(rates, ci)
    ax = fig.axes[0]
    assert ax.get_xlim()[1] >= 40.0  # the upper end of the interval, in %, is on the plot
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["reference", "cohort", "95% bootstrap interval"]
    no_ci = violation_bars(rates)
    assert [t.get_text() for t in no_ci.axes[0].get_legend().get_texts()] == [
        "reference",
        "cohort",
    ]
