"""Targeted augmentation (`siblings augment`): the condition parser, filtering on the written
file, stopping at N, acceptance-rate arithmetic, seed reproducibility, attempt identity
against the editing API, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from siblings import anatomy
from siblings.augment import AugmentStopped, check_settings, plan_attempt
from siblings.cli import main
from siblings.io import LabelMap, read_label_map, write_label_map
from siblings.metrics.bootstrap import acceptance_rate, wilson_interval
from siblings.metrics.cohort import HEADLINE_KEYS, measure_map
from siblings.metrics.condition import Clause, Condition, ConditionError, parse_condition
from siblings.models.edits import inpaint, perturb
from siblings.models.ldm import LatentDiffusionModel
from siblings.pipelines.augment import augment

L = anatomy.LABELS
STEPS = 2  # sampler steps in these tests: the micro model's maps are noise anyway


# ---------------------------------------------------------------------------------
# The condition.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("RV_volume_ml > 115", 115.0, False),
        ("RV_volume_ml > 115", 115.5, True),
        ("RV_volume_ml >= 115", 115.0, True),
        ("RV_volume_ml >= 115", 114.9, False),
        ("RV_volume_ml < 115", 115.0, False),
        ("RV_volume_ml < 115", 114.9, True),
        ("RV_volume_ml <= 115", 115.0, True),
        ("RV_volume_ml <= 115", 115.1, False),
        ("RV_volume_ml>1.15e2", 116.0, True),  # no spaces, scientific notation
        ("115 < RV_volume_ml", 116.0, True),  # number first: the mirror
        ("115 >= RV_volume_ml", 116.0, False),
        ("RV_volume_ml > -5", 0.0, True),
    ],
)
def test_each_operator_compares_as_written(text, value, expected):
    cond = parse_condition(text)
    assert cond({"RV_volume_ml": value}) is expected


def test_and_requires_every_clause():
    cond = parse_condition("RV_volume_ml > 115 and LV_volume_ml <= 150 AND LA_major_mm >= 40")
    assert cond.clauses == (
        Clause("RV_volume_ml", ">", 115.0),
        Clause("LV_volume_ml", "<=", 150.0),
        Clause("LA_major_mm", ">=", 40.0),
    )
    assert cond.columns == ("RV_volume_ml", "LV_volume_ml", "LA_major_mm")
    base = {"RV_volume_ml": 120.0, "LV_volume_ml": 150.0, "LA_major_mm": 40.0}
    assert cond(base)
    assert not cond({**base, "RV_volume_ml": 110.0})
    assert not cond({**base, "LV_volume_ml": 151.0})
    assert not cond({**base, "LA_major_mm": 39.0})
    assert str(cond) == "RV_volume_ml > 115 and LV_volume_ml <= 150 and LA_major_mm >= 40"


def test_condition_on_vectors_and_rows_uses_the_morphology_column_order():
    cond = parse_condition("RV_volume_ml > 100 and RA_minor_mm < 30")
    rows = np.zeros((3, 12))
    rv, ra = (
        anatomy.MORPHOLOGY_COLUMNS.index("RV_volume_ml"),
        anatomy.MORPHOLOGY_COLUMNS.index("RA_minor_mm"),
    )
    rows[:, rv] = [150, 50, 150]
    rows[:, ra] = [20, 20, 40]
    assert cond.mask(rows).tolist() == [True, False, False]
    assert [cond(r) for r in rows] == [True, False, False]
    assert not parse_condition("RV_volume_ml > 0")({"RV_volume_ml": float("nan")})


def test_every_morphology_column_is_accepted():
    for col in anatomy.MORPHOLOGY_COLUMNS:
        assert parse_condition(f"{col} > 1").columns == (col,)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("RV_volume > 115", ["unknown column 'RV_volume'", "RV_volume_ml", "LV_minor_mm"]),
        ("rv_volume_ml > 115", ["unknown column 'rv_volume_ml'", "did you mean RV_volume_ml"]),
        ("Myo_volume_ml > 1", ["unknown column 'Myo_volume_ml'"]),
        ("RV_volume_ml == 115", ["unsupported operator '=='", "<, >, <= or >="]),
        ("RV_volume_ml = 115", ["an equality needs a tolerance", "RV_volume_ml = 115 ± 5"]),
        ("RV_volume_ml > 115 or LV_volume_ml < 3", ["cannot parse", "COLUMN OP NUMBER"]),
        ("RV_volume_ml >", ["cannot parse 'RV_volume_ml >'"]),
        ("RV_volume_ml > abc", ["cannot parse"]),
        ("RV_volume_ml > 1 and", ["'and' needs a clause on each side"]),
        ("and RV_volume_ml > 1", ["'and' needs a clause on each side"]),
        ("(RV_volume_ml > 1)", ["cannot parse"]),
        ("__import__('os').system('true') > 1", ["cannot parse"]),
        ("", ["empty condition"]),
        ("   ", ["empty condition"]),
    ],
)
def test_bad_conditions_are_named(text, needles):
    with pytest.raises(ConditionError) as info:
        parse_condition(text)
    assert isinstance(info.value, ValueError)
    for needle in needles:
        assert needle in str(info.value)


def test_a_parsed_condition_passes_through():
    cond = Condition((Clause("LV_volume_ml", "<", 3.0),))
    assert parse_condition(cond) is cond


# ---------------------------------------------------------------------------------
# Arithmetic and planning (no model).
# ---------------------------------------------------------------------------------
def test_acceptance_rate_arithmetic():
    assert acceptance_rate(140, 560) == 0.25
    assert acceptance_rate(3, 3) == 1.0
    assert math.isnan(acceptance_rate(0, 0))
    with pytest.raises(ValueError):
        acceptance_rate(4, 3)
    # Wilson interval known answers: 0 of 10 -> [0, z²/(10 + z²)]; 5 of 10 symmetric about 1/2.
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1.959964**2 / (10 + 1.959964**2))
    lo, hi = wilson_interval(5, 10)
    assert lo + hi == pytest.approx(1.0) and lo == pytest.approx(0.2366, abs=1e-4)
    # All accepted: mirror image of none accepted, upper bound exactly 1 (not 1 - 1e-16).
    for n in (1, 4, 7, 140):
        lo, hi = wilson_interval(n, n)
        assert hi == 1.0 and lo == pytest.approx(1 - wilson_interval(0, n)[1])


def test_attempts_go_round_robin_over_twins_with_psi_per_round_and_region_per_twin():
    plan = [plan_attempt(a, "perturb", 3, (0.5, 0.35)) for a in range(7)]
    # Twin j of round r gets psis[(r + j) mod 2]: half of each round at each psi.
    assert plan == [
        (0, 0.5),
        (1, 0.35),
        (2, 0.5),
        (0, 0.35),
        (1, 0.5),
        (2, 0.35),
        (0, 0.5),
    ]
    assert [plan_attempt(a, "perturb", 1, (0.5, 0.35))[1] for a in range(3)] == [0.5, 0.35, 0.5]
    plan = [plan_attempt(a, "local", 3, regions=("LV", "RV")) for a in range(6)]
    assert plan == [(0, "LV"), (1, "RV"), (2, "LV"), (0, "LV"), (1, "RV"), (2, "LV")]
    assert plan_attempt(5, "uncond", 3) == (None, None)
    with pytest.raises(ValueError, match="unknown strategy"):
        plan_attempt(0, "conditional", 3)


# ---------------------------------------------------------------------------------
# With the micro model.
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(micro):
    return LatentDiffusionModel.load(micro.checkpoint, device="cpu")


def volumes(folder_or_files) -> dict[str, float]:
    files = (
        sorted(Path(folder_or_files).glob("*.nii.gz"))
        if isinstance(folder_or_files, (str, Path))
        else folder_or_files
    )
    col = anatomy.MORPHOLOGY_COLUMNS.index("RV_volume_ml")
    return {p.name: float(measure_map(read_label_map(p))[0][col]) for p in files}


@pytest.fixture(scope="module")
def twin_rv(micro) -> dict[str, float]:
    return volumes(micro.data)


@pytest.fixture(scope="module")
def sample_rv(model, tmp_path_factory) -> list[float]:
    """RV volumes of unconditional samples 0..15 (seed 3), measured on written files."""
    tmp = tmp_path_factory.mktemp("samples")
    labels = model.sample(16, steps=STEPS, seed=3, batch=8)
    out = []
    for i, lab in enumerate(labels):
        path = write_label_map(tmp / f"s{i}.nii.gz", LabelMap(lab, model.affine))
        out.append(volumes([path])[path.name])
    return out


def rare_floor(twin_rv: dict[str, float]) -> float:
    """A threshold that leaves out the smallest twin(s) but keeps at least half of them."""
    v = sorted(twin_rv.values())
    return (v[1] + v[2]) / 2


def filtering_condition(twin_rv, sample_rv) -> str:
    """Rare twins: all but the two smallest RVs; samples: about half pass (median cut)."""
    s = sorted(sample_rv)
    cut = (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
    # The tests need the filter to reject at least one of the first attempts (with the
    # median cut the first four may all pass by chance) and to pass at least 4 of the
    # 16: of the cuts between sorted samples that do both, take the one nearest the
    # median.
    valid = [
        (abs(k - len(s) / 2), (s[k - 1] + s[k]) / 2)
        for k in range(4, len(s))
        if s[k] > s[k - 1] and any(v > (s[k - 1] + s[k]) / 2 for v in sample_rv[:4])
    ]
    if valid:
        cut = min(valid)[1]
    if max(s) == 0.0:
        # Since the phantom became right-handed, the micro model (6 VAE steps) decodes
        # every sample to background, so no condition splits them: these tests need a
        # micro model whose samples hold tissue (open gap, see the session note).
        pytest.skip("micro model's samples are all background; no RV to filter on")
    assert max(twin_rv.values()) < cut, "micro samples no longer dwarf the phantoms' RVs"
    return f"RV_volume_ml > {rare_floor(twin_rv)!r} and RV_volume_ml < {cut!r}"


def run_augment(model, micro, out, where, strategy="uncond", n=4, seed=3, **kw):
    kw.setdefault("steps", STEPS)
    # The posterior mean (the paper's encoding): these tests check augment's sampling
    # and bookkeeping, tests/test_inversion.py the inversion; 50 inversion steps per
    # twin made each run minutes long.
    kw.setdefault("invert_steps", 0)
    kw.setdefault("n_boot", 20)
    kw.setdefault("figures", False)
    run = {key: kw.pop(key) for key in RUN_OPTIONS if key in kw}
    return augment(
        model, micro.data, check_settings(where, strategy, n, seed=seed, **kw), out, **run
    )


RUN_OPTIONS = ("resume", "evaluate", "k", "n_boot", "figures", "progress", "reuse")


def test_uncond_keeps_only_maps_meeting_the_condition_and_counts_attempts(
    model, micro, twin_rv, sample_rv, tmp_path
):
    where = filtering_condition(twin_rv, sample_rv)
    cond = parse_condition(where)
    res = run_augment(model, micro, tmp_path / "out", where, n=4, seed=3, batch=3)

    # Every written file meets the condition, measured as `evaluate` measures it.
    written = sorted((tmp_path / "out").glob("*.nii.gz"))
    assert [p.name for p in written] == [f"uncond_{i:05d}.nii.gz" for i in range(4)]
    for p in written:
        feats, _ = measure_map(read_label_map(p))
        assert cond(feats)

    # Known answer: attempt a is unconditional sample a; the accepted attempts are
    # exactly those samples that meet the condition, up to the 4th.
    meets = [cond({"RV_volume_ml": v}) for v in sample_rv]
    expected = [a for a, ok in enumerate(meets) if ok][:4]
    assert res.attempts == expected
    assert res.attempted == expected[-1] + 1  # stops at the attempt giving the N-th map
    assert res.accepted == 4 and res.complete
    assert res.attempted > res.accepted  # the condition filtered some out
    assert res.acceptance_rate == 4 / res.attempted
    for i, a in enumerate(expected):
        want = model.sample(1, steps=STEPS, seed=3, start=a)[0]
        np.testing.assert_array_equal(read_label_map(written[i]).data, want)

    summary = json.loads((tmp_path / "out" / "augment.json").read_text())
    assert summary["complete"] is True
    assert (summary["accepted"], summary["attempted"]) == (4, res.attempted)
    assert summary["acceptance_rate"] == 4 / res.attempted
    lo, hi = summary["acceptance_rate_ci95_wilson"]
    assert lo < summary["acceptance_rate"] < hi
    assert summary["strategy"] == "uncond" and summary["seed"] == 3
    assert summary["condition"] == str(cond)
    assert summary["files"] == [p.name for p in written]
    assert summary["attempt_of_file"] == expected
    rare = sorted(name for name, v in twin_rv.items() if v > rare_floor(twin_rv))
    assert sorted(t["file"] for t in summary["rare_twins"]) == rare

    meta = json.loads((tmp_path / "out" / "uncond_00002.json").read_text())
    assert meta["method"] == "unconditional"
    assert (meta["seed"], meta["index"], meta["steps"]) == (3, expected[2], STEPS)
    assert meta["augment"]["attempt"] == expected[2]
    assert meta["augment"]["accepted_index"] == 2
    assert meta["augment"]["condition"] == str(cond)
    assert cond(meta["morphology"])

    # Evaluated against the rare twins, with the evaluate outputs.
    metrics = json.loads((tmp_path / "out" / "report" / "metrics.json").read_text())
    assert (metrics["n"], metrics["n_reference"]) == (4, len(rare))
    assert summary["evaluation"]["fd"] == metrics["fd"]
    # The headline keys, the same list as an edit run's against_reference.
    assert set(summary["evaluation"]) == {*HEADLINE_KEYS, "report"}
    assert {k: summary["evaluation"][k] for k in HEADLINE_KEYS} == {
        k: metrics[k] for k in HEADLINE_KEYS
    }
    assert (tmp_path / "out" / "report" / "report.html").exists()
    assert not list((tmp_path / "out").glob(".*"))  # no staging file left behind


@pytest.mark.parametrize("strategy", ["perturb", "local"])
def test_edited_maps_written_all_meet_the_condition(
    model, micro, twin_rv, sample_rv, tmp_path, strategy
):
    where = filtering_condition(twin_rv, sample_rv)
    cond = parse_condition(where)
    res = run_augment(model, micro, tmp_path / "out", where, strategy, n=4, seed=5, batch=4)
    written = sorted((tmp_path / "out").glob("*.nii.gz"))
    assert len(written) == res.accepted == 4
    for p in written:
        feats, _ = measure_map(read_label_map(p))
        assert cond(feats)
        meta = json.loads(p.with_name(p.name.replace(".nii.gz", ".json")).read_text())
        assert (
            meta["morphology"]["RV_volume_ml"]
            == feats[anatomy.MORPHOLOGY_COLUMNS.index("RV_volume_ml")]
        )
    assert res.acceptance_rate == 4 / res.attempted
    by_param = res.summary["acceptance_by_parameter"]
    assert sum(v["attempted"] for v in by_param.values()) == res.attempted
    assert sum(v["accepted"] for v in by_param.values()) == 4
    per_twin = res.summary["rare_twins"]
    assert sum(t["attempted"] for t in per_twin) == res.attempted


def test_same_seed_same_files_whatever_the_batch(model, micro, twin_rv, sample_rv, tmp_path):
    where = filtering_condition(twin_rv, sample_rv)
    a = run_augment(model, micro, tmp_path / "a", where, "perturb", n=5, seed=7, batch=4)
    b = run_augment(model, micro, tmp_path / "b", where, "perturb", n=5, seed=7, batch=1)
    c = run_augment(model, micro, tmp_path / "c", where, "perturb", n=5, seed=8, batch=4)
    names = sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_file())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir() if p.is_file())
    for name in names:
        if name != "augment.json":  # it records the batch size
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    sa = json.loads((tmp_path / "a" / "augment.json").read_text())
    sb = json.loads((tmp_path / "b" / "augment.json").read_text())
    sa["settings"].pop("batch"), sb["settings"].pop("batch")
    assert sa == sb
    assert (a.attempted, a.attempts) == (b.attempted, b.attempts)
    # Another seed, other maps.
    first = read_label_map(tmp_path / "a" / "perturb_00000.nii.gz").data
    other = read_label_map(tmp_path / "c" / "perturb_00000.nii.gz").data
    assert not np.array_equal(first, other)
    assert c.seed == 8


def test_perturb_attempts_are_the_editing_api_siblings(model, micro, twin_rv, tmp_path):
    where = f"RV_volume_ml > {rare_floor(twin_rv)!r}"  # every micro sample passes
    rare = sorted(p for p in micro.data.glob("*.nii.gz") if twin_rv[p.name] > rare_floor(twin_rv))
    t = len(rare)
    res = run_augment(
        model, micro, tmp_path / "out", where, "perturb", n=t + 2, seed=2, psis=(0.5, 0.35)
    )
    assert res.attempts == list(range(t + 2)) and res.acceptance_rate == 1.0
    psis = [
        json.loads((tmp_path / "out" / f"perturb_{i:05d}.json").read_text())["psi"]
        for i in range(t + 2)
    ]
    assert psis == [[0.5, 0.35][(a // t + a % t) % 2] for a in range(t + 2)]
    # Attempts 1 (round 0) and t + 1 (round 1) both edit twin 1, at psi 0.35 then 0.5:
    # siblings 1 and t + 1 of perturb() with the same seed.
    for a, psi in ((1, 0.35), (t + 1, 0.5)):
        meta = json.loads((tmp_path / "out" / f"perturb_{a:05d}.json").read_text())
        assert meta["method"] == "perturbational" and meta["psi"] == psi
        assert meta["recomputed_steps"] == max(1, round(psi * STEPS))
        assert meta["twin"]["file"] == str(rare[1])
        want = perturb(
            model, read_label_map(rare[1]), psi, n=a + 1, steps=STEPS, seed=2, invert_steps=0
        )
        got = read_label_map(tmp_path / "out" / f"perturb_{a:05d}.nii.gz").data
        np.testing.assert_array_equal(got, want.labels[a])
    by_psi = res.summary["acceptance_by_parameter"]
    assert by_psi["0.5"]["attempted"] == psis.count(0.5)
    assert by_psi["0.35"]["attempted"] == psis.count(0.35)
    assert abs(psis.count(0.5) - psis.count(0.35)) <= 1


def test_local_regenerates_lv_for_half_the_twins_and_rv_for_the_others(
    model, micro, twin_rv, tmp_path
):
    where = f"RV_volume_ml > {rare_floor(twin_rv)!r}"
    rare = sorted(p for p in micro.data.glob("*.nii.gz") if twin_rv[p.name] > rare_floor(twin_rv))
    res = run_augment(model, micro, tmp_path / "out", where, "local", n=4, seed=4, batch=3)
    regen = [
        json.loads((tmp_path / "out" / f"local_{i:05d}.json").read_text())["regenerate"]
        for i in range(4)
    ]
    assert regen == [["LV", "Myo"], ["Myo", "RV"], ["LV", "Myo"], ["Myo", "RV"]]
    assert res.summary["acceptance_by_parameter"]["LV"]["attempted"] == 2
    # Attempt 1 (twin 1, RV) equals sibling 1 of inpaint() with the same seed.
    want = inpaint(model, read_label_map(rare[1]), "RV", n=2, steps=STEPS, seed=4, invert_steps=0)
    got = read_label_map(tmp_path / "out" / "local_00001.nii.gz").data
    np.testing.assert_array_equal(got, want.labels[1])
    meta = json.loads((tmp_path / "out" / "local_00001.json").read_text())
    assert meta["method"] == "localized" and meta["region"] == "RV"
    assert meta["kept"] == list(want.kept) == ["Ao", "LV", "RA", "LA"]
    assert meta["keep_mask"]["kept_latent_fraction"] == want.params["kept_latent_fraction"]
    assert meta["dilate"] == want.params["dilate"]


def test_local_keep_exact_keeps_the_twins_tissues_and_latent_is_the_decoded_map(
    model, micro, tmp_path
):
    where = "RV_volume_ml >= 0"  # every twin and every map: the keep mode is what is tested
    for keep in ("exact", "latent"):
        out = tmp_path / keep
        kw = dict(seed=4, batch=2, max_attempts=2, keep=keep)
        run_augment(model, micro, out, where, "local", n=2, **kw)
        for f in sorted(out.glob("local_*.nii.gz")):
            meta = json.loads(f.with_name(f.name.replace(".nii.gz", ".json")).read_text())
            assert meta["keep"] == keep and meta["augment"]["run"]["keep"] == keep
            assert ("seam" in meta) == (keep == "exact")
            # Attempt a is sibling a of inpaint() with the same seed and keep mode.
            a, twin = meta["augment"]["attempt"], read_label_map(meta["twin"]["file"])
            want = inpaint(
                model, twin, meta["region"], n=a + 1, steps=STEPS, seed=4, keep=keep, invert_steps=0
            )
            got = read_label_map(f).data
            np.testing.assert_array_equal(got, want.labels[a])
            if keep == "exact":
                for t in meta["kept"]:
                    assert np.array_equal(got == L[t], twin.data == L[t]), t
    with pytest.raises(ValueError, match="unknown keep mode"):
        run_augment(model, micro, tmp_path / "bad", where, "local", n=1, keep="voxels")


def test_max_attempts_stops_with_a_clear_message(
    model, micro, twin_rv, sample_rv, tmp_path, capsys
):
    # The rare twins exist, but no micro sample has an RV this small.
    top = max(twin_rv.values())
    assert min(sample_rv) > top + 1
    where = f"RV_volume_ml > {rare_floor(twin_rv)!r} and RV_volume_ml <= {top!r}"
    with pytest.raises(AugmentStopped) as info:
        run_augment(model, micro, tmp_path / "out", where, n=2, max_attempts=5, batch=2)
    assert "max_attempts = 5" in str(info.value) and "0 of 2" in str(info.value)
    res = info.value.result
    assert (res.accepted, res.attempted, res.complete) == (0, 5, False)
    summary = json.loads((tmp_path / "out" / "augment.json").read_text())
    assert summary["complete"] is False and summary["attempted"] == 5
    assert "skipped" in summary["evaluation"]
    assert not list((tmp_path / "out").glob("*.nii.gz"))

    argv = cli(micro, tmp_path / "cli", "--where", where, "--strategy", "uncond", "--n", "2")
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--max-attempts", "3"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "stopped after max_attempts = 3 attempts with 0 of 2" in err
    assert "Raise --max-attempts" in err


def test_evaluation_is_skipped_below_k_plus_one_maps(model, micro, twin_rv, tmp_path):
    where = f"RV_volume_ml > {rare_floor(twin_rv)!r}"
    res = run_augment(model, micro, tmp_path / "out", where, n=2)
    assert res.metrics is None
    assert "at least 4 maps" in res.summary["evaluation"]["skipped"]
    assert not (tmp_path / "out" / "report").exists()


# ---------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------
def cli(micro, out: Path, *args: str) -> list[str]:
    return [
        "augment", *args, "--data", str(micro.data),
        "--steps", str(STEPS), "--checkpoint", str(micro.checkpoint), "--n-boot", "10",
        "--no-figures", "--quiet", "--out", str(out),
    ]  # fmt: skip


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_reports_the_acceptance_rate_and_writes_the_cohort(
    micro, twin_rv, sample_rv, tmp_path, capsys
):
    where = filtering_condition(twin_rv, sample_rv)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        cli(micro, out, "--where", where, "--strategy", "uncond", "--n", "4", "--seed", "3"),
        capsys,
    )
    assert code == 0, err
    summary = json.loads((out / "augment.json").read_text())
    rate = 100 * summary["acceptance_rate"]
    assert f"accepted 4 of {summary['attempted']} attempts: acceptance rate {rate:.1f}%" in stdout
    assert "vs the rare cohort: FD" in stdout
    assert len(list(out.glob("*.nii.gz"))) == 4


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--where", "RV_volume_ml > 1e9", "--strategy", "perturb", "--n", "3"],
         ["no map meets RV_volume_ml > 1e+09", "RV_volume_ml ranges"]),
        (["--where", "RV_vol > 1", "--strategy", "uncond", "--n", "3"],
         ["unknown column 'RV_vol'"]),
        (["--where", "RV_volume_ml ~ 1", "--strategy", "uncond", "--n", "3"],
         ["cannot parse"]),
        (["--where", "RV_volume_ml > 1", "--strategy", "uncond", "--n", "0"],
         ["--n must be at least 1"]),
        (["--where", "RV_volume_ml > 1", "--strategy", "perturb", "--n", "2", "--psi", "1.5"],
         ["psi must be in (0, 1]"]),
        (["--where", "RV_volume_ml > 1", "--strategy", "local", "--n", "2", "--regions", "XX"],
         ["unknown tissue 'XX'"]),
        (["--where", "RV_volume_ml > 1", "--strategy", "uncond", "--n", "5",
          "--max-attempts", "4"], ["--max-attempts (4) must be at least --n (5)"]),
    ],
)  # fmt: skip
def test_bad_input_exits_2_and_writes_nothing(micro, tmp_path, capsys, args, needles):
    out = tmp_path / "out"
    code, _, err = run_cli(cli(micro, out, *args), capsys)
    assert code == 2
    assert err.startswith("siblings augment: error:") and err.count("\n") == 1
    for needle in needles:
        assert needle in err
    assert not out.exists()


def test_empty_or_off_grid_data_folder_is_refused(micro, model, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    argv = cli(micro, out, "--where", "RV_volume_ml > 1", "--strategy", "uncond", "--n", "2")
    argv[argv.index("--data") + 1] = str(empty)
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "holds no label maps" in err and str(empty) in err
    assert not out.exists()

    mixed = tmp_path / "mixed"
    shutil.copytree(micro.data, mixed)
    write_label_map(mixed / "big.nii.gz", LabelMap(np.zeros((40,) * 3, np.uint8), np.eye(4)))
    with pytest.raises(ValueError, match=r"big\.nii\.gz: grid is 40x40x40, expected 32x32x32"):
        augment(model, mixed, check_settings("RV_volume_ml > 1", "uncond", 2, steps=STEPS), out)
    assert not out.exists()

    (mixed / "big.nii.gz").unlink()
    good = (mixed / "phantom_0000.nii.gz").read_bytes()
    (mixed / "phantom_0000.nii.gz").write_bytes(good[: len(good) // 2])
    argv[argv.index("--data") + 1] = str(mixed)
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "phantom_0000.nii.gz" in err and "corrupt or truncated" in err
    assert not out.exists()


def test_a_non_empty_output_folder_is_left_alone(micro, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(
        cli(micro, out, "--where", "RV_volume_ml > 1", "--strategy", "uncond", "--n", "2"), capsys
    )
    assert code == 2 and "is not empty" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


# ---------------------------------------------------------------------------------
# Resuming.
# ---------------------------------------------------------------------------------
def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_continues_an_interrupted_run_to_the_same_bytes(
    model, micro, twin_rv, sample_rv, tmp_path
):
    where = filtering_condition(twin_rv, sample_rv)
    whole = run_augment(model, micro, tmp_path / "whole", where, n=5, seed=3, evaluate=False)
    # An "interrupted" run: 3 maps, then the 4th map written without its manifest.
    part = tmp_path / "part"
    run_augment(model, micro, part, where, n=3, seed=3, evaluate=False)
    shutil.copy(tmp_path / "whole" / "uncond_00003.nii.gz", part / "uncond_00003.nii.gz")
    (part / "augment.json").unlink()
    with pytest.raises(FileExistsError, match="resume"):
        run_augment(model, micro, part, where, n=5, seed=3, evaluate=False)
    resumed = run_augment(model, micro, part, where, n=5, seed=3, evaluate=False, resume=True)
    assert resumed.attempts == whole.attempts and resumed.attempted == whole.attempted
    assert folder_bytes(part) == folder_bytes(tmp_path / "whole")


def test_resume_refuses_another_run_and_skips_a_finished_one(
    model, micro, twin_rv, sample_rv, tmp_path, monkeypatch
):
    import siblings.pipelines.augment as aug

    where = filtering_condition(twin_rv, sample_rv)
    out = tmp_path / "out"
    first = run_augment(model, micro, out, where, n=3, seed=3, evaluate=False)
    before = folder_bytes(out)
    with pytest.raises(FileExistsError, match=r"other settings \(seed differ\)"):
        run_augment(model, micro, out, where, n=4, seed=4, evaluate=False, resume=True)
    with pytest.raises(FileExistsError, match="more than n = 2"):
        run_augment(model, micro, out, where, n=2, seed=3, evaluate=False, resume=True)
    assert folder_bytes(out) == before

    def no_work(*args, **kwargs):
        raise AssertionError("a finished run was generated again")

    monkeypatch.setattr(aug, "generate", no_work)
    again = run_augment(model, micro, out, where, n=3, seed=3, evaluate=False, resume=True)
    assert (again.files, again.attempted) == (first.files, first.attempted)
    assert folder_bytes(out) == before

    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        run_augment(model, micro, out, where, n=4, seed=3, evaluate=False, resume=True)


def test_uncond_reuses_written_samples_without_changing_a_byte(model, micro, tmp_path):
    # Known answer: attempt a of `uncond` is sample a, so a folder written by the sample
    # pipeline with the same seed and steps holds the same maps; reading them gives the
    # same accepted files as sampling again. Every map passes the condition here, so the
    # accepted maps are attempts 0..3.
    from siblings.pipelines.augment import reusable_samples
    from siblings.pipelines.sample import sample_cohort

    where = "RV_volume_ml > -1"
    pool = tmp_path / "pool"
    sample_cohort(model, pool, 3, steps=STEPS, seed=3, batch=2, progress=False)
    sample_cohort(model, tmp_path / "other", 2, steps=STEPS, seed=4, progress=False)
    reuse = reusable_samples(pool, model, seed=3, steps=STEPS)
    assert sorted(reuse) == [0, 1, 2]
    assert reusable_samples(tmp_path / "other", model, seed=3, steps=STEPS) == {}
    assert reusable_samples(pool, model, seed=3, steps=STEPS + 1) == {}

    plain = run_augment(model, micro, tmp_path / "plain", where, n=4, seed=3, batch=3)
    again = run_augment(model, micro, tmp_path / "reuse", where, n=4, seed=3, batch=3,
                        reuse=reuse)  # fmt: skip
    assert plain.attempts == again.attempts == [0, 1, 2, 3]
    for a, b in zip(plain.files, again.files, strict=True):
        np.testing.assert_array_equal(read_label_map(a).data, read_label_map(b).data)
        assert json.loads(a.with_name(a.name[:-7] + ".json").read_text()) == json.loads(
            b.with_name(b.name[:-7] + ".json").read_text()
        )
    summary = json.loads((tmp_path / "reuse" / "augment.json").read_text())
    assert summary["reused_samples"] == {"offered": 3, "read": 3}
    assert "reused_samples" not in json.loads((tmp_path / "plain" / "augment.json").read_text())

    # The reused file is what is judged and kept: plant a phantom twin as sample 1.
    planted = read_label_map(sorted(micro.data.glob("*.nii.gz"))[0])
    assert not np.array_equal(planted.data, read_label_map(plain.files[1]).data)
    write_label_map(pool / "sample_00001.nii.gz", planted)
    third = run_augment(model, micro, tmp_path / "planted", where, n=2, seed=3, reuse=reuse)
    np.testing.assert_array_equal(read_label_map(third.files[1]).data, planted.data)

    with pytest.raises(ValueError, match="uncond"):
        run_augment(model, micro, tmp_path / "bad", where, strategy="perturb", n=1, reuse=reuse)


def test_settings_take_the_presets_dilation_only_where_none_was_given(micro, tmp_path):
    settings = check_settings("RV_volume_ml > 1", "local", 2)
    assert settings.dilate is None and settings.with_dilate(7).dilate == 7
    assert settings.with_dilate(7).with_dilate(3).dilate == 7
    assert check_settings("RV_volume_ml > 1", "local", 2, dilate=0).with_dilate(7).dilate == 0

    def loader():
        raise AssertionError("the model was loaded before the arguments were checked")

    with pytest.raises(ValueError, match="k must be at least 1"):
        augment(loader, micro.data, settings, tmp_path / "out", k=0)
    with pytest.raises(ValueError, match="n_boot must be 0 or more"):
        augment(loader, micro.data, settings, tmp_path / "out", n_boot=-1)
    assert not (tmp_path / "out").exists()
