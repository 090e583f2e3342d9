"""The ``prepare`` pipeline: a TotalSegmentator dataset to model-space label maps (SPEC §2).

Checks the grid options, then runs :func:`siblings.data.totalseg.prepare_totalsegmentator`
(find subjects, load, resample, reorient, register, write each subject atomically, write
``exclusions.csv`` and ``prepare.json``) and returns its summary.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..data import geometry
from ..data.totalseg import parse_volume_bounds, prepare_totalsegmentator
from ..errors import InputError

PathLike = str | os.PathLike


def check_grid(size: int, workers: int | None, register_size: int) -> None:
    """Refuse ``size`` below 16, ``workers`` below 1 or ``register_size`` below 8."""
    if size < 16:
        raise InputError(f"{{size}} must be at least 16, got {size}", arguments=("size",))
    if workers is not None and workers < 1:
        raise InputError(f"{{workers}} must be at least 1, got {workers}", arguments=("workers",))
    if register_size < 8:
        raise InputError(
            f"{{register_size}} must be at least 8, got {register_size}",
            arguments=("register_size",),
        )


def prepare_dataset(
    src: PathLike,
    out: PathLike,
    *,
    size: int = 128,
    workers: int | None = None,
    reference: PathLike | None = None,
    engine: geometry.Engine = "simpleitk",
    seed: int = 0,
    volume_bounds: Sequence[str] | dict[str, tuple[float, float]] | None = None,
    interpolation: geometry.Interpolation = "linear",
    register_size: int = 48,
    keep_axis: bool = True,
    split: str | None = None,
) -> dict[str, Any]:
    """``siblings prepare totalsegmentator``: prepare ``src`` into ``out``; the summary.

    ``volume_bounds`` may be ``CHAMBER=MIN:MAX`` strings (parsed here) or a parsed
    mapping; the other parameters are those of :func:`prepare_totalsegmentator`.
    """
    check_grid(size, workers, register_size)
    if volume_bounds is None or not isinstance(volume_bounds, dict):
        volume_bounds = parse_volume_bounds(volume_bounds)
    return prepare_totalsegmentator(
        src,
        out,
        size=size,
        workers=workers,
        reference=reference,
        engine=engine,
        seed=seed,
        volume_bounds=volume_bounds,
        interpolation=interpolation,
        register_size=register_size,
        keep_axis=keep_axis,
        split=split,
    )
