"""Report pages: tables align numbers right and text left, formatted numbers and intervals."""

from __future__ import annotations

from siblings.report.html import figure, interval, number, page, table, violation_rows


def test_numbers_and_intervals_right_text_left_and_headers_follow_their_column():
    html = table(
        ["metric", "value", "95% interval"],
        [["recall (k = 3)", "0.984", "[0.875, 0.984]"], ["FD", "−1.5", "–"]],
    )
    assert '<th>metric</th><th class="num">value</th><th class="num">95% interval</th>' in html
    assert (
        '<td>recall (k = 3)</td><td class="num">0.984</td><td class="num">[0.875, 0.984]</td>'
        in html
    )
    assert '<td>FD</td><td class="num">−1.5</td><td class="num">–</td>' in html
    # Text that merely contains digits stays left-aligned; cells are escaped.
    assert "<td>cc_LV, sep_LV_RV</td>" in table(["checks"], [["cc_LV, sep_LV_RV"]])
    assert "<td>a &lt; b</td>" in table(["x"], [["a < b"]])
    # Numbers with a unit or an interval are numeric; sentences that start with one are not.
    for v in ["4185", "12.70% [10.87, 14.80]", "9.00 [8.50, 9.45]", "-7.44", "1e-05", "(3)"]:
        assert f'<td class="num">{v}</td>' in table(["x"], [[v]]), v
    for v in ["23.9% of samples lie outside", "24 of 140 (stopped)", "3 maps, 2 failed"]:
        assert f"<td>{v}</td>" in table(["x"], [[v]]), v


def test_number_and_interval_formatting():
    assert number(0.81249) == "0.812" and number(3.386, 2) == "3.39"
    assert number(None) == number(float("nan")) == "–"
    assert interval([0.01, 0.2], 1, 100.0) == "[1.0, 20.0]"
    assert interval(None) == "–"


def test_page_is_self_contained():
    html = page("T", [("S", figure(b"\x89PNG", "cap"))])
    assert "data:image/png;base64,iVBORw==" in html and "<figcaption>cap</figcaption>" in html
    assert "http" not in html and "<script" not in html


def test_violation_rows_of_the_evaluate_and_edit_summaries():
    m = {
        "tv_percent": 3.456,
        "tv_percent_ci": [1.0, 6.25],
        "maps_violating_percent": 25.0,
        "reference": {"tv_percent": 0.5, "maps_violating_percent": 4.0},
    }
    assert violation_rows(m) == [
        ["TV% (mean % of the 12 checks violated)", "3.46", "[1.00, 6.25]", "0.50"],
        ["maps violating at least one check (%)", "25.0", "", "4.0"],
    ]
    assert violation_rows({**m, "tv_percent_ci": None})[0][2] == "–"
