"""Training loops for the VAE and the EDM denoiser (SPEC §3), resumable and distributed.

Determinism: the batch indices, augmentation and noise of step ``t`` are drawn from a
generator seeded by ``(seed, t)``, never from a running RNG. Together with the saved
model, optimiser and EMA tensors, this makes an interrupted-and-resumed run identical
to an uninterrupted one.

Distributed data parallel: launched with ``torchrun --nproc_per_node=P``, every process
takes its share of the same global batch (gloo on CPU, NCCL on CUDA) and gradients are
averaged, so P processes compute the same run as one process with the global batch.

Files written into ``out``: ``vae.safetensors``/``vae.json`` or ``ldm.safetensors``/
``ldm.json`` (final weights), ``<kind>_log.jsonl`` (one line per logged step),
``<kind>_loss.png``. Resumable state goes to ``state_dir`` (default ``out/state``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .checkpoint import (
    CheckpointError,
    file_hash,
    flatten_optimizer,
    load_tensors,
    restore_optimizer,
    save_tensors,
)
from .data.dataset import LabelMapDataset, RandomAffineLabels
from .diffusion.edm import EDMLoss, EDMPrecond
from .errors import InputError
from .io import one_hot, write_text
from .models.networks import build_denoiser_net, build_vae
from .models.presets import Preset, preset_from_dict
from .models.vae import encode_labels, load_vae
from .runtime import autocast, pick_device, step_generator


# ---------------------------------------------------------------------------------
# Learning-rate schedule.
# ---------------------------------------------------------------------------------
def learning_rate(base: float, step: int, steps: int, preset: Preset) -> float:
    """The preset's schedule: ``base`` until ``lr_decay_start`` × steps, then a cosine
    down to ``lr_final`` × base at the last step. A function of the step alone, so a
    resumed run follows the same schedule."""
    start = preset.lr_decay_start * steps
    if step < start or steps - start < 1:
        return base
    t = (step - start) / max(1.0, steps - 1 - start)
    return base * (preset.lr_final + (1.0 - preset.lr_final) * 0.5 * (1.0 + math.cos(math.pi * t)))


def _set_lr(opt: torch.optim.Optimizer, base: float, step: int, steps: int, preset: Preset) -> None:
    for group in opt.param_groups:
        group["lr"] = learning_rate(base, step, steps, preset)


# ---------------------------------------------------------------------------------
# Distribution (devices, precision and generators: siblings.runtime).
# ---------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join a torchrun process group if one is configured (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size())


def _barrier(dist: DistInfo) -> None:
    if dist.world > 1:
        import torch.distributed

        torch.distributed.barrier()


def _shard(idx: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if idx.numel() % dist.world:
        raise InputError(f"batch {idx.numel()} does not split over {dist.world} processes")
    return idx[dist.rank :: dist.world]


# ---------------------------------------------------------------------------------
# Logging.
# ---------------------------------------------------------------------------------
class _Log:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines past ``step`` (they belong to the interrupted part of a run)."""
        if not (self.enabled and self.path.exists()):
            return
        keep = [
            ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
        ]
        write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def plot_loss(log_path: Path, png: Path, title: str) -> None:
    """Loss curve (raw and smoothed) from a JSONL training log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.exists():  # fewer steps than log_every: nothing logged
        return
    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln]
    if not rows:
        return
    steps = np.array([r["step"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in [k for k in rows[0] if k.startswith("loss")]:
        y = np.array([r[key] for r in rows])
        ax.plot(steps, y, alpha=0.3, lw=0.8)
        w = max(1, len(y) // 30)
        ax.plot(steps[w - 1 :], np.convolve(y, np.ones(w) / w, mode="valid"), label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


# ---------------------------------------------------------------------------------
# Shared loop machinery.
# ---------------------------------------------------------------------------------
def _state_tensors(model: torch.nn.Module, opt, ema: torch.nn.Module | None) -> dict:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_t, _ = flatten_optimizer(opt)
    tensors.update(opt_t)
    return tensors


def _restore(state_path: Path, model, opt, ema, expect: dict) -> int:
    tensors, meta = load_tensors(state_path)
    for key, value in expect.items():
        if meta.get(key) != value:
            raise CheckpointError(
                f"{state_path}: resume state has {key}={meta.get(key)!r}, this run asks for {value!r}; "
                "use another {out}/{state_dir} folder or {resume}",
                arguments={"out": "out", "state_dir": "state_dir", "resume": "resume=False"},
            )
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    restore_optimizer(opt, tensors, meta["optimizer"])
    return int(meta["step"])


def _save_state(state_path: Path, model, opt, ema, step: int, identity: dict) -> None:
    tensors = _state_tensors(model, opt, ema)
    _, opt_meta = flatten_optimizer(opt)
    save_tensors(state_path, tensors, {**identity, "step": step, "optimizer": opt_meta})


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _progress(total: int, start: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=start, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True
    )


# ---------------------------------------------------------------------------------
# Fine-tuning: start from existing weights.
# ---------------------------------------------------------------------------------
_SHAPE_FIELDS = (
    "size",
    "vae_channels",
    "vae_res_blocks",
    "vae_norm_groups",
    "latent_channels",
    "unet_channels",
    "unet_attention",
    "unet_res_blocks",
    "unet_head_channels",
    "unet_norm_groups",
)


def resolve_init(init: str | os.PathLike, kind: str, preset: Preset) -> Path:
    """The weights file that ``init`` names for stage ``kind`` ("vae" or "ldm").

    ``init`` is ``"shipped"`` (the weights shipped in the package for ``preset``), a
    checkpoint folder holding ``<kind>.safetensors``, or that file itself.
    """
    if str(init) == "shipped":
        from importlib import resources

        path = (
            Path(str(resources.files("siblings") / "weights" / preset.name)) / f"{kind}.safetensors"
        )
        if not path.exists():
            raise CheckpointError(f"no shipped {kind} weights for preset {preset.name!r} ({path})")
        return path
    path = Path(init)
    if path.is_dir():
        path = path / f"{kind}.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path}: initial {kind} weights not found")
    return path


def load_init(path: Path, kind: str, preset: Preset) -> dict[str, torch.Tensor]:
    """Weights of ``path`` for a fine-tuning run of ``preset``, refused when they were
    trained with another preset or network shape."""
    tensors, meta = load_tensors(path)
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path}: not a {kind} checkpoint (kind={meta.get('kind')!r})")
    theirs = preset_from_dict(meta["preset"])
    if theirs.name != preset.name:
        raise CheckpointError(
            f"{path}: weights of preset {theirs.name!r}, this run trains preset {preset.name!r}"
        )
    bad = [f for f in _SHAPE_FIELDS if getattr(theirs, f) != getattr(preset, f)]
    if bad:
        raise CheckpointError(f"{path}: network shape differs from this run's in {', '.join(bad)}")
    return {k: v.float() for k, v in tensors.items()}


# ---------------------------------------------------------------------------------
# VAE.
# ---------------------------------------------------------------------------------
def vae_loss(
    model,
    x: torch.Tensor,
    kl_weight: float,
    *,
    kl_norm: str = "sum",
    ce_weight: float = 0.0,
    sample: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """VAE objective; returns ``(loss, mse, kl, ce)``.

    ``loss = MSE(one-hot, reconstruction) + kl_weight·KL + ce_weight·CE``. The MSE is the
    mean over every voxel and channel. ``kl_norm="sum"``: KL summed over the latent and
    averaged over the batch (the paper, MONAI's tutorials); ``"mean"``: KL averaged over
    latent elements, the MSE's normalisation (docs/model.md measures both). ``sample``:
    decode ``μ + σ·ε`` (True, the paper) or the posterior mean ``μ`` (as at inference).
    ``ce`` is the cross-entropy of the decoder's outputs read as logits (0 when unused).
    """
    if kl_norm not in ("sum", "mean"):
        raise InputError(f"kl_norm must be 'sum' or 'mean', got {kl_norm!r}")
    if sample:
        rec, mu, sigma = model(x)
    else:
        net = _unwrap(model)
        mu, sigma = net.encode(x)
        rec = net.decode(mu)
    rec = rec.float()
    mse = F.mse_loss(rec, x)
    mu, sigma = mu.float(), sigma.float()
    kl_elem = 0.5 * (mu**2 + sigma**2 - torch.log(sigma**2 + 1e-12) - 1)
    kl = kl_elem.flatten(1).sum(1).mean() if kl_norm == "sum" else kl_elem.mean()
    loss = mse + kl_weight * kl
    ce = torch.zeros((), device=x.device)
    if ce_weight > 0:
        ce = F.cross_entropy(rec, x.argmax(1))
        loss = loss + ce_weight * ce
    return loss, mse, kl, ce


def _global_batch_sampling(batch: int, dist: DistInfo):
    """MONAI's ``z = μ + ε·σ`` with ε drawn for the whole global batch, then this
    process's share: P processes then use the noise that one process would."""

    def sampling(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
        shape = (batch, *z_sigma.shape[1:])
        eps = torch.randn(shape, dtype=z_sigma.dtype, device=z_sigma.device)
        return z_mu + eps[dist.rank :: dist.world] * z_sigma

    return sampling


def train_vae(
    data: str | os.PathLike,
    out: str | os.PathLike,
    preset: Preset,
    *,
    steps: int | None = None,
    batch: int | None = None,
    seed: int = 0,
    device: str | None = None,
    amp: bool = True,
    state_dir: str | os.PathLike | None = None,
    resume: bool = True,
    ckpt_every: int = 100,
    log_every: int = 10,
    stop_after: int | None = None,
    progress: bool = True,
    init: str | os.PathLike | None = None,
    lr: float | None = None,
) -> Path:
    """Train the VAE on the label maps in ``data``; returns the path of ``vae.safetensors``.

    ``init`` fine-tunes: the run starts from those weights (``"shipped"``, a checkpoint
    folder or a ``vae.safetensors``; same preset and network shape) with a fresh
    optimiser, at learning rate ``lr`` (default: the preset's ``vae_lr``).
    ``stop_after`` ends the process after that many steps of this invocation (used to
    test resumption); the state is saved first.
    """
    dev = pick_device(device)
    dist = init_distributed(dev)
    out = Path(out)
    state_dir = Path(state_dir) if state_dir else out / "state"
    steps = preset.vae_steps if steps is None else steps
    batch = preset.vae_batch if batch is None else batch
    ds = LabelMapDataset(data, size=preset.size)  # bad data fails before anything is written
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
    aug = RandomAffineLabels(
        scale=preset.aug_scale,
        rotation_deg=preset.aug_rotation_deg,
        translation_vox=preset.aug_translation_vox,
        p=preset.aug_p,
        elastic_vox=preset.aug_elastic_vox,
    )
    base_lr = preset.vae_lr if lr is None else float(lr)
    init_path = resolve_init(init, "vae", preset) if init is not None else None
    init_t = load_init(init_path, "vae", preset) if init_path is not None else None
    torch.manual_seed(seed)
    model = build_vae(preset).to(dev)
    if init_t is not None:
        model.load_state_dict(init_t)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if preset.vae_ema_decay > 0 else None
    opt = torch.optim.Adam(model.parameters(), lr=base_lr)
    identity = {
        "kind": "vae_state",
        "preset": preset.name,
        "seed": seed,
        "batch": batch,
        "size": preset.size,
        "init_sha256": file_hash(init_path) if init_path is not None else "",
    }
    state_path = state_dir / "vae_state.safetensors"
    start = 0
    if resume and state_path.exists():
        start = _restore(state_path, model, opt, ema, identity)
    if dist.world > 1:
        model.sampling = _global_batch_sampling(batch, dist)
        model = torch.nn.parallel.DistributedDataParallel(model)
    log = _Log(out / "vae_log.jsonl", dist.main)
    log.truncate_after(start)
    bar = _progress(steps, start, "train vae", progress and dist.main)
    t0, done_here = time.time(), 0
    model.train()
    for step in range(start, steps):
        g = step_generator(seed, step)
        idx = _shard(torch.randint(len(ds), (batch,), generator=g), dist)
        labels = torch.stack([ds.labels(int(i)) for i in idx])
        # Random transforms and reparameterisation noise are drawn for the global batch
        # and sliced like idx, so DDP over P processes is the one-process run.
        _set_lr(opt, base_lr, step, steps, preset)
        theta = aug.sample_theta(batch, preset.size, generator=step_generator(seed, step, 1))
        disp = aug.sample_displacement(batch, preset.size, generator=step_generator(seed, step, 2))
        labels = aug(
            labels,
            theta=theta[dist.rank :: dist.world],
            displacement=None if disp is None else disp[dist.rank :: dist.world],
        )
        x = one_hot(labels.to(dev))
        torch.manual_seed(int(step_generator(seed, step, 1000).initial_seed()))
        sample = step < steps * (1.0 - preset.vae_mu_fraction)
        with autocast(dev, amp):
            loss, mse, kl, ce = vae_loss(
                model,
                x,
                preset.kl_weight,
                kl_norm=preset.kl_norm,
                ce_weight=preset.vae_ce_weight,
                sample=sample,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), _unwrap(model).parameters(), strict=True):
                    pe.lerp_(pm.detach(), 1.0 - preset.vae_ema_decay)
                for be, bm in zip(ema.buffers(), _unwrap(model).buffers(), strict=True):
                    be.copy_(bm)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4g}", mse=f"{mse.item():.3g}")
        done_here += 1
        if (step + 1) % log_every == 0:
            log.write(
                {
                    "step": step + 1,
                    "loss": loss.item(),
                    "loss_mse": mse.item(),
                    "kl": kl.item(),
                    "ce": ce.item(),
                    "seconds": time.time() - t0,
                }
            )
        last = step + 1 == steps or (stop_after is not None and done_here >= stop_after)
        if dist.main and ((step + 1) % ckpt_every == 0 or last):
            _save_state(state_path, _unwrap(model), opt, ema, step + 1, identity)
        if stop_after is not None and done_here >= stop_after and step + 1 < steps:
            bar.close()
            return state_path
    bar.close()
    final = out / "vae.safetensors"
    if dist.main:
        save_tensors(
            final,
            (ema if ema is not None else _unwrap(model)).state_dict(),
            {
                "kind": "vae",
                "preset": preset.to_dict(),
                "init": None if init_path is None else str(init),
                "init_sha256": identity["init_sha256"] or None,
                "lr": base_lr,
                "steps": steps,
                "batch": batch,
                "seed": seed,
                "amp_bf16": amp,
                "version": __version__,
                "data": str(data),
            },
        )
        plot_loss(out / "vae_log.jsonl", out / "vae_loss.png", f"VAE ({preset.name})")
    _barrier(dist)  # other processes may go on to load the final weights
    return final


