"""`siblings prepare totalsegmentator` end to end on phantom scans in TotalSegmentator
layouts (v1, v2 multi-label, v2 per class), with broken subjects whose exclusion reason
is known, and `siblings unprepare` back onto the scan grid.

The fast fixture uses coarse scans (1.5 x 1.5 x 2.5 mm) prepared at 64³ (2.8 mm); the
slow test repeats the issue's acceptance checks at 0.8 x 0.8 x 1.5 mm and 128³."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from siblings import anatomy, cli
from siblings.data import geometry as g
from siblings.data import totalseg as ts
from siblings.data.phantom_scans import (
    EXPECTED_REASON,
    make_totalseg_dataset,
    write_totalseg_subject,
)
from siblings.io import centred_affine, list_label_maps, read_json, read_label_map
from siblings.pipelines.prepare import prepare_totalsegmentator

L = anatomy.LABELS
FAULTS = {
    2: "missing_class",
    5: "empty_class",
    7: "truncated",
    8: "tiny_chamber",
    10: "corrupt_file",
}
# What each fault's reason must name besides its kind.
REASON_MENTIONS = {
    "missing_class": "heart_atrium_right",
    "empty_class": "RV",
    "truncated": "LA",
    "tiny_chamber": "LA",
    "corrupt_file": ".nii.gz",
    "total_only": "heartchambers_highres",
}


def world_centroid(data: np.ndarray, affine: np.ndarray, label: int) -> np.ndarray:
    idx = np.argwhere(data == label).astype(float)
    return idx.mean(axis=0) @ affine[:3, :3].T + affine[:3, 3]


def axis_angle_to_z_deg(data: np.ndarray, affine: np.ndarray) -> float:
    v = world_centroid(data, affine, L["LA"]) - world_centroid(data, affine, L["LV"])
    return math.degrees(math.acos(v[2] / np.linalg.norm(v)))


def volume_ml(data: np.ndarray, affine: np.ndarray, label: int) -> float:
    return float(np.count_nonzero(data == label)) * abs(np.linalg.det(affine[:3, :3])) / 1000.0


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A 13-subject dataset (3 layouts, LPS/RAS, two oblique), prepared once via the CLI."""
    root = tmp_path_factory.mktemp("totalseg")
    src = root / "Totalsegmentator_dataset"
    rows = make_totalseg_dataset(
        src, n=12, phantom_size=64, layouts=("v1", "v2-ml", "v2-files"), faults=FAULTS, seed=0
    )
    # One v2 `total`-only subject among them, and one listed in meta.csv without a folder.
    write_totalseg_subject(src / "s0100", rows[0]["label_map"], layout="v2-total")
    with open(src / "meta.csv", "a") as f:
        f.write("s0100;60;f;A;ct thorax;train\ns0200;60;f;A;ct thorax;train\n")
    expected = {r["subject"]: r["fault"] for r in rows if r["fault"]}
    expected |= {"s0100": "total_only", "s0200": "missing_folder"}
    out = root / "prepared"
    with pytest.MonkeyPatch.context() as mp:
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            mp.delenv(key, raising=False)
        code = cli.main(
            [
                "prepare",
                "totalsegmentator",
                str(src),
                "--out",
                str(out),
                "--size",
                "64",
                "--workers",
                "2",
            ]
        )
    assert code == 0
    return {"src": src, "out": out, "rows": rows, "expected": expected}


def kept_rows(prepared):
    return [r for r in prepared["rows"] if not r["fault"]]


# ---------------------------------------------------------------------------------
# Outputs.
# ---------------------------------------------------------------------------------
def test_writes_one_prepared_map_and_transform_per_kept_subject(prepared):
    out = prepared["out"]
    kept = sorted(r["subject"] for r in kept_rows(prepared))
    assert [ts_path.name for ts_path in list_label_maps(out)] == [f"{s}.nii.gz" for s in kept]
    for s in kept:
        lm = read_label_map(out / f"{s}.nii.gz", shape=(64, 64, 64), spacing=2.8)
        assert np.allclose(lm.affine, centred_affine(64))
        t = g.PreparedTransform.load(out / f"{s}.xfm.json")
        assert t.target_shape == (64, 64, 64)
    summary = read_json(out / "prepare.json")
    assert summary["prepared"] == len(kept)
    assert summary["reference"]["kind"] == "medoid"
    assert summary["reference"]["subject"] in kept


