"""Shared fixtures: a micro latent diffusion model trained once per test session.

The ``micro`` preset is the ``tiny`` preset shrunk to a 32³ grid (8³ latent) with narrow
networks, so a VAE and a denoiser train for a few steps in seconds on one CPU core.
The weights are meaningless; they exercise loading, sampling, editing and the CLI.
Tests must not write into the fixture's folders (copy them first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Two CPU cores are shared with other jobs here: with more than one intra-op thread,
# small tensor ops spend most of their time spin-waiting (a 40k-element Heun run took
# 10 s with 2 threads against 0.03 s with 1). Override with SIBLINGS_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("SIBLINGS_TEST_THREADS", "1")))

# Overrides of the ``tiny`` preset: 32³ at 5.6 mm, latent 8³ (SPEC §1 keeps the field of view).
MICRO_OVERRIDES: dict = {
    "size": 32,
    "vae_channels": (8, 16, 32),
    "vae_norm_groups": 8,
    "unet_channels": (16, 32, 32),
    "unet_norm_groups": 8,
    "unet_head_channels": 8,
    "unet_attention": (False, False, True),
    # The micro model trains for a handful of steps, where an EMA of the VAE would return
    # almost its random initialisation: keep the paper's VAE recipe (the tests rely on
    # what those weights do, not on their quality).
    "kl_norm": "sum",
    "kl_weight": 1e-6,
    "vae_mu_fraction": 0.0,
    "vae_ema_decay": 0.0,
    "aug_elastic_vox": 0.0,
}


@pytest.fixture(autouse=True)
def _cpu_without_native_bf16(monkeypatch):
    """Commands run in-process choose their precision as on a CPU without native bf16
    (fp32 by default, the Python API's default too), whatever CPU runs the tests, so no
    result depends on it. Detection from an injected cpuinfo text is left as it is, and
    tests of the bf16 default patch ``siblings.runtime.native_bf16`` themselves."""
    import siblings.runtime

    real = siblings.runtime.native_bf16

    def native_bf16(device, cpuinfo=None):
        return real(device, cpuinfo) if cpuinfo is not None else False

    monkeypatch.setattr(siblings.runtime, "native_bf16", native_bf16)


MICRO_VAE_STEPS = 6
MICRO_LDM_STEPS = 6


def micro_preset(**overrides):
    from siblings.models.presets import get_preset

    return get_preset("tiny", **{**MICRO_OVERRIDES, **overrides})


def micro_cli_set() -> list[str]:
    """The micro overrides as ``--set FIELD=VALUE`` command-line arguments."""
    args: list[str] = []
    for key, value in MICRO_OVERRIDES.items():
        text = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
        args += ["--set", f"{key}={text}"]
    return args


def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes: one thread each (2 shared cores)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


@dataclass(frozen=True)
class Micro:
    preset: object  # siblings.models.presets.Preset
    data: Path  # 8 phantoms at 32³
    checkpoint: Path  # vae.safetensors/json, ldm.safetensors/json, logs, state/
    vae_steps: int = MICRO_VAE_STEPS
    ldm_steps: int = MICRO_LDM_STEPS

    @property
    def cli_set(self) -> list[str]:
        return micro_cli_set()


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory) -> Path:
    """Eight phantom label maps on a 32³ grid (with defects, as the real default cohort)."""
    from siblings.pipelines.phantom import generate_cohort

    out = tmp_path_factory.mktemp("micro_data")
    generate_cohort(out, n=8, size=32, seed=0, defect_rate=0.25, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def micro(tmp_path_factory, micro_data) -> Micro:
    """A micro VAE + EDM denoiser trained for a few steps (about 5 s), reused by all tests."""
    from siblings.train import train_ldm, train_vae

    preset = micro_preset()
    out = tmp_path_factory.mktemp("micro_model")
    vae = train_vae(
        micro_data,
        out,
        preset,
        steps=MICRO_VAE_STEPS,
        batch=2,
        seed=0,
        device="cpu",
        ckpt_every=3,
        log_every=1,
        progress=False,
    )
    train_ldm(
        micro_data,
        out,
        vae,
        preset=preset,
        steps=MICRO_LDM_STEPS,
        batch=4,
        seed=0,
        device="cpu",
        ckpt_every=3,
        log_every=1,
        progress=False,
    )
    return Micro(preset=preset, data=micro_data, checkpoint=out)
