"""Exact keep (siblings.diffusion.keep): a localized sibling composed in label space.

Fixtures are small boxes planted by hand, whose composed answer is known voxel by voxel,
and phantoms with decoded maps made to go wrong on purpose. Contacts and components are
checked with the plain definitions (metrics.topology.contact_matrix, scipy's labelling),
not with the module's own helpers.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from siblings import anatomy
from siblings.data.phantom import make_phantom
from siblings.diffusion.keep import compose_exact
from siblings.metrics.topology import contact_matrix

L = anatomy.LABELS
BG, AO, MYO, RV, LV, RA, LA = (L[n] for n in anatomy.LABEL_NAMES)
CUBE = np.ones((3, 3, 3), bool)


def kept_for(regenerate: set[str]) -> list[int]:
    return [L[t] for t in anatomy.TISSUES if t not in regenerate]


def components(mask: np.ndarray) -> int:
    return int(ndimage.label(mask, structure=CUBE)[1])


def touches(lab: np.ndarray, a: int, b: int) -> bool:
    return bool(contact_matrix(lab)[a, b])


def ventricles() -> np.ndarray:
    """RV | septum (Myo) | LV in a row along y, the LV wrapped in myocardium."""
    twin = np.zeros((14, 20, 12), np.uint8)
    twin[3:11, 2:8, 3:9] = RV
    twin[2:12, 8:18, 2:10] = MYO
    twin[4:10, 10:16, 4:8] = LV
    return twin


# ---------------------------------------------------------------------------------
# Planted cases.
# ---------------------------------------------------------------------------------
def test_a_decoded_lv_against_a_kept_rv_gets_a_myocardial_wall_between_them():
    twin = ventricles()
    decoded = twin.copy()
    decoded[3:11, 8:10, 3:9] = LV  # the LV breaks through the septum onto the RV
    out = compose_exact(twin, decoded, kept_for({"LV", "Myo"}))
    lab = out.labels
    assert np.array_equal(lab == RV, twin == RV)
    assert not touches(lab, LV, RV)
    # Known answer: exactly the LV voxels next to the RV (the slab y = 8) became Myo.
    expected = decoded.copy()
    expected[3:11, 8, 3:9] = MYO
    assert np.array_equal(lab, expected)
    assert out.changed == {"claims": 0, "separators": 8 * 6, "detached": 0}


def test_with_the_myocardium_kept_the_ventricles_are_separated_by_background():
    twin = ventricles()
    decoded = twin.copy()
    decoded[4:10, 7:10, 4:8] = LV  # through the kept septum and against the RV
    out = compose_exact(twin, decoded, kept_for({"LV"}))
    lab = out.labels
    for k in (RV, MYO):
        assert np.array_equal(lab == k, twin == k)
    assert not touches(lab, LV, RV)
    # The LV voxels in the septum were the twin's Myo (kept, so Myo again); the LV's
    # own voxels are untouched: the kept septum already separates them.
    assert np.array_equal(lab, twin)


def test_a_decoded_la_against_a_kept_ra_is_separated_by_background():
    twin = np.zeros((12, 18, 10), np.uint8)
    twin[3:9, 2:7, 3:7] = RA
    twin[3:9, 9:15, 3:7] = LA
    decoded = twin.copy()
    decoded[3:9, 7:15, 3:7] = LA  # LA grown up to the RA
    out = compose_exact(twin, decoded, kept_for({"LA"}))
    lab = out.labels
    assert np.array_equal(lab == RA, twin == RA)
    assert not touches(lab, LA, RA)
    expected = decoded.copy()
    expected[3:9, 7, 3:7] = BG  # the layer touching the RA
    assert np.array_equal(lab, expected)


def test_a_stray_kept_label_voxel_takes_the_label_around_it():
    twin = ventricles()
    decoded = twin.copy()
    decoded[6, 12, 5] = RV  # inside the regenerated LV
    decoded[2, 9, 2] = AO  # on the regenerated Myo's corner, next to background
    out = compose_exact(twin, decoded, kept_for({"LV", "Myo"}))
    lab = out.labels
    assert lab[6, 12, 5] == LV
    # Its free neighbours: 7 Myo, 19 background -> background (the most frequent).
    assert lab[2, 9, 2] == BG
    for k in kept_for({"LV", "Myo"}):
        assert np.array_equal(lab == k, twin == k), anatomy.LABEL_NAMES[k]
    assert out.changed["claims"] == 2


def test_a_thick_claim_fills_inward_from_its_border():
    twin = np.zeros((16, 16, 16), np.uint8)
    twin[1:15, 1:15, 1:15] = MYO
    twin[3:13, 3:13, 3:13] = LV
    twin[0, 0, 0] = RV  # kept
    decoded = twin.copy()
    decoded[5:11, 5:11, 5:11] = RV  # a 6-voxel cube of RV in the middle of the LV
    out = compose_exact(twin, decoded, kept_for({"LV", "Myo"}))
    lab = out.labels
    # Three layers, each filled from the LV around it; no Myo leaks in from 2 voxels away.
    assert np.array_equal(lab, twin)
    assert out.changed["claims"] == 6**3


def test_a_piece_cut_off_by_a_kept_tissue_is_dropped_to_background():
    # The twin's kept Ao is a wall across the decoded LV: the smaller side goes.
    twin = np.zeros((12, 24, 12), np.uint8)
    twin[2:10, 14:16, 2:10] = AO
    twin[3:9, 4:12, 3:9] = LV
    decoded = np.zeros_like(twin)
    decoded[3:9, 4:19, 3:9] = LV  # one component in the decoded map, across the Ao
    out = compose_exact(twin, decoded, kept_for({"LV"}))
    lab = out.labels
    assert np.array_equal(lab == AO, twin == AO)
    assert components(lab == LV) == 1
    expected = decoded.copy()
    expected[twin == AO] = AO
    expected[3:9, 16:19, 3:9] = BG
    assert np.array_equal(lab, expected)
    assert out.changed["detached"] == 6 * 3 * 6


def test_the_decoders_own_islands_are_left_for_the_checks_to_report():
    twin = ventricles()
    decoded = twin.copy()
    decoded[0, 0, 0] = LV  # a speck far from everything: the decoder's, not the seam's
    out = compose_exact(twin, decoded, kept_for({"LV", "Myo"}))
    assert out.labels[0, 0, 0] == LV
    assert components(out.labels == LV) == 2


def test_with_the_background_kept_a_dropped_piece_takes_its_surroundings():
    twin = np.zeros((12, 24, 12), np.uint8)
    twin[2:10, 2:22, 2:10] = MYO
    twin[3:9, 4:12, 3:9] = LV
    twin[3:9, 14:16, 3:9] = RV  # kept: cuts the decoded LV
    decoded = twin.copy()
    decoded[3:9, 4:19, 3:9] = LV
    decoded[decoded == RV] = LV
    out = compose_exact(twin, decoded, [*kept_for({"LV", "Myo"}), BG])
    lab = out.labels
    assert np.array_equal(lab == BG, twin == BG)
    assert np.array_equal(lab == RV, twin == RV)
    assert components(lab == LV) == 1
    assert not touches(lab, LV, RV)
    # The cut-off LV (y = 17..18, beyond the RV's separator layer) is Myo now.
    assert (lab[3:9, 17:19, 3:9] == MYO).all()


def test_composition_on_a_larger_grid_is_the_same_composition():
    twin = ventricles()
    decoded = twin.copy()
    decoded[3:11, 8:18, 3:9] = LV
    decoded[6, 12, 5] = RV
    small = compose_exact(twin, decoded, kept_for({"LV", "Myo"})).labels
    pad = ((20, 5), (3, 30), (9, 9))
    big = compose_exact(np.pad(twin, pad), np.pad(decoded, pad), kept_for({"LV", "Myo"})).labels
    assert np.array_equal(big, np.pad(small, pad))


def test_mismatched_grids_and_keeping_everything_are_refused():
    twin = ventricles()
    with pytest.raises(ValueError, match="grids differ"):
        compose_exact(twin, twin[:-1], kept_for({"LV"}))
    with pytest.raises(ValueError, match="nothing to regenerate"):
        compose_exact(twin, twin, list(range(1, 7)))


# ---------------------------------------------------------------------------------
# Phantoms with decoded maps gone wrong.
# ---------------------------------------------------------------------------------
def wrong_decoding(twin: np.ndarray, seed: int) -> np.ndarray:
    """The twin shifted, its tissues grown into each other, and salt of every label."""
    rng = np.random.default_rng(seed)
    shift = tuple(int(v) for v in rng.integers(-2, 3, size=3))
    d = np.roll(twin, shift, axis=(0, 1, 2))
    for k in rng.permutation([RV, LV, RA, LA]):
        d[ndimage.binary_dilation(d == k, iterations=int(rng.integers(1, 3)))] = k
    salt = rng.random(d.shape) < 0.004
    d[salt] = rng.integers(0, 7, size=int(salt.sum()))
    return d.astype(np.uint8)


@pytest.mark.parametrize(
    "regenerate", [{"LV", "Myo"}, {"RV", "Myo"}, {"LA"}, {"LV", "RV", "Myo"}, {"RA", "LA"}]
)
@pytest.mark.parametrize("index", [0, 3])
def test_kept_tissues_are_exact_and_the_seam_adds_no_contact_or_island(regenerate, index):
    twin = make_phantom(index, size=48, seed=1, defect_rate=0.0)[0].data
    decoded = wrong_decoding(twin, seed=index)
    kept = kept_for(regenerate)
    lab = compose_exact(twin, decoded, kept).labels
    for k in kept:  # every kept voxel stays, and a kept label appears nowhere else
        assert np.array_equal(lab == k, twin == k), anatomy.LABEL_NAMES[k]
    for a, b in ((LV, RV), (LA, RA)):
        # A forbidden contact touching a kept tissue exists only if the twin has it.
        if a in kept or b in kept:
            assert not touches(lab, a, b) or touches(twin, a, b)
        # Between two regenerated chambers: only where the decoder put one.
        else:
            assert not touches(lab, a, b) or touches(decoded, a, b)
    for t in regenerate:
        k = L[t]
        assert components(lab == k) <= components(decoded == k), t


def test_the_papers_localized_experiment_asks_for_latent_keep(monkeypatch, tmp_path):
    # The experiments measure the method as published (SPEC "Beyond the paper").
    from types import SimpleNamespace

    import siblings.models.edits as edit
    from siblings.experiments import makers

    asked = {}

    class Asked(Exception):
        pass

    def spy(*args, **kwargs):
        asked.update(kwargs)
        raise Asked

    monkeypatch.setattr(edit, "inpaint", spy)
    seed = SimpleNamespace(key="large", index=0)
    ctx = SimpleNamespace(
        seeds=lambda: [seed],
        seed_map=lambda s: np.zeros((8, 8, 8), np.uint8),
        model=None,
        batch=2,
        seed_encoding=lambda s: None,
    )
    spec = SimpleNamespace(
        n=2, params={"seed_kind": "large", "regenerate": ["LV"], "steps": 3, "seed": 0}
    )
    with pytest.raises(Asked):
        makers.make_inpaint(ctx, spec, tmp_path)
    assert asked["keep"] == "latent"
