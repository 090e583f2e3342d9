"""Network builders: MONAI ``AutoencoderKL`` and ``DiffusionModelUNet`` in 3D (SPEC §3)."""

from __future__ import annotations

import torch
from torch import nn

from .. import anatomy
from .presets import Preset


class _Conv3dBf16Guard(nn.Conv3d):
    """``nn.Conv3d`` that leaves CPU bf16 autocast where oneDNN gets it wrong.

    With torch 2.13's oneDNN 3.12 on a CPU with AVX512-BF16 (an AMD EPYC, no AMX), the
    weight gradient of a 3×3×3 convolution under bf16 autocast is garbage (relative error
    ≈ 1, sometimes 1e36 or NaN) whenever the input's first spatial dimension is 2; the
    forward pass and the input gradient are right. The micro preset's U-Net reaches 2³
    at its bottom level and trained to NaN in two steps. Such a convolution runs in fp32
    here (the tensors are tiny); every other one keeps bf16. State-dict keys are those of
    ``nn.Conv3d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and min(x.shape[2:]) <= 2
            and max(self.kernel_size) > 1
        ):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def guard_bf16_convolutions(module: nn.Module) -> nn.Module:
    """Make every ``nn.Conv3d`` of ``module`` a :class:`_Conv3dBf16Guard` (in place)."""
    for m in module.modules():
        if type(m) is nn.Conv3d:
            m.__class__ = _Conv3dBf16Guard
    return module


def build_vae(preset: Preset) -> nn.Module:
    """3D KL autoencoder: one-hot ``(B, 7, S, S, S)`` ↔ latent ``(B, 3, S/4, …)``.

    Two residual blocks per level and no attention anywhere, as SPEC §3 asks (MONAI's
    defaults differ, so every argument is set).
    """
    from monai.networks.nets import AutoencoderKL

    n = len(preset.vae_channels)
    vae = AutoencoderKL(
        spatial_dims=3,
        in_channels=anatomy.NUM_LABELS,
        out_channels=anatomy.NUM_LABELS,
        channels=tuple(preset.vae_channels),
        num_res_blocks=(preset.vae_res_blocks,) * n,
        attention_levels=(False,) * n,
        latent_channels=preset.latent_channels,
        norm_num_groups=preset.vae_norm_groups,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )
    return guard_bf16_convolutions(vae)


class UNetF(nn.Module):
    """F_θ(x; c_noise): MONAI's DiffusionModelUNet fed the EDM noise conditioning."""

    def __init__(self, preset: Preset):
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        n = len(preset.unet_channels)
        self.net = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=preset.latent_channels,
            out_channels=preset.latent_channels,
            channels=tuple(preset.unet_channels),
            attention_levels=tuple(preset.unet_attention),
            num_res_blocks=(preset.unet_res_blocks,) * n,
            num_head_channels=preset.unet_head_channels,
            norm_num_groups=preset.unet_norm_groups,
        )
        guard_bf16_convolutions(self.net)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.net(x, timesteps=c_noise.reshape(-1).expand(x.shape[0]))


def build_denoiser_net(preset: Preset) -> nn.Module:
    return UNetF(preset)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
