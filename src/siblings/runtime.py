"""Where, in what precision and with which random numbers the networks run.

This module owns what training and inference share: the device
(:func:`pick_device`), bf16 autocast (:func:`autocast`, :func:`choose_bf16`), the
generators that make every run reproducible (:func:`step_generator`: one per
``(seed, step, stream)``, never a running RNG) and the noise streams of sampling and
editing (:func:`noise_for` and the ``*_STREAM`` constants: sample ``i``'s noise depends
only on ``(seed, i, stream)``, so no output depends on the batch it was made in).

bf16 autocast is worth having only where the hardware computes in bf16: CPUs with AMX
(Sapphire Rapids and later) or AVX512-BF16 (Cooper Lake, AMD Zen 4), and CUDA GPUs
with bf16 (Ampere and later). Elsewhere torch emulates it, and on an AMD EPYC without
AVX512-BF16 a bf16 encode of 2 maps took 255 s against 3 s in fp32 (issue 14). So
:func:`choose_bf16` turns bf16 on by default only where :func:`native_bf16` says the
hardware has it, and warns when it is asked for where it would be emulated.

Example
-------
>>> import torch
>>> from siblings.runtime import choose_bf16, native_bf16
>>> native_bf16(torch.device("cpu"), cpuinfo="flags : fpu sse avx2")
False
>>> choose_bf16(torch.device("cpu"), None, cpuinfo="flags : fpu avx512_bf16")
(True, None)
>>> from siblings.runtime import noise_for
>>> torch.equal(noise_for(0, [3], (2,))[0], noise_for(0, [1, 2, 3], (2,))[2])
True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np
import torch

from .errors import InputError

# /proc/cpuinfo flags of CPUs that run bf16 matrix arithmetic natively (oneDNN uses them).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def pick_device(name: str | None = None) -> torch.device:
    """``cuda`` when available unless ``name`` says otherwise (None or "auto": choose).

    Under torchrun, a bare ``cuda`` means this process's GPU, ``cuda:$LOCAL_RANK``.
    """
    if not name or name.strip().lower() == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {name!r} asked for, but CUDA is not available here (torch "
            f"{torch.__version__}, built with CUDA: {torch.version.cuda is not None}); "
            "use {device} cpu or leave {device} out",
            arguments=("device",),
        )
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU and CUDA, or nothing when ``enabled`` is False."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``cpuinfo`` (text of /proc/cpuinfo; read when None).

    Empty where /proc/cpuinfo does not exist (macOS, Windows).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def native_bf16(device: torch.device | str, cpuinfo: str | None = None) -> bool:
    """Whether ``device`` computes bf16 in hardware rather than by emulation.

    CPU: an ``amx_bf16`` or ``avx512_bf16`` flag in ``cpuinfo`` (default /proc/cpuinfo).
    CUDA: ``torch.cuda.is_bf16_supported()``. Anything else: False.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        return any(flag in cpu_flags(cpuinfo) for flag in NATIVE_BF16_FLAGS)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return False


def choose_bf16(
    device: torch.device | str,
    requested: bool | None,
    *,
    training: bool = False,
    cpuinfo: str | None = None,
) -> tuple[bool, str | None]:
    """Whether to run under bf16 autocast on ``device``, and a one-line warning or None.

    ``requested``: True (``--bf16``), False (``--fp32``) or None (neither given: bf16
    exactly where :func:`native_bf16` holds). ``--bf16`` is obeyed where bf16 would be
    emulated, with a warning; ``training`` also warns when the default falls back to
    fp32 (training used to run in bf16 everywhere).
    """
    if requested is False:
        return False, None
    if native_bf16(device, cpuinfo):
        return True, None
    dev = torch.device(device)
    where = (
        "this CPU has neither AMX nor AVX512-BF16" if dev.type == "cpu" else f"{dev} has no bf16"
    )
    if requested:
        return True, (
            f"bf16 asked for, but {where}: torch emulates it, up to ~85x slower than fp32 "
            "(leave out --bf16 to run in fp32)"
        )
    if training:
        return False, f"{where}, so bf16 would be emulated (very slow): training in fp32"
    return False, None


# ---------------------------------------------------------------------------------
# Generators and noise streams.
# ---------------------------------------------------------------------------------
START_STREAM = 0
"""Noise stream of a sample's starting noise (unconditional sampling, SDEdit, inpainting)."""
PASTE_STREAM = 1
"""Noise stream of inpainting's fixed ε of the pasted seed latent (eq. 5)."""
FRESH_PASTE_STREAM = 2
"""Inpainting with fresh noise: the k-th paste (k = 1, 2, …) draws stream ``2 + k``."""
NOISE_STREAM_OFFSET = 7_000
""":func:`noise_for`'s stream ``s`` is :func:`step_generator`'s stream ``7000 + s``."""
CHURN_STREAM = 9_000
""":func:`step_generator` stream of the sampler's churn noise (one generator per sample)."""


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, step, stream)``.

    Training uses ``step`` = the optimisation step; sampling and editing use ``step`` =
    the sample index.
    """
    s = np.random.SeedSequence([int(seed), int(step), int(stream)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(s) & ((1 << 63) - 1))


def noise_for(
    seed: int, indices: Sequence[int] | range, shape: tuple[int, ...], stream: int = 0
) -> torch.Tensor:
    """Unit Gaussian noise ``(len(indices), *shape)`` float32 on the CPU, one generator per
    ``(seed, index, stream)``: row ``k`` is the same whatever else is in ``indices``."""
    return torch.stack(
        [
            torch.randn(shape, generator=step_generator(seed, int(i), NOISE_STREAM_OFFSET + stream))
            for i in indices
        ]
    )


def churn_generators(seed: int, indices: Sequence[int] | range) -> list[torch.Generator]:
    """One churn generator per sample index (for :func:`siblings.diffusion.edm.heun_sample`)."""
    return [step_generator(seed, int(i), CHURN_STREAM) for i in indices]


__all__ = [
    "CHURN_STREAM",
    "FRESH_PASTE_STREAM",
    "NATIVE_BF16_FLAGS",
    "NOISE_STREAM_OFFSET",
    "PASTE_STREAM",
    "START_STREAM",
    "autocast",
    "choose_bf16",
    "churn_generators",
    "cpu_flags",
    "native_bf16",
    "noise_for",
    "pick_device",
    "step_generator",
]
