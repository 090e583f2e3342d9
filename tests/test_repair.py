"""Topology repair: each planted defect is mended with a known (or bounded) change, a valid
map is untouched, and what cannot be mended is reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from siblings import anatomy
from siblings.cli import main
from siblings.data.phantom import make_phantom
from siblings.errors import InputError
from siblings.io import LabelMap, centred_affine, read_label_map, write_json, write_label_map
from siblings.metrics import topology_checks
from siblings.pipelines.repair import repair_maps
from siblings.repair import repair_topology

L = anatomy.LABELS
CUBE = np.ones((3, 3, 3), dtype=bool)
SIZE = 32


def _violated(checks: dict[str, bool]) -> list[str]:
    return [c for c, v in checks.items() if v]


@pytest.fixture(scope="module")
def valid() -> np.ndarray:
    lab = make_phantom(0, size=SIZE, seed=0, defect_rate=0.0)[0].data
    assert not _violated(topology_checks(lab))  # the premise: a valid map
    return lab


def _line(lab: np.ndarray, a: str, b: str, fill: str) -> np.ndarray:
    """A copy with a straight line of ``fill`` painted from tissue ``a`` to the nearest ``b``
    (over voxels that are neither), as a segmentation's bridge between them would be."""
    out = lab.copy()
    dist, idx = ndimage.distance_transform_edt(lab != L[b], return_indices=True)
    in_a = np.argwhere(lab == L[a])
    p = in_a[np.argmin(dist[lab == L[a]])]
    q = idx[(slice(None), *p)]
    for s in np.linspace(0.0, 1.0, 4 * int(np.abs(q - p).max()) + 2):
        v = tuple(np.round(p + s * (q - p)).astype(int))
        if out[v] not in (L[a], L[b]):
            out[v] = L[fill]
    return out


def _far_voxel(lab: np.ndarray, distance: int = 4) -> tuple[int, int, int]:
    """A background voxel at least ``distance`` voxels from any tissue, off the grid edge."""
    far = np.argwhere(ndimage.distance_transform_cdt(lab == 0, metric="chessboard") >= distance)
    return tuple(int(i) for i in far[(far >= 2).all(axis=1)][0])


def test_a_valid_map_is_returned_unchanged(valid):
    rep = repair_topology(valid)
    assert rep.labels is valid
    assert not rep.changed and rep.actions == [] and rep.unfixed == {}
    assert rep.before == rep.after and not _violated(rep.after)


def test_a_planted_island_in_background_is_relabelled_background_exactly(valid):
    lab = valid.copy()
    x, y, z = _far_voxel(lab, 5)
    lab[x : x + 2, y : y + 2, z : z + 2] = L["LV"]  # a 2×2×2 LV island
    assert _violated(topology_checks(lab)) == ["cc_LV"]
    rep = repair_topology(lab)
    assert not _violated(rep.after)
    assert rep.voxels_changed == 8
    assert rep.transitions == {("LV", "background"): 8}
    assert rep.changes["LV"] == {"lost": 8, "gained": 0}
    np.testing.assert_array_equal(rep.labels, valid)


def test_an_island_inside_another_tissue_takes_that_tissue(valid):
    lab = valid.copy()
    deep = np.argwhere(ndimage.binary_erosion(lab == L["RA"], structure=CUBE, iterations=1))
    lab[tuple(deep[0])] = L["LV"]  # an LV speck wholly inside the RA
    assert "cc_LV" in _violated(topology_checks(lab))
    rep = repair_topology(lab)
    assert not _violated(rep.after)
    assert rep.transitions == {("LV", "RA"): 1}
    np.testing.assert_array_equal(rep.labels, valid)


@pytest.mark.parametrize("tissue", ["Myo", "LV", "RV", "LA", "RA"])
def test_a_speck_of_each_tissue_is_removed_exactly(valid, tissue):
    lab = valid.copy()
    lab[_far_voxel(lab)] = L[tissue]
    assert _violated(topology_checks(lab)) == [f"cc_{tissue}"]
    rep = repair_topology(lab)
    assert not _violated(rep.after)
    np.testing.assert_array_equal(rep.labels, valid)  # the speck, and only it, is gone


def test_a_carved_septal_contact_is_closed_by_one_myocardium_voxel(valid):
    lab = valid.copy()
    myo, near_lv, near_rv = (
        lab == L["Myo"],
        ndimage.binary_dilation(lab == L["LV"], structure=CUBE),
        ndimage.binary_dilation(lab == L["RV"], structure=CUBE),
    )
    septum = np.argwhere(myo & near_lv & near_rv)
    assert len(septum), "premise: the phantom's septum is one voxel thick somewhere"
    lab[tuple(septum[0])] = L["LV"]  # LV now touches RV through the septum
    assert _violated(topology_checks(lab)) == ["sep_LV_RV"]
    rep = repair_topology(lab)
    assert not _violated(rep.after)
    assert rep.voxels_changed == 1  # the least change: the carved voxel, back to Myo
    np.testing.assert_array_equal(rep.labels, valid)


