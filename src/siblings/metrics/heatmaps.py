"""Occupancy heatmaps of a cohort (paper §3.5 and Fig. 5, SPEC §5).

``P`` is the voxel-wise mean of the one-hot maps of a cohort, shape ``(7, D, H, W)``;
``P[c]`` is the fraction of maps with label ``c`` at each voxel. The paper shows the
"heart" channel ``1 − P_background`` and the difference
``P_diff = P_synthetic − P_real``, masked where either ``P`` is zero.

:class:`Occupancy` accumulates integer counts map by map (streaming): its memory is one
``uint32`` count per tissue and voxel, whatever the cohort size, and partial sums from
worker processes merge exactly (integer addition does not depend on order).

Example
-------
>>> import numpy as np
>>> from siblings.metrics.heatmaps import Occupancy
>>> occ = Occupancy()
>>> a = np.zeros((4, 4, 4), np.uint8); a[:2] = 4
>>> occ.add(a); occ.add(np.zeros_like(a))
>>> float(occ.probability("LV")[0, 0, 0]), float(occ.probability("heart")[3, 0, 0])
(0.5, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import anatomy
from ..errors import InputError

HEART = "heart"  # the 1 − P_background channel


@dataclass(frozen=True)
class OccupancyPartial:
    """Counts of some maps inside a box: what a worker process sends back (small)."""

    shape: tuple[int, int, int]
    n: int
    box: tuple[slice, slice, slice] | None
    counts: np.ndarray | None  # (*box shape, NUM_LABELS - 1), unsigned integers


class Occupancy:
    """Streaming sum of one-hot label maps on a fixed grid.

    Only the tissue channels (labels 1–6) are counted; the background count is
    ``n − Σ tissues``. Maps can be added one by one (:meth:`add`) or as partial sums
    from another accumulator (:meth:`merge`). Counts are stored voxel-major,
    ``(D, H, W, 6)``, so adding a map is one scatter over its tissue voxels.

    Parameters
    ----------
    shape : grid shape (D, H, W); taken from the first map when None.
    """

    def __init__(self, shape: tuple[int, int, int] | None = None):
        self.shape: tuple[int, int, int] | None = None if shape is None else tuple(shape)  # type: ignore[assignment]
        self.n = 0
        self._counts: np.ndarray | None = None
        self._lo: np.ndarray | None = None  # bounding box of everything added so far
        self._hi: np.ndarray | None = None

    # -- accumulation ------------------------------------------------------------
    def _ensure(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.shape is None:
            self.shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        if tuple(shape) != self.shape:
            raise InputError(
                f"grid is {'x'.join(map(str, shape))}, but the cohort's is "
                f"{'x'.join(map(str, self.shape))}"
            )
        if self._counts is None:
            # np.zeros maps untouched pages lazily, so a sparse cohort stays small.
            self._counts = np.zeros((*self.shape, anatomy.NUM_LABELS - 1), dtype=np.uint32)
        return self._counts

    def _grow_box(self, lo: np.ndarray, hi: np.ndarray) -> None:
        self._lo = lo if self._lo is None else np.minimum(self._lo, lo)
        self._hi = hi if self._hi is None else np.maximum(self._hi, hi)

    def add(self, label_map: np.ndarray) -> None:
        """Add one label map (3D integer array, values 0–6; C or Fortran order)."""
        lab = np.asarray(label_map)
        if lab.ndim != 3:
            raise ValueError(f"expected a 3D label map, got shape {lab.shape}")
        counts = self._ensure(lab.shape)
        d, h, w = lab.shape
        # NIfTI data arrive in Fortran order: walk it in memory order instead of copying.
        fortran = lab.flags.f_contiguous and not lab.flags.c_contiguous
        flat = lab.ravel(order="F" if fortran else "C")
        pos = np.flatnonzero(flat > 0)
        self.n += 1
        if pos.size == 0:
            return
        labels = flat[pos].astype(np.intp)
        if int(labels.max()) >= anatomy.NUM_LABELS:
            raise InputError(f"labels must be 0–{anatomy.NUM_LABELS - 1}")
        if fortran:
            x, rest = pos % d, pos // d
            y, z = rest % h, rest // h
            pos = (x * h + y) * w + z
            lo = np.array([x.min(), y.min(), z[0]])
            hi = np.array([x.max(), y.max(), z[-1]])
        else:
            rest = pos // w
            lo = np.array([pos[0] // (h * w), (rest % h).min(), (pos % w).min()])
            hi = np.array([pos[-1] // (h * w), (rest % h).max(), (pos % w).max()])
        # One scatter over the tissue voxels; a map never hits the same (voxel, label) twice.
        counts.reshape(-1)[pos * (anatomy.NUM_LABELS - 1) + (labels - 1)] += 1
        self._grow_box(lo, hi + 1)

    def partial(self) -> OccupancyPartial:
        """The counts inside the bounding box of all maps added so far (for transport)."""
        if self.shape is None:
            return OccupancyPartial((0, 0, 0), self.n, None, None)
        if self._lo is None or self._counts is None:
            return OccupancyPartial(self.shape, self.n, None, None)
        box = tuple(slice(int(a), int(b)) for a, b in zip(self._lo, self._hi, strict=True))
        # The smallest integer type that holds n: a chunk of 32 maps travels as uint8.
        dtype = np.uint8 if self.n < 1 << 8 else np.uint16 if self.n < 1 << 16 else np.uint32
        return OccupancyPartial(self.shape, self.n, box, self._counts[box].astype(dtype))  # type: ignore[arg-type,index]

    def merge(self, other: Occupancy | OccupancyPartial) -> None:
        """Add the counts of another accumulator (or of its :meth:`partial`)."""
        part = other.partial() if isinstance(other, Occupancy) else other
        if part.n == 0:
            return
        if part.box is None:
            if part.shape != (0, 0, 0):
                self._ensure(part.shape)
            self.n += part.n
            return
        counts = self._ensure(part.shape)
        counts[part.box] += part.counts
        self.n += part.n
        self._grow_box(np.array([s.start for s in part.box]), np.array([s.stop for s in part.box]))

    # -- results -----------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Memory held by the counts (bytes): independent of the number of maps."""
        return 0 if self._counts is None else int(self._counts.nbytes)

    def counts(self) -> np.ndarray:
        """Integer counts, shape (7, D, H, W): maps with label c at each voxel."""
        if self._counts is None or self.n == 0:
            raise ValueError("no label maps added")
        tissue = np.moveaxis(self._counts, -1, 0).astype(np.int64)
        return np.concatenate([self.n - tissue.sum(axis=0, keepdims=True), tissue])

    def probabilities(self, dtype: type = np.float32) -> np.ndarray:
        """``P``, shape (7, D, H, W): the voxel-wise mean of the one-hot maps."""
        return (self.counts() / self.n).astype(dtype)

    def probability(self, channel: str, dtype: type = np.float32) -> np.ndarray:
        """One channel of ``P`` by tissue name, or ``"heart"`` for ``1 − P_background``."""
        if self._counts is None or self.n == 0:
            raise ValueError("no label maps added")
        if channel == HEART:
            return (self._counts.sum(axis=-1, dtype=np.int64) / self.n).astype(dtype)
        if channel not in anatomy.LABELS:
            raise InputError(
                f"unknown channel {channel!r}; use {HEART!r} or one of {', '.join(anatomy.LABEL_NAMES)}"
            )
        c = anatomy.LABELS[channel]
        if c == 0:
            return (1.0 - self._counts.sum(axis=-1, dtype=np.int64) / self.n).astype(dtype)
        return (self._counts[..., c - 1] / self.n).astype(dtype)


def occupancy_difference(p_synthetic: np.ndarray, p_real: np.ndarray) -> np.ma.MaskedArray:
    """``P_diff = P_synthetic − P_real``, masked where either occupancy is zero (paper Fig. 5).

    Positive values mean more synthetic occupancy ("synthetic bias"), negative more real.
    """
    a, b = np.asarray(p_synthetic), np.asarray(p_real)
    if a.shape != b.shape:
        raise ValueError(f"occupancy shapes differ: {a.shape} and {b.shape}")
    diff = a.astype(np.float32) - b.astype(np.float32)
    return np.ma.MaskedArray(diff, mask=(a == 0) | (b == 0))