def test_excludes_exactly_the_broken_subjects_with_the_right_reason(prepared):
    exclusions = ts.read_exclusions(prepared["out"])
    assert set(exclusions) == set(prepared["expected"])
    for subject, fault in prepared["expected"].items():
        reason = exclusions[subject]
        if fault == "missing_folder":
            assert reason.startswith("missing: subject folder"), reason
            continue
        assert reason.startswith(EXPECTED_REASON[fault] + ":"), (subject, reason)
        assert REASON_MENTIONS[fault] in reason, (subject, reason)


def test_every_subject_has_a_manifest_recording_each_step(prepared):
    out = prepared["out"]
    for r in kept_rows(prepared):
        m = read_json(out / f"{r['subject']}.json")
        assert m["status"] == "prepared"
        assert m["source"]["layout"] == r["layout"]
        for step in ("load", "qc", "resample", "reorient", "crop", "register", "output"):
            assert step in m["steps"], step
        assert m["steps"]["qc"]["orientation"] == r["orientation"]
    for subject in prepared["expected"]:
        m = read_json(out / f"{subject}.json")
        assert m["status"] == "excluded" and m["reason"]


# ---------------------------------------------------------------------------------
# The issue's acceptance checks (at 64³ here; at 128³ in the slow test).
# ---------------------------------------------------------------------------------
def test_chamber_volumes_are_kept_within_3_percent(prepared):
    for r in kept_rows(prepared):
        scan = r["label_map"]
        lm = read_label_map(prepared["out"] / f"{r['subject']}.nii.gz")
        for c in anatomy.CHAMBERS:
            before = volume_ml(scan.data, scan.affine, L[c])
            after = volume_ml(lm.data, lm.affine, L[c])
            assert abs(after / before - 1.0) < 0.03, (r["subject"], c, before, after)


def test_lv_to_la_axis_points_along_z(prepared):
    posed = 0
    for r in kept_rows(prepared):
        # The random pose (up to 40° about a random axis) may happen to leave the axis
        # near z; every subject must end near z, and most must have started away from it.
        posed += axis_angle_to_z_deg(r["label_map"].data, r["label_map"].affine) > 10.0
        lm = read_label_map(prepared["out"] / f"{r['subject']}.nii.gz")
        assert axis_angle_to_z_deg(lm.data, lm.affine) < 5.0, r["subject"]
    assert posed >= len(kept_rows(prepared)) // 2


def test_unprepare_cli_maps_back_onto_the_original_scan(prepared, tmp_path):
    # At 2.8 mm (64³) a round trip blurs the thin myocardium to Dice ~0.92-0.95; the
    # issue's 0.95 is checked at the paper's 1.4 mm in test_geometry and the slow test.
    out = prepared["out"]
    for r in kept_rows(prepared):
        s = r["subject"]
        target = tmp_path / f"{s}_scan.nii.gz"
        code = cli.main(
            [
                "unprepare",
                str(out / f"{s}.nii.gz"),
                "--transform",
                str(out / f"{s}.xfm.json"),
                "--out",
                str(target),
            ]
        )
        assert code == 0
        back = read_label_map(target)
        scan = r["label_map"]
        assert back.shape == scan.shape and np.allclose(back.affine, scan.affine)
        for t in anatomy.TISSUES:
            assert dice(back.data, scan.data, L[t]) >= 0.90, (s, t)
        assert read_json(tmp_path / f"{s}_scan.json")["method"] == "unprepare"


def test_unprepare_a_folder_of_siblings(prepared, tmp_path):
    out = prepared["out"]
    s = kept_rows(prepared)[0]["subject"]
    sibs = tmp_path / "siblings"
    sibs.mkdir()
    for i in range(2):
        shutil.copy(out / f"{s}.nii.gz", sibs / f"{s}_sibling_{i}.nii.gz")
    code = cli.main(
        [
            "unprepare",
            str(sibs),
            "--transform",
            str(out / f"{s}.xfm.json"),
            "--out",
            str(tmp_path / "scan"),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "scan").glob("*.nii.gz")) == [
        f"{s}_sibling_0.nii.gz",
        f"{s}_sibling_1.nii.gz",
    ]


