"""Binomial proportions of metrics.bootstrap: acceptance rate and the Wilson interval."""

from __future__ import annotations

import math

import pytest

from siblings.metrics.bootstrap import acceptance_rate, wilson_interval

Z = 1.959964


def test_wilson_interval_known_answers():
    # 0 of n: [0, z²/(n + z²)]; n/2 of n: symmetric about 1/2.
    assert wilson_interval(0, 10) == (0.0, pytest.approx(Z**2 / (10 + Z**2)))
    lo, hi = wilson_interval(5, 10)
    assert lo + hi == pytest.approx(1.0) and lo == pytest.approx(0.2366, abs=1e-4)
    lo, hi = wilson_interval(90, 360)
    assert lo == pytest.approx(0.2078, abs=1e-3) and hi == pytest.approx(0.2974, abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


@pytest.mark.parametrize("n", [1, 3, 7, 140, 360])
def test_exact_ends_only_changes_the_bounds_at_zero_and_all(n):
    exact, rounded = wilson_interval(n, n), wilson_interval(n, n, exact_ends=False)
    assert exact[1] == 1.0 and rounded[1] <= 1.0
    assert exact[0] == rounded[0]
    assert wilson_interval(0, n)[0] == 0.0
    assert wilson_interval(0, n)[1] == wilson_interval(0, n, exact_ends=False)[1]
    for k in range(1, n):
        assert wilson_interval(k, n) == wilson_interval(k, n, exact_ends=False)


def test_acceptance_rate():
    assert acceptance_rate(140, 560) == 0.25
    assert math.isnan(acceptance_rate(0, 0))
    with pytest.raises(ValueError):
        acceptance_rate(-1, 3)
