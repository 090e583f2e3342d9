"""The morphology regressor: the 12 features of SPEC §5 predicted from a noisy latent.

A small 3D CNN :class:`MorphologyRegressor` reads a scaled latent ``z_σ = z + σ·n`` (the
state of the Heun sampler at noise level σ) and σ, and predicts the twelve morphology
columns of :data:`siblings.anatomy.MORPHOLOGY_COLUMNS`, standardised by the training
cohort's mean and standard deviation (ddof = 0). It is preconditioned as the denoiser
(Karras et al. 2022): the network sees ``c_in·z_σ`` with ``c_in = 1/sqrt(σ² + σ_data²)``
and is conditioned on ``c_noise = ln σ / 4`` (FiLM in every block). It is trained with
the denoiser's noise distribution, ln σ ~ N(P_mean, P_std²) (:func:`siblings.train.train_regressor`),
so it is accurate along the whole sampling path; below that distribution's
P_mean − 3·P_std the input is clean enough that the conditioning is clamped there.

Beside the weights it stores its own error: the residual variance of each standardised
feature on calibration maps at a grid of σ (:meth:`MorphologyRegressor.residual_var`),
which classifier guidance adds to the target's tolerance (:mod:`siblings.diffusion.guidance`).

Files: ``regressor.safetensors`` and ``regressor.json`` (architecture, feature
statistics, the training recipe, the VAE hash and scale factor it was trained for, and
its measured accuracy). The shipped one lies beside the shipped weights.

Example
-------
>>> import torch
>>> from siblings.models.regressor import MorphologyRegressor
>>> net = MorphologyRegressor(latent_channels=3, width=8)
>>> net(torch.zeros(2, 3, 16, 16, 16), torch.tensor([1.0, 1.0])).shape
torch.Size([2, 12])
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import anatomy
from ..checkpoint import CheckpointError, file_hash, load_tensors, save_tensors

REGRESSOR_FILE = "regressor.safetensors"


def _groups(ch: int) -> int:
    return 8 if ch % 8 == 0 else 1


class _Block(nn.Module):
    """GroupNorm → FiLM(c_noise) → SiLU → conv, twice, with a residual."""

    def __init__(self, ch: int, emb: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(_groups(ch), ch), nn.GroupNorm(_groups(ch), ch)
        self.conv1 = nn.Conv3d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv3d(ch, ch, 3, padding=1)
        self.film = nn.Linear(emb, 2 * ch)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(e)[:, :, None, None, None].chunk(2, dim=1)
        h = self.conv1(torch.nn.functional.silu(self.norm1(x) * (1 + scale) + shift))
        h = self.conv2(torch.nn.functional.silu(self.norm2(h)))
        return x + h


class MorphologyRegressor(nn.Module):
    """Standardised morphology (B, 12) of noisy scaled latents (B, C, n, n, n) at σ (B,).

    A strided stem to n/2, one residual block of ``width`` channels there, a strided
    convolution to n/4, one block of ``2·width`` channels, global mean pooling and a
    linear head (on the pooled features and the σ embedding). Small on purpose: its
    gradient is taken at every sampler step.

    ``arch`` 2 (the default) pools the last block's output as it is; ``arch`` 1, the
    first shipped regressor's, normalised each map's features (GroupNorm + SiLU) before
    pooling. Trained alike (6000 steps, the same data), arch 2 was a little better on
    held-out phantoms (mean R² over the 12 features on clean latents 0.912 against
    0.894, RV volume 0.94 against 0.90; docs/guidance.md). Files without ``arch`` in
    their config are arch 1. Buffers:
    the feature mean and standard deviation (for :meth:`to_units`), the σ grid and the
    residual variance per feature on it (:meth:`residual_var`).
    """

    def __init__(
        self,
        latent_channels: int = 3,
        width: int = 32,
        sigma_data: float = 0.5,
        p_mean: float = 1.0,
        p_std: float = 1.2,
        n_features: int = len(anatomy.MORPHOLOGY_COLUMNS),
        arch: int = 2,
    ):
        super().__init__()
        if arch not in (1, 2):
            raise ValueError(f"regressor arch must be 1 or 2, not {arch!r}")
        self.config = {
            "latent_channels": int(latent_channels),
            "width": int(width),
            "sigma_data": float(sigma_data),
            "p_mean": float(p_mean),
            "p_std": float(p_std),
            "n_features": int(n_features),
            "arch": int(arch),
        }
        w, emb = int(width), 64
        self.embed = nn.Sequential(nn.Linear(4, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.stem = nn.Conv3d(latent_channels, w, 3, stride=2, padding=1)
        self.block1 = _Block(w, emb)
        self.down = nn.Conv3d(w, 2 * w, 3, stride=2, padding=1)
        self.block2 = _Block(2 * w, emb)
        # arch 1 only; kept as a module so that arch-1 files load.
        self.norm = nn.GroupNorm(_groups(2 * w), 2 * w) if arch == 1 else None
        self.head = nn.Linear(2 * w + emb, n_features)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.register_buffer("sigma_grid", torch.tensor([1.0]))
        self.register_buffer("residual_variance", torch.ones(1, n_features))

    # ------------------------------------------------------------------------------
    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        """ln σ / 4, with σ clamped to the training distribution's P_mean ± 3·P_std."""
        lo = self.config["p_mean"] - 3 * self.config["p_std"]
        hi = self.config["p_mean"] + 3 * self.config["p_std"]
        return sigma.log().clamp(lo, hi) / 4

    def forward(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        z = z.to(torch.float32)
        s = torch.as_tensor(sigma, dtype=torch.float32, device=z.device).reshape(-1)
        s = s.expand(z.shape[0]) if s.numel() == 1 else s
        sd = self.config["sigma_data"]
        c_in = (1 / (s**2 + sd**2).sqrt()).reshape(-1, 1, 1, 1, 1)
        c = self.c_noise(s)[:, None]
        e = self.embed(torch.cat([c, c**2, torch.sin(math.pi * c), torch.cos(math.pi * c)], 1))
        h = self.stem(c_in * z)
        h = self.down(self.block1(h, e))
        h = self.block2(h, e)
        if self.norm is not None:
            h = torch.nn.functional.silu(self.norm(h))
        return self.head(torch.cat([h.mean((2, 3, 4)), e], 1))

    # ------------------------------------------------------------------------------
    def to_units(self, standardised: torch.Tensor) -> torch.Tensor:
        """Standardised features back to mL and mm."""
        return standardised * self.feature_std + self.feature_mean

    def to_standard(self, features: torch.Tensor) -> torch.Tensor:
        """Features in mL and mm to the regressor's standardised units."""
        return (features - self.feature_mean) / self.feature_std

    def residual_var(self, sigma: float) -> torch.Tensor:
        """Residual variance (12,) of the standardised prediction at σ: linear in ln σ
        between the calibration grid's points, constant beyond its ends."""
        grid = self.sigma_grid.double().log()
        table = self.residual_variance.double()
        if len(grid) == 1:
            return table[0]
        x = math.log(max(float(sigma), 1e-12))
        j = int(torch.searchsorted(grid, torch.tensor(x, dtype=torch.float64)))
        if j <= 0:
            return table[0]
        if j >= len(grid):
            return table[-1]
        t = (x - float(grid[j - 1])) / float(grid[j] - grid[j - 1])
        return (1 - t) * table[j - 1] + t * table[j]


def regressor_path(checkpoint: str | os.PathLike | None) -> Path:
    """``regressor.safetensors`` of a checkpoint folder (or the path itself if a file)."""
    from .ldm import shipped_checkpoint

    folder = Path(checkpoint) if checkpoint is not None else shipped_checkpoint()
    return folder if folder.suffix == ".safetensors" else folder / REGRESSOR_FILE


def save_regressor(path: str | os.PathLike, net: MorphologyRegressor, meta: dict[str, Any]) -> Path:
    """Write the regressor's weights (fp16, buffers fp32) and its JSON record."""
    buffers = {name for name, _ in net.named_buffers()}
    tensors = {k: v.float() if k in buffers else v.half() for k, v in net.state_dict().items()}
    record = {"kind": "regressor", "config": net.config, **meta}
    return save_tensors(path, tensors, record)


def load_regressor(
    path: str | os.PathLike, expect_vae_sha256: str | None = None
) -> tuple[MorphologyRegressor, dict[str, Any], str]:
    """Load a regressor file; returns the net (eval, float32), its record and file hash.

    ``expect_vae_sha256``: the VAE the model uses; a regressor trained on another VAE's
    latents is refused (its features would mean nothing there).
    """
    path = Path(path)
    tensors, meta = load_tensors(path)
    if meta.get("kind") != "regressor":
        raise CheckpointError(f"{path}: not a morphology regressor (kind {meta.get('kind')!r})")
    if expect_vae_sha256 is not None and meta.get("vae_sha256") not in (None, expect_vae_sha256):
        raise CheckpointError(
            f"{path}: the regressor was trained on the latents of another VAE "
            f"({str(meta.get('vae_sha256'))[:12]}, the model's is {expect_vae_sha256[:12]}); "
            "train one for this checkpoint with `siblings train regressor`"
        )
    net = MorphologyRegressor(**{"arch": 1, **meta["config"]})
    for k in ("sigma_grid", "residual_variance"):
        getattr(net, k).resize_(tensors[k].shape)
    try:
        net.load_state_dict({k: v.float() for k, v in tensors.items()})
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit the regressor's config ({exc})"
        ) from None
    return net.eval().requires_grad_(False), meta, file_hash(path)


