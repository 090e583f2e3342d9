"""Model presets: network sizes, grid and training hyper-parameters, as data.

``paper`` is the paper's configuration (SPEC §3): 128³ at 1.4 mm, VAE and denoiser
channels (64, 128, 192), latent 32³, Adam learning rates 1e-4 and 2.5e-5, the
paper's augmentation. It needs a GPU.

``tiny`` keeps the same 179.2 mm field of view on a 64³ grid (2.8 mm), with narrow
networks, so it trains on two CPU cores in about an hour. Two of its settings differ
from the paper on purpose, because it sees ~100x fewer optimisation steps: larger
learning rates, and milder augmentation (prepared twins are already aligned by SPEC §2,
so the paper's 0-180° rotations mostly teach the VAE poses it will never be given).

Every field can be overridden: ``get_preset("tiny", ldm_lr=1e-4)`` or, on the command
line, ``--set ldm_lr=1e-4``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .. import anatomy
from ..errors import InputError


@dataclass(frozen=True)
class Preset:
    name: str
    size: int
    # VAE (MONAI AutoencoderKL, SPEC §3): len(channels) - 1 downsamplings.
    vae_channels: tuple[int, ...]
    vae_res_blocks: int = 2
    vae_norm_groups: int = 16
    latent_channels: int = 3
    kl_weight: float = 1e-6
    # How the KL is normalised (docs/model.md): "sum" = summed over latent voxels and
    # channels, mean over the batch (the paper / MONAI tutorials); "mean" = mean over
    # latent elements, the same normalisation as the MSE.
    kl_norm: str = "sum"
    # Cross-entropy on the decoder's logits beside the MSE (0 = the paper's MSE alone).
    vae_ce_weight: float = 0.0
    # The last fraction of the steps decodes the posterior mean (no sampling), as the
    # VAE is used at inference; 0 = the paper (always z = mu + sigma * eps).
    vae_mu_fraction: float = 0.0
    # EMA of the VAE weights (0 = none, the paper); the saved weights are the EMA.
    vae_ema_decay: float = 0.0
    vae_lr: float = 1e-4
    vae_batch: int = 2
    vae_steps: int = 100_000
    # Paper appendix A augmentation (scale range, max rotation deg, max shift voxels, prob).
    aug_scale: tuple[float, float] = (0.5, 1.5)
    aug_rotation_deg: float = 180.0
    aug_translation_vox: float = 20.0
    aug_p: float = 1.0
    # Label-safe elastic deformation (control-point std in voxels; 0 = none, the paper).
    aug_elastic_vox: float = 0.0
    # Denoiser (MONAI DiffusionModelUNet) and EDM (SPEC §3).
    unet_channels: tuple[int, ...] = (64, 128, 192)
    unet_attention: tuple[bool, ...] = (False, True, True)
    unet_res_blocks: int = 2
    unet_head_channels: int = 32
    unet_norm_groups: int = 32
    ldm_lr: float = 2.5e-5
    ldm_batch: int = 8
    ldm_steps: int = 200_000
    ema_decay: float = 0.999
    sigma_data: float = 0.5
    p_mean: float = 1.0
    p_std: float = 1.2
    # Sampling and editing (SPEC §3-4).
    steps: int = 20
    sigma_min: float = 2e-3
    sigma_max: float = 80.0
    rho: float = 3.0
    inpaint_dilations: int = 2
    # Learning-rate schedule: constant, then a cosine from the base rate down to
    # ``lr_final`` × base over the last (1 - lr_decay_start) of the steps (1.0: constant).
    lr_decay_start: float = 1.0
    lr_final: float = 0.1
    extra: dict = field(default_factory=dict)

    @property
    def voxel_mm(self) -> float:
        return anatomy.voxel_size_mm(self.size)

    @property
    def latent_size(self) -> int:
        return self.size // 2 ** (len(self.vae_channels) - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        size=128,
        vae_channels=(64, 128, 192),
        vae_norm_groups=32,
        unet_channels=(64, 128, 192),
        unet_attention=(False, True, True),
        inpaint_dilations=2,  # 5.6 mm latent voxels: ~11 mm
    ),
    "tiny": Preset(
        name="tiny",
        size=64,
        vae_channels=(16, 32, 64),
        vae_norm_groups=16,
        vae_lr=3e-4,
        vae_batch=2,
        vae_steps=2000,
        # The VAE recipe of issue 14 (docs/model.md): KL averaged per latent element
        # like the MSE, decode the posterior mean for the last quarter, an EMA, and a
        # mild elastic deformation so the VAE meets hearts it never saw.
        kl_norm="mean",
        kl_weight=1e-4,
        vae_mu_fraction=0.25,
        vae_ema_decay=0.99,
        aug_elastic_vox=1.5,
        aug_scale=(0.85, 1.15),
        aug_rotation_deg=15.0,
        aug_translation_vox=4.0,
        aug_p=0.8,
        unet_channels=(32, 64, 96),
        unet_attention=(False, False, True),
        unet_res_blocks=2,
        unet_head_channels=32,
        unet_norm_groups=32,
        ldm_lr=2e-4,
        ldm_batch=16,
        ldm_steps=4000,
        ema_decay=0.998,
        inpaint_dilations=1,  # 11.2 mm latent voxels: ~11 mm
        lr_decay_start=0.5,  # few steps: anneal the second half instead of plateauing
    ),
}


def get_preset(name: str, **overrides) -> Preset:
    """The preset called ``name`` with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if overrides:
        fields = {f.name: f for f in dataclasses.fields(Preset)}
        bad = [k for k in overrides if k not in fields]
        if bad:
            raise InputError(
                f"unknown preset field(s) {', '.join(bad)}; valid: {', '.join(fields)}"
            )
        preset = dataclasses.replace(preset, **overrides)
    return preset


def preset_from_dict(d: dict) -> Preset:
    """Rebuild a preset stored in a checkpoint's JSON config."""
    d = dict(d)
    for k in ("vae_channels", "unet_channels", "unet_attention", "aug_scale"):
        if k in d:
            d[k] = tuple(d[k])
    return Preset(**d)


def parse_overrides(items: list[str] | None) -> dict:
    """``["ldm_lr=1e-4", "vae_steps=10"]`` → typed overrides for :func:`get_preset`."""
    out: dict = {}
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    for item in items or []:
        if "=" not in item:
            raise InputError(
                f"{{overrides}} expects FIELD=VALUE, got {item!r}", arguments=("overrides",)
            )
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in fields:
            raise InputError(f"unknown preset field {key!r}; valid: {', '.join(fields)}")
        if key == "name":
            raise InputError(
                "name=... is not an override in {overrides}; choose the preset with {preset}",
                arguments={"overrides": "overrides", "preset": "get_preset(name)"},
            )
        try:
            default = getattr(PRESETS["tiny"], key)
            if isinstance(default, bool):
                out[key] = value.lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                out[key] = int(value)
            elif isinstance(default, float):
                out[key] = float(value)
            elif isinstance(default, tuple):
                parts = [p for p in value.strip("()").split(",") if p.strip()]
                conv = (
                    (lambda s: s.strip().lower() in ("1", "true"))
                    if isinstance(default[0], bool)
                    else type(default[0])
                )
                out[key] = tuple(conv(p) for p in parts)
            else:
                out[key] = value
        except ValueError as exc:  # int(), float(): a value that is no number
            raise InputError(
                f"{{overrides}} {key}={value!r}: {exc}", arguments=("overrides",)
            ) from None
    return out
