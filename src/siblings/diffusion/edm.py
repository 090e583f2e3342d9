"""EDM (Karras et al. 2022) preconditioning, loss, schedule and Heun sampler (SPEC §3).

Names follow the paper: ``c_skip``, ``c_out``, ``c_in``, ``c_noise``; eq. numbers refer
to Kadry et al. 2023. The ODE state is integrated in float64; the network sees float32
(or bf16 under autocast).

Example
-------
>>> import torch
>>> from siblings.diffusion.edm import karras_sigmas, heun_sample
>>> sigmas = karras_sigmas(20)          # 21 values: 80 … 0.002, 0
>>> mu, s = 1.0, 0.5                    # analytic denoiser of N(mu, s²)
>>> denoise = lambda z, sigma: mu + s**2 / (s**2 + sigma**2) * (z - mu)
>>> z = heun_sample(denoise, torch.randn(4096, dtype=torch.float64) * sigmas[0], sigmas)
>>> round(float(z.mean()), 1), round(float(z.std()), 1)
(1.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import InputError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def karras_sigmas(
    n: int, sigma_min: float = 2e-3, sigma_max: float = 80.0, rho: float = 3.0
) -> torch.Tensor:
    """Noise levels σ_0 = σmax > … > σ_{N-1} = σmin, then σ_N = 0 (eq. 4); float64, length n+1."""
    if n < 1:
        raise InputError(f"number of steps must be at least 1, got {n}")
    i = torch.arange(n, dtype=torch.float64)
    frac = i / (n - 1) if n > 1 else torch.zeros(1, dtype=torch.float64)
    sig = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


def _expand(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """σ as a tensor broadcastable over a batch ``like`` (B, C, …)."""
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if s.ndim == 0:
        s = s.expand(like.shape[0])
    return s.reshape(-1, *([1] * (like.ndim - 1)))


class EDMPrecond(nn.Module):
    """D(z; σ) = c_skip·z + c_out·F(c_in·z; c_noise) around any network F (eq. 2)."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: torch.Tensor):
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        z32 = z.to(torch.float32)
        s = _expand(sigma, z32)
        c_skip, c_out, c_in, c_noise = self.coefficients(s)
        f = self.net(c_in * z32, c_noise.reshape(-1)).to(torch.float32)
        return (c_skip * z32 + c_out * f).to(z.dtype)


class EDMLoss:
    """λ(σ)·‖D(z+n; σ) − z‖² with λ = 1/c_out², ln σ ~ N(P_mean, P_std²) (eq. 3).

    Defaults are the paper's P_mean = +1, P_std = 1.2 (SPEC §3); EDM's own are −1.2, 1.2.
    Returns the per-sample loss (mean over latent elements).
    """

    def __init__(self, P_mean: float = 1.0, P_std: float = 1.2, sigma_data: float = 0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    def draw(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """σ ``(B,)`` with ln σ ~ N(P_mean, P_std²), then unit noise of ``shape`` (B, …).

        Drawn in this order from ``generator``. Training draws them for the global batch
        on a CPU generator and gives each process its share (:func:`siblings.train.train_ldm`).
        """
        rnd = torch.randn(shape[0], generator=generator, device=device, dtype=torch.float32)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return sigma, noise

    def loss(
        self, denoiser: Denoiser, z: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The per-sample loss at given σ and noise (:func:`edm_loss`)."""
        return edm_loss(denoiser, z, sigma, noise, self.sigma_data)

    def __call__(
        self, denoiser: Denoiser, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        sigma, noise = self.draw(z.shape, generator, z.device, z.dtype)
        return self.loss(denoiser, z, sigma, noise)


def edm_loss(
    denoiser: Denoiser,
    z: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """Per-sample EDM loss for given σ (B,) and unit noise (same shape as z)."""
    s = _expand(sigma, z)
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2  # λ(σ) = 1/c_out²
    d = denoiser(z + s * noise, sigma)
    return (weight * (d.to(z.dtype) - z) ** 2).flatten(1).mean(1)


def _churn_noise(
    x: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None
) -> torch.Tensor:
    """Unit noise like ``x`` (float64) from one generator, or one generator per row."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=torch.float64, device=x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"{len(generator)} churn generators for a batch of {x.shape[0]}")
    rows = [torch.randn(x.shape[1:], generator=g, dtype=torch.float64) for g in generator]
    return torch.stack(rows).to(x.device)


@torch.no_grad()
def heun_sample(
    denoise: Denoiser,
    z: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    paste: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
    guide: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """EDM's Heun sampler (Algorithm 1 of Karras et al.; stochastic Algorithm 2 if churn>0).

    ``z`` is the noisy start at ``sigmas[0]``; ``sigmas`` ends in 0. N steps cost 2N−1
    calls of ``denoise(z, sigma)`` (no correction on the last step, to σ = 0).
    ``paste(z, sigma)``, if given, replaces part of the state before every denoiser call
    and once more at σ = 0 (inpainting, eq. 5). ``guide(z, sigma)``, if given, is added
    to every denoiser output (after the paste, on the same state): classifier guidance,
    ``σ²·γ·∇ log p(y | z_σ)``, which adds ``γ·∇ log p(y | z_σ)`` to the score
    ``(D − z)/σ²`` (:func:`siblings.diffusion.guidance.classifier_guide`). ``generator`` draws the churn noise: one
    generator for the whole batch, or one per batch row (row ``k``'s noise then comes from
    ``generator[k]`` alone, so a sample does not depend on the batch it is in). Returns
    the final state as float64.
    """
    sigmas = sigmas.to(torch.float64)
    x = z.to(torch.float64)
    n = len(sigmas) - 1

    def den(x: torch.Tensor, s: float) -> torch.Tensor:
        d = denoise(x, torch.tensor(s, dtype=torch.float64)).to(torch.float64)
        return d if guide is None else d + guide(x, s).to(torch.float64)

    for i in range(n):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        # Optional churn: raise the noise level a little (Algorithm 2, lines 4-6).
        gamma = min(churn / n, 2**0.5 - 1) if churn > 0 and s_tmin <= s_cur <= s_tmax else 0.0
        s_hat = s_cur * (1 + gamma)
        if gamma > 0:
            eps = _churn_noise(x, generator)
            x = x + (s_hat**2 - s_cur**2) ** 0.5 * s_noise * eps
        if paste is not None:
            x = paste(x, s_hat)
        # Euler step.
        d = (x - den(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        # Apply 2nd order correction.
        if s_next != 0:
            if paste is not None:
                x_next = paste(x_next, s_next)
            d2 = (x_next - den(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
        if callback is not None:
            callback(i, x)
    if paste is not None:
        x = paste(x, 0.0)
    return x