# ---------------------------------------------------------------------------------
# Latent diffusion model.
# ---------------------------------------------------------------------------------
def train_ldm(
    data: str | os.PathLike,
    out: str | os.PathLike,
    vae_path: str | os.PathLike,
    *,
    preset: Preset | None = None,
    steps: int | None = None,
    batch: int | None = None,
    seed: int = 0,
    device: str | None = None,
    amp: bool = True,
    state_dir: str | os.PathLike | None = None,
    resume: bool = True,
    ckpt_every: int = 200,
    log_every: int = 20,
    stop_after: int | None = None,
    progress: bool = True,
    init: str | os.PathLike | None = None,
    lr: float | None = None,
) -> Path:
    """Train the EDM denoiser on VAE latents of ``data``; returns ``ldm.safetensors``.

    ``init`` fine-tunes from existing denoiser weights (as for :func:`train_vae`): the
    model and its EMA start from them, the optimiser is fresh, the rate is ``lr``.

    The latents are the VAE posterior means, scaled by a factor (stored in ``ldm.json``)
    that gives them standard deviation σ_data (SPEC §3). The saved weights are the EMA.
    """
    dev = pick_device(device)
    dist = init_distributed(dev)
    out = Path(out)
    state_dir = Path(state_dir) if state_dir else out / "state"
    vae, vae_preset, _ = load_vae(vae_path, dev)
    preset = preset or vae_preset
    if preset.size != vae_preset.size or tuple(preset.vae_channels) != tuple(
        vae_preset.vae_channels
    ):
        raise CheckpointError(
            f"{vae_path}: VAE of preset {vae_preset.name!r} does not fit preset {preset.name!r}"
        )
    steps = preset.ldm_steps if steps is None else steps
    batch = preset.ldm_batch if batch is None else batch
    vae_hash = file_hash(vae_path)

    # Latents of the whole training set, cached per VAE.
    lat_path = state_dir / f"latents_{vae_hash[:12]}.safetensors"
    cached = lat_path.exists()
    _barrier(dist)  # every process has looked before the main one writes the cache
    if cached:
        latents = load_tensors(lat_path)[0]["latents"]
    else:
        ds = LabelMapDataset(data, size=preset.size)
        labels = torch.stack([ds.labels(i) for i in range(len(ds))])
        latents = encode_labels(vae, labels, dev)
    if dist.main:  # only now: bad VAE or data fail before anything is written
        out.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        if not cached:
            save_tensors(
                lat_path,
                {"latents": latents},
                {"kind": "latents", "vae_sha256": vae_hash, "n": len(ds)},
            )
    scale = float(preset.sigma_data / latents.std())
    latents = (latents * scale).to(dev)
    del vae

    base_lr = preset.ldm_lr if lr is None else float(lr)
    init_path = resolve_init(init, "ldm", preset) if init is not None else None
    init_t = load_init(init_path, "ldm", preset) if init_path is not None else None
    torch.manual_seed(seed)
    model = EDMPrecond(build_denoiser_net(preset), sigma_data=preset.sigma_data).to(dev)
    if init_t is not None:
        model.load_state_dict(init_t)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=base_lr)
    identity = {
        "kind": "ldm_state",
        "preset": preset.name,
        "seed": seed,
        "batch": batch,
        "vae_sha256": vae_hash,
        "init_sha256": file_hash(init_path) if init_path is not None else "",
    }
    state_path = state_dir / "ldm_state.safetensors"
    start = 0
    if resume and state_path.exists():
        start = _restore(state_path, model, opt, ema, identity)
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    loss_fn = EDMLoss(preset.p_mean, preset.p_std, preset.sigma_data)
    log = _Log(out / "ldm_log.jsonl", dist.main)
    log.truncate_after(start)
    bar = _progress(steps, start, "train ldm", progress and dist.main)
    t0, done_here = time.time(), 0
    model.train()
    for step in range(start, steps):
        g = step_generator(seed, step)
        idx = _shard(torch.randint(len(latents), (batch,), generator=g), dist)
        z = latents[idx.to(dev)]
        # ln σ ~ N(P_mean, P_std²) and the noise, drawn for the global batch on the CPU
        # generator, then this process's share, moved to the device.
        sigma, noise = loss_fn.draw(
            (batch, *latents.shape[1:]), step_generator(seed, step, 1), dtype=latents.dtype
        )
        share = slice(dist.rank, None, dist.world)
        _set_lr(opt, base_lr, step, steps, preset)
        with autocast(dev, amp):
            loss = loss_fn.loss(model, z, sigma[share].to(dev), noise[share].to(dev)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), _unwrap(model).parameters(), strict=True):
                pe.lerp_(pm.detach(), 1.0 - preset.ema_decay)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4g}")
        done_here += 1
        if (step + 1) % log_every == 0:
            log.write({"step": step + 1, "loss": loss.item(), "seconds": time.time() - t0})
        last = step + 1 == steps or (stop_after is not None and done_here >= stop_after)
        if dist.main and ((step + 1) % ckpt_every == 0 or last):
            _save_state(state_path, _unwrap(model), opt, ema, step + 1, identity)
        if stop_after is not None and done_here >= stop_after and step + 1 < steps:
            bar.close()
            return state_path
    bar.close()
    final = out / "ldm.safetensors"
    if dist.main:
        save_tensors(
            final,
            ema.state_dict(),
            {
                "kind": "ldm",
                "preset": preset.to_dict(),
                "init": None if init_path is None else str(init),
                "init_sha256": identity["init_sha256"] or None,
                "lr": base_lr,
                "scale_factor": scale,
                "steps": steps,
                "batch": batch,
                "seed": seed,
                "amp_bf16": amp,
                "p_mean": preset.p_mean,
                "p_std": preset.p_std,
                "vae_sha256": vae_hash,
                "version": __version__,
                "data": str(data),
                "latent_std_before_scaling": float(preset.sigma_data / scale),
            },
        )
        plot_loss(out / "ldm_log.jsonl", out / "ldm_loss.png", f"EDM denoiser ({preset.name})")
    _barrier(dist)
    return final


