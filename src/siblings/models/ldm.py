"""The trained latent diffusion model as one object: encode, decode, denoise, sample.

A checkpoint is a folder holding ``vae.safetensors``/``vae.json`` and
``ldm.safetensors``/``ldm.json`` (see :mod:`siblings.train`). Without a path, the
weights shipped inside the package are used (``siblings/weights/tiny``).

Every sample's starting noise depends only on ``(seed, index)``, so a cohort is the
same whatever the batch size or the number of processes it is split over.

Example
-------
>>> from siblings.models.ldm import LatentDiffusionModel
>>> model = LatentDiffusionModel.load()                 # shipped tiny weights  # doctest: +SKIP
>>> labels = model.sample(4, steps=20, seed=0)          # (4, 64, 64, 64) uint8  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import anatomy
from ..checkpoint import CheckpointError, file_hash, load_tensors
from ..diffusion import edit
from ..diffusion.edit import Guide, start_step
from ..diffusion.edm import EDMPrecond, heun_sample, karras_sigmas
from ..diffusion.inversion import (
    DEFAULT_INVERT_LR,
    DEFAULT_INVERT_STEPS,
    InversionRecord,
    invert_latent,
)
from ..errors import InputError
from ..io import centred_affine, from_one_hot
from ..metrics.overlap import kept_tissue_dice
from ..runtime import (
    FRESH_PASTE_STREAM,
    PASTE_STREAM,
    START_STREAM,
    autocast,
    churn_generators,
    noise_for,
    pick_device,
)
from .networks import build_denoiser_net, build_vae
from .presets import Preset, preset_from_dict
from .vae import encode_labels, load_weights


def shipped_checkpoint(name: str = "tiny") -> Path:
    """Folder of the weights shipped in the package."""
    return Path(str(resources.files("siblings") / "weights" / name))


def _label_tensor(labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Integer label maps as a ``(B, D, H, W)`` tensor."""
    t = torch.as_tensor(np.asarray(labels)) if isinstance(labels, np.ndarray) else labels
    return t[None] if t.ndim == 3 else t


