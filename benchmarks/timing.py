"""Shared pieces of the benchmarks: thread setup, best-of timing, random-weight models.

Weights do not change the cost of a network call, so the benchmarks build the preset's
networks with random weights instead of loading a checkpoint.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch


def setup_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (default: $OMP_NUM_THREADS or 1).

    One thread by default: on a machine whose cores are busy with other jobs, extra
    OpenMP threads wait for each other and small ops get 10-30x slower (docs/model.md).
    """
    n = threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(n)
    return n


def describe_machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} thread(s), load average {load:.2f}"
    )


def best_of(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn`` after ``warmup`` calls (seconds).

    The minimum is the least disturbed by other processes on a shared machine.
    """
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def random_model(preset_name: str = "tiny", amp: bool = False, **overrides):
    """A :class:`LatentDiffusionModel` of ``preset_name`` with random weights on the CPU."""
    from siblings.diffusion.edm import EDMPrecond
    from siblings.models.ldm import LatentDiffusionModel
    from siblings.models.networks import build_denoiser_net, build_vae
    from siblings.models.presets import get_preset

    p = get_preset(preset_name, **overrides)
    torch.manual_seed(0)
    vae = build_vae(p)
    den = EDMPrecond(build_denoiser_net(p), sigma_data=p.sigma_data)
    return LatentDiffusionModel(vae, den, p, 1.0, torch.device("cpu"), amp=amp)
