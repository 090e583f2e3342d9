"""Fine-tuning (``siblings train vae|ldm --init shipped|DIR --lr LR``, issue 12 item 5).

A fine-tuning run starts from the given weights (its first loss is the initial model's
loss on the first batch), with a fresh optimiser at the given rate, and refuses weights
of another preset or network shape with one line and exit 2, writing nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import siblings.train as T
from conftest import micro_cli_set
from siblings.checkpoint import load_tensors
from siblings.cli import main
from siblings.diffusion import edm
from siblings.diffusion.edm import EDMPrecond
from siblings.models.networks import build_denoiser_net

# The real losses, before any spy (training calls edm_loss through EDMLoss.loss).
VAE_LOSS, EDM_LOSS = T.vae_loss, edm.edm_loss


def spy_first_call(monkeypatch, name: str, module=T) -> dict:
    """Record the weights, arguments and torch RNG state of the first call of
    ``module.<name>``."""
    seen: dict = {}
    real = getattr(module, name)

    def spy(model, *args, **kwargs):
        if not seen:
            seen.update(rng=torch.get_rng_state(), args=args, kwargs=kwargs)
            seen["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real(model, *args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def assert_weights_are(seen: dict, path: Path) -> None:
    init, _ = load_tensors(path)
    assert seen["weights"].keys() == init.keys()
    assert all(torch.equal(seen["weights"][k], v.float()) for k, v in init.items())


def first_logged_loss(out: Path, kind: str) -> float:
    return json.loads((out / f"{kind}_log.jsonl").read_text().splitlines()[0])["loss"]


def adam_steps(out: Path, kind: str) -> set[int]:
    tensors, _ = load_tensors(out / "state" / f"{kind}_state.safetensors")
    return {int(v) for k, v in tensors.items() if k.startswith("opt.") and k.endswith(".step")}


RUN = dict(steps=1, seed=3, device="cpu", amp=False, log_every=1, progress=False, lr=1e-5)


def test_vae_fine_tuning_starts_from_the_init_weights(micro, tmp_path, monkeypatch):
    seen = spy_first_call(monkeypatch, "vae_loss")
    out = tmp_path / "ft"
    T.train_vae(micro.data, out, micro.preset, batch=2, init=micro.checkpoint, **RUN)
    assert_weights_are(seen, micro.checkpoint / "vae.safetensors")
    # The initial model's loss on the same batch, with the same reparameterisation noise.
    vae, _, _ = T.load_vae(micro.checkpoint / "vae.safetensors")
    torch.set_rng_state(seen["rng"])
    with torch.no_grad():
        expected = float(VAE_LOSS(vae.train(), *seen["args"], **seen["kwargs"])[0])
    assert first_logged_loss(out, "vae") == pytest.approx(expected, rel=1e-6)
    meta = json.loads((out / "vae.json").read_text())
    assert meta["lr"] == 1e-5 and meta["init"] == str(micro.checkpoint)
    assert adam_steps(out, "vae") == {1}  # a fresh optimiser: one Adam step, not 1 + 6


@pytest.fixture(scope="module")
def fp32_ldm(micro, tmp_path_factory) -> Path:
    """A micro denoiser trained in fp32: the session's micro denoiser is trained under
    bf16 autocast, which on some CPUs leaves it NaN after its first step."""
    out = tmp_path_factory.mktemp("fp32_ldm")
    vae = micro.checkpoint / "vae.safetensors"
    T.train_ldm(micro.data, out, vae, preset=micro.preset, steps=2, batch=4, seed=0,
                device="cpu", amp=False, progress=False)  # fmt: skip
    return out


def test_denoiser_fine_tuning_starts_from_the_init_weights(micro, fp32_ldm, tmp_path, monkeypatch):
    seen = spy_first_call(monkeypatch, "edm_loss", module=edm)
    out = tmp_path / "ft"
    vae = micro.checkpoint / "vae.safetensors"
    T.train_ldm(micro.data, out, vae, preset=micro.preset, batch=4, init=fp32_ldm, **RUN)
    assert_weights_are(seen, fp32_ldm / "ldm.safetensors")
    net = EDMPrecond(build_denoiser_net(micro.preset), sigma_data=micro.preset.sigma_data)
    net.load_state_dict({k: v.float() for k, v in seen["weights"].items()})
    with torch.no_grad():
        expected = float(EDM_LOSS(net.train(), *seen["args"], **seen["kwargs"]).mean())
    assert first_logged_loss(out, "ldm") == pytest.approx(expected, rel=1e-6)
    assert json.loads((out / "ldm.json").read_text())["lr"] == 1e-5
    assert adam_steps(out, "ldm") == {1}


def test_a_fresh_run_does_not_start_from_the_init_weights(micro, tmp_path, monkeypatch):
    """The control: without --init the first loss is another model's."""
    seen = spy_first_call(monkeypatch, "vae_loss")
    T.train_vae(micro.data, tmp_path / "fresh", micro.preset, batch=2, **RUN)
    init, _ = load_tensors(micro.checkpoint / "vae.safetensors")
    assert not all(torch.equal(seen["weights"][k], v.float()) for k, v in init.items())


# ---------------------------------------------------------------------------------
# Weights that do not fit: one line, exit 2, nothing written.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stage", "preset_args", "init", "needle"),
    [
        ("vae", ["--preset", "tiny"], "{ckpt}", "network shape differs from this run's in size"),
        ("ldm", ["--preset", "tiny"], "{ckpt}", "network shape differs from this run's in size"),
        ("vae", ["--preset", "paper", *micro_cli_set()], "{ckpt}", "weights of preset 'tiny', this run trains preset 'paper'"),
        ("vae", [*micro_cli_set()], "{ckpt}/ldm.safetensors", "not a vae checkpoint"),
        ("ldm", [*micro_cli_set()], "{ckpt}/vae.safetensors", "not a ldm checkpoint"),
        ("vae", ["--preset", "paper"], "shipped", "no shipped vae weights for preset 'paper'"),
        ("vae", [*micro_cli_set()], "{ckpt}/nowhere", "initial vae weights not found"),
    ],
)  # fmt: skip
def test_init_of_another_preset_or_shape_is_refused(
    micro, tmp_path, capsys, stage, preset_args, init, needle
):
    out = tmp_path / "out"
    init = init.format(ckpt=micro.checkpoint)
    argv = ["train", stage, *preset_args, "--data", str(micro.data), "--out", str(out)]
    vae = ["--vae", str(micro.checkpoint / "vae.safetensors")] if stage == "ldm" else []
    code = main([*argv, *vae, "--init", init, "--steps", "1", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("siblings train: error: ") and "\n" not in err, err
    assert needle in err, err
    assert not out.exists()


def test_init_is_checked_before_a_default_cohort_is_generated(micro, tmp_path, capsys):
    out = tmp_path / "out"  # without --data, OUT/data would be generated first
    code = main(["train", "vae", "--init", str(micro.checkpoint), "--out", str(out)])
    assert code == 2 and "network shape differs" in capsys.readouterr().err
    assert not out.exists()