@pytest.mark.parametrize(
    ("a", "b", "fill", "column", "layer"),
    [("LV", "RV", "LV", "sep_LV_RV", "Myo"), ("RA", "LA", "RA", "sep_LA_RA", "background")],
)
def test_a_planted_bridge_is_cut_by_a_one_voxel_layer(valid, a, b, fill, column, layer):
    lab = _line(valid, a, b, fill)  # a septal hole filled with LV, a bridge of RA
    assert _violated(topology_checks(lab)) == [column]
    planted = int(np.count_nonzero(lab != valid))
    rep = repair_topology(lab)
    assert not _violated(rep.after)
    assert 1 <= rep.voxels_changed <= planted
    assert {to for (_, to) in rep.transitions} == {layer}


def test_a_one_voxel_gap_in_a_required_contact_is_closed(valid):
    lab = valid.copy()
    la_touching_lv = (lab == L["LA"]) & ndimage.binary_dilation(lab == L["LV"], structure=CUBE)
    lab[la_touching_lv] = L["background"]  # a one-voxel seam between LV and LA
    assert _violated(topology_checks(lab)) == ["adj_LV_LA"]
    rep = repair_topology(lab)
    assert not _violated(rep.after)
    assert rep.voxels_changed == 1  # one voxel of LV or LA bridges a one-voxel seam
    assert set(rep.transitions) <= {("background", "LV"), ("background", "LA")}


def test_a_required_contact_too_far_is_reported_not_forced(valid):
    lab = valid.copy()
    dist = ndimage.distance_transform_cdt(lab != L["LV"], metric="chessboard")
    lab[(lab == L["LA"]) & (dist <= 4)] = L["background"]  # a 4-voxel gap
    assert _violated(topology_checks(lab)) == ["adj_LV_LA"]
    rep = repair_topology(lab, max_gap=2)
    assert rep.labels is lab and not rep.changed
    assert "4 voxels apart" in rep.unfixed["adj_LV_LA"]
    assert repair_topology(lab, max_gap=4).after["adj_LV_LA"] is False  # within reach


def test_a_missing_tissue_is_reported_and_not_made_up(valid):
    lab = valid.copy()
    lab[lab == L["RA"]] = L["background"]
    assert _violated(topology_checks(lab)) == ["cc_RA", "adj_RV_RA"]
    rep = repair_topology(lab)
    assert rep.labels is lab and not rep.changed
    assert set(rep.unfixed) == {"cc_RA", "adj_RV_RA"}
    assert all("RA missing" in reason for reason in rep.unfixed.values())


def test_fixable_defects_are_fixed_beside_an_unfixable_one(valid):
    lab = valid.copy()
    lab[lab == L["RA"]] = L["background"]
    lab[_far_voxel(lab)] = L["LA"]  # an LA speck
    rep = repair_topology(lab)
    assert _violated(rep.after) == ["cc_RA", "adj_RV_RA"]
    assert rep.transitions == {("LA", "background"): 1}


def test_a_phantom_cohort_with_defects_is_repaired_within_one_percent_of_its_tissue():
    for index in range(6):
        lab, row = make_phantom(index, size=SIZE, seed=0, defect_rate=1.0)
        rep = repair_topology(lab.data)
        assert not _violated(rep.after), (index, row["defects"], rep.unfixed)
        assert rep.changed_fraction <= 0.01, (index, row["defects"], rep.voxels_changed)
        assert repair_topology(rep.labels).labels is rep.labels  # repaired maps stay put


def test_random_specks_never_leave_more_violations_and_every_one_left_is_explained(valid):
    rng = np.random.default_rng(0)
    heart = np.argwhere(ndimage.binary_dilation(valid > 0, structure=CUBE))
    for _ in range(16):
        lab = valid.copy()
        for _ in range(3):  # specks of random labels in and around the heart
            lab[tuple(heart[rng.integers(len(heart))])] = rng.integers(0, anatomy.NUM_LABELS)
        rep = repair_topology(lab)
        before, after = _violated(rep.before), _violated(rep.after)
        assert len(after) <= len(before)
        assert set(after) == set(rep.unfixed)  # nothing left without a reason
        assert rep.voxels_changed == int(np.count_nonzero(rep.labels != lab))
        assert repair_topology(rep.labels).labels is rep.labels or after


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="3D"):
        repair_topology(np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="0–6"):
        repair_topology(np.full((4, 4, 4), 9, np.uint8))
    with pytest.raises(InputError, match="max_gap"):
        repair_topology(np.zeros((4, 4, 4), np.uint8), max_gap=-1)