# ---------------------------------------------------------------------------------
# Re-running.
# ---------------------------------------------------------------------------------
def test_rerun_skips_finished_subjects_and_redoes_only_missing_ones(prepared, tmp_path):
    out = tmp_path / "prepared"
    shutil.copytree(prepared["out"], out)
    subjects = sorted(p.name for p in prepared["src"].iterdir() if p.is_dir())
    files = sorted(
        p for p in out.iterdir() if p.name.endswith((".nii.gz", ".xfm.json")) or p.suffix == ".json"
    )
    stamps = {p: p.stat().st_mtime_ns for p in files if p.name != "prepare.json"}

    summary = prepare_totalsegmentator(prepared["src"], out, size=64, workers=1, progress=False)
    assert summary["skipped"] == len(subjects) + 1  # + the meta.csv-only subject
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    redo = kept_rows(prepared)[1]["subject"]
    before = (out / f"{redo}.nii.gz").read_bytes()
    for suffix in (".nii.gz", ".xfm.json", ".json"):
        (out / f"{redo}{suffix}").unlink()
    summary = prepare_totalsegmentator(prepared["src"], out, size=64, workers=1, progress=False)
    assert summary["skipped"] == len(subjects)
    assert (out / f"{redo}.nii.gz").read_bytes() == before  # same reference, same bytes
    changed = [p.name for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert sorted(changed) == sorted(f"{redo}{x}" for x in (".nii.gz", ".xfm.json", ".json"))


# ---------------------------------------------------------------------------------
# Layouts and refusals.
# ---------------------------------------------------------------------------------
def test_v2_total_only_dataset_is_refused_with_a_clear_reason(tmp_path, capsys):
    make_totalseg_dataset(tmp_path / "v2", n=2, phantom_size=32, layouts=("v2-total",))
    with pytest.raises(ValueError, match="only the whole heart") as err:
        prepare_totalsegmentator(tmp_path / "v2", tmp_path / "out", size=32, progress=False)
    assert "heartchambers_highres" in str(err.value)
    code = cli.main(
        ["prepare", "totalsegmentator", str(tmp_path / "v2"), "--out", str(tmp_path / "o")]
    )
    err_text = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err_text.splitlines()) == 1 and "whole heart" in err_text


def test_layouts_are_detected_and_the_multilabel_table_is_read(tmp_path):
    rows = make_totalseg_dataset(
        tmp_path, n=4, phantom_size=32, layouts=("v1", "v2-ml", "v2-files", "v2-total")
    )
    assert [ts.detect_layout(tmp_path / r["subject"]) for r in rows] == [
        "v1",
        "v2-ml",
        "v2-files",
        "v2-total",
    ]
    table = ts.label_table(tmp_path / "s0001" / "heartchambers_highres.nii.gz")
    assert table == anatomy.TOTALSEG_V2_HEARTCHAMBERS_VALUES
    subjects = ts.find_subjects(tmp_path)
    assert [s.split for s in subjects] == ["test", "train", "train", "train"]
    for s, r in zip(subjects[:3], rows[:3], strict=True):
        lm, record = ts.load_subject(s)
        assert record["layout"] == r["layout"]
        assert np.array_equal(lm.data, r["label_map"].data), s.name
        assert np.allclose(lm.affine, r["label_map"].affine)
    assert [s.name for s in ts.find_subjects(tmp_path, split="test")] == ["s0000"]


def test_a_single_subject_folder_is_a_dataset_of_one(tmp_path):
    make_totalseg_dataset(tmp_path, n=1, phantom_size=32)
    subjects = ts.find_subjects(tmp_path / "s0000")
    assert [(s.name, s.layout) for s in subjects] == [("s0000", "v1")]


def test_given_reference_and_in_process_run(prepared, tmp_path):
    src = tmp_path / "ds"
    make_totalseg_dataset(src, n=2, phantom_size=64, seed=5)
    ref = prepared["out"] / f"{kept_rows(prepared)[0]['subject']}.nii.gz"
    summary = prepare_totalsegmentator(
        src, tmp_path / "out", size=64, workers=1, reference=ref, progress=False
    )
    assert summary["prepared"] == 2
    assert summary["reference"]["kind"] == "file"
    m = read_json(tmp_path / "out" / "s0000.json")
    assert m["steps"]["register"]["engine"] == "simpleitk"


