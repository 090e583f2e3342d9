"""Encoding by inversion (SPEC §4, "Beyond the paper") and the out-of-distribution warning.

The algorithm is checked on decoders whose answer is known by construction (a linear
map per voxel whose cross-entropy optimum is a chosen latent; a decoder that ignores
its latent); the model method, the editing runs and ``augment`` on the session's micro
model, where only what holds by construction is checked (0 steps is the posterior mean,
inversion never loses, the same twin gives the same latent, the records are written).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from siblings import anatomy
from siblings.augment import check_settings as augment_settings
from siblings.cli import main
from siblings.data.phantom import make_phantom
from siblings.diffusion import edit as diffusion_edit
from siblings.diffusion.inversion import cross_entropy, invert_latent, soft_dice_loss
from siblings.editing import check_settings
from siblings.io import LabelMap, centred_affine, write_label_map
from siblings.metrics.overlap import kept_tissue_dice
from siblings.models import edits as edit_mod
from siblings.models.edits import (
    OOD_DICE_THRESHOLD,
    TwinEncoding,
    encode_twin,
    inpaint,
    ood_warning,
    perturb,
)
from siblings.models.ldm import LatentDiffusionModel
from siblings.pipelines.augment import augment
from siblings.pipelines.edit import run_edit


@pytest.fixture(scope="module")
def model(micro):
    return LatentDiffusionModel.load(micro.checkpoint, device="cpu")


@pytest.fixture(scope="module")
def twin() -> np.ndarray:
    return make_phantom(1, size=32, seed=3)[0].data


@pytest.fixture(scope="module")
def twin_file(tmp_path_factory, twin):
    path = tmp_path_factory.mktemp("inv_twin") / "twin.nii.gz"
    write_label_map(path, LabelMap(twin, centred_affine(32)))
    return path


def linear_decoder(w: torch.Tensor):
    """Logits ``(B, C, …)`` = ``w`` ``(C, L)`` applied to the latent ``(B, L, …)`` per voxel."""
    return lambda z: torch.einsum("cl,bl...->bc...", w, z)


def known_optimum() -> tuple:
    """A linear decoder, a latent z* and the soft target softmax(decode(z*)).

    Cross-entropy against a soft target p is minimal exactly where the decoded
    distribution equals p; with ``w``'s columns independent of the all-ones vector that
    happens at z* alone, so z* is the known answer.
    """
    g = torch.Generator().manual_seed(0)
    # Columns orthonormal and orthogonal to the ones vector (which shifts no softmax).
    basis = torch.cat([torch.ones(5, 1), torch.randn(5, 3, generator=g)], 1).double()
    w = 2.0 * torch.linalg.qr(basis).Q[:, 1:]
    z_star = 0.5 * torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    decode = linear_decoder(w)
    target = torch.softmax(decode(z_star), dim=1)
    return decode, z_star, target


# ---------------------------------------------------------------------------------
# The algorithm, on decoders with known answers.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_cross_entropy_inversion_reaches_the_known_optimum_of_a_linear_decoder(temperature):
    decode, z_star, target = known_optimum()
    z0 = torch.zeros_like(z_star)
    z, rec = invert_latent(
        decode, z0, target, steps=1000, lr=0.02, loss="cross_entropy",
        temperature=temperature, patience=20, min_improvement=0.0,
    )  # fmt: skip
    # decode(z) / T = decode(z*) is the optimum: z = T·z*, by linearity.
    want = temperature * z_star
    assert torch.allclose(z, want, atol=1e-5), (z - want).abs().max()
    optimum = float(cross_entropy(decode(z_star), target))  # the entropy of the target
    assert rec.loss_after == pytest.approx(optimum, abs=1e-10)
    assert rec.loss_before == pytest.approx(float(cross_entropy(decode(z0), target, temperature)))
    assert rec.loss_before > rec.loss_after + 0.1
    assert z.dtype == z0.dtype and not z.requires_grad
    assert (rec.loss, rec.temperature, rec.score_before, rec.score_after) == (
        "cross_entropy", temperature, None, None,
    )  # fmt: skip


def test_soft_dice_loss_has_known_values():
    labels = torch.tensor([[[0, 0], [1, 2]]])  # (B, H, W): three labels present
    exact = 100.0 * torch.nn.functional.one_hot(labels, 4).movedim(-1, 1).double()
    assert float(soft_dice_loss(exact, labels)) == pytest.approx(0.0, abs=1e-12)
    # Uniform over 4 channels: per label Dice 2·(n_c/4) / (N/4 + n_c), N = 4 voxels.
    flat = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    want = np.mean([1 - 2 * (n / 4) / (1 + n) for n in (2, 1, 1)])
    assert float(soft_dice_loss(flat, labels)) == pytest.approx(want)
    # The label absent from the map (3) does not count; the one-hot map is the same target.
    onehot = torch.nn.functional.one_hot(labels, 4).movedim(-1, 1).double()
    assert float(soft_dice_loss(flat, onehot)) == pytest.approx(want)


def test_inversion_never_raises_the_loss_even_when_adam_overshoots():
    decode, z_star, target = known_optimum()
    z0 = z_star + 0.01  # already near the optimum; lr 5 throws Adam far off it
    for loss in ("dice", "cross_entropy"):
        z, rec = invert_latent(decode, z0, target, steps=10, lr=5.0, loss=loss, min_improvement=0.0)
        assert rec.loss_after <= rec.loss_before
        f = soft_dice_loss if loss == "dice" else cross_entropy
        assert float(f(decode(z), target, rec.temperature)) == pytest.approx(
            rec.loss_after, rel=1e-12
        )
        # A step that helps is taken and kept: the loss strictly falls from a far start.
        _, rec2 = invert_latent(
            decode, z_star + 2.0, target, steps=5, lr=0.05, loss=loss, min_improvement=0.0
        )
        assert rec2.loss_after < rec2.loss_before and rec2.best_step == 5


def test_the_latent_kept_is_the_best_scored_one_not_the_lowest_loss():
    decode, z_star, target = known_optimum()
    z0 = z_star + 1.0
    start = decode(z0)

    def closeness_to_start(logits):  # a score only the start maximises
        return -float((logits - start).abs().sum())

    z, rec = invert_latent(decode, z0, target, steps=8, lr=0.05, score=closeness_to_start)
    assert torch.equal(z, z0) and rec.best_step == 0 and rec.steps == 8
    assert rec.score_after == rec.score_before == 0.0 and rec.loss_after == rec.loss_before
    # A score that agrees with the loss picks the last step.
    _, rec = invert_latent(
        decode, z0, target, steps=8, lr=0.05,
        score=lambda logits: -float(soft_dice_loss(logits, target, 0.1)),
    )  # fmt: skip
    assert rec.best_step == 8 and rec.score_after > rec.score_before


def test_zero_steps_return_the_starting_latent_itself():
    decode, z_star, target = known_optimum()
    z, rec = invert_latent(decode, z_star + 1.0, target, steps=0)
    assert torch.equal(z, z_star + 1.0)
    assert (rec.steps, rec.best_step, rec.stopped_early) == (0, 0, False)
    assert rec.loss_after == rec.loss_before


def test_early_stop_triggers_when_the_loss_stops_improving():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    fixed = torch.randn(1, 7, 4, 4)

    def ignores_latent(z):  # constant logits: the loss cannot improve
        return fixed + 0.0 * z.sum()

    z0 = torch.zeros(1, 3, 4, 4)
    z, rec = invert_latent(ignores_latent, z0, target, steps=100, patience=4)
    assert rec.stopped_early and rec.steps == 4 and rec.budget == 100
    assert torch.equal(z, z0)
    # On a problem that keeps improving, the whole budget is used.
    decode, z_star, soft = known_optimum()
    _, rec = invert_latent(decode, z_star + 2.0, soft, steps=12, lr=0.05)
    assert not rec.stopped_early and rec.steps == 12 and rec.best_step == 12


def test_integer_labels_and_their_one_hot_give_the_same_inversion():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(7, 3, generator=g)
    labels = torch.randint(0, 7, (1, 4, 4, 4), generator=g)
    onehot = torch.nn.functional.one_hot(labels, 7).permute(0, 4, 1, 2, 3).float()
    z0 = torch.zeros(1, 3, 4, 4, 4)
    for loss in ("dice", "cross_entropy"):
        a, ra = invert_latent(linear_decoder(w), z0, labels, steps=8, lr=0.1, loss=loss)
        b, rb = invert_latent(linear_decoder(w), z0, onehot, steps=8, lr=0.1, loss=loss)
        assert torch.allclose(a, b, atol=1e-6) and ra.loss_after == pytest.approx(rb.loss_after)


def test_bad_settings_are_refused():
    decode, z_star, target = known_optimum()
    with pytest.raises(ValueError, match="0 or more"):
        invert_latent(decode, z_star, target, steps=-1)
    with pytest.raises(ValueError, match="positive"):
        invert_latent(decode, z_star, target, steps=3, lr=0.0)
    with pytest.raises(ValueError, match="unknown inversion loss"):
        invert_latent(decode, z_star, target, steps=3, loss="mse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        invert_latent(decode, z_star, target, steps=3, temperature=0.0)


def test_deterministic_algorithms_setting_is_restored():
    decode, z_star, target = known_optimum()
    before = torch.are_deterministic_algorithms_enabled()
    invert_latent(decode, z_star, target, steps=2)
    assert torch.are_deterministic_algorithms_enabled() == before


# ---------------------------------------------------------------------------------
# The model method and the twin's encoding (micro model).
# ---------------------------------------------------------------------------------
def test_model_invert_with_zero_steps_is_the_posterior_mean(model, twin):
    mu = model.encode(twin[None])
    z, (rec,) = model.invert(twin[None], steps=0)
    assert torch.equal(z, mu) and rec.steps == 0
    assert torch.equal(model.encode(twin[None], invert_steps=0), mu)
    enc = encode_twin(model, twin, invert_steps=0)
    assert torch.equal(enc.latent, mu) and enc.record is None
    assert enc.dice == enc.dice_posterior_mean


def test_same_twin_same_inverted_latent(model, twin):
    a, (ra,) = model.invert(twin[None], steps=6)
    b, (rb,) = model.invert(twin[None], steps=6)
    assert torch.equal(a, b) and ra == rb
    assert not torch.equal(a, model.encode(twin[None]))  # it moved
    # Batched maps are inverted one by one: a map's latent does not depend on the others.
    other = make_phantom(2, size=32, seed=3)[0].data
    ab, _ = model.invert(np.stack([twin, other]), steps=6)
    assert torch.equal(ab[:1], a)


def test_inversion_never_lowers_the_micro_models_round_trip(model, twin):
    enc = encode_twin(model, twin, invert_steps=25)
    assert enc.record is not None
    before = np.mean(list(enc.dice_posterior_mean.values()))
    after = np.mean(list(enc.dice.values()))
    assert after >= before
    assert enc.record.score_before == pytest.approx(before)
    assert enc.record.score_after == pytest.approx(after)
    if enc.record.best_step > 0:
        assert after > before and enc.record.loss_after < enc.record.loss_before
    recon = model.decode(enc.latent)[0]
    assert np.array_equal(recon, enc.reconstruction)
    assert enc.dice == kept_tissue_dice(twin, recon, anatomy.TISSUES)


def test_edits_start_from_the_inverted_latent(model, twin, monkeypatch):
    enc = encode_twin(model, twin, invert_steps=4)
    res = perturb(model, twin, 0.5, n=1, steps=3, seed=0, invert_steps=4)
    assert torch.equal(res.encoding.latent, enc.latent) and res.params["invert_steps"] == 4
    given = perturb(model, twin, 0.5, n=1, steps=3, seed=0, encoding=enc)
    assert np.array_equal(given.labels, res.labels)
    # Inpainting pastes the inverted latent (eq. 5 at σ = 0 gives it back in the kept region).
    pasted = []

    def sampler(denoise, z, sigmas, paste=None, **kw):
        pasted.append(paste(torch.zeros_like(z), 0.0))
        return z

    monkeypatch.setattr(diffusion_edit, "heun_sample", sampler)
    out = inpaint(model, twin, "LV", n=1, steps=3, seed=0, dilate=0, encoding=enc)
    keep = torch.from_numpy(out.keep_mask)
    assert 0 < keep.float().mean() < 1
    z = enc.latent.to(torch.float64)[0]
    assert torch.equal(pasted[0][0][:, keep], z[:, keep])
    assert not pasted[0][0][:, ~keep].any()


# ---------------------------------------------------------------------------------
# The out-of-distribution warning.
# ---------------------------------------------------------------------------------
def encoding_with(dice: dict[str, float], steps: int = 50) -> TwinEncoding:
    full = {t: 1.0 for t in anatomy.TISSUES} | dice
    return TwinEncoding(torch.zeros(1), steps, None, np.zeros(1), dict(full), full)


def test_ood_warning_names_exactly_the_tissues_below_the_threshold():
    assert OOD_DICE_THRESHOLD == 0.85
    enc = encoding_with({"Ao": 0.07, "RV": 0.849, "LA": 0.85, "LV": 0.9})
    assert enc.out_of_distribution() == {"Ao": 0.07, "RV": 0.849}  # 0.85 itself is in
    msg = ood_warning({"twin.nii.gz": enc})
    assert msg is not None and "\n" not in msg
    assert "twin twin.nii.gz is out of the model's distribution" in msg
    assert "Ao 0.07, RV 0.85" in msg and "LA" not in msg and "LV 0" not in msg
    assert "after inversion below 0.85" in msg
    assert "has not learned hearts like this one" in msg and "may not be faithful" in msg
    assert "siblings train vae|ldm --init shipped --data PREPARED --out DIR" in msg
    assert ood_warning({"twin.nii.gz": encoding_with({"RV": 0.85})}) is None
    # Several twins (augment): one line counting and naming the ones out of distribution.
    many = {"a": enc, "b": encoding_with({}), "c": encoding_with({"RA": 0.5}, steps=0)}
    msg = ood_warning(many)
    assert msg is not None and "\n" not in msg
    assert msg.startswith("2 of 3 twins are out") and "a: Ao 0.07, RV 0.85; c: RA 0.50" in msg
    assert "b:" not in msg


def test_an_edit_warns_once_when_and_only_when_a_tissue_crosses_the_threshold(
    micro, model, twin, twin_file, tmp_path, monkeypatch, capsys
):
    dice = encode_twin(model, twin, invert_steps=3).dice
    values = sorted(set(dice.values()))
    assert len(values) >= 2, "the micro model reconstructs every tissue equally"
    # A threshold between the two lowest tissues: exactly the lowest ones are named.
    threshold = (values[0] + values[1]) / 2
    low = sorted(t for t, d in dice.items() if d < threshold)
    common = ["--n", 1, "--steps", 2, "--n-boot", 0, "--invert-steps", 3, "--quiet"]
    common += ["--checkpoint", micro.checkpoint, "--device", "cpu"]
    args = ["edit", "perturb", twin_file, "--psi", 0.5, *common]
    monkeypatch.setattr(edit_mod, "OOD_DICE_THRESHOLD", threshold)
    capsys.readouterr()
    assert main([str(a) for a in [*args, "--out", tmp_path / "ood"]]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "distribution" in line]
    assert len(err) == 1 and err[0].startswith("siblings edit: warning: twin ")
    for t in anatomy.TISSUES:
        assert (f"{t} {dice[t]:.2f}" in err[0]) == (t in low), t
    run = json.loads((tmp_path / "ood" / "run.json").read_text())
    assert [w for w in run["warnings"] if "distribution" in w] == [err[0].split("warning: ", 1)[1]]
    assert sorted(run["encoding"]["out_of_distribution"]) == low
    html = (tmp_path / "ood" / "report" / "report.html").read_text()
    assert "out of the model&#x27;s distribution" in html or "out of the model's" in html
    # Below every tissue's Dice: no warning anywhere.
    monkeypatch.setattr(edit_mod, "OOD_DICE_THRESHOLD", values[0] / 2)
    assert main([str(a) for a in [*args, "--out", tmp_path / "in"]]) == 0
    assert "distribution" not in capsys.readouterr().err
    run = json.loads((tmp_path / "in" / "run.json").read_text())
    assert run["warnings"] == [] and run["encoding"]["out_of_distribution"] == {}
    assert "warning:" not in (tmp_path / "in" / "report" / "report.html").read_text()


# ---------------------------------------------------------------------------------
# What runs write.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["perturb", "local"])
def test_run_json_manifests_metrics_and_report_carry_the_round_trip_dice(
    model, twin_file, tmp_path, method
):
    kw = dict(psi=0.5) if method == "perturb" else dict(regenerate="LV")
    run = run_edit(
        model, twin_file, tmp_path / method, check_settings(method, n=2, steps=2, invert_steps=4,
        **kw), n_boot=0, progress=False,
    )  # fmt: skip
    enc = run.result.encoding
    assert enc is not None and enc.invert_steps == 4 and enc.record is not None
    rj = json.loads((tmp_path / method / "run.json").read_text())
    assert rj["parameters"]["invert_steps"] == 4
    e = rj["encoding"]
    assert e["method"] == "inversion" and e["invert_steps"] == 4
    assert e["inversion"]["budget"] == 4 and e["inversion"]["steps"] <= 4
    assert e["inversion"]["loss_after"] <= e["inversion"]["loss_before"]
    assert (
        set(e["roundtrip_dice"]) == set(e["roundtrip_dice_posterior_mean"]) == set(anatomy.TISSUES)
    )
    assert e["roundtrip_dice"] == {t: round(d, 4) for t, d in enc.dice.items()}
    assert e["ood_threshold"] == OOD_DICE_THRESHOLD
    for i in range(2):
        m = json.loads((tmp_path / method / f"sibling_{i:05d}.json").read_text())
        assert m["encoding"] == e
    twin_json = json.loads((tmp_path / method / "twin" / "twin.json").read_text())
    assert twin_json["encoding"] == e
    metrics = json.loads((tmp_path / method / "report" / "metrics.json").read_text())
    assert metrics["encoding"] == e
    # The reconstruction written and its Dice are those of the latent the edits used.
    assert metrics["vae_reconstruction_dice"] == pytest.approx(enc.dice)
    html = (tmp_path / method / "report" / "report.html").read_text()
    assert "Encoding of the twin" in html and "after inversion (4 steps)" in html


def test_zero_invert_steps_is_recorded_as_the_posterior_mean(model, twin_file, tmp_path):
    run_edit(
        model, twin_file, tmp_path / "pm",
        check_settings("perturb", psi=0.5, n=1, steps=2, invert_steps=0),
        n_boot=0, progress=False,
    )  # fmt: skip
    e = json.loads((tmp_path / "pm" / "run.json").read_text())["encoding"]
    assert e["method"] == "posterior mean" and e["inversion"] is None
    assert e["roundtrip_dice"] == e["roundtrip_dice_posterior_mean"]


def test_negative_invert_steps_are_refused_with_exit_2(micro, twin_file, tmp_path, capsys):
    for cmd in (["edit", "perturb", twin_file, "--psi", 0.5], ["edit", "local", twin_file,
                "--regenerate", "LV"]):  # fmt: skip
        code = main([str(a) for a in [*cmd, "--invert-steps", -1, "--out", tmp_path / "x"]])
        assert code == 2 and "--invert-steps must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    code = main(["augment", "--where", "RV_volume_ml > 0", "--strategy", "perturb", "--n", "1",
                 "--data", str(micro.data), "--out", str(tmp_path / "y"), "--invert-steps", "-2"])  # fmt: skip
    assert code == 2 and "--invert-steps must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_augment_records_each_twins_round_trip_and_warns_in_one_line(
    micro, model, tmp_path, monkeypatch
):
    monkeypatch.setattr(edit_mod, "OOD_DICE_THRESHOLD", 1.01)  # every twin is "out"
    with pytest.warns(UserWarning, match="out of the model's distribution") as caught:
        settings = augment_settings(
            "RV_volume_ml >= 0", "perturb", 2, seed=1, steps=2, max_attempts=2, invert_steps=3,
            psis=(0.5,),
        )  # fmt: skip
        res = augment(model, micro.data, settings, tmp_path / "aug", evaluate=False)
    lines = [w for w in caught if "distribution" in str(w.message)]
    assert len(lines) == 1
    summary = res.summary
    assert summary["settings"]["invert_steps"] == 3 and summary["run"]["invert_steps"] == 3
    assert summary["warnings"] == [str(lines[0].message)]
    n_twins = len(summary["rare_twins"])
    assert str(lines[0].message).startswith(f"{n_twins} of {n_twins} twins are out")
    for entry in summary["rare_twins"]:
        assert set(entry["roundtrip_dice"]) == set(anatomy.TISSUES)
        assert set(entry["out_of_distribution"]) == set(anatomy.TISSUES)
    for f in sorted((tmp_path / "aug").glob("perturb_*.json")):
        m = json.loads(f.read_text())
        assert m["encoding"]["invert_steps"] == 3
        twin = next(t for t in summary["rare_twins"] if m["twin"]["file"].endswith(t["file"]))
        assert m["encoding"]["roundtrip_dice"] == twin["roundtrip_dice"]


@pytest.mark.parametrize("maker", ["perturb", "inpaint", "augment"])
def test_the_papers_experiments_encode_with_the_posterior_mean(monkeypatch, tmp_path, maker):
    """The experiments measure the method as published: every edit asks for 0 steps."""
    from types import SimpleNamespace

    import siblings.pipelines.augment
    from siblings.experiments import augmentation, makers

    asked = {}

    class Asked(Exception):
        pass

    def spy(*args, **kwargs):
        asked.update(kwargs)
        settings = next((a for a in args if hasattr(a, "invert_steps")), None)
        if settings is not None:  # augment takes its checked settings
            asked["invert_steps"] = settings.invert_steps
        raise Asked

    target = siblings.pipelines.augment if maker == "augment" else edit_mod
    monkeypatch.setattr(target, "augment" if maker == "augment" else maker, spy)
    seed = SimpleNamespace(key="large", index=0)
    ctx = SimpleNamespace(
        seeds=lambda: [seed], seed_map=lambda s: np.zeros((8, 8, 8), np.uint8), model=None,
        seed_encoding=lambda s: None,
        batch=2, progress=False, data=tmp_path, where="RV_volume_ml > 0",
    )  # fmt: skip
    params = {"seed_kind": "large", "regenerate": ["LV"], "psi": 0.5, "steps": 3, "seed": 0}
    params |= {"strategy": "perturb", "where": "RV_volume_ml > 0", "max_attempts": None}
    spec = SimpleNamespace(n=2, params=params, after=())
    make = {
        "perturb": makers.make_perturb,
        "inpaint": makers.make_inpaint,
        "augment": augmentation.make_augmented,
    }[maker]
    with pytest.raises(Asked):
        make(ctx, spec, tmp_path / "cohort")
    assert asked["invert_steps"] == 0
