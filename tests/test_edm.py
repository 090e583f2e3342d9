"""EDM schedule, preconditioning, loss and Heun sampler against closed-form answers (SPEC §3).

For Gaussian data N(μ, s²) everything is known exactly: the ideal denoiser is
D(z; σ) = μ + s²/(s²+σ²)·(z−μ), and the probability-flow ODE dz/dσ = (z − D(z; σ))/σ
carries a state z0 at σ0 to z(σ) = μ + (z0−μ)·sqrt(s²+σ²)/sqrt(s²+σ0²).
"""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
import torch

from siblings.diffusion import edm
from siblings.diffusion.edm import EDMLoss, EDMPrecond, edm_loss, heun_sample, karras_sigmas


def gaussian_denoiser(mu, s):
    """Ideal denoiser of N(mu, s²I); mu and s broadcast against the state."""

    def denoise(z, sigma):
        return mu + s**2 / (s**2 + sigma**2) * (z - mu)

    return denoise


def exact_flow(z0, sigma0, sigma, mu, s):
    """Closed-form probability-flow ODE solution for N(mu, s²) data from σ0 to σ."""
    return mu + (z0 - mu) * math.sqrt(s**2 + sigma**2) / math.sqrt(s**2 + sigma0**2)


class CountingDenoiser:
    def __init__(self, denoise):
        self.denoise, self.sigmas = denoise, []

    def __call__(self, z, sigma):
        self.sigmas.append(float(sigma))
        return self.denoise(z, sigma)


# ---------------------------------------------------------------------------------
# Schedule (eq. 4).
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 5, 20, 64])
def test_schedule_is_eq4_then_zero(n):
    s_min, s_max, rho = 2e-3, 80.0, 3.0
    sig = karras_sigmas(n)
    assert sig.dtype == torch.float64
    assert sig.shape == (n + 1,)
    i = np.arange(n)
    want = (s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    np.testing.assert_allclose(sig[:n].numpy(), want, rtol=1e-13, atol=0)
    assert sig[0].item() == pytest.approx(s_max, rel=1e-14)
    assert sig[n - 1].item() == pytest.approx(s_min, rel=1e-12)
    assert sig[n].item() == 0.0
    assert torch.all(sig[1:] < sig[:-1])


def test_schedule_custom_parameters_and_single_step():
    sig = karras_sigmas(4, sigma_min=0.01, sigma_max=10.0, rho=7.0)
    want = [(10 ** (1 / 7) + k / 3 * (0.01 ** (1 / 7) - 10 ** (1 / 7))) ** 7 for k in range(4)]
    np.testing.assert_allclose(sig.numpy(), [*want, 0.0], rtol=1e-13)
    assert karras_sigmas(1).tolist() == pytest.approx([80.0, 0.0], rel=1e-14)


def test_schedule_rejects_zero_steps():
    with pytest.raises(ValueError, match="at least 1"):
        karras_sigmas(0)


# ---------------------------------------------------------------------------------
# Heun sampler (Algorithm 1 of Karras et al.).
# ---------------------------------------------------------------------------------
def reference_heun(denoise, z0: float, sigmas: list[float]) -> float:
    """Algorithm 1 of Karras et al. written out for one float, independently of edm.py."""
    x = z0
    for s_cur, s_next in itertools.pairwise(sigmas):
        d = (x - denoise(x, s_cur)) / s_cur
        x_euler = x + (s_next - s_cur) * d
        if s_next == 0:
            x = x_euler
        else:
            d2 = (x_euler - denoise(x_euler, s_next)) / s_next
            x = x + (s_next - s_cur) * (d + d2) / 2
    return x


def test_heun_matches_a_hand_written_algorithm_1():
    mu, s = 0.3, 0.5
    sig = karras_sigmas(20)
    z0 = torch.tensor([-120.0, -3.0, 0.0, 17.0, 200.0], dtype=torch.float64)
    x = heun_sample(gaussian_denoiser(mu, s), z0, sig)
    want = [reference_heun(gaussian_denoiser(mu, s), float(v), sig.tolist()) for v in z0]
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-13, atol=1e-13)