def test_bad_inputs_name_the_file(prepared, tmp_path, capsys):
    out = prepared["out"]
    s = kept_rows(prepared)[0]["subject"]
    scan_file = prepared["src"] / s
    seg = next(scan_file.rglob("*.nii.gz"))
    # A scan-space file is not a prepared map.
    code = cli.main(
        [
            "unprepare",
            str(seg),
            "--transform",
            str(out / f"{s}.xfm.json"),
            "--out",
            str(tmp_path / "x.nii.gz"),
        ]
    )
    assert code == 2 and seg.name in capsys.readouterr().err
    # A manifest is not a transform.
    code = cli.main(
        [
            "unprepare",
            str(out / f"{s}.nii.gz"),
            "--transform",
            str(out / f"{s}.json"),
            "--out",
            str(tmp_path / "x.nii.gz"),
        ]
    )
    assert code == 2 and f"{s}.json" in capsys.readouterr().err
    # A reference on another grid.
    code = cli.main(
        [
            "prepare",
            "totalsegmentator",
            str(prepared["src"]),
            "--out",
            str(tmp_path / "o"),
            "--size",
            "32",
            "--reference",
            str(out / f"{s}.nii.gz"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"{s}.nii.gz" in err and "64x64x64" in err
    # Malformed volume bounds, missing source.
    assert (
        cli.main(
            [
                "prepare",
                "totalsegmentator",
                str(prepared["src"]),
                "--out",
                str(tmp_path / "o"),
                "--volume-bounds",
                "LV=5",
            ]
        )
        == 2
    )
    assert "CHAMBER=MIN:MAX" in capsys.readouterr().err
    assert (
        cli.main(
            ["prepare", "totalsegmentator", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "nowhere: no such folder" in capsys.readouterr().err


def test_medoid_is_the_subject_overlapping_most_with_the_others():
    maps = {}
    # Boxes shifted along x: b overlaps a by 6/8 and c by 7/8 voxels, d overlaps none.
    for name, shift in (("a", 0), ("b", 2), ("c", 3), ("d", 12)):
        m = np.zeros((24, 24, 24), np.uint8)
        m[4 + shift : 12 + shift, 6:18, 6:18] = L["LV"]
        maps[name] = m
    best, scores = ts.medoid(maps)
    assert best == "b"
    assert scores["b"] > scores["c"] > scores["a"] > scores["d"]


def test_volume_bounds_parse_and_validate():
    bounds = ts.parse_volume_bounds(["LV=30:350", " RA = 5 : 90 "])
    assert bounds["LV"] == (30.0, 350.0) and bounds["RA"] == (5.0, 90.0)
    assert bounds["RV"] == ts.DEFAULT_VOLUME_BOUNDS_ML["RV"]
    for bad in ("LV=5", "Myo=1:2", "LV=50:10"):
        with pytest.raises(ValueError):
            ts.parse_volume_bounds([bad])


# ---------------------------------------------------------------------------------
# The issue's acceptance test at its sizes.
# ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_issue_acceptance_at_paper_resolution(tmp_path):
    """0.8 x 0.8 x 1.5 mm scans, prepared to 128³ (1.4 mm): volumes within 3%, axis
    within 5° of +z, exactly the broken subjects excluded, inverse Dice >= 0.95."""
    faults = {2: "missing_class", 5: "empty_class", 7: "truncated"}
    rows = make_totalseg_dataset(
        tmp_path / "src",
        n=9,
        phantom_size=128,
        spacing=(0.8, 0.8, 1.5),
        fov_mm=(300.0, 300.0, 250.0),
        layouts=("v1", "v2-ml", "v2-files"),
        faults=faults,
        seed=1,
    )
    out = tmp_path / "out"
    prepare_totalsegmentator(tmp_path / "src", out, size=128, workers=2, progress=False)
    exclusions = ts.read_exclusions(out)
    assert {s: r.split(":")[0] for s, r in exclusions.items()} == {
        f"s{i:04d}": EXPECTED_REASON[f] for i, f in faults.items()
    }
    for r in rows:
        if r["fault"]:
            continue
        scan = r["label_map"]
        lm = read_label_map(out / f"{r['subject']}.nii.gz", shape=(128,) * 3, spacing=1.4)
        for c in anatomy.CHAMBERS:
            before, after = (
                volume_ml(scan.data, scan.affine, L[c]),
                volume_ml(lm.data, lm.affine, L[c]),
            )
            assert abs(after / before - 1.0) < 0.03, (r["subject"], c)
        assert axis_angle_to_z_deg(lm.data, lm.affine) < 5.0
        back = g.unprepare(lm, g.PreparedTransform.load(out / f"{r['subject']}.xfm.json"))
        for t in anatomy.TISSUES:
            assert dice(back.data, scan.data, L[t]) >= 0.95, (r["subject"], t)
