"""Guided sampling and editing with the loaded model (issue 17): targets, records, reports.

The closed-form behaviour of guidance is tests/test_guidance.py; here the micro model and a
small untrained regressor check the plumbing: targets in the condition language, relative
targets resolved against the twin, the share within the target (an unreachable target is
reported), same seed same output, the manifests' records and the regressor's training.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from siblings.checkpoint import CheckpointError, file_hash
from siblings.cli import main
from siblings.errors import InputError
from siblings.io import list_label_maps, read_label_map
from siblings.metrics.condition import ConditionError, parse_condition
from siblings.metrics.morphology import morphology
from siblings.models.edits import inpaint, perturb
from siblings.models.guided import load_guidance, target_report
from siblings.models.ldm import LatentDiffusionModel
from siblings.models.regressor import (
    MorphologyRegressor,
    feature_array,
    load_regressor,
    save_regressor,
)

# ---------------------------------------------------------------------------------
# The target language (metrics.condition, extended).
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("RV_volume_ml = 130 ± 5", "RV_volume_ml = 130 ± 5"),
        ("RV_volume_ml = 130 +- 5", "RV_volume_ml = 130 ± 5"),
        ("RV_volume_ml = 130 +/- 10%", "RV_volume_ml = 130 ± 13"),
        ("LV_volume_ml > 1.2*twin", "LV_volume_ml > 1.2*twin"),
        ("LV_volume_ml = twin * 1.1 ± 5%", "LV_volume_ml = 1.1*twin ± 5%"),
    ],
)
def test_targets_parse_in_the_condition_language(text, shown):
    assert str(parse_condition(text)) == shown


def test_an_equality_holds_within_its_tolerance():
    cond = parse_condition("RV_volume_ml = 130 ± 5")
    assert cond({"RV_volume_ml": 125.0}) and cond({"RV_volume_ml": 135.0})
    assert not cond({"RV_volume_ml": 124.9}) and not cond({"RV_volume_ml": 135.1})


def test_a_relative_target_is_resolved_against_the_twin_and_not_applied_before():
    cond = parse_condition("LV_volume_ml > 1.2*twin and RV_volume_ml = twin ± 10%")
    assert cond.relative
    with pytest.raises(ConditionError, match="relative to the twin"):
        cond({"LV_volume_ml": 1.0, "RV_volume_ml": 1.0})
    resolved = cond.resolve({"LV_volume_ml": 100.0, "RV_volume_ml": 80.0})
    assert str(resolved) == "LV_volume_ml > 120 and RV_volume_ml = 80 ± 8"
    assert resolved({"LV_volume_ml": 121.0, "RV_volume_ml": 87.0})
    assert not resolved({"LV_volume_ml": 119.0, "RV_volume_ml": 80.0})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("RV_volume_ml = 130", "needs a tolerance"),
        ("RV_volume_ml > 130 ± 5", "goes with '=' only"),
        ("RV_volume_ml = 130 ± 0", "above 0"),
        ("RV_volume_ml > 1.2*twn", "cannot parse"),
    ],
)
def test_bad_targets_say_what_is_wrong(text, needle):
    with pytest.raises(ConditionError, match=needle):
        parse_condition(text)


def test_share_counts_each_clause_and_all_of_them():
    cond = parse_condition("RV_volume_ml = 130 ± 5 and LV_volume_ml < 100")
    feats = np.zeros((4, 12))
    feats[:, 3] = [128, 140, 131, 129]  # RV volume
    feats[:, 0] = [90, 90, 120, 120]  # LV volume
    share = cond.share(feats)
    assert share == {"RV_volume_ml = 130 ± 5": 0.75, "LV_volume_ml < 100": 0.5, "all": 0.25}


# ---------------------------------------------------------------------------------
# The model with a (small, untrained) regressor.
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guided_checkpoint(micro, tmp_path_factory):
    """The micro checkpoint with a random-weight regressor whose feature statistics are
    those of the micro cohort (so targets in mL map to sensible standardised values)."""
    out = tmp_path_factory.mktemp("guided_ckpt")
    for name in ("vae.safetensors", "vae.json", "ldm.safetensors", "ldm.json"):
        shutil.copy(micro.checkpoint / name, out / name)
    feats = feature_array([morphology(read_label_map(f)) for f in list_label_maps(micro.data)])
    torch.manual_seed(0)
    net = MorphologyRegressor(micro.preset.latent_channels, width=8)
    net.feature_mean.copy_(torch.from_numpy(feats.mean(0)))
    net.feature_std.copy_(torch.from_numpy(np.maximum(feats.std(0), 1.0)))
    save_regressor(
        out / "regressor.safetensors", net, {"vae_sha256": file_hash(out / "vae.safetensors")}
    )
    return out


@pytest.fixture(scope="module")
def gmodel(guided_checkpoint):
    return LatentDiffusionModel.load(guided_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def twin(micro):
    return read_label_map(list_label_maps(micro.data)[0]).data


def test_guided_sampling_same_seed_same_output_and_scale_zero_is_unguided(gmodel):
    g = load_guidance(gmodel, "RV_volume_ml = 150 ± 5", scale=3.0).guide()
    a = gmodel.sample_latents(range(2), steps=3, seed=4, guide=g)
    b = gmodel.sample_latents(range(2), steps=3, seed=4, guide=g)
    assert torch.equal(a, b)
    plain = gmodel.sample_latents(range(2), steps=3, seed=4)
    assert not torch.equal(a, plain)  # the guide changed the path
    g0 = load_guidance(gmodel, "RV_volume_ml = 150 ± 5", scale=0.0).guide()
    assert torch.equal(gmodel.sample_latents(range(2), steps=3, seed=4, guide=g0), plain)


def test_an_unreachable_target_is_reported_with_its_share(gmodel, twin):
    guidance = load_guidance(gmodel, "RV_volume_ml = 5000 ± 5", scale=1.0)
    res = inpaint(gmodel, twin, regenerate="RV", n=2, steps=2, seed=0, invert_steps=0,
                  guidance=guidance)  # fmt: skip
    assert res.target["share_within"] == 0.0 and res.target["within"] == 0
    assert "no map reached the target" in res.target["note"]
    assert res.params["guidance"]["target"] == "RV_volume_ml = 5000 ± 5"
    assert res.params["guidance"]["regressor_sha256"] == guidance.regressor_sha256
    # The kept tissues are the twin's exactly, guided or not (exact keep).
    assert all(d == 1.0 for dice in res.kept_dice for d in dice.values())


def test_a_reachable_target_counts_its_siblings(gmodel, twin):
    rv = morphology(twin, spacing_mm=gmodel.preset.voxel_mm)["RV_volume_ml"]
    res = perturb(gmodel, twin, psi=0.3, n=2, steps=3, seed=0, invert_steps=0,
                  guidance=load_guidance(gmodel, "RV_volume_ml = twin ± 1000%", scale=0.5))  # fmt: skip
    assert res.params["guidance"]["target"] == f"RV_volume_ml = {rv:g} ± {10 * rv:g}"
    assert res.target["share_within"] == 1.0 and "note" not in res.target


def test_target_report_of_known_features():
    cond = parse_condition("RV_volume_ml > 100")
    feats = np.zeros((5, 12))
    feats[:2, 3] = 120
    rep = target_report(cond, feats)
    assert (rep["n"], rep["within"], rep["share_within"]) == (5, 2, 0.4)
    assert rep["note"] == "only 2 of 5 maps reached the target RV_volume_ml > 100"


def test_a_relative_target_is_refused_without_a_twin(gmodel):
    guidance = load_guidance(gmodel, "LV_volume_ml > 1.2*twin")
    with pytest.raises(ValueError, match="relative to a twin"):
        guidance.resolve(None)


def test_regressor_of_another_vae_and_missing_regressor_are_refused(gmodel, micro, tmp_path):
    net = MorphologyRegressor(3, width=8)
    save_regressor(tmp_path / "other.safetensors", net, {"vae_sha256": "0" * 64})
    with pytest.raises(CheckpointError, match="another VAE"):
        load_guidance(gmodel, "RV_volume_ml > 1", regressor=tmp_path / "other.safetensors")
    bare = LatentDiffusionModel.load(micro.checkpoint, device="cpu")
    with pytest.raises(CheckpointError, match="no morphology regressor"):
        load_guidance(bare, "RV_volume_ml > 1")


def test_sample_cli_records_target_scale_and_regressor_hash(guided_checkpoint, tmp_path):
    out = tmp_path / "s"
    args = ["sample", "--n", "2", "--steps", "2", "--seed", "1", "--checkpoint",
            str(guided_checkpoint), "--target", "RV_volume_ml = 5000 ± 5",
            "--guidance-scale", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    meta = json.loads((out / "sample_00000.json").read_text())
    assert meta["method"] == "guided"
    reg = guided_checkpoint / "regressor.safetensors"
    assert meta["guidance"] == {
        **meta["guidance"],
        "target": "RV_volume_ml = 5000 ± 5",
        "scale": 2.0,
        "regressor_sha256": file_hash(reg),
    }
    assert meta["within_target"] is False
    report = json.loads((out / "guidance.json").read_text())
    assert (report["n"], report["within"], report["share_within"]) == (2, 0, 0.0)


def test_sample_cli_refuses_a_relative_target_before_loading(tmp_path, capsys):
    args = ["sample", "--n", "1", "--checkpoint", str(tmp_path / "none"),
            "--target", "LV_volume_ml > 1.2*twin", "--out", str(tmp_path / "s")]  # fmt: skip
    assert main(args) == 2
    assert "--target" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_guided_augment_records_the_guidance(gmodel, micro, tmp_path):
    from siblings.augment import check_settings
    from siblings.pipelines.augment import augment

    settings = check_settings("LV_volume_ml > 0", "guided", 1, steps=2, max_attempts=2,
                              sampler="uncond")  # fmt: skip
    res = augment(gmodel, micro.data, settings, tmp_path / "a", evaluate=False,
                  guidance_scale=1.5)  # fmt: skip
    summary = json.loads((tmp_path / "a" / "augment.json").read_text())
    assert (summary["strategy"], summary["sampler"]) == ("guided", "uncond")
    assert summary["guidance"]["target"] == "LV_volume_ml > 0"
    assert summary["guidance"]["scale"] == 1.5
    meta = json.loads((tmp_path / "a" / "guided_00000.json").read_text())
    assert meta["augment"]["run"]["guidance"] == summary["guidance"]
    assert res.accepted == 1


def test_a_target_without_the_guided_strategy_is_refused(gmodel, micro, tmp_path):
    from siblings.augment import check_settings
    from siblings.pipelines.augment import augment

    settings = check_settings("LV_volume_ml > 0", "uncond", 1)
    with pytest.raises(ValueError, match="guided"):
        augment(gmodel, micro.data, settings, tmp_path / "a", target="LV_volume_ml > 1")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------------
# Training the regressor.
# ---------------------------------------------------------------------------------
def test_train_regressor_writes_weights_recipe_accuracy_and_resumes(micro, tmp_path):
    from siblings.train import train_regressor

    common = dict(steps=3, batch=4, width=8, calibration_every=4, progress=False, log_every=1)
    full = train_regressor(micro.data, tmp_path / "a", micro.checkpoint,
                           heldout=micro.data, **common)  # fmt: skip
    train_regressor(micro.data, tmp_path / "b", micro.checkpoint, stop_after=2, **common)
    resumed = train_regressor(micro.data, tmp_path / "b", micro.checkpoint, **common)
    net_a, meta, _ = load_regressor(full)
    net_b, _, _ = load_regressor(resumed)
    for (k, va), vb in zip(net_a.state_dict().items(), net_b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert meta["recipe"]["n_train"] == 6 and meta["recipe"]["n_calibration"] == 2
    assert meta["vae_sha256"] == file_hash(micro.checkpoint / "vae.safetensors")
    assert set(meta["accuracy"]["0.002"]["RV_volume_ml"]) == {"r2", "mae"}
    assert net_a.residual_variance.shape == (17, 12)
    assert float(net_a.residual_var(1.0).min()) >= 0


def test_train_regressor_cli_needs_data(tmp_path, capsys):
    assert main(["train", "regressor", "--out", str(tmp_path / "r")]) == 2
    assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_train_regressor_trains_on_extra_maps_and_refuses_overlaps(micro, tmp_path):
    from siblings.train import train_regressor

    extra = tmp_path / "extra"
    extra.mkdir()
    for f in list_label_maps(micro.data)[:2]:
        shutil.copy(f, extra / f"x_{f.name}")
    common = dict(steps=2, batch=4, width=8, calibration_every=4, progress=False)
    path = train_regressor(micro.data, tmp_path / "a", micro.checkpoint, extra=extra,
                           sigma_mix=0.5, **common)  # fmt: skip
    _, meta, _ = load_regressor(path)
    assert meta["recipe"]["n_train"] == 6 + 2 and meta["recipe"]["n_calibration"] == 2
    assert meta["recipe"]["extra"]["n_maps"] == 2
    assert "2 of each batch: ln sigma uniform" in meta["recipe"]["sigma_distribution"]
    assert meta["config"]["arch"] == 2
    with pytest.raises(ValueError, match="include maps of"):
        train_regressor(micro.data, tmp_path / "b", micro.checkpoint, extra=micro.data, **common)
    with pytest.raises(ValueError, match="held-out"):
        train_regressor(micro.data, tmp_path / "c", micro.checkpoint, extra=extra,
                        heldout=extra, **common)  # fmt: skip
    with pytest.raises(ValueError, match="sigma_mix"):
        train_regressor(micro.data, tmp_path / "d", micro.checkpoint, sigma_mix=1.5, **common)


def test_a_regressor_file_without_arch_loads_as_the_first_architecture(tmp_path):
    net = MorphologyRegressor(3, width=8, arch=1)
    save_regressor(tmp_path / "r.safetensors", net, {})
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["config"]["arch"] == 1
    # A file of the first shipped regressor has no "arch" in its config.
    from siblings.checkpoint import load_tensors, save_tensors

    tensors, meta = load_tensors(tmp_path / "r.safetensors")
    del meta["config"]["arch"]
    save_tensors(tmp_path / "old.safetensors", tensors, meta)
    old, _, _ = load_regressor(tmp_path / "old.safetensors")
    assert old.config["arch"] == 1 and old.norm is not None
    z = torch.randn(2, 3, 8, 8, 8)
    assert torch.allclose(old(z, 1.0), net.eval()(z, 1.0), atol=1e-2)  # fp16 weights
    with pytest.raises(ValueError, match="arch"):
        MorphologyRegressor(3, width=8, arch=3)


def _volume_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents 3×8³ holding one box of random size (channel 0 = 1 inside, −1 outside);
    the target is the box's volume, standardised."""
    g = torch.Generator().manual_seed(seed)
    z = -torch.ones(n, 3, 8, 8, 8)
    z[:, 1:] = 0.1 * torch.randn(n, 2, 8, 8, 8, generator=g)
    side = torch.randint(2, 8, (n, 3), generator=g)
    for i in range(n):
        a, b, c = (int(v) for v in side[i])
        z[i, 0, :a, :b, :c] = 1.0
    vol = side.prod(1).float()
    return z, ((vol - 100.0) / 80.0)[:, None].expand(n, 12).contiguous()


