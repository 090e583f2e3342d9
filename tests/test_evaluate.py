"""`siblings evaluate` and the cohort API: outputs, known answers, bootstrap, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from siblings import anatomy
from siblings.cli import main
from siblings.data.phantom import make_phantom
from siblings.io import LabelMap, centred_affine, read_label_map, write_label_map
from siblings.metrics import (
    bootstrap_interval,
    bootstrap_metrics,
    compare,
    evaluate,
    evaluate_maps,
    frechet_distance,
    morphology,
    normalise,
    precision_recall,
    summarise_maps,
    topology_checks,
)
from siblings.metrics.bootstrap import percentile_interval
from siblings.pipelines.phantom import generate_cohort

REQUIRED_KEYS = {
    "n",
    "n_reference",
    "k",
    "fd",
    "fd_ci",
    "precision",
    "precision_ci",
    "recall",
    "recall_ci",
    "tv_percent",
    "tv_percent_ci",
    "violation_rate",
    "violation_rate_ci",
    "reference",
}


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    """Reference (10 maps, defects), cohort (8 maps, defects), clean cohort (8), 32³."""
    root = tmp_path_factory.mktemp("eval_cohorts")
    out = {}
    for name, n, seed, rate in (("ref", 10, 0, 0.5), ("gen", 8, 1, 0.6), ("clean", 8, 2, 0.0)):
        generate_cohort(
            root / name, n=n, size=32, seed=seed, defect_rate=rate, workers=1, progress=False
        )
        out[name] = root / name
    return out


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_metrics_csv_figures_and_report(cohorts, tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, _ = _run(
        [
            "evaluate",
            str(cohorts["gen"]),
            "--reference",
            str(cohorts["ref"]),
            "--out",
            str(out),
            "--workers",
            "1",
            "--n-boot",
            "200",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    assert "FD" in stdout and "TV%" in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert REQUIRED_KEYS <= set(m)
    assert m["n"] == 8 and m["n_reference"] == 10 and m["k"] == 3
    for key in ("fd", "precision", "recall", "tv_percent"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= hi
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and m["fd"] >= 0
    assert set(m["violation_rate"]) == set(anatomy.TOPOLOGY_COLUMNS)
    assert m["tv_percent"] > 0  # the cohort has defects

    with open(out / "per_map.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", *anatomy.MORPHOLOGY_COLUMNS, *anatomy.TOPOLOGY_COLUMNS]
    assert [r["file"] for r in rows] == sorted(p.name for p in cohorts["gen"].glob("*.nii.gz"))
    # Each row equals the per-map functions applied to that file.
    for r in rows[:3]:
        lm = read_label_map(cohorts["gen"] / r["file"])
        for col, v in morphology(lm).items():
            assert float(r[col]) == pytest.approx(v, rel=1e-5, abs=1e-9)
        for col, v in topology_checks(lm.data).items():
            assert r[col] == str(int(v))
    # TV% is the mean of the per-map check columns.
    flags = np.array([[int(r[c]) for c in anatomy.TOPOLOGY_COLUMNS] for r in rows])
    assert m["tv_percent"] == pytest.approx(100 * flags.mean())

    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for png in ("volumes.png", "occupancy.png", "occupancy_heart.png", "violations.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "reference_per_map.csv").exists()
    # Phantom files on the model grid: the slices say model axes, not patient letters.
    assert np.allclose(m["grid"]["affine"], centred_affine(32))
    assert "Model axes: slices along the model grid" in html


def test_cohorts_on_a_scanner_grid_get_the_letters_of_their_affine(cohorts, tmp_path, capsys):
    # The same maps on an LPS scanner grid (axes flipped, origin off the grid centre).
    lps = np.diag([-5.6, -5.6, 5.6, 1.0])
    lps[:3, 3] = (100.0, 80.0, -40.0)
    for name in ("ref", "gen"):
        (tmp_path / name).mkdir()
        for f in sorted(cohorts[name].glob("*.nii.gz")):
            write_label_map(tmp_path / name / f.name, LabelMap(read_label_map(f).data, lps))
    out = tmp_path / "eval"
    argv = ["evaluate", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref")]
    argv += ["--out", str(out), "--workers", "1", "--n-boot", "20", "--quiet", "--no-figures"]
    code, _, _ = _run(argv, capsys)
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["grid"]["orientation"] == "LPS"
    html = (out / "report.html").read_text()
    assert "Letters (LPS): the patient&#x27;s directions from the map&#x27;s affine" in html


def test_defect_free_phantom_cohort_has_zero_tv(cohorts, tmp_path, capsys):
    clean = tmp_path / "clean"
    code, _, _ = _run(
        [
            "phantom",
            "--n",
            "6",
            "--size",
            "32",
            "--seed",
            "4",
            "--defect-rate",
            "0",
            "--workers",
            "1",
            "--out",
            str(clean),
        ],
        capsys,
    )
    assert code == 0
    out = tmp_path / "eval"
    code, _, _ = _run(
        [
            "evaluate",
            str(clean),
            "--reference",
            str(cohorts["ref"]),
            "--out",
            str(out),
            "--workers",
            "1",
            "--n-boot",
            "100",
            "--quiet",
            "--no-figures",
        ],
        capsys,
    )
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["tv_percent"] == 0.0 and m["tv_percent_ci"] == [0.0, 0.0]
    assert set(m["violation_rate"].values()) == {0.0}
    assert m["reference"]["tv_percent"] > 0  # the reference has defects


def test_a_cohort_against_itself(cohorts):
    ev = evaluate(cohorts["ref"], cohorts["ref"], workers=1, n_boot=50)
    assert ev.metrics["fd"] == pytest.approx(0.0, abs=1e-9)
    assert ev.metrics["precision"] == ev.metrics["recall"] == 1.0
    assert ev.metrics["tv_percent"] == ev.metrics["reference"]["tv_percent"]


def test_metrics_equal_the_functions_on_normalised_features(cohorts):
    ev = evaluate(cohorts["gen"], cohorts["ref"], workers=1, n_boot=0, k=2)
    real = ev.reference.features
    fake = ev.cohort.features
    zr, zf = normalise(real, real), normalise(fake, real)
    assert ev.metrics["fd"] == pytest.approx(frechet_distance(zf, zr), rel=1e-12)
    assert (ev.metrics["precision"], ev.metrics["recall"]) == tuple(precision_recall(zr, zf, k=2))
    assert ev.metrics["fd_ci"] is None and ev.metrics["k"] == 2


def test_parallel_workers_give_the_serial_result(cohorts):
    serial = evaluate(cohorts["gen"], cohorts["ref"], workers=1, n_boot=100)
    parallel = evaluate(cohorts["gen"], cohorts["ref"], workers=2, n_boot=100)
    np.testing.assert_array_equal(parallel.cohort.features, serial.cohort.features)
    np.testing.assert_array_equal(parallel.cohort.violated, serial.cohort.violated)
    np.testing.assert_array_equal(
        parallel.cohort.occupancy.counts(), serial.cohort.occupancy.counts()
    )
    for key in ("fd", "fd_ci", "precision_ci", "recall_ci", "tv_percent_ci", "violation_rate"):
        assert parallel.metrics[key] == serial.metrics[key]


def test_in_memory_evaluation_equals_the_folder_evaluation(cohorts):
    import torch

    folder = evaluate(cohorts["gen"], cohorts["ref"], workers=1, n_boot=100, seed=3)
    ref_maps = (read_label_map(p) for p in sorted(cohorts["ref"].glob("*.nii.gz")))  # a generator
    gen = np.stack([read_label_map(p).data for p in sorted(cohorts["gen"].glob("*.nii.gz"))])
    # Decoded batches arrive as tensors on the model grid: 32³ at 5.6 mm.
    mem = evaluate_maps(torch.from_numpy(gen), ref_maps, spacing_mm=5.6, n_boot=100, seed=3)
    for key in ("fd", "precision", "recall", "tv_percent", "fd_ci", "recall_ci", "violation_rate"):
        assert mem.metrics[key] == pytest.approx(folder.metrics[key], rel=1e-6)
    np.testing.assert_array_equal(mem.cohort.occupancy.counts(), folder.cohort.occupancy.counts())


def test_bootstrap_is_seeded_and_reduces_to_the_estimates_without_resampling(cohorts):
    ref = summarise_maps(make_phantom(i, size=32, seed=0, defect_rate=0.5)[0] for i in range(12))
    gen = summarise_maps(make_phantom(i, size=32, seed=1, defect_rate=0.5)[0] for i in range(9))
    a = compare(gen, ref, n_boot=200, seed=7)
    b = compare(gen, ref, n_boot=200, seed=7)
    c = compare(gen, ref, n_boot=200, seed=8)
    assert a["fd_ci"] == b["fd_ci"] and a["recall_ci"] == b["recall_ci"]
    assert a["fd_ci"] != c["fd_ci"]
    zr, zf = normalise(ref.features, ref.features), normalise(gen.features, ref.features)
    identity = np.arange(len(gen))[None, :]
    reps = bootstrap_metrics(zf, zr, gen.violated, k=3, indices=identity)
    assert reps["fd"][0] == pytest.approx(a["fd"], rel=1e-12)
    assert reps["precision"][0] == a["precision"] and reps["recall"][0] == a["recall"]
    assert reps["tv_percent"][0] == pytest.approx(a["tv_percent"])


def test_interval_helpers_known_answers():
    reps = np.arange(101, dtype=float)  # percentiles of 0..100 are the values themselves
    assert percentile_interval(reps) == pytest.approx([2.5, 97.5])
    assert percentile_interval(reps, 0.5) == pytest.approx([25.0, 75.0])
    # Re-centred: shifted by estimate − mean (60 − 50), then clipped to the bounds.
    assert bootstrap_interval(reps, 60.0) == pytest.approx([12.5, 107.5])
    assert bootstrap_interval(reps, 60.0, bounds=(0.0, 100.0)) == pytest.approx([12.5, 100.0])
    with pytest.raises(ValueError, match="level"):
        percentile_interval(reps, 1.0)


def test_fd_interval_is_re_centred_and_the_others_are_plain_percentiles():
    ref = summarise_maps(make_phantom(i, size=32, seed=0, defect_rate=0.5)[0] for i in range(12))
    gen = summarise_maps(make_phantom(i, size=32, seed=1, defect_rate=0.5)[0] for i in range(9))
    m = compare(gen, ref, n_boot=300, seed=3)
    zr, zf = normalise(ref.features, ref.features), normalise(gen.features, ref.features)
    reps = bootstrap_metrics(zf, zr, gen.violated, k=3, n_boot=300, seed=3)
    assert m["fd_ci"] == bootstrap_interval(reps["fd"], m["fd"], bounds=(0.0, np.inf))
    assert m["fd_ci"] != percentile_interval(reps["fd"])  # FD replicates are biased
    for key in ("precision", "recall", "tv_percent"):
        assert m[f"{key}_ci"] == percentile_interval(reps[key]), key
    lo, hi = percentile_interval(reps["violation_rate"])
    for j, col in enumerate(anatomy.TOPOLOGY_COLUMNS):
        assert m["violation_rate_ci"][col] == [lo[j], hi[j]]
    assert m["bootstrap"]["interval"] == "percentile; FD re-centred on the estimate"


def test_recall_replicates_use_distinct_maps():
    # Two tight clusters of real points; the cohort has one point on each. Drawing one
    # map twice must not shrink its ball to the duplicate at distance 0.
    real = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [10.0, 10.0], [10.1, 10.0]])
    fake = np.array([[0.0, 0.05], [10.0, 10.05], [5.0, 5.0]])
    viol = np.zeros((3, 12), dtype=bool)
    reps = bootstrap_metrics(fake, real, viol, k=1, indices=np.array([[0, 0, 1]]))
    # Distinct maps 0 and 1: each one's k = 1 radius is their mutual distance (~14.1),
    # which covers every real point; counting the copy of map 0 would give it radius 0.
    assert reps["recall"][0] == 1.0


# ---------------------------------------------------------------------------------
# Bad input: exit code 2, the offending file named, nothing written.
# ---------------------------------------------------------------------------------
def _copy(src: Path, dst: Path, n: int | None = None) -> Path:
    dst.mkdir(parents=True)
    for p in sorted(src.glob("*.nii.gz"))[:n]:
        shutil.copy(p, dst / p.name)
    return dst


def _expect_error(argv: list[str], out: Path, capsys, *needles: str) -> str:
    code, _, err = _run([*argv, "--out", str(out), "--workers", "1", "--quiet"], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err
    assert not out.exists()
    return err


def test_wrong_grid_between_cohort_and_reference(cohorts, tmp_path, capsys):
    big = tmp_path / "ref64"
    for i in range(4):
        lm, _ = make_phantom(i, size=64, seed=0)
        write_label_map(big / f"ref_{i}.nii.gz", lm)
    err = _expect_error(
        ["evaluate", str(cohorts["gen"]), "--reference", str(big)],
        tmp_path / "out",
        capsys,
        str(sorted(cohorts["gen"].glob("*.nii.gz"))[0]),
        "grid is 32x32x32, expected 64x64x64",
    )
    assert "ref_0.nii.gz" in err  # the map that set the grid


def test_wrong_voxel_size_and_orientation_are_named(cohorts, tmp_path, capsys):
    gen = _copy(cohorts["gen"], tmp_path / "gen")
    bad = gen / "phantom_0005.nii.gz"
    lm = read_label_map(bad)
    write_label_map(bad, LabelMap(lm.data, centred_affine(32, spacing_mm=2.0)))
    _expect_error(
        ["evaluate", str(gen), "--reference", str(cohorts["ref"])],
        tmp_path / "out",
        capsys,
        str(bad),
        "voxel size",
    )
    flipped = np.diag([-5.6, 5.6, 5.6, 1.0])
    write_label_map(bad, LabelMap(lm.data, flipped))
    _expect_error(
        ["evaluate", str(gen), "--reference", str(cohorts["ref"])],
        tmp_path / "out2",
        capsys,
        str(bad),
        "orientation is LAS, expected RAS",
    )


def test_labels_out_of_range(cohorts, tmp_path, capsys):
    gen = _copy(cohorts["gen"], tmp_path / "gen")
    bad = gen / "phantom_0003.nii.gz"
    img = nib.load(str(bad))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(data, img.affine), str(bad))
    _expect_error(
        ["evaluate", str(gen), "--reference", str(cohorts["ref"])],
        tmp_path / "out",
        capsys,
        str(bad),
        "outside 0–6",
        "9 (1 voxel)",
    )


def test_cohort_smaller_than_k_plus_one(cohorts, tmp_path, capsys):
    small = _copy(cohorts["gen"], tmp_path / "small", n=3)
    _expect_error(
        ["evaluate", str(small), "--reference", str(cohorts["ref"])],
        tmp_path / "out",
        capsys,
        str(small),
        "holds 3 label map(s)",
        "k = 3",
        "at least 4",
    )
    # With k = 2, three maps are enough.
    code, _, err = _run(
        [
            "evaluate",
            str(small),
            "--reference",
            str(cohorts["ref"]),
            "--k",
            "2",
            "--out",
            str(tmp_path / "ok"),
            "--workers",
            "1",
            "--quiet",
            "--no-figures",
            "--n-boot",
            "20",
        ],
        capsys,
    )
    assert code == 0, err


def test_empty_folder_and_missing_folder(cohorts, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a label map")
    _expect_error(
        ["evaluate", str(empty), "--reference", str(cohorts["ref"])],
        tmp_path / "out",
        capsys,
        str(empty),
        "no label maps",
    )
    _expect_error(
        ["evaluate", str(cohorts["gen"]), "--reference", str(empty)],
        tmp_path / "out",
        capsys,
        str(empty),
        "no label maps",
    )
    _expect_error(
        ["evaluate", str(tmp_path / "nope"), "--reference", str(cohorts["ref"])],
        tmp_path / "out",
        capsys,
        str(tmp_path / "nope"),
        "no such folder",
    )


def test_corrupt_file_in_a_parallel_run_is_named(cohorts, tmp_path):
    gen = _copy(cohorts["gen"], tmp_path / "gen")
    bad = gen / "phantom_0006.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated gzip
    with pytest.raises(ValueError, match=r"phantom_0006\.nii\.gz"):
        evaluate(gen, cohorts["ref"], workers=2, n_boot=10)
    assert not (tmp_path / "out").exists()
