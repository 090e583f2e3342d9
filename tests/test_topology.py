"""The 12 topology checks: each planted violation trips its check and no other."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from siblings import anatomy
from siblings.data.phantom import make_phantom
from siblings.metrics import (
    checks_array,
    component_counts,
    contact_matrix,
    tissue_contacts,
    topology_checks,
    tv_percent,
    violation_rates,
)

L = anatomy.LABELS
CUBE = np.ones((3, 3, 3), dtype=bool)


@pytest.fixture(scope="module")
def valid_phantom() -> np.ndarray:
    lab = make_phantom(0, size=64, seed=0, defect_rate=0.0)[0].data
    assert not any(topology_checks(lab).values())  # the premise: a valid map
    return lab


def _near(lab: np.ndarray, name: str) -> np.ndarray:
    """Voxels in the 3×3×3 neighbourhood of a tissue (the contact zone)."""
    return ndimage.binary_dilation(lab == L[name], structure=CUBE)


def _speck(lab: np.ndarray, name: str) -> np.ndarray:
    """A single voxel of ``name`` in background, at least 3 voxels from any tissue."""
    out = lab.copy()
    far = np.argwhere(ndimage.distance_transform_cdt(lab == 0, metric="chessboard") >= 3)
    out[tuple(far[len(far) // 2])] = L[name]
    return out


def _cut_contact(lab: np.ndarray, keep: str, remove: str) -> np.ndarray:
    """Set every ``remove`` voxel touching ``keep`` to background."""
    out = lab.copy()
    out[(lab == L[remove]) & _near(lab, keep)] = 0
    return out


def _bridge(lab: np.ndarray, start: str, end: str, through: int) -> np.ndarray:
    """Paint a straight line of ``start`` from the ``start`` voxel nearest to ``end`` to
    its nearest ``end`` voxel, over voxels labelled ``through`` only."""
    dist, (ix, iy, iz) = ndimage.distance_transform_edt(lab != L[end], return_indices=True)
    src = np.argwhere(lab == L[start])
    p = src[np.argmin(dist[tuple(src.T)])]
    q = np.array([ix[tuple(p)], iy[tuple(p)], iz[tuple(p)]])
    out = lab.copy()
    for s in np.linspace(0.0, 1.0, 4 * int(np.abs(q - p).max()) + 2):
        v = tuple(np.round(p + s * (q - p)).astype(int))
        if out[v] == through:
            out[v] = L[start]
    return out


def _septal_defect(lab: np.ndarray) -> np.ndarray:
    """A hole through the septal myocardium, filled with LV blood: LV touches RV."""
    return _bridge(lab, "LV", "RV", through=L["Myo"])


def _atrial_bridge(lab: np.ndarray) -> np.ndarray:
    """A strand of RA across the gap between the atria: RA touches LA."""
    return _bridge(lab, "RA", "LA", through=0)


PLANTED = {
    "cc_Myo": lambda lab: _speck(lab, "Myo"),
    "cc_LV": lambda lab: _speck(lab, "LV"),
    "cc_RV": lambda lab: _speck(lab, "RV"),
    "cc_LA": lambda lab: _speck(lab, "LA"),
    "cc_RA": lambda lab: _speck(lab, "RA"),
    "adj_LV_Ao": lambda lab: _cut_contact(lab, keep="LV", remove="Ao"),
    "adj_LV_Myo": lambda lab: _cut_contact(lab, keep="LV", remove="Myo"),
    "adj_LV_LA": lambda lab: _cut_contact(lab, keep="LV", remove="LA"),
    "adj_RV_Myo": lambda lab: _cut_contact(lab, keep="RV", remove="Myo"),
    "adj_RV_RA": lambda lab: _cut_contact(lab, keep="RV", remove="RA"),
    "sep_LV_RV": _septal_defect,
    "sep_LA_RA": _atrial_bridge,
}


def test_every_check_has_a_planted_violation():
    assert set(PLANTED) == set(anatomy.TOPOLOGY_COLUMNS)


@pytest.mark.parametrize("check", anatomy.TOPOLOGY_COLUMNS)
def test_planted_violation_trips_exactly_its_check(valid_phantom, check):
    planted = PLANTED[check](valid_phantom)
    assert not np.array_equal(planted, valid_phantom)
    got = topology_checks(planted)
    assert [c for c, v in got.items() if v] == [check]
    # The plain NumPy contact definition agrees with the fast path on the planted map.
    m = contact_matrix(planted)
    assert tissue_contacts(planted) == {
        (a, b) for a in range(1, 7) for b in range(a + 1, 7) if m[a, b]
    }


def test_zero_components_is_a_violation():
    lab = np.zeros((10, 10, 10), dtype=np.uint8)
    lab[2:5, 2:5, 2:5] = L["LV"]
    got = topology_checks(lab)
    assert got["cc_LV"] is False
    assert got["cc_RV"] is True  # absent: 0 components
    assert got["adj_LV_Myo"] is True and got["sep_LV_RV"] is False


def test_components_are_26_connected_and_min_size_is_respected():
    lab = np.zeros((10, 10, 10), dtype=np.uint8)
    lab[2:5, 2:5, 2:5] = L["Myo"]
    lab[5, 5, 5] = L["Myo"]  # touches the cube by a corner only: still one component
    assert component_counts(lab)["Myo"] == 1
    lab[8, 8, 8] = L["Myo"]  # a detached speck
    assert component_counts(lab)["Myo"] == 2
    assert topology_checks(lab)["cc_Myo"] is True
    assert topology_checks(lab, min_component_voxels=2)["cc_Myo"] is False
    assert topology_checks(lab, min_component_voxels=100)["cc_Myo"] is True  # nothing left


def test_contact_connectivity_option():
    lab = np.zeros((6, 6, 6), dtype=np.uint8)
    lab[1, 1, 1] = L["LV"]
    lab[2, 2, 2] = L["RV"]  # corner contact only
    assert topology_checks(lab)["sep_LV_RV"] is True
    assert topology_checks(lab, contact_connectivity=18)["sep_LV_RV"] is False
    assert topology_checks(lab, contact_connectivity=6)["sep_LV_RV"] is False
    with pytest.raises(ValueError, match="connectivity"):
        topology_checks(lab, contact_connectivity=8)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_fast_contacts_equal_the_numpy_definition(connectivity):
    rng = np.random.default_rng(connectivity)
    for _ in range(20):
        lab = np.zeros((12, 11, 10), dtype=np.uint8)
        for _ in range(12):  # sparse random voxels: many near-misses at every distance
            lab[tuple(rng.integers(0, (12, 11, 10)))] = rng.integers(1, 7)
        m = contact_matrix(lab, connectivity)
        want = {(a, b) for a in range(1, 7) for b in range(a + 1, 7) if m[a, b]}
        assert tissue_contacts(lab, connectivity) == want


def test_fast_contacts_equal_the_numpy_definition_on_defective_phantoms():
    for i in range(6):
        lab = make_phantom(i, size=32, seed=5, defect_rate=1.0)[0].data
        m = contact_matrix(lab)
        assert tissue_contacts(lab) == {
            (a, b) for a in range(1, 7) for b in range(a + 1, 7) if m[a, b]
        }


def test_tv_percent_and_breakdown():
    clean = dict.fromkeys(anatomy.TOPOLOGY_COLUMNS, False)
    one = {**clean, "sep_LA_RA": True}
    assert tv_percent([one]) == pytest.approx(100 / 12)  # one failed check = 8.3%
    assert tv_percent([one, clean, clean, clean]) == pytest.approx(100 / 48)
    rates = violation_rates([one, clean, clean, clean])
    assert rates["sep_LA_RA"] == 0.25 and sum(rates.values()) == 0.25
    assert checks_array([one]).shape == (1, 12)


def test_defect_free_phantoms_pass_every_check():
    checks = [topology_checks(make_phantom(i, size=32, seed=3)[0].data) for i in range(8)]
    assert tv_percent(checks) == 0.0
