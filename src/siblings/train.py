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


def log_tail(path: str | os.PathLike, n: int = 1) -> list[dict]:
    rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln]
    return rows[-n:]


__all__ = ["encode_labels", "load_vae", "pick_device", "train_ldm", "train_vae", "vae_loss"]