def test_heun_turns_noise_into_gaussian_data_scalars():
    mu, s = 1.5, 0.5
    sig = karras_sigmas(100)
    eps = torch.randn(40_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # Exact marginal at σmax: the ODE maps it to μ + s·ε exactly.
    z = mu + math.sqrt(s**2 + float(sig[0]) ** 2) * eps
    x = heun_sample(gaussian_denoiser(mu, s), z, sig)
    assert x.dtype == torch.float64
    assert float(x.mean()) == pytest.approx(mu, abs=0.01)
    assert float(x.std()) == pytest.approx(s, rel=0.01)
    np.testing.assert_allclose(x.numpy(), (mu + s * eps).numpy(), atol=0.01 * s * 5)


def test_heun_at_the_paper_setting_samples_the_data_within_discretisation_error():
    """20 steps with ρ = 3 from pure noise (what `siblings sample` does). For this data
    the 20-step discretisation widens the distribution by 7.6% (the hand-written loop
    above gives the same), so the std tolerance is 10%."""
    mu, s = 1.5, 0.5
    sig = karras_sigmas(20)
    z = torch.randn(40_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = heun_sample(gaussian_denoiser(mu, s), z * sig[0], sig)
    assert float(x.mean()) == pytest.approx(mu, abs=0.02)
    assert float(x.std()) == pytest.approx(s, rel=0.10)


def test_heun_turns_noise_into_gaussian_data_vectors_batched():
    # A batch of 3-channel "latents" with a different mean and std per channel.
    mu = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    sig = karras_sigmas(100)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(256, 3, 8, 8, generator=g, dtype=torch.float64) * sig[0]
    x = heun_sample(gaussian_denoiser(mu, s), z, sig)
    assert x.shape == z.shape
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), mu.flatten().numpy(), atol=0.03)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3)).numpy(), s.flatten().numpy(), rtol=0.02)


def test_heun_error_against_exact_ode_solution_falls_with_steps():
    mu, s = 0.7, 0.5
    sig0 = 80.0
    z0 = torch.linspace(-3, 3, 101, dtype=torch.float64) * sig0
    exact = exact_flow(z0, sig0, 0.0, mu, s)
    errors = []
    for n in (3, 5, 10, 20, 40, 80):
        x = heun_sample(gaussian_denoiser(mu, s), z0, karras_sigmas(n))
        errors.append(float((x - exact).abs().max()))
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    # Second order: doubling the steps cuts the error by about 4 once N is large.
    assert errors[-2] / errors[-1] > 3.0, errors
    assert errors[-1] < 0.01, errors


def test_heun_makes_exactly_2n_minus_1_denoiser_calls():
    for n in (1, 2, 5, 20):
        counter = CountingDenoiser(gaussian_denoiser(0.0, 0.5))
        sig = karras_sigmas(n)
        heun_sample(counter, torch.randn(4, dtype=torch.float64) * sig[0], sig)
        assert len(counter.sigmas) == 2 * n - 1
        # σ_0 … σ_{N-1} once each for the Euler steps, σ_1 … σ_{N-1} for the corrections,
        # and never σ = 0 (the last step is a plain Euler step).
        want = sorted([*sig[:n].tolist(), *sig[1:n].tolist()], reverse=True)
        assert sorted(counter.sigmas, reverse=True) == pytest.approx(want, rel=1e-12)
        assert 0.0 not in counter.sigmas


