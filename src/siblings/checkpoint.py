"""Checkpoints: safetensors for tensors plus a JSON config, written atomically.

Nothing is ever unpickled: a checkpoint is a ``NAME.safetensors`` file of named tensors
and a ``NAME.json`` file of plain data beside it. Training state (optimiser moments,
EMA, step) uses the same format, so a run can be resumed from untrusted storage safely.

The JSON is also stored inside the safetensors header (metadata key ``siblings``), and
that copy is the one read back: the two files are renamed into place one after the
other, so a process killed between the renames would otherwise pair new tensors with
an old config (for a training state: resume from the wrong step). Files without the
embedded copy are read with their JSON twin.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import SiblingsError
from .io import _json_default, atomic_path, read_json, sha256_file, write_json

META_KEY = "siblings"


class CheckpointError(SiblingsError, ValueError):
    """A checkpoint file is missing, corrupt or does not match what was asked for."""


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Write ``path`` (.safetensors) and its JSON twin atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    embedded = json.dumps(meta, default=_json_default)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: embedded})
    write_json(path.with_suffix(".json"), meta)
    return path


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a ``.safetensors`` file and its JSON twin; clear error if either is unusable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or not a safetensors file ({exc})") from None
    if META_KEY in header:
        try:
            return tensors, json.loads(header[META_KEY])
        except ValueError as exc:
            raise CheckpointError(f"{path}: corrupt embedded config ({exc})") from None
    meta_path = path.with_suffix(".json")
    if not meta_path.exists():
        raise CheckpointError(
            f"{meta_path}: missing checkpoint config (expected beside {path.name})"
        )
    try:
        meta = read_json(meta_path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return tensors, meta


def file_hash(path: str | os.PathLike) -> str:
    return sha256_file(path)


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors plus JSON-able param groups."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt.{idx}.{key}"] = t
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def export_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype = torch.float16
) -> Path:
    """Copy a trained checkpoint folder for shipping, floating tensors cast to ``dtype``.

    ``src`` holds ``vae.safetensors`` and ``ldm.safetensors`` (as written by ``siblings
    train``); ``dst`` receives both, cast, with the denoiser's ``vae_sha256`` updated to
    the cast VAE (so :meth:`LatentDiffusionModel.load` accepts the pair), plus the
    training logs and loss curves. Weights are cast back to float32 when loaded. This is
    how ``src/siblings/weights/tiny`` was made (half the size, outputs unchanged to the
    precision the tests check).
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)

    def cast(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in t.items()}

    vae_t, vae_meta = load_tensors(src / "vae.safetensors")
    ldm_t, ldm_meta = load_tensors(src / "ldm.safetensors")
    if vae_meta.get("kind") != "vae" or ldm_meta.get("kind") != "ldm":
        raise CheckpointError(f"{src}: not a checkpoint folder with a VAE and a denoiser")
    save_tensors(dst / "vae.safetensors", cast(vae_t), {**vae_meta, "dtype": str(dtype)})
    ldm_meta = {**ldm_meta, "dtype": str(dtype), "vae_sha256": file_hash(dst / "vae.safetensors")}
    save_tensors(dst / "ldm.safetensors", cast(ldm_t), ldm_meta)
    for name in ("vae_log.jsonl", "vae_loss.png", "ldm_log.jsonl", "ldm_loss.png"):
        if (src / name).exists():
            with atomic_path(dst / name) as tmp:
                tmp.write_bytes((src / name).read_bytes())
    return dst


def mirror_weights(tensors: dict[str, torch.Tensor], axis: int = 0) -> dict[str, torch.Tensor]:
    """Convolution weights flipped along spatial ``axis`` (0 = x): a fully convolutional
    network with these weights maps a mirrored input to (nearly) the mirrored output.

    Exact for stride-1 convolutions with symmetric padding; MONAI's stride-2
    downsampling pads asymmetrically, so there it holds up to a one-voxel shift, and a
    short fine-tune finishes the job. Used once, to carry the first shipped weights
    (trained on a mirror-image phantom) over to right-handed hearts (docs/model.md).
    Every 5-D tensor is taken as a 3D convolution kernel ``(out, in, kx, ky, kz)``.
    """
    return {k: (v.flip(2 + axis) if v.ndim == 5 else v) for k, v in tensors.items()}


def mirror_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, axis: int = 0) -> Path:
    """Copy a checkpoint folder (``vae`` and ``ldm``) with :func:`mirror_weights` applied."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for kind in ("vae", "ldm"):
        t, meta = load_tensors(src / f"{kind}.safetensors")
        t = {k: v.float() for k, v in mirror_weights(t, axis).items()}
        meta = {
            **meta,
            "mirrored_axis": axis,
            "mirrored_from": file_hash(src / f"{kind}.safetensors"),
        }
        if kind == "ldm":
            meta["vae_sha256"] = file_hash(dst / "vae.safetensors")
        save_tensors(dst / f"{kind}.safetensors", t, meta)
    return dst
