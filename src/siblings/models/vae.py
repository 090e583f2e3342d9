"""The trained VAE on its own: weights into networks, label maps into latents (SPEC §3).

This module owns the one way a checkpoint's tensors become a network
(:func:`load_weights`, with the error that says which preset they do not fit), the one
way a ``vae.safetensors`` is loaded (:func:`load_vae`) and the one way label maps are
encoded to the VAE's posterior means (:func:`encode_labels`). Training
(:func:`siblings.train.train_ldm`) and the loaded model
(:class:`~siblings.models.ldm.LatentDiffusionModel`) both use them.

Example
-------
>>> from siblings.models.vae import encode_labels, load_vae
>>> vae, preset, meta = load_vae("runs/tiny/vae.safetensors")           # doctest: +SKIP
>>> mu = encode_labels(vae, labels, "cpu")       # (N, C, n, n, n) float32  # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch

from ..checkpoint import CheckpointError, load_tensors
from ..io import one_hot
from .networks import build_vae
from .presets import Preset, preset_from_dict


def load_weights(
    module: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    preset: Preset,
    where: str | os.PathLike,
) -> torch.nn.Module:
    """Load ``tensors`` (as float32) into ``module``, built for ``preset``.

    Raises
    ------
    CheckpointError
        ``where: weights do not fit preset …`` when names or shapes differ.
    """
    try:
        module.load_state_dict({k: v.float() for k, v in tensors.items()})
    except RuntimeError as exc:
        raise CheckpointError(
            f"{where}: weights do not fit preset {preset.name!r}: "
            f"{' '.join(str(exc).split())[:300]}"
        ) from None
    return module


def load_vae(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    preset: Preset | None = None,
) -> tuple[torch.nn.Module, Preset, dict]:
    """A trained VAE from ``vae.safetensors`` and its JSON config, in eval mode.

    ``preset``: build the network for this preset (default: the checkpoint's own).
    Returns ``(vae, preset, meta)``.
    """
    tensors, meta = load_tensors(path)
    if meta.get("kind") != "vae":
        raise CheckpointError(f"{path}: not a VAE checkpoint (kind={meta.get('kind')!r})")
    preset = preset or preset_from_dict(meta["preset"])
    vae = load_weights(build_vae(preset), tensors, preset, path)
    return vae.to(device).eval(), preset, meta


@torch.no_grad()
def encode_labels(
    vae: torch.nn.Module,
    labels: torch.Tensor,
    device: torch.device | str,
    batch: int = 4,
) -> torch.Tensor:
    """Posterior means μ of the VAE for integer label maps ``(N, D, H, W)``.

    Encoded ``batch`` maps at a time on ``device``; returns float32 on the CPU,
    unscaled (the model multiplies by its scale factor).
    """
    out = []
    for i in range(0, len(labels), batch):
        x = one_hot(labels[i : i + batch].to(device))
        mu, _ = vae.encode(x)
        out.append(mu.float().cpu())
    return torch.cat(out)


__all__ = ["encode_labels", "load_vae", "load_weights"]
