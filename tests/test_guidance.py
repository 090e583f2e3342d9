"""Classifier guidance in the Heun sampler (issue 17), on cases with a known answer.

Gaussian data x ~ N(μ, s²·I) has the exact denoiser D(x; σ) = μ + k·(x − μ) with
k = s²/(s² + σ²). A linear feature y = wᵀx observed with tolerance τ has, at noise
level σ, the exact regressor E[y | x_σ] = wᵀ(μ + k·(x_σ − μ)) with error variance
v(σ) = |w|²·s²·σ²/(s² + σ²). Guided with γ = 1 and the likelihood N(y*; E[y | x_σ],
τ² + v(σ)), the probability-flow ODE carries noise to the posterior p(x | y = y*), whose
mean is μ + s²·w·(y* − wᵀμ)/(τ² + s²|w|²) and whose variance along w is
s² − s⁴|w|²/(τ² + s²|w|²) (Gaussian conditioning).
"""

from __future__ import annotations

import pytest
import torch

from siblings.diffusion.edit import inpaint, perturb
from siblings.diffusion.edm import heun_sample, karras_sigmas
from siblings.diffusion.guidance import Term, classifier_guide, log_likelihood
from siblings.errors import InputError

MU, S = 0.3, 0.5
SHAPE = (1, 2, 2, 2)  # 8 dimensions per sample, latent-like (B, C, n, n, n)


def gaussian_denoiser(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    k = S**2 / (S**2 + float(sigma) ** 2)
    return MU + k * (z - MU)


def linear_setup(tau: float):
    w = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64).reshape(SHAPE)
    w2 = float((w**2).sum())

    def predict(z: torch.Tensor, sigma: float) -> torch.Tensor:
        k = S**2 / (S**2 + sigma**2)
        return ((MU + k * (z - MU)) * w.to(z.dtype)).flatten(1).sum(1, keepdim=True)

    def residual_var(sigma: float) -> torch.Tensor:
        return torch.tensor([w2 * S**2 * sigma**2 / (S**2 + sigma**2)], dtype=torch.float64)

    return w, w2, predict, residual_var


def sample(guide=None, n=2000, steps=40, seed=0):
    sig = karras_sigmas(steps)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *SHAPE), generator=g, dtype=torch.float64) * sig[0]
    return heun_sample(gaussian_denoiser, z, sig, guide=guide)


def test_guidance_moves_the_gaussian_mean_by_the_closed_form_amount():
    tau, y_star = 0.2, 1.5
    w, w2, predict, residual_var = linear_setup(tau)
    guide = classifier_guide(predict, [Term(0, "equal", y_star, tau)], 1.0, residual_var)
    plain, guided = sample(), sample(guide)
    prior_y = MU * float(w.sum())
    expected_shift = S**2 * w * (y_star - prior_y) / (tau**2 + S**2 * w2)
    shift = guided.mean(0) - plain.mean(0)
    # Same starting noise: the sampling error of the difference is small (< 0.01 here),
    # against a shift of up to 0.6 per dimension.
    assert torch.allclose(shift, expected_shift[0], atol=0.015)
    # And the feature itself: its posterior mean and variance.
    y = (guided * w).flatten(1).sum(1)
    post_mean = prior_y + S**2 * w2 * (y_star - prior_y) / (tau**2 + S**2 * w2)
    post_var = S**2 * w2 - (S**2 * w2) ** 2 / (tau**2 + S**2 * w2)
    assert abs(float(y.mean()) - post_mean) < 0.02
    # The posterior is narrow along w (sd 0.2 against the prior's 0.93): its variance
    # needs a finer schedule than the mean (40 steps: +15%; 100 steps: +6%; 300: +4%,
    # the sampling error of a variance of 2000 draws being 3%).
    y_fine = (sample(guide, steps=100) * w).flatten(1).sum(1)
    assert float(y_fine.var()) == pytest.approx(post_var, rel=0.1)


def test_guidance_leaves_directions_orthogonal_to_the_feature_alone():
    _, _, predict, residual_var = linear_setup(0.2)
    guide = classifier_guide(predict, [Term(0, "equal", 1.5, 0.2)], 1.0, residual_var)
    plain, guided = sample(guide=None, n=64), sample(guide, n=64)
    ones = torch.ones(SHAPE, dtype=torch.float64)  # w sums to 0: 1 ⟂ w
    assert torch.allclose((guided * ones).flatten(1).sum(1), (plain * ones).flatten(1).sum(1))


def test_scale_zero_is_the_unguided_sampler_exactly():
    _, _, predict, residual_var = linear_setup(0.2)
    guide = classifier_guide(predict, [Term(0, "equal", 1.5, 0.2)], 0.0, residual_var)
    assert torch.equal(sample(guide, n=16), sample(None, n=16))


def test_a_soft_threshold_pushes_the_feature_over_it():
    w, _, predict, residual_var = linear_setup(0.0)
    guide = classifier_guide(predict, [Term(0, "above", 1.0)], 1.0, residual_var)
    y_plain = (sample(n=500) * w).flatten(1).sum(1)
    y_guided = (sample(guide, n=500) * w).flatten(1).sum(1)
    # Exact conditioning on y > 1 (no tolerance): every sample lands above, up to the
    # discretisation of the last steps.
    assert float((y_plain > 1.0).float().mean()) < 0.2
    assert float((y_guided > 0.95).float().mean()) > 0.97