# ---------------------------------------------------------------------------------
# The morphology regressor on noisy latents (classifier guidance, issue 17).
# ---------------------------------------------------------------------------------
REGRESSOR_SIGMA_GRID = tuple(float(x) for x in np.geomspace(2e-3, 80.0, 17))
"""σ at which the regressor's residual variance is calibrated (the sampler's range)."""


def cohort_latents(
    model, files: list[Path], cache: str | os.PathLike | None = None
) -> tuple[torch.Tensor, str]:
    """Scaled latents (posterior means) of ``files`` under ``model``'s VAE, and where
    they came from.

    ``cache``: a latent file of :func:`train_ldm` (unscaled posterior means of the same
    sorted files). It is used only if it holds one latent per file and its first and
    last latent, scaled by the model's factor, agree with the model's own encoding to
    within 1% of σ_data (the shipped fp16 weights were exported from the fp32 VAE that
    wrote it); otherwise the maps are encoded here.
    """
    if cache is not None and Path(cache).exists():
        t, meta = load_tensors(cache)
        lat = t["latents"].float() * model.scale_factor
        if len(lat) == len(files):
            from .io import read_label_map

            worst = 0.0
            for i in (0, len(files) - 1):
                z = model.encode(read_label_map(files[i]).data[None])
                worst = max(worst, float((z - lat[i : i + 1]).pow(2).mean().sqrt()))
            if worst < 0.01 * model.preset.sigma_data:
                return (
                    lat,
                    f"cache {cache} (vae {meta.get('vae_sha256', '')[:12]}, rmse {worst:.2g})",
                )
    ds = LabelMapDataset(files, size=model.preset.size)
    labels = torch.stack([ds.labels(i) for i in range(len(ds))])
    return model.encode(labels), "encoded with the model's VAE"