# ---------------------------------------------------------------------------------
# Files in, files out.
# ---------------------------------------------------------------------------------
@pytest.fixture
def cohort(tmp_path, valid):
    src = tmp_path / "cohort"
    affine = centred_affine(SIZE)
    write_label_map(src / "good.nii.gz", LabelMap(valid, affine))
    bad = _line(valid, "LV", "RV", "LV")
    write_label_map(src / "bad.nii.gz", LabelMap(bad, affine))
    write_json(src / "bad.json", {"method": "unconditional", "seed": 7})
    return src


def test_repair_maps_writes_repaired_maps_records_and_a_summary(tmp_path, cohort):
    out = tmp_path / "repaired"
    run = repair_maps(cohort, out, progress=False)
    assert [p.name for p in run.maps] == ["bad.nii.gz", "good.nii.gz"]
    # A valid map comes out byte for byte; the other passes every check after.
    assert (out / "good.nii.gz").read_bytes() == (cohort / "good.nii.gz").read_bytes()
    fixed = read_label_map(out / "bad.nii.gz")
    assert not _violated(topology_checks(fixed.data))
    np.testing.assert_array_equal(fixed.affine, read_label_map(cohort / "bad.nii.gz").affine)
    rec = json.loads((out / "bad.json").read_text())
    assert rec["violations_before"] == ["sep_LV_RV"] and rec["violations_after"] == []
    assert rec["checks_before"]["sep_LV_RV"] is True and rec["checks_after"]["sep_LV_RV"] is False
    assert rec["changes_per_label"]["Myo"]["gained"] == rec["voxels_changed"] > 0
    assert rec["source_manifest"] == {"method": "unconditional", "seed": 7}
    good = json.loads((out / "good.json").read_text())
    assert good["changed"] is False and good["voxels_changed"] == 0
    assert good["changes_per_label"]["LV"] == {"lost": 0, "gained": 0}
    summary = json.loads((out / "repair.json").read_text())
    assert summary["n"] == 2
    assert (summary["passing_all_checks_before"], summary["passing_all_checks_after"]) == (1, 2)
    assert summary["tv_percent_before"] == pytest.approx(100 / 24, abs=1e-3)
    assert summary["tv_percent_after"] == 0.0


def test_repair_never_writes_into_the_input_folder(cohort):
    before = sorted(p.name for p in cohort.iterdir())
    with pytest.raises(InputError, match="in place"):
        repair_maps(cohort, cohort, progress=False)
    assert sorted(p.name for p in cohort.iterdir()) == before


