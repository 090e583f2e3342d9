"""The stress set (siblings.data.stress) and the phantom's parameter overrides it uses:
every case is what its name says, measured on the map, independently of how it was drawn."""

from __future__ import annotations

import numpy as np
import pytest

from siblings import anatomy
from siblings.data.phantom import VOLUME_BOUNDS_ML, make_phantom
from siblings.data.stress import STRESS_KINDS, elastic_deformation, stress_case, stress_set

L = anatomy.LABELS
SIZE = 32


def volume_ml(lm, tissue: str) -> float:
    return float((lm.data == L[tissue]).sum()) * anatomy.voxel_size_mm(lm.shape[0]) ** 3 / 1000


def handedness(lm) -> float:
    """Sign of ((c_RV − c_LV) × (c_LA − c_LV)) · (c_RA − c_LV), world centroids (SPEC §1)."""
    c = {}
    for t in ("LV", "RV", "LA", "RA"):
        ijk = np.argwhere(lm.data == L[t]).mean(axis=0)
        c[t] = lm.affine[:3, :3] @ ijk + lm.affine[:3, 3]
    return float(np.sign(np.cross(c["RV"] - c["LV"], c["LA"] - c["LV"]) @ (c["RA"] - c["LV"])))


def straightness(mask: np.ndarray) -> float:
    """Second over first eigenvalue of the voxel covariance: 3r²/l² for a straight tube
    (0.04-0.06 for the phantom's), 0.6-0.9 for the arched aorta."""
    ev = np.sort(np.linalg.eigvalsh(np.cov(np.argwhere(mask).T.astype(float))))[::-1]
    return float(ev[1] / ev[0])


# ---------------------------------------------------------------------------------
# Phantom overrides.
# ---------------------------------------------------------------------------------
def test_no_overrides_is_the_drawn_subject():
    a, ra = make_phantom(3, size=SIZE, seed=1)
    b, rb = make_phantom(3, size=SIZE, seed=1, overrides={})
    assert np.array_equal(a.data, b.data) and ra == rb and "overrides" not in ra


def test_a_volume_override_is_not_clipped_to_the_cohorts_bounds():
    lm, row = make_phantom(3, size=64, seed=1, overrides={"target": {"RV": 300.0}})
    assert 300.0 > VOLUME_BOUNDS_ML["RV"][1]
    assert row["RV_target_ml"] == 300.0 and volume_ml(lm, "RV") == pytest.approx(300.0, rel=0.05)
    _, brow = make_phantom(3, size=64, seed=1)
    # The other chambers keep their drawn targets.
    assert row["LV_target_ml"] == brow["LV_target_ml"] and "overrides" in row


def test_a_wall_override_changes_the_myocardium_only():
    thin, row = make_phantom(3, size=64, seed=1, overrides={"wall_mm": 4.0})
    thick, _ = make_phantom(3, size=64, seed=1, overrides={"wall_mm": 18.0})
    assert row["wall_mm"] == 4.0
    assert volume_ml(thick, "Myo") > 3 * volume_ml(thin, "Myo")
    assert volume_ml(thin, "LV") == pytest.approx(volume_ml(thick, "LV"), rel=0.03)


def test_unknown_overrides_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown phantom parameter.*wall_thickness"):
        make_phantom(0, size=SIZE, overrides={"wall_thickness": 3})
    with pytest.raises(ValueError, match=r"unknown chamber.*Myo"):
        make_phantom(0, size=SIZE, overrides={"target": {"Myo": 3}})


def test_without_the_arch_the_aorta_is_a_straight_tube():
    arch, _ = make_phantom(3, size=64, seed=1)
    straight, _ = make_phantom(3, size=64, seed=1, overrides={"aorta_arch": False})
    assert straightness(straight.data == L["Ao"]) < 0.1 < 0.5 < straightness(arch.data == L["Ao"])
    # The heart itself is the same subject.
    for t in ("LV", "RV", "LA", "RA"):
        assert volume_ml(straight, t) == pytest.approx(volume_ml(arch, t), rel=0.03), t


# ---------------------------------------------------------------------------------
# The stress set.
# ---------------------------------------------------------------------------------
def test_every_stress_case_is_a_whole_heart_and_depends_only_on_its_arguments():
    cases = stress_set(1, size=SIZE, seed=1)
    assert [name for name, _ in cases] == [f"{k}_0" for k in STRESS_KINDS]
    for name, lm in cases:
        assert lm.shape == (SIZE,) * 3 and lm.data.dtype == np.uint8
        assert set(np.unique(lm.data)) == set(range(7)), name
        again = stress_case(name.rsplit("_", 1)[0], 0, size=SIZE, seed=1)
        assert np.array_equal(again.data, lm.data), name
    assert not np.array_equal(
        stress_case("elastic", 0, SIZE).data, stress_case("elastic", 1, SIZE).data
    )


def test_stress_cases_are_outside_the_cohorts_ranges():
    for c, (lo, hi) in VOLUME_BOUNDS_ML.items():
        assert volume_ml(stress_case("small", 0, 64), c) < lo
        assert volume_ml(stress_case("large", 0, 64), c) > hi
    rv = stress_case("dilated_rv", 0, 64)
    assert volume_ml(rv, "RV") > VOLUME_BOUNDS_ML["RV"][1] and volume_ml(rv, "LV") < 80
    assert straightness(stress_case("straight_aorta", 0, 64).data == L["Ao"]) < 0.1


def test_mirrored_hearts_are_left_handed_and_the_others_right_handed():
    for kind in STRESS_KINDS:
        sign = handedness(stress_case(kind, 0, size=SIZE))
        assert sign == (-1.0 if kind == "mirrored" else 1.0), kind


def test_elastic_deformation_is_label_safe_and_the_identity_without_displacement():
    lab = make_phantom(2, size=SIZE, seed=1)[0].data
    assert np.array_equal(elastic_deformation(lab, seed=0, std_vox=0.0), lab)
    warped = elastic_deformation(lab, seed=0)
    assert np.array_equal(warped, elastic_deformation(lab, seed=0))
    assert warped.dtype == np.uint8 and set(np.unique(warped)) == set(range(7))
    changed = np.mean(warped != lab)
    assert 0.005 < changed < 0.2  # interfaces move; the heart stays a heart