def feature_array(features: list[dict[str, float]]) -> np.ndarray:
    """``(n, 12)`` array of morphology dicts in :data:`MORPHOLOGY_COLUMNS` order."""
    return np.array([[f[c] for c in anatomy.MORPHOLOGY_COLUMNS] for f in features], np.float64)


@torch.no_grad()
def noisy_predictions(
    net: MorphologyRegressor,
    latents: torch.Tensor,
    sigma: float,
    seed: int = 0,
    draws: int = 1,
    batch: int = 64,
) -> np.ndarray:
    """Predictions in mL and mm ``(draws, n, 12)`` for scaled clean latents noised to σ.

    Draw ``d``'s noise comes from generator ``(seed, d)`` alone, so the figures repeat.
    """
    from ..runtime import step_generator

    out = []
    for d in range(draws):
        g = step_generator(seed, d, 7)
        noise = torch.randn(latents.shape, generator=g, dtype=torch.float32)
        zs = latents.float() + float(sigma) * noise
        pred = [
            net.to_units(net(zs[i : i + batch], torch.full((len(zs[i : i + batch]),), sigma)))
            for i in range(0, len(zs), batch)
        ]
        out.append(torch.cat(pred).double().numpy())
    return np.stack(out)


def accuracy(
    net: MorphologyRegressor,
    latents: torch.Tensor,
    features: np.ndarray,
    sigmas: tuple[float, ...] = (0.002, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0),
    seed: int = 0,
    draws: int = 4,
) -> dict[str, dict[str, dict[str, float]]]:
    """R² and mean absolute error (mL, mm) per feature at each σ.

    ``{f"{σ:g}": {column: {"r2": …, "mae": …}}}`` over ``draws`` noise draws of each
    latent; R² = 1 − SSE/SST against the features' own mean (0: no better than the mean).
    """
    features = np.asarray(features, np.float64)
    report: dict[str, dict[str, dict[str, float]]] = {}
    for sigma in sigmas:
        pred = noisy_predictions(net, latents, sigma, seed, draws)
        err = pred - features[None]
        sst = ((features - features.mean(0)) ** 2).sum(0) * draws
        r2 = 1 - (err**2).sum((0, 1)) / np.maximum(sst, 1e-12)
        mae = np.abs(err).mean((0, 1))
        report[f"{sigma:g}"] = {
            c: {"r2": round(float(r2[j]), 4), "mae": round(float(mae[j]), 3)}
            for j, c in enumerate(anatomy.MORPHOLOGY_COLUMNS)
        }
    return report


__all__ = [
    "REGRESSOR_FILE",
    "MorphologyRegressor",
    "accuracy",
    "feature_array",
    "load_regressor",
    "noisy_predictions",
    "regressor_path",
    "save_regressor",
]