def test_heun_with_churn_still_samples_the_data_distribution():
    mu, s = 1.0, 0.5
    sig = karras_sigmas(100)
    z = torch.randn(40_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z = z * sig[0]
    counter = CountingDenoiser(gaussian_denoiser(mu, s))
    x = heun_sample(counter, z, sig, churn=10.0, generator=torch.Generator().manual_seed(3))
    assert len(counter.sigmas) == 2 * 100 - 1
    assert float(x.mean()) == pytest.approx(mu, abs=0.02)
    assert float(x.std()) == pytest.approx(s, rel=0.03)
    # Churn actually changes the trajectory, reproducibly for a given generator.
    x_det = heun_sample(gaussian_denoiser(mu, s), z, sig)
    assert float((x - x_det).abs().max()) > 1e-3
    again = heun_sample(
        gaussian_denoiser(mu, s), z, sig, churn=10.0, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(x, again)


def test_heun_paste_hook_runs_before_each_call_and_keeps_the_region_at_the_end():
    sig = karras_sigmas(6)
    mask = torch.zeros(2, 1, 4, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1.0
    known = torch.randn(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(4)).double()
    eps = torch.randn(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(5)).double()
    pasted_at: list[float] = []

    def paste(z, sigma):
        pasted_at.append(float(sigma))
        return (known + sigma * eps) * mask + (1 - mask) * z

    seen_by_denoiser = []

    def denoise(z, sigma):
        # The state handed to the network carries the pasted values at this σ.
        seen_by_denoiser.append(
            torch.allclose((z * mask), (known + float(sigma) * eps) * mask, atol=1e-12)
        )
        return gaussian_denoiser(0.0, 0.5)(z, sigma)

    z = torch.randn(2, 1, 4, 4, 4, dtype=torch.float64) * sig[0]
    x = heun_sample(denoise, z, sig, paste=paste)
    assert all(seen_by_denoiser) and len(seen_by_denoiser) == 2 * 6 - 1
    assert pasted_at[-1] == 0.0 and len(pasted_at) == 2 * 6 - 1 + 1
    assert torch.equal(x[..., :2], known[..., :2])
    assert not torch.allclose(x[..., 2:], known[..., 2:])


def test_heun_does_not_modify_its_input():
    sig = karras_sigmas(3)
    z = torch.randn(5, dtype=torch.float64) * sig[0]
    before = z.clone()
    heun_sample(gaussian_denoiser(0.0, 0.5), z, sig)
    assert torch.equal(z, before)


# ---------------------------------------------------------------------------------
# Preconditioning (eq. 2).
# ---------------------------------------------------------------------------------
class RecordingNet(torch.nn.Module):
    """F(x; c_noise) = 3·x + c_noise, remembering what it was given."""

    def forward(self, x, c_noise):
        self.x, self.c_noise = x.clone(), c_noise.clone()
        return 3.0 * x + c_noise.view(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_preconditioning_coefficients_are_the_spec_formulas(sigma_data):
    pre = EDMPrecond(RecordingNet(), sigma_data=sigma_data)
    sd = sigma_data
    for s in (2e-3, 0.1, 0.5, 1.0, 7.0, 80.0):
        c_skip, c_out, c_in, c_noise = pre.coefficients(torch.tensor(s, dtype=torch.float64))
        assert float(c_skip) == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
        assert float(c_out) == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert float(c_in) == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert float(c_noise) == pytest.approx(math.log(s) / 4, rel=1e-12)


def test_precond_wraps_the_network_as_eq2_with_per_sample_sigma():
    net = RecordingNet()
    pre = EDMPrecond(net, sigma_data=0.5)
    z = torch.randn(3, 2, 4, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.01, 1.0, 50.0])
    d = pre(z, sigma)
    assert d.dtype == z.dtype and d.shape == z.shape
    for b, s in enumerate(sigma.tolist()):
        c_skip = 0.25 / (s**2 + 0.25)
        c_out = s * 0.5 / math.sqrt(s**2 + 0.25)
        c_in = 1 / math.sqrt(s**2 + 0.25)
        c_noise = math.log(s) / 4
        torch.testing.assert_close(net.x[b].double(), c_in * z[b], rtol=1e-6, atol=1e-6)
        assert float(net.c_noise[b]) == pytest.approx(c_noise, rel=1e-6)
        want = c_skip * z[b] + c_out * (3.0 * c_in * z[b] + c_noise)
        torch.testing.assert_close(d[b], want, rtol=1e-5, atol=1e-5)
    # A scalar σ applies to the whole batch.
    d_scalar = pre(z, 1.0)
    torch.testing.assert_close(d_scalar[1], d[1])


def test_precond_limits():
    pre = EDMPrecond(RecordingNet(), sigma_data=0.5)
    c_skip, c_out, c_in, _ = pre.coefficients(torch.tensor(1e-8, dtype=torch.float64))
    assert float(c_skip) == pytest.approx(1.0, abs=1e-12)  # D(z; σ→0) → z
    assert float(c_out) == pytest.approx(0.0, abs=1e-7)
    assert float(c_in) == pytest.approx(2.0, rel=1e-12)  # 1/σ_data
    big = torch.tensor(1e8, dtype=torch.float64)
    c_skip, c_out, c_in, _ = pre.coefficients(big)
    assert float(c_skip) == pytest.approx(0.0, abs=1e-12)  # D(z; σ→∞) → σ_data·F
    assert float(c_out) == pytest.approx(0.5, rel=1e-12)
    assert float(c_in * big) == pytest.approx(1.0, rel=1e-12)  # unit-variance input


# ---------------------------------------------------------------------------------
# Loss (eq. 3) with λ(σ) = 1/c_out².
# ---------------------------------------------------------------------------------
def test_loss_is_zero_for_the_exact_denoiser_of_a_point_mass():
    # Data: every sample equals `a`; the ideal denoiser returns `a` whatever the noise.
    a = torch.randn(1, 3, 4, 4, 4)
    z = a.expand(16, -1, -1, -1, -1).clone()
    loss = EDMLoss()(lambda x, sigma: a.expand_as(x), z, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (16,)
    assert torch.all(loss == 0)
    # Returning the noisy input instead is penalised.
    bad = EDMLoss()(lambda x, sigma: x, z, generator=torch.Generator().manual_seed(0))
    assert torch.all(bad > 0)


@pytest.mark.parametrize("sigma", [0.02, 0.5, 3.0, 80.0])
def test_lambda_makes_the_skip_only_denoiser_cost_one_at_every_sigma(sigma):
    """With F ≡ 0, D = c_skip·z; for data of variance σ_data² the effective target of F
    has unit variance, so λ(σ)·E‖D − y‖² = 1 whatever σ (EDM's reason for λ = 1/c_out²).
    For Gaussian data of std σ_data this D is also the ideal denoiser."""
    sd = 0.5
    pre = EDMPrecond(lambda x, c: torch.zeros_like(x), sigma_data=sd)
    g = torch.Generator().manual_seed(7)
    y = torch.randn(20_000, 8, generator=g, dtype=torch.float64) * sd
    noise = torch.randn(y.shape, generator=g, dtype=torch.float64)
    loss = edm_loss(pre, y, torch.full((len(y),), sigma, dtype=torch.float64), noise, sd)
    assert float(loss.mean()) == pytest.approx(1.0, rel=0.02)
    # Point-mass data at 0 instead: λ·c_skip²·σ² = σ_data²/(σ²+σ_data²), not 1.
    zero = torch.zeros_like(y)
    loss0 = edm_loss(pre, zero, torch.full((len(y),), sigma, dtype=torch.float64), noise, sd)
    assert float(loss0.mean()) == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=0.02)


@pytest.mark.parametrize(("p_mean", "p_std"), [(1.0, 1.2), (-1.2, 1.2)])
def test_loss_draws_log_sigma_from_the_configured_normal(p_mean, p_std):
    seen = []

    def denoise(x, sigma):
        seen.append(sigma.clone())
        return x

    z = torch.zeros(20_000, 1)
    EDMLoss(P_mean=p_mean, P_std=p_std)(denoise, z, generator=torch.Generator().manual_seed(8))
    log_sigma = seen[0].log()
    assert float(log_sigma.mean()) == pytest.approx(p_mean, abs=0.03)
    assert float(log_sigma.std()) == pytest.approx(p_std, rel=0.02)


def test_paper_p_mean_is_the_default():
    loss = EDMLoss()
    assert (loss.P_mean, loss.P_std, loss.sigma_data) == (1.0, 1.2, 0.5)


def test_module_docstring_example_runs():
    result = doctest.testmod(edm, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_heun_with_one_churn_generator_per_row_draws_each_row_from_its_own():
    mu, s = 0.5, 0.3
    sig = karras_sigmas(6)
    z = torch.randn(3, 2, 4, dtype=torch.float64) * sig[0]
    gens = [torch.Generator().manual_seed(k) for k in (11, 12, 13)]
    rows = heun_sample(gaussian_denoiser(mu, s), z, sig, churn=5.0, generator=gens)
    for k, seed in enumerate((11, 12, 13)):
        one = heun_sample(
            gaussian_denoiser(mu, s), z[k : k + 1], sig, churn=5.0,
            generator=[torch.Generator().manual_seed(seed)],
        )  # fmt: skip
        assert torch.equal(one[0], rows[k])
    # One generator per row is the single generator's draw when the batch is one row.
    single = heun_sample(
        gaussian_denoiser(mu, s), z[:1], sig, churn=5.0, generator=torch.Generator().manual_seed(11)
    )
    assert torch.equal(single[0], rows[0])
    with pytest.raises(ValueError, match="2 churn generators for a batch of 3"):
        heun_sample(gaussian_denoiser(mu, s), z, sig, churn=5.0, generator=gens[:2])


def test_edm_loss_draws_ln_sigma_then_the_noise_from_one_generator():
    # The training loop's draw (global batch, CPU generator): a known sequence.
    loss = EDMLoss(P_mean=1.0, P_std=1.2)
    sigma, noise = loss.draw((4, 2, 3), torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    rnd = torch.randn(4, generator=g)
    assert torch.equal(sigma, (rnd * 1.2 + 1.0).exp())
    assert torch.equal(noise, torch.randn((4, 2, 3), generator=g))
    z = torch.randn(4, 2, 3)

    def denoise(x, s):
        return x * 0.5

    whole = loss(denoise, z, generator=torch.Generator().manual_seed(7))
    assert torch.equal(whole, loss.loss(denoise, z, sigma, noise))
    assert torch.equal(whole, edm_loss(denoise, z, sigma, noise, 0.5))
