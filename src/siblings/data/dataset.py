"""Torch dataset over a folder of prepared label maps, and label-safe augmentation.

The dataset returns one-hot float tensors ``(7, D, H, W)`` (SPEC §1). Augmentation
follows the paper's appendix A (random scaling, rotation about each axis, translation)
and never invents labels: it resamples either the integer labels by nearest neighbour
or the one-hot channels linearly followed by argmax (SPEC §2, step 2).

Example
-------
>>> from siblings.data.dataset import LabelMapDataset, RandomAffineLabels
>>> ds = LabelMapDataset("data/phantom64", size=64)          # doctest: +SKIP
>>> x = ds[0]                                               # doctest: +SKIP
>>> x.shape                                                  # doctest: +SKIP
torch.Size([7, 64, 64, 64])
>>> aug = RandomAffineLabels(scale=(0.5, 1.5), rotation_deg=180, translation_vox=20)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import anatomy
from ..errors import InputError
from ..io import list_label_maps, one_hot, read_label_map


class LabelMapDataset(torch.utils.data.Dataset):
    """Label maps of a cohort folder as one-hot tensors.

    Parameters
    ----------
    source : a folder of ``*.nii.gz`` maps, or a list of files.
    size : required grid size (maps on another grid raise a clear error), or None.
    spacing : required voxel size in mm, or None (defaults to the preset's when
        ``size`` is given: 179.2 mm / size).
    cache : keep every map in memory as uint8 (fast; 512 maps at 64³ take 134 MB).
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        size: int | None = None,
        spacing: float | None = None,
        cache: bool = True,
    ):
        if isinstance(source, (str, os.PathLike)):
            self.files = list_label_maps(source)
        else:
            self.files = [Path(f) for f in source]
            if not self.files:
                raise InputError("no label maps given")
        self.size = size
        self.spacing = (
            spacing
            if spacing is not None
            else (anatomy.voxel_size_mm(size) if size is not None else None)
        )
        self._cache: list[np.ndarray] | None = None
        if cache:
            self._cache = [self._read(i) for i in range(len(self.files))]

    def _read(self, i: int) -> np.ndarray:
        shape = None if self.size is None else (self.size,) * 3
        return read_label_map(self.files[i], shape=shape, spacing=self.spacing).data

    def __len__(self) -> int:
        return len(self.files)

    def labels(self, i: int) -> torch.Tensor:
        """Integer labels ``(D, H, W)`` of map ``i``."""
        arr = self._cache[i] if self._cache is not None else self._read(i)
        return torch.from_numpy(np.ascontiguousarray(arr))

    def __getitem__(self, i: int) -> torch.Tensor:
        return one_hot(self.labels(i))


def _rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Batch of rotation matrices ``Rz·Ry·Rx`` from angles ``(B, 3)`` in radians."""
    cx, cy, cz = torch.cos(angles).unbind(-1)
    sx, sy, sz = torch.sin(angles).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


@dataclass
class RandomAffineLabels:
    """Random similarity transform of a batch of label maps, label-safe.

    Parameters
    ----------
    scale : (low, high) isotropic zoom factor of the anatomy (paper: 0.5–1.5).
    rotation_deg : maximum absolute rotation about each axis (paper: 180).
    translation_vox : maximum absolute shift along each axis, in voxels (paper: 20).
    mode : ``"onehot"`` (linear interpolation of one-hot channels, then argmax) or
        ``"nearest"``.
    p : probability that a map is transformed at all.
    """

    scale: tuple[float, float] = (0.5, 1.5)
    rotation_deg: float = 180.0
    translation_vox: float = 20.0
    mode: str = "onehot"
    p: float = 1.0
    elastic_vox: float = 0.0
    elastic_points: int = 5

    def sample_theta(
        self, batch: int, size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Random ``(B, 3, 4)`` affine matrices in normalised grid coordinates."""
        u = torch.rand(batch, 8, generator=generator, dtype=torch.float64)
        lo, hi = self.scale
        s = lo + (hi - lo) * u[:, 0]
        angles = (2 * u[:, 1:4] - 1) * math.radians(self.rotation_deg)
        shift = (2 * u[:, 4:7] - 1) * self.translation_vox * 2.0 / size
        apply = u[:, 7] < self.p
        rot = _rotation_matrix(angles)
        # Output voxel x samples the input at R·x/s + t: the anatomy grows by s.
        a = rot / s[:, None, None]
        eye = torch.eye(3, dtype=torch.float64).expand(batch, 3, 3)
        a = torch.where(apply[:, None, None], a, eye)
        t = torch.where(apply[:, None], shift, torch.zeros_like(shift))
        return torch.cat([a, t[:, :, None]], dim=2)

    def sample_displacement(
        self, batch: int, size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """A smooth random displacement ``(B, size, size, size, 3)`` in normalised grid
        units, or None when ``elastic_vox`` is 0.

        Gaussian control-point displacements (standard deviation ``elastic_vox``
        voxels) on an ``elastic_points``³ lattice, interpolated trilinearly to the grid. With a lattice spacing of ~16 voxels and a few
        voxels of displacement the map stays one-to-one (its Jacobian stays positive),
        so it moves interfaces without creating islands or new contacts.
        """
        if self.elastic_vox <= 0:
            return None
        k = self.elastic_points
        ctrl = torch.randn(batch, 3, k, k, k, generator=generator, dtype=torch.float64)
        ctrl = ctrl * self.elastic_vox * 2.0 / size
        field = F.interpolate(ctrl, size=(size,) * 3, mode="trilinear", align_corners=True)
        return field.permute(0, 2, 3, 4, 1).contiguous()

    def __call__(
        self,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
        theta: torch.Tensor | None = None,
        displacement: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Transform integer labels ``(B, D, H, W)``; returns integer labels.

        ``theta`` (``(B, 3, 4)`` from :meth:`sample_theta`) replaces the random draw, so
        a distributed run can draw the transforms of its global batch and apply a share;
        ``displacement`` (from :meth:`sample_displacement`) likewise for the elastic part.
        """
        if labels.ndim != 4:
            raise ValueError(f"expected labels (B, D, H, W), got {tuple(labels.shape)}")
        b, d, h, w = labels.shape
        if theta is None:
            theta = self.sample_theta(b, max(d, h, w), generator)
            if displacement is None:
                displacement = self.sample_displacement(b, max(d, h, w), generator)
        theta = theta.to(torch.float32).to(labels.device)
        grid = F.affine_grid(theta, [b, 1, d, h, w], align_corners=False)
        if displacement is not None:
            # Maps left untransformed by ``p`` keep their identity affine; the elastic
            # part applies to every map.
            grid = grid + displacement.to(grid.dtype).to(grid.device)
        if self.mode == "nearest":
            out = F.grid_sample(
                labels[:, None].float(),
                grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=False,
            )
            return out[:, 0].round().to(labels.dtype)
        if self.mode == "onehot":
            oh = one_hot(labels)
            out = F.grid_sample(
                oh, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
            return out.argmax(1).to(labels.dtype)
        raise InputError(f"unknown interpolation mode {self.mode!r}; use 'onehot' or 'nearest'")