def cohort_features(files: list[Path], cache: Path | None = None) -> np.ndarray:
    """``(n, 12)`` morphology (SPEC §5) of label-map files, cached in ``cache`` (.npy)
    together with the file names it belongs to."""
    from .io import read_label_map
    from .metrics.morphology import morphology
    from .models.regressor import feature_array

    names = np.array([f.name for f in files])
    if cache is not None and cache.exists():
        stored = np.load(cache, allow_pickle=False)
        if stored["names"].tolist() == names.tolist():
            return stored["features"]
    feats = feature_array([morphology(read_label_map(f)) for f in files])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache, "wb") as fh:
            np.savez(fh, names=names, features=feats)
    return feats


def train_regressor(
    data: str | os.PathLike,
    out: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    *,
    heldout: str | os.PathLike | None = None,
    latents: str | os.PathLike | None = None,
    heldout_latents: str | os.PathLike | None = None,
    extra: str | os.PathLike | None = None,
    extra_latents: str | os.PathLike | None = None,
    state_dir: str | os.PathLike | None = None,
    steps: int = 6000,
    batch: int = 32,
    lr: float = 2e-3,
    width: int = 16,
    sigma_mix: float = 0.25,
    calibration_every: int = 16,
    seed: int = 0,
    resume: bool = True,
    log_every: int = 100,
    ckpt_every: int = 250,
    stop_after: int | None = None,
    progress: bool = True,
) -> Path:
    """Train the morphology regressor of :mod:`siblings.models.regressor` on ``data``.

    The latents are the posterior means of ``data``'s maps under ``checkpoint``'s VAE
    (default: the shipped weights), scaled by its factor (:func:`cohort_latents`,
    ``latents`` a cached file of them); the targets are their 12 morphology features,
    standardised by the training maps' mean and standard deviation. Every
    ``calibration_every``-th map is held back for calibration: on those, after
    training, the residual variance of each standardised feature is measured at the σ
    of :data:`REGRESSOR_SIGMA_GRID` (8 noise draws) and stored with the weights. Each
    step draws ``batch`` maps and ln σ ~ N(P_mean, P_std²) of the model's preset (the
    denoiser's distribution) from generator ``(seed, step)``, except for a share
    ``sigma_mix`` of the batch whose ln σ is uniform over the sampler's range
    (:data:`REGRESSOR_SIGMA_GRID`'s ends): the denoiser's distribution almost never
    draws a clean latent (σ < 0.1: 0.3% of draws), where the regressor must be most
    exact. AdamW with a cosine decay of ``lr`` to 1% and an EMA of the weights (0.999),
    which is what is saved. ``extra``: a folder of further maps (another phantom seed)
    trained on as well (never used for calibration; ``extra_latents`` a cache of their
    latents, as ``latents``); the feature statistics are those of all trained maps.
    Resumable from ``state_dir`` (default ``out/state``). ``heldout``: a folder of maps
    never trained on, whose accuracy (R², MAE per feature and σ) goes into the record
    (``heldout_latents``: a cache of their latents, as ``latents``).

    Writes ``out/regressor.safetensors`` and ``out/regressor.json``; returns the former.
    """
    from .anatomy import MORPHOLOGY_COLUMNS
    from .io import list_label_maps
    from .models.ldm import LatentDiffusionModel
    from .models.regressor import MorphologyRegressor, accuracy, save_regressor

    if not 0.0 <= sigma_mix <= 1.0:
        raise InputError(f"sigma_mix must lie in [0, 1], not {sigma_mix}")
    out = Path(out)
    state_dir = Path(state_dir) if state_dir else out / "state"
    model = LatentDiffusionModel.load(checkpoint, device="cpu")
    p = model.preset
    files = list_label_maps(data, min_count=2 * calibration_every)
    lat, lat_source = cohort_latents(model, files, latents)
    feats = cohort_features(files, state_dir / "features_train.npz")
    calib = np.arange(len(files)) % calibration_every == calibration_every - 1
    n_main, extra_files, extra_source = len(files), [], None
    if extra is not None:
        extra_files = list_label_maps(extra)
        if {f.resolve() for f in files} & {f.resolve() for f in extra_files}:
            raise InputError(f"{extra}: the extra maps include maps of {data}")
        if heldout is not None and {f.resolve() for f in list_label_maps(heldout)} & {
            f.resolve() for f in extra_files
        }:
            raise InputError(f"{extra}: the extra maps include held-out maps of {heldout}")
        ex_lat, extra_source = cohort_latents(model, extra_files, extra_latents)
        ex_feats = cohort_features(extra_files, state_dir / "features_extra.npz")
        lat, feats = torch.cat([lat, ex_lat]), np.concatenate([feats, ex_feats])
    trained = np.concatenate([~calib, np.ones(len(extra_files), bool)])
    train_idx = torch.from_numpy(np.flatnonzero(trained))
    mean, std = feats[trained].mean(0), feats[trained].std(0)
    std = np.where(std > 0, std, 1.0)
    y = torch.from_numpy((feats - mean) / std).float()
    n_mix = round(sigma_mix * batch)
    log_lo, log_hi = math.log(REGRESSOR_SIGMA_GRID[0]), math.log(REGRESSOR_SIGMA_GRID[-1])

    torch.manual_seed(seed)
    net = MorphologyRegressor(p.latent_channels, width, p.sigma_data, p.p_mean, p.p_std)
    net.feature_mean.copy_(torch.from_numpy(mean))
    net.feature_std.copy_(torch.from_numpy(std))
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    identity = {
        "kind": "regressor_state",
        "seed": seed,
        "batch": batch,
        "width": width,
        "steps": steps,
        "ldm_sha256": model.checkpoint_sha256,
        "n_maps": n_main,
        "n_extra": len(extra_files),
        "sigma_mix": n_mix,
        "arch": net.config["arch"],
    }
    state_path = state_dir / "regressor_state.safetensors"
    start = 0
    if resume and state_path.exists():
        start = _restore(state_path, net, opt, ema, identity)
    loss_fn = EDMLoss(p.p_mean, p.p_std, p.sigma_data)
    out.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(out / "regressor_log.jsonl", True)
    log.truncate_after(start)
    bar = _progress(steps, start, "train regressor", progress)
    t0, done_here = time.time(), 0
    net.train()
    for step in range(start, steps):
        g = step_generator(seed, step)
        idx = train_idx[torch.randint(len(train_idx), (batch,), generator=g)]
        sigma, noise = loss_fn.draw((batch, *lat.shape[1:]), step_generator(seed, step, 1))
        if n_mix:
            u = torch.rand(n_mix, generator=g)
            sigma[:n_mix] = torch.exp(log_lo + u * (log_hi - log_lo))
        zs = lat[idx] + sigma.reshape(-1, 1, 1, 1, 1) * noise
        for group in opt.param_groups:  # cosine from lr to lr/100, a function of the step
            group["lr"] = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss = F.mse_loss(net(zs, sigma), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), net.parameters(), strict=True):
                pe.lerp_(pm.detach(), 1.0 - 0.999)
        bar.update()
        done_here += 1
        if (step + 1) % log_every == 0:
            log.write({"step": step + 1, "loss": loss.item(), "seconds": time.time() - t0})
        last = step + 1 == steps or (stop_after is not None and done_here >= stop_after)
        if (step + 1) % ckpt_every == 0 or last:
            _save_state(state_path, net, opt, ema, step + 1, identity)
        if stop_after is not None and done_here >= stop_after and step + 1 < steps:
            bar.close()
            return state_path
    bar.close()

    # Calibration: residual variance of the standardised features along the σ grid.
    from .models.regressor import noisy_predictions

    cal_lat = lat[:n_main][torch.from_numpy(calib)]
    cal_y = (feats[:n_main][calib] - mean) / std
    grid = torch.tensor(REGRESSOR_SIGMA_GRID, dtype=torch.float32)
    table = []
    for s in REGRESSOR_SIGMA_GRID:
        pred = (noisy_predictions(ema, cal_lat, s, seed, draws=8) - mean) / std
        table.append(((pred - cal_y[None]) ** 2).mean((0, 1)))
    ema.sigma_grid.resize_(grid.shape).copy_(grid)
    ema.residual_variance.resize_(len(grid), len(mean)).copy_(torch.tensor(np.array(table)))
    record: dict = {
        "vae_sha256": file_hash(Path(model.checkpoint) / "vae.safetensors"),
        "ldm_sha256": file_hash(Path(model.checkpoint) / "ldm.safetensors"),
        "scale_factor": model.scale_factor,
        "columns": list(MORPHOLOGY_COLUMNS),
        "recipe": {
            "data": str(data),
            "n_maps": n_main,
            "n_train": int(trained.sum()),
            "extra": None
            if extra is None
            else {"data": str(extra), "n_maps": len(extra_files), "latents": extra_source},
            "n_calibration": int(calib.sum()),
            "calibration_every": calibration_every,
            "latents": lat_source,
            "steps": steps,
            "batch": batch,
            "lr": lr,
            "lr_schedule": "cosine to 1%",
            "optimizer": "AdamW, weight decay 1e-4",
            "ema_decay": 0.999,
            "width": width,
            "sigma_distribution": f"ln sigma ~ N({p.p_mean}, {p.p_std}^2)"
            + (
                f"; {n_mix} of each batch: ln sigma uniform on "
                f"[ln {REGRESSOR_SIGMA_GRID[0]:g}, ln {REGRESSOR_SIGMA_GRID[-1]:g}]"
                if n_mix
                else ""
            ),
            "arch": net.config["arch"],
            "seed": seed,
            "seconds_this_run": round(time.time() - t0, 1),
            "threads": torch.get_num_threads(),
        },
        "final_loss": loss.item() if done_here else None,
        "calibration_residual_variance": {
            f"{s:.3g}": [round(float(v), 4) for v in row]
            for s, row in zip(REGRESSOR_SIGMA_GRID, table, strict=True)
        },
        "version": __version__,
    }
    if heldout is not None:
        ho_files = list_label_maps(heldout)
        ho_lat, _ = cohort_latents(model, ho_files, heldout_latents)
        ho_feats = cohort_features(ho_files, state_dir / "features_heldout.npz")
        record["heldout"] = {"data": str(heldout), "n": len(ho_files), "draws": 4}
        record["accuracy"] = accuracy(ema, ho_lat, ho_feats, seed=seed)
    final = save_regressor(out / "regressor.safetensors", ema, record)
    plot_loss(out / "regressor_log.jsonl", out / "regressor_loss.png", "morphology regressor")
    return final


def log_tail(path: str | os.PathLike, n: int = 1) -> list[dict]:
    rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln]
    return rows[-n:]


__all__ = [
    "encode_labels",
    "load_vae",
    "pick_device",
    "train_ldm",
    "train_regressor",
    "train_vae",
    "vae_loss",
]