class LatentDiffusionModel:
    """VAE + EMA denoiser + latent scale factor, on one device."""

    def __init__(
        self,
        vae: torch.nn.Module,
        denoiser: EDMPrecond,
        preset: Preset,
        scale_factor: float,
        device: torch.device,
        checkpoint: Path | None = None,
        checkpoint_sha256: str = "",
        amp: bool = False,
    ):
        self.vae = vae.eval()
        self.denoiser = denoiser.eval()
        self.preset = preset
        self.scale_factor = float(scale_factor)
        self.device = device
        self.checkpoint = checkpoint
        self.checkpoint_sha256 = checkpoint_sha256
        self.amp = amp

    # -----------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike | None = None,
        device: str | None = None,
        preset: str | None = None,
        amp: bool = False,
    ) -> LatentDiffusionModel:
        """Load a checkpoint folder (default: the shipped ``tiny`` weights).

        ``preset``, if given, must match the checkpoint's preset (clear error otherwise).
        ``amp`` runs the networks under bf16 autocast (about 2x faster on this CPU,
        benchmarks/bench_bf16.py); it is off by default so that shipped results are
        computed in fp32.
        """
        folder = Path(checkpoint) if checkpoint is not None else shipped_checkpoint()
        if folder.is_file():
            folder = folder.parent
        vae_path, ldm_path = folder / "vae.safetensors", folder / "ldm.safetensors"
        for p in (vae_path, ldm_path):
            if not p.exists():
                hint = (
                    " (the shipped weights are missing from this install)"
                    if checkpoint is None
                    else ""
                )
                raise CheckpointError(
                    f"{p}: no such file; a checkpoint folder holds vae.safetensors and ldm.safetensors{hint}"
                )
        dev = pick_device(device)
        vae_t, vae_meta = load_tensors(vae_path)
        ldm_t, ldm_meta = load_tensors(ldm_path)
        if vae_meta.get("kind") != "vae" or ldm_meta.get("kind") != "ldm":
            raise CheckpointError(
                f"{folder}: vae.json/ldm.json do not describe a VAE and a denoiser"
            )
        vae_hash = file_hash(vae_path)
        if ldm_meta.get("vae_sha256") not in (None, vae_hash):
            raise CheckpointError(
                f"{ldm_path}: the denoiser was trained on another VAE than {vae_path}"
            )
        p = preset_from_dict(ldm_meta["preset"])
        if preset is not None and preset != p.name:
            raise CheckpointError(f"{folder}: checkpoint is for preset {p.name!r}, not {preset!r}")
        vae = load_weights(build_vae(p), vae_t, p, folder)
        net = EDMPrecond(build_denoiser_net(p), sigma_data=p.sigma_data)
        net = load_weights(net, ldm_t, p, folder)
        h = hashlib.sha256((vae_hash + file_hash(ldm_path)).encode()).hexdigest()
        return cls(vae.to(dev), net.to(dev), p, ldm_meta["scale_factor"], dev, folder, h, amp)

    # -----------------------------------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """World affine of the model grid (RAS+, centred, preset voxel size)."""
        return centred_affine(self.preset.size)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        n = self.preset.latent_size
        return (self.preset.latent_channels, n, n, n)

    def sigmas(self, steps: int) -> torch.Tensor:
        p = self.preset
        return karras_sigmas(steps, p.sigma_min, p.sigma_max, p.rho)

    def encode(
        self,
        labels: torch.Tensor | np.ndarray,
        batch: int = 4,
        invert_steps: int = 0,
        invert_lr: float = DEFAULT_INVERT_LR,
    ) -> torch.Tensor:
        """Scaled latents (float32, CPU) of integer label maps ``(B, D, H, W)``.

        ``invert_steps`` = 0: the posterior means (the paper); more: each mean refined
        by :meth:`invert` with that step budget.
        """
        if invert_steps:
            return self.invert(labels, invert_steps, invert_lr)[0]
        return (
            encode_labels(self.vae, _label_tensor(labels), self.device, batch) * self.scale_factor
        )

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder outputs ``(B, 7, D, H, W)`` of scaled latents, read as logits
        (differentiable in ``z``; under the model's autocast, so possibly bf16)."""
        with autocast(self.device, self.amp):
            return self.vae.decode(z.to(self.device, torch.float32) / self.scale_factor)

    def invert(
        self,
        labels: torch.Tensor | np.ndarray,
        steps: int = DEFAULT_INVERT_STEPS,
        lr: float = DEFAULT_INVERT_LR,
        **options: Any,
    ) -> tuple[torch.Tensor, list[InversionRecord]]:
        """Latents that reconstruct ``labels`` ``(B, D, H, W)`` as well as the decoder can.

        Each map's posterior mean is refined on its own by
        :func:`siblings.diffusion.inversion.invert_latent` (at most ``steps`` Adam steps
        on the soft Dice of the decoded logits against the map, early stop; ``options``
        go to it), in the scaled latent space the denoiser works in. The latent kept is
        the one whose round trip has the highest mean Dice over the six tissues
        (:func:`siblings.metrics.overlap.kept_tissue_dice`), so inversion never lowers
        it. Returns the scaled latents (float32, CPU) and one
        :class:`~siblings.diffusion.inversion.InversionRecord` per map (its scores are
        that mean Dice). 0 steps gives :meth:`encode`'s posterior means exactly.
        Deterministic: same map, same latent.
        """
        labels = _label_tensor(labels)
        out, records = [], []
        for i in range(len(labels)):  # one at a time: batched convolutions round otherwise
            mu = self.encode(labels[i : i + 1]).to(self.device)
            target = labels[i : i + 1].to(self.device).long()
            twin = labels[i].cpu().numpy()

            def round_trip_dice(logits: torch.Tensor, twin: np.ndarray = twin) -> float:
                recon = from_one_hot(logits.float())[0].cpu().numpy()
                return float(np.mean(list(kept_tissue_dice(twin, recon, anatomy.TISSUES).values())))

            z, rec = invert_latent(
                self.decode_logits, mu, target, steps, lr, score=round_trip_dice, **options
            )
            out.append(z.float().cpu())
            records.append(rec)
        return torch.cat(out), records

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch: int = 4) -> np.ndarray:
        """Label maps ``(B, D, H, W)`` uint8 from scaled latents, by argmax (SPEC §1)."""
        out = []
        for i in range(0, len(z), batch):
            zi = (z[i : i + batch].to(self.device, torch.float32)) / self.scale_factor
            with autocast(self.device, self.amp):
                logits = self.vae.decode(zi)
            out.append(from_one_hot(logits.float()).cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def denoise(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """D(z; σ) of the EMA denoiser; the state keeps its dtype and device."""
        with autocast(self.device, self.amp):
            d = self.denoiser(
                z.to(self.device, torch.float32),
                torch.as_tensor(sigma, dtype=torch.float32, device=self.device),
            )
        return d.float().to(z.device, z.dtype)

    def sample_latents(
        self,
        indices: list[int] | range,
        steps: int = 20,
        seed: int = 0,
        churn: float = 0.0,
        guide: Guide | None = None,
    ) -> torch.Tensor:
        """Unconditional latents for sample ``indices`` (Heun, N steps, 2N−1 calls).

        Sample ``i`` depends only on ``(seed, i)``, with or without ``churn`` (EDM's
        stochastic sampler; 0, the default, is the deterministic Algorithm 1).
        ``guide``: classifier guidance added to every denoiser output
        (:meth:`siblings.models.guided.Guidance.guide`).
        """
        sig = self.sigmas(steps)
        z = noise_for(seed, indices, self.latent_shape).to(self.device, torch.float64) * sig[0]
        # Churn noise: one generator per sample index, as the starting noise.
        gen = churn_generators(seed, indices) if churn > 0 else None
        return heun_sample(self.denoise, z, sig, churn=churn, generator=gen, guide=guide)

    def perturb_latents(
        self,
        z: torch.Tensor,
        indices: list[int] | range,
        psi: float,
        steps: int = 20,
        seed: int = 0,
        guide: Guide | None = None,
    ) -> torch.Tensor:
        """SDEdit latents (:func:`siblings.diffusion.edit.perturb`) of siblings ``indices``.

        ``z``: the seed latents ``(1 or len(indices), C, n, n, n)`` (scaled). Sibling
        ``i``'s noise is stream :data:`~siblings.runtime.START_STREAM` of ``(seed, i)``,
        the starting noise of unconditional sample ``i``.
        """
        sig = self.sigmas(steps)[start_step(psi, steps) :]
        eps = noise_for(seed, indices, self.latent_shape, START_STREAM).to(torch.float64)
        z = z.to(torch.float64)
        return edit.perturb(self.denoise, z.to(self.device), eps.to(self.device), sig, guide=guide)

    def inpaint_latents(
        self,
        z: torch.Tensor,
        keep: np.ndarray,
        indices: list[int] | range,
        steps: int = 20,
        seed: int = 0,
        fresh_noise: bool = False,
        guide: Guide | None = None,
    ) -> torch.Tensor:
        """Inpainting latents (:func:`siblings.diffusion.edit.inpaint`, eq. 5) of siblings
        ``indices``.

        ``z``: the seed latents ``(1 or B, C, n, n, n)``; ``keep``: latent keep masks
        ``(n, n, n)`` or ``(1 or B, n, n, n)``. Sibling ``i``'s noise streams of
        ``(seed, i)``: :data:`~siblings.runtime.START_STREAM` (starting noise),
        :data:`~siblings.runtime.PASTE_STREAM` (the pasted ε) and, with ``fresh_noise``,
        ``FRESH_PASTE_STREAM + k`` for the k-th paste.
        """
        dev, shape = self.device, self.latent_shape
        m = torch.from_numpy(np.asarray(keep))
        m = (m[None] if m.ndim == 3 else m).to(dev, torch.float64)[:, None]
        eps = noise_for(seed, indices, shape, PASTE_STREAM).to(dev, torch.float64)
        fresh = None
        if fresh_noise:

            def fresh(k: int) -> torch.Tensor:
                return noise_for(seed, indices, shape, FRESH_PASTE_STREAM + k)

        start = noise_for(seed, indices, shape, START_STREAM).to(dev, torch.float64)
        z = z.to(torch.float64).to(dev)
        return edit.inpaint(
            self.denoise, z, m, start, eps, self.sigmas(steps), fresh_paste_noise=fresh, guide=guide
        )

    def sample(
        self,
        n: int,
        steps: int = 20,
        seed: int = 0,
        batch: int = 8,
        start: int = 0,
        progress: bool = False,
        guide: Guide | None = None,
    ) -> np.ndarray:
        """``n`` unconditional label maps ``(n, S, S, S)`` uint8 for sample indices start…start+n−1
        (``guide``: classifier guidance, :meth:`sample_latents`)."""
        if n < 1:
            raise InputError(f"number of samples must be at least 1, got {n}")
        if steps < 1:
            raise InputError(f"number of steps must be at least 1, got {steps}")
        from tqdm.auto import tqdm

        out = []
        with tqdm(total=n, desc="sample", unit="map", disable=not progress) as bar:
            for b0 in range(start, start + n, batch):
                idx = range(b0, min(b0 + batch, start + n))
                out.append(self.decode(self.sample_latents(idx, steps, seed, guide=guide)))
                bar.update(len(idx))
        return np.concatenate(out)
