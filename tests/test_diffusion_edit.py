"""SDEdit and inpainting on tensors (siblings.diffusion.edit), and who imports whom.

The tensor functions take a denoiser callable; an analytic denoiser of Gaussian data
gives answers known by construction.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from siblings.diffusion.edit import inpaint, perturb, start_step
from siblings.diffusion.edm import heun_sample, karras_sigmas


def gaussian(mu: float, s: float):
    """D(z; σ) of data N(mu, s²): the exact posterior mean."""
    return lambda z, sigma: mu + s**2 / (s**2 + sigma**2) * (z - mu)


def test_perturb_is_the_sampler_from_z_plus_sigma_s_noise():
    sig = karras_sigmas(10)[start_step(0.4, 10) :]
    z = torch.full((1, 2, 3, 3, 3), 0.7, dtype=torch.float64)
    eps = torch.randn(
        4, 2, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    out = perturb(gaussian(0.0, 1.0), z, eps, sig)
    assert out.shape == (4, 2, 3, 3, 3) and out.dtype == torch.float64
    assert torch.equal(out, heun_sample(gaussian(0.0, 1.0), z + float(sig[0]) * eps, sig))


def test_perturb_with_a_tiny_ratio_returns_about_the_twin():
    # ψ → 0 recomputes one step from σ_min: the latent barely moves.
    sig = karras_sigmas(50)[start_step(1e-6, 50) :]
    z = torch.linspace(-1, 1, 2 * 27, dtype=torch.float64).reshape(1, 2, 3, 3, 3)
    eps = torch.randn(
        2, 2, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    out = perturb(gaussian(0.0, 1.0), z, eps, sig)
    torch.testing.assert_close(out, z.expand_as(out), atol=0.01, rtol=0)


def test_inpaint_keeps_z_exactly_where_the_mask_is_one():
    sig = karras_sigmas(8)
    z = torch.full((1, 1, 4, 4, 4), 3.0, dtype=torch.float64)
    keep = torch.zeros(1, 1, 4, 4, 4, dtype=torch.float64)
    keep[..., :2] = 1
    g = torch.Generator().manual_seed(1)
    noise, eps = (torch.randn(2, 1, 4, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    out = inpaint(gaussian(0.0, 1.0), z, keep, noise, eps, sig)
    assert torch.equal(out[..., :2], torch.full_like(out[..., :2], 3.0))
    # The free region is sampled from N(0, 1): far from the kept value 3.
    assert out[..., 2:].abs().mean() < 2.0


def test_inpaint_with_fresh_noise_draws_one_new_epsilon_per_paste_above_zero():
    sig = karras_sigmas(5)  # 5 steps: 2·5 − 1 = 9 pastes at σ > 0, one at σ = 0
    z = torch.zeros(1, 1, 2, 2, 2, dtype=torch.float64)
    keep = torch.ones_like(z)
    asked = []

    def fresh(k: int) -> torch.Tensor:
        asked.append(k)
        return torch.zeros(1, 1, 2, 2, 2)

    noise = torch.ones(1, 1, 2, 2, 2, dtype=torch.float64)
    out = inpaint(gaussian(0.0, 1.0), z, keep, noise, noise, sig, fresh_paste_noise=fresh)
    assert asked == list(range(1, 10))
    assert torch.equal(out, z)


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("siblings.diffusion.edit", ("siblings.models", "siblings.train", "siblings.io")),
        ("siblings.diffusion.edm", ("siblings.models", "siblings.train")),
        ("siblings.diffusion.inversion", ("siblings.models", "siblings.train")),
        ("siblings.models.ldm", ("siblings.train",)),
        ("siblings.models.edits", ("siblings.train",)),
    ],
)
def test_diffusion_knows_no_model_and_models_know_no_training(module, forbidden):
    code = (
        f"import sys, {module}; "
        f"print(' '.join(m for m in sys.modules if m.startswith({forbidden!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [], f"{module} imports {out.stdout.split()}"