def test_guide_composes_with_paste_and_keeps_the_kept_region():
    tau = 0.2
    w, _, predict, residual_var = linear_setup(tau)
    guide = classifier_guide(predict, [Term(0, "equal", 2.0, tau)], 1.0, residual_var)
    g = torch.Generator().manual_seed(1)
    z = torch.full((1, *SHAPE), MU, dtype=torch.float64)
    keep = torch.zeros((1, *SHAPE), dtype=torch.float64)
    keep[..., 0] = 1  # half the elements kept (those of x index 0)
    noise = torch.randn((32, *SHAPE), generator=g, dtype=torch.float64)
    eps = torch.randn((32, *SHAPE), generator=g, dtype=torch.float64)
    sig = karras_sigmas(20)
    plain = inpaint(gaussian_denoiser, z, keep, noise, eps, sig)
    guided = inpaint(gaussian_denoiser, z, keep, noise, eps, sig, guide=guide)
    assert torch.equal(guided[..., 0], z.expand_as(guided)[..., 0])
    y = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    assert float(y(guided).mean()) > float(y(plain).mean()) + 0.3  # the free half moved


def test_guide_composes_with_perturbation():
    tau = 0.2
    w, _, predict, residual_var = linear_setup(tau)
    guide = classifier_guide(predict, [Term(0, "equal", 2.0, tau)], 1.0, residual_var)
    g = torch.Generator().manual_seed(2)
    z = torch.full((1, *SHAPE), MU, dtype=torch.float64)
    eps = torch.randn((32, *SHAPE), generator=g, dtype=torch.float64)
    sig = karras_sigmas(20)[10:]
    y = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    plain, guided = (
        perturb(gaussian_denoiser, z, eps, sig),
        perturb(gaussian_denoiser, z, eps, sig, guide=guide),
    )
    assert float(y(guided).mean()) > float(y(plain).mean()) + 0.3


def test_per_row_target_values_guide_each_row_to_its_own():
    _, _, predict, residual_var = linear_setup(0.1)
    values = torch.tensor([-1.0, 1.0], dtype=torch.float64).repeat(8)
    guide = classifier_guide(predict, [Term(0, "equal", values, 0.1)], 1.0, residual_var)
    w = linear_setup(0.1)[0]
    y = (sample(guide, n=16) * w).flatten(1).sum(1)
    assert torch.all((y - values).abs() < 0.4)


def test_log_likelihood_equal_and_thresholds():
    pred = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    eq = log_likelihood(pred, [Term(0, "equal", 1.0, 0.5)])
    assert torch.allclose(eq, torch.tensor([-2.0, 0.0], dtype=torch.float64))
    above = log_likelihood(pred, [Term(0, "above", 1.0, 1.0)])
    assert float(above[1]) == pytest.approx(float(torch.tensor(0.5).log()))
    below = log_likelihood(pred, [Term(0, "below", 1.0, 1.0)])
    assert float(below[0]) > float(above[0])  # 0 is below 1


def test_bad_terms_and_scales_are_refused():
    with pytest.raises(InputError, match="kind"):
        Term(0, "near", 1.0)
    with pytest.raises(InputError, match="tolerance"):
        Term(0, "equal", 1.0, -1.0)
    with pytest.raises(InputError, match="scale"):
        classifier_guide(lambda z, s: z, [Term(0, "equal", 1.0, 1.0)], -1.0)
    with pytest.raises(InputError, match="clause"):
        classifier_guide(lambda z, s: z, [], 1.0)


def two_feature_setup():
    """Feature 0 along w (the target), feature 1 along u, which overlaps w (w·u ≠ 0)."""
    w = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64).reshape(SHAPE)
    u = torch.zeros(SHAPE, dtype=torch.float64)
    u.view(-1)[4:] = 1.0  # the upper half: overlaps the positive part of w

    def predict(z: torch.Tensor, sigma: float) -> torch.Tensor:
        k = S**2 / (S**2 + sigma**2)
        x = (MU + k * (z - MU)).flatten(1)
        return torch.stack([x @ w.flatten().to(z.dtype), x @ u.flatten().to(z.dtype)], 1)

    return w, u, predict


def test_hold_projection_removes_the_held_directions_only():
    from siblings.diffusion.guidance import hold_projection

    g = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 3.0]], dtype=torch.float64)
    held = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]], dtype=torch.float64)
    out = hold_projection(g, held)
    assert torch.allclose(
        out, torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    )
    # Two non-orthogonal held directions: the result is orthogonal to both.
    held2 = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]], dtype=torch.float64)
    out2 = hold_projection(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), held2)
    assert torch.allclose(out2 @ held2[0].T, torch.zeros(1, 2, dtype=torch.float64), atol=1e-9)


def test_a_held_feature_does_not_move_while_the_target_does():
    """The Gaussian sampler is linear and isotropic, so a guidance orthogonal to u at
    every step leaves uᵀx exactly where the unguided sampler puts it."""
    w, u, predict = two_feature_setup()
    target = [Term(0, "equal", 1.5, 0.2)]
    free = classifier_guide(predict, target, 1.0)
    held = classifier_guide(predict, target, 1.0, hold=[1])
    plain, g_free, g_held = sample(n=64), sample(free, n=64), sample(held, n=64)

    def along(x, v):
        return (x * v).flatten(1).sum(1)

    assert float((along(g_free, u) - along(plain, u)).abs().mean()) > 0.3  # moves u too
    assert torch.allclose(along(g_held, u), along(plain, u), atol=1e-8)  # held
    assert float((along(g_held, w) - along(plain, w)).mean()) > 0.3  # the target still moves


def test_a_feature_cannot_be_both_target_and_held():
    _, _, predict = two_feature_setup()
    with pytest.raises(InputError, match="held"):
        classifier_guide(predict, [Term(0, "above", 1.0)], 1.0, hold=[0])
