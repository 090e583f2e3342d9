"""Overlap of label maps: the one Dice of the package, with an explicit empty-mask rule.

Dice of two masks is ``2 |A ∩ B| / (|A| + |B|)``; it is undefined when both are empty,
and each use needs its own answer there (like MONAI's ``ignore_empty``), so ``empty`` is
a required keyword:

- ``empty=1.0``: two maps that both lack a tissue agree on it (what editing reports:
  kept-tissue Dice, Dice against the twin, the round trip through the VAE);
- ``empty=nan``: no overlap to measure (the geometry round trip of ``data.geometry``);
- ``empty=0.0``: no credit for agreeing on nothing (the medoid of a TotalSegmentator
  cohort, :func:`dice_matrix`).

:func:`dice` works on two masks, :func:`tissue_dice` on two label maps per tissue,
:func:`kept_tissue_dice` is the tissue Dice of localized editing (``empty=1.0``) and
:func:`dice_matrix` the Dice of every pair of many masks at once. Counts are exact
integers; :func:`dice` and :func:`tissue_dice` divide in float64, :func:`dice_matrix`
in float32 (one matrix product per tissue).

Example
-------
>>> import numpy as np
>>> from siblings.metrics.overlap import dice, tissue_dice
>>> a = np.zeros((4, 4, 4), np.uint8); a[:2] = 4   # LV in the first half
>>> b = np.zeros_like(a); b[1:3] = 4               # LV shifted by one slice
>>> dice(a == 4, b == 4, empty=1.0)
0.5
>>> d = tissue_dice(a, b, empty=float("nan"))
>>> d["LV"], np.isnan(d["RV"])
(0.5, True)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .. import anatomy


def dice(a: np.ndarray, b: np.ndarray, *, empty: float) -> float:
    """Dice overlap ``2|A ∩ B| / (|A| + |B|)`` of two boolean masks on one grid.

    Parameters
    ----------
    a, b : boolean masks of the same shape.
    empty : the value when both masks are empty (1.0, NaN or 0.0; see the module).

    Returns
    -------
    float
        In [0, 1], or ``empty``.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return float(empty)
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def tissue_dice(
    a: np.ndarray,
    b: np.ndarray,
    tissues: Iterable[str] = anatomy.TISSUES,
    *,
    empty: float,
) -> dict[str, float]:
    """Dice of each tissue of two label maps (values 0–6) on one grid.

    Parameters
    ----------
    a, b : label maps of the same shape.
    tissues : tissue names (default all six, in ``anatomy.TISSUES`` order).
    empty : the value for a tissue both maps lack.

    Returns
    -------
    dict
        tissue → Dice, in the order of ``tissues``.
    """
    a, b = np.asarray(a), np.asarray(b)
    return {t: dice(a == anatomy.LABELS[t], b == anatomy.LABELS[t], empty=empty) for t in tissues}


def kept_tissue_dice(
    twin: np.ndarray, sibling: np.ndarray, tissues: Iterable[str]
) -> dict[str, float]:
    """Dice of each kept tissue, twin vs sibling (how well localized editing kept it).

    1.0 for a tissue that both maps lack (the twin had none to keep).
    """
    return tissue_dice(twin, sibling, tissues, empty=1.0)


def dice_matrix(masks: np.ndarray, *, empty: float) -> np.ndarray:
    """Dice of every pair of ``n`` masks, ``(n, n)`` float32, by one matrix product.

    Parameters
    ----------
    masks : ``(n, voxels)`` boolean (one flattened mask per row).
    empty : the value for a pair of empty masks (the diagonal of an empty mask too).

    Returns
    -------
    np.ndarray
        ``D[i, j]`` = Dice of masks i and j, in float32 (exact counts below 2²⁴ voxels).
    """
    x = np.asarray(masks).astype(np.float32)
    inter = x @ x.T
    size = x.sum(axis=1)
    denom = size[:, None] + size[None, :]
    return np.divide(2.0 * inter, denom, out=np.full_like(inter, empty), where=denom > 0)


__all__ = ["dice", "dice_matrix", "kept_tissue_dice", "tissue_dice"]