def test_the_regressor_learns_a_volume():
    """Known answer: a chamber's volume is a sum over space; trained on boxes of random
    size, the regressor predicts held-out boxes' volumes (R² > 0.9)."""
    torch.manual_seed(0)
    net = MorphologyRegressor(3, width=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    z, y = _volume_task(256, 0)
    for step in range(300):
        idx = torch.randint(len(z), (32,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.mse_loss(net(z[idx], 0.01), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    zt, yt = _volume_task(128, 1)
    with torch.no_grad():
        pred = net(zt, 0.01)[:, 0]
    r2 = 1 - ((pred - yt[:, 0]) ** 2).sum() / ((yt[:, 0] - yt[:, 0].mean()) ** 2).sum()
    assert r2 > 0.9


def test_hold_names_columns_chambers_or_the_others():
    from siblings.models.guided import parse_hold

    rv = parse_condition("RV_volume_ml > 115")
    assert parse_hold("LV,RA_volume_ml", rv) == (
        "LV_volume_ml", "LV_major_mm", "LV_minor_mm", "RA_volume_ml")  # fmt: skip
    others = parse_hold("others", rv)
    assert len(others) == 11 and "RV_volume_ml" not in others
    assert parse_hold(None, rv) == ()
    with pytest.raises(InputError, match="unknown feature 'AO'"):
        parse_hold("AO", rv)
    with pytest.raises(InputError, match="both steered and held"):
        parse_hold("RV", rv)


def test_hold_is_recorded_and_needs_a_target(guided_checkpoint, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["sample", "--n", "1", "--steps", "2", "--seed", "1", "--checkpoint",
            str(guided_checkpoint), "--target", "RV_volume_ml > 1", "--hold", "LV,LA",
            "--guidance-scale", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    meta = json.loads((out / "sample_00000.json").read_text())
    assert meta["guidance"]["hold"] == [
        "LV_volume_ml", "LV_major_mm", "LV_minor_mm", "LA_volume_ml", "LA_major_mm", "LA_minor_mm"]  # fmt: skip
    bad = ["sample", "--n", "1", "--checkpoint", str(guided_checkpoint), "--hold", "LV",
           "--out", str(tmp_path / "t")]  # fmt: skip
    assert main(bad) == 2
    assert "--hold" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
