"""A stress set of hearts the phantom cohort (and so the shipped VAE) never holds.

Each case is a phantom drawn or changed beyond what training saw (SPEC §4's
out-of-distribution warning and encoding by inversion are measured on it,
``benchmarks/bench_inversion.py``):

``small`` / ``large``
    every chamber 1.3× below / above the cohort's volume bounds
    (:data:`siblings.data.phantom.VOLUME_BOUNDS_ML`); training's random zoom (0.85–1.15)
    reaches some of these volumes, not with this body's proportions and wall.
``dilated_rv``
    an RV of 300 mL beside an LV of 70 mL: proportions the correlated volume model
    never draws (the rare subgroup stops at 260 mL with a normal LV).
``thin_wall`` / ``thick_wall``
    LV myocardium 4 / 18 mm thick (cohort 8–12 mm).
``elastic``
    a held-out phantom under a smooth random displacement (control points on a 5³
    lattice, 4 voxels standard deviation; training's elastic augmentation uses 1.5),
    label-safe: one-hot trilinear resampling and argmax
    (:class:`siblings.data.dataset.RandomAffineLabels`).
``straight_aorta``
    the ascending aorta goes straight up, with no arch.
``mirrored``
    a held-out phantom flipped along x: a left-handed heart (situs inversus), which no
    rigid transform or training augmentation makes of a right-handed one.

Every case depends only on ``(kind, index, size, seed)``.

Example
-------
>>> from siblings.data.stress import stress_case
>>> lm = stress_case("mirrored", 0, size=32)
>>> lm.shape
(32, 32, 32)
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..io import LabelMap
from .phantom import VOLUME_BOUNDS_ML, make_phantom

STRESS_KINDS: tuple[str, ...] = (
    "small",
    "large",
    "dilated_rv",
    "thin_wall",
    "thick_wall",
    "elastic",
    "straight_aorta",
    "mirrored",
)
BEYOND = 1.3  # how far past the cohort's volume bounds the small/large cases go
ELASTIC_VOX = 4.0
STRESS_INDEX0 = 10_000  # phantom indices of the stress set (held-out subjects use 0, 1, …)

_OVERRIDES = {
    "small": {"target": {c: lo / BEYOND for c, (lo, _) in VOLUME_BOUNDS_ML.items()}},
    "large": {"target": {c: hi * BEYOND for c, (_, hi) in VOLUME_BOUNDS_ML.items()}},
    "dilated_rv": {"target": {"RV": 300.0, "LV": 70.0}},
    "thin_wall": {"wall_mm": 4.0},
    "thick_wall": {"wall_mm": 18.0},
    "straight_aorta": {"aorta_arch": False},
}


def elastic_deformation(
    labels: np.ndarray, seed: int, std_vox: float = ELASTIC_VOX, points: int = 5
) -> np.ndarray:
    """``labels`` under a smooth random displacement (label-safe; depends on ``seed``)."""
    from .dataset import RandomAffineLabels

    warp = RandomAffineLabels(
        scale=(1.0, 1.0),
        rotation_deg=0.0,
        translation_vox=0.0,
        elastic_vox=std_vox,
        elastic_points=points,
        mode="onehot",
    )
    gen = torch.Generator().manual_seed(int(seed))
    t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint8))[None].long()
    return warp(t, generator=gen)[0].numpy().astype(np.uint8)


def stress_case(kind: str, index: int, size: int = 64, seed: int = 1) -> LabelMap:
    """Stress case ``index`` of ``kind`` (module docstring) on the ``size``³ model grid.

    The underlying phantom is subject ``STRESS_INDEX0 + index`` of cohort ``seed``,
    defect-free.
    """
    if kind not in STRESS_KINDS:
        raise InputError(f"unknown stress case {kind!r}; use one of {', '.join(STRESS_KINDS)}")
    i = STRESS_INDEX0 + int(index)
    lm, _ = make_phantom(i, size=size, seed=seed, defect_rate=0.0, overrides=_OVERRIDES.get(kind))
    if kind == "elastic":
        return LabelMap(elastic_deformation(lm.data, seed=seed * 1_000_003 + i), lm.affine)
    if kind == "mirrored":
        # The centred grid is symmetric about x = 0: reversing the x axis mirrors the
        # heart in world space and keeps it centred.
        return LabelMap(np.ascontiguousarray(lm.data[::-1]), lm.affine)
    return lm


def stress_set(
    n_per_kind: int = 2, size: int = 64, seed: int = 1, kinds: tuple[str, ...] = STRESS_KINDS
) -> list[tuple[str, LabelMap]]:
    """``n_per_kind`` cases of every kind, as ``("kind_index", map)`` pairs."""
    return [
        (f"{kind}_{i}", stress_case(kind, i, size, seed))
        for kind in kinds
        for i in range(n_per_kind)
    ]


__all__ = ["STRESS_KINDS", "elastic_deformation", "stress_case", "stress_set"]