def test_cli_repair_prints_the_figures_and_maps_errors_to_exit_2(tmp_path, cohort, capsys):
    out = tmp_path / "cli_out"
    assert main(["repair", str(cohort / "bad.nii.gz"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "passing all 12 checks: 0/1 before, 1/1 after" in printed
    assert sorted(p.name for p in out.iterdir()) == ["bad.json", "bad.nii.gz", "repair.json"]
    assert main(["repair", str(cohort), "--out", str(out)]) == 2  # OUT is not empty
    assert "--overwrite" in capsys.readouterr().err
    assert main(["repair", str(cohort), "--out", str(tmp_path / "x"), "--max-gap", "-1"]) == 2
    assert "--max-gap must be 0 or more" in capsys.readouterr().err


# ---------------------------------------------------------------------------------
# --repair on the commands that make maps. The micro model's maps are meaningless (often
# all background), so each run is given planted maps in place of the model's, and the
# test checks the plumbing: what is written is the repair of what was made, and the
# manifests say what the repair did.
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(micro):
    from siblings.models.ldm import LatentDiffusionModel

    return LatentDiffusionModel.load(micro.checkpoint, device="cpu")


@pytest.fixture(scope="module")
def planted(valid) -> np.ndarray:
    """Two maps: the valid phantom with a septal hole filled with LV, and the valid one."""
    return np.stack([_line(valid, "LV", "RV", "LV"), valid])


def _expect_repaired(path, manifest: dict, made: np.ndarray) -> None:
    rep = repair_topology(made)
    np.testing.assert_array_equal(read_label_map(path).data, rep.labels)
    assert manifest["repair"]["voxels_changed"] == rep.voxels_changed
    assert manifest["repair"]["checks_before"] == rep.before
    assert manifest["repair"]["checks_after"] == rep.after
    assert manifest["repair"]["max_gap"] == 2


def test_sample_with_repair_writes_repaired_maps_and_records_the_repair(
    model, planted, tmp_path, monkeypatch
):
    from siblings.pipelines.sample import sample_cohort

    monkeypatch.setattr(model, "decode", lambda z: planted[: len(z)].copy())
    paths = sample_cohort(model, tmp_path / "s", n=2, steps=2, batch=2, repair=True, progress=False)
    for path, made in zip(paths, planted, strict=True):
        manifest = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        _expect_repaired(path, manifest, made)
        assert manifest["topology_violations"] == []
    first = json.loads((tmp_path / "s" / "sample_00000.json").read_text())["repair"]
    assert first["violations_before"] == ["sep_LV_RV"] and first["changed"] is True


@pytest.mark.slow  # 24 s: a whole edit run with its report
def test_edit_with_repair_writes_repaired_siblings_and_a_run_summary(
    model, planted, valid, tmp_path, monkeypatch
):
    import siblings.pipelines.edit as edit
    from siblings.editing import check_settings

    twin = tmp_path / "twin.nii.gz"
    write_label_map(twin, LabelMap(valid, centred_affine(SIZE)))
    real = edit._make_siblings

    def made_planted(*args, **kwargs):
        result = real(*args, **kwargs)
        result.labels = planted.copy()
        return result

    monkeypatch.setattr(edit, "_make_siblings", made_planted)
    out = tmp_path / "e"
    run = edit.run_edit(
        model, twin, out, check_settings("perturb", psi=0.5, n=2, steps=2, invert_steps=0),
        n_boot=0, figure_siblings=1, progress=False, repair=True,
    )  # fmt: skip
    for k, path in enumerate(run.siblings):
        manifest = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        _expect_repaired(path, manifest, planted[k])
        assert manifest["topology_violations"] == []  # measured on the written map
    summary = json.loads((out / "run.json").read_text())["repair"]
    assert (summary["passing_all_checks_before"], summary["passing_all_checks_after"]) == (1, 2)
    assert summary["max_gap"] == 2


def test_augment_with_repair_judges_and_writes_the_repaired_map(
    model, micro, planted, tmp_path, monkeypatch
):
    import siblings.pipelines.augment as aug
    from siblings.augment import check_settings

    monkeypatch.setattr(aug, "attempt_map", lambda label, att, twins, settings: (planted[0], None))
    out = tmp_path / "a"
    res = aug.augment(
        model, micro.data, check_settings("LV_volume_ml > 1", "uncond", 2, seed=0, steps=2,
        batch=2), out, evaluate=False, repair=True,
    )  # fmt: skip
    for path in res.files:
        manifest = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        _expect_repaired(path, manifest, planted[0])
        assert manifest["augment"]["run"]["repair"] == {"max_gap": 2}
    summary = json.loads((out / "augment.json").read_text())["repair"]
    assert (summary["n"], summary["passing_all_checks_after"]) == (2, 2)
    assert summary["tv_percent_before"] == pytest.approx(100 / 12, abs=1e-3)


def test_cli_make_commands_take_repair_and_refuse_a_negative_max_gap(tmp_path, capsys):
    argv = ["sample", "--n", "1", "--out", str(tmp_path / "s"), "--repair", "--max-gap", "-1"]
    assert main(argv) == 2
    assert "--max-gap must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # an edit run with a scanner-space twin (preparation, resampling back)
def test_edit_with_repair_repairs_the_siblings_again_on_the_scan_grid(model, tmp_path, monkeypatch):
    import siblings.pipelines.edit as edit
    from siblings.data.phantom_scans import place_in_scanner, scanner_affine

    shape = (60, 60, 48)
    scan = place_in_scanner(
        make_phantom(2, size=64, seed=3)[0],
        np.eye(4),
        shape,
        scanner_affine(shape, (3.0, 3.0, 4.0), "LPS"),
    )
    src = tmp_path / "scan_twin.nii.gz"
    write_label_map(src, scan)
    real = edit.scanner_sibling
    made = []

    def with_speck(*args, **kwargs):  # resampling back to the scan leaves an LA speck
        back, record = real(*args, **kwargs)
        data = back.data.copy()
        data[2, 2, 2] = L["LA"]
        made.append(data)
        return LabelMap(data, back.affine, xform_codes=back.xform_codes), record

    monkeypatch.setattr(edit, "scanner_sibling", with_speck)
    out = tmp_path / "e"
    edit.run_edit(
        model, src, out, "perturb", psi=0.5, n=1, steps=2, n_boot=0, invert_steps=0,
        figure_siblings=1, progress=False, repair=True,
    )  # fmt: skip
    on_scan = read_label_map(out / "scanner" / "sibling_00000.nii.gz")
    np.testing.assert_array_equal(on_scan.data, repair_topology(made[0]).labels)
    assert on_scan.data[2, 2, 2] == L["background"]
    record = json.loads((out / "scanner" / "sibling_00000.json").read_text())["repair"]
    assert "cc_LA" in record["violations_before"] and "cc_LA" not in record["violations_after"]
    assert {"from": "LA", "to": "background", "voxels": 1} in record["transitions"]
