"""Geometry of data preparation (SPEC §2 steps 2–6) and its inverse.

Everything is done in world millimetres with affines: a :class:`~siblings.io.LabelMap`
carries its voxel-to-world affine (nibabel's RAS+ convention), so scans stored with LPS
or RAS voxel axes, anisotropic voxels or oblique grids need no special case.

Preparation of one label map is ONE rigid world transform ``T`` (scanner RAS mm →
prepared RAS mm), composed of

1. reorientation: a rotation about the heart centre ``c`` (centroid of Myo ∪ LV ∪ RV ∪
   LA ∪ RA) taking the LV→LA centroid axis onto +z, with ``c`` moved to the origin, which
   is the centre of the prepared grid (:func:`siblings.io.centred_affine`), so this is
   also the crop/pad of step 4;
2. optional rigid (6-DOF) registration to a reference map in prepared space, on
   smoothed one-hot channels (SimpleITK by default, ANTs optionally);
3. optionally, a final tilt correction that puts the LV→LA axis back on +z after the
   registration (``keep_axis``; the registration's roll and translation are kept).

The label map is then resampled ONCE from the scanner grid straight onto the prepared
``size``³ grid (1.4 mm at 128³), label-safely: every one-hot channel is interpolated
linearly and the label with the largest value wins (nearest neighbour is an option).
No intermediate full-resolution isotropic volume is made, and only the bounding box of
the heart is touched, so a 0.8 × 0.8 × 1.5 mm whole-body scan costs little memory.

:func:`unprepare` applies the inverse transform to any map in prepared space (a
sibling, say), giving a label map on the original scanner grid.

Conventions: nibabel affines map voxel indices to RAS+ world coordinates; ITK and
SimpleITK physical space is LPS. Conversions between the two go through
:data:`RAS_TO_LPS` (``diag(-1, -1, 1)``), and only inside the registration engines.

Example
-------
>>> from siblings.data.phantom import make_phantom
>>> from siblings.data.geometry import prepare_label_map, unprepare
>>> twin, _ = make_phantom(0, size=32)
>>> prepared, transform = prepare_label_map(twin, size=32)
>>> prepared.shape, transform.target_shape
((32, 32, 32), (32, 32, 32))
>>> back = unprepare(prepared, transform)
>>> back.shape == twin.shape
True
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from .. import anatomy
from ..boxes import bounding_box
from ..errors import InputError
from ..io import LabelMap, LabelMapError, centred_affine, write_json
from ..metrics.overlap import tissue_dice

L = anatomy.LABELS
HEART_TISSUES: tuple[str, ...] = ("Myo", "LV", "RV", "LA", "RA")
"""Tissues whose union defines the heart centre (SPEC §2 step 4)."""

RAS_TO_LPS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Homogeneous flip between RAS+ (nibabel) and LPS (ITK) world coordinates."""

Interpolation = Literal["linear", "nearest"]
Engine = Literal["simpleitk", "ants"]
TRANSFORM_FORMAT = "digital-siblings rigid transform v1"


# ---------------------------------------------------------------------------------
# Small pieces of rigid geometry.
# ---------------------------------------------------------------------------------
def rigid(
    rotation: np.ndarray | None = None, translation: Sequence[float] | None = None
) -> np.ndarray:
    """Homogeneous 4×4 matrix ``x ↦ R x + t``."""
    m = np.eye(4)
    if rotation is not None:
        m[:3, :3] = rotation
    if translation is not None:
        m[:3, 3] = translation
    return m


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking direction ``a`` onto direction ``b`` (Rodrigues)."""
    a = np.asarray(a, float) / np.linalg.norm(a)
    b = np.asarray(b, float) / np.linalg.norm(b)
    v = np.cross(a, b)
    s, c = np.linalg.norm(v), float(np.dot(a, b))
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        # Antiparallel: half a turn about any axis perpendicular to a.
        perp = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(perp) < 1e-6:
            perp = np.cross(a, [0.0, 1.0, 0.0])
        perp /= np.linalg.norm(perp)
        return 2.0 * np.outer(perp, perp) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k * ((1.0 - c) / s**2)


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """Angle (degrees) of the rotation part of a rigid matrix."""
    r = np.asarray(matrix)[:3, :3]
    return math.degrees(math.acos(float(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def angle_to_z_deg(vector: np.ndarray) -> float:
    """Angle (degrees) between ``vector`` and +z."""
    v = np.asarray(vector, float)
    return math.degrees(math.acos(float(np.clip(v[2] / np.linalg.norm(v), -1.0, 1.0))))


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, float)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


# ---------------------------------------------------------------------------------
# Measurements in world millimetres.
# ---------------------------------------------------------------------------------
def label_counts(lm: LabelMap) -> dict[str, int]:
    """Voxel count of every tissue."""
    counts = np.bincount(np.asarray(lm.data).ravel(), minlength=anatomy.NUM_LABELS)
    return {t: int(counts[L[t]]) for t in anatomy.TISSUES}


def label_volumes_ml(lm: LabelMap) -> dict[str, float]:
    """Volume (mL) of every tissue."""
    return {t: n * lm.voxel_volume_ml for t, n in label_counts(lm).items()}


def label_centroids(lm: LabelMap) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """World (RAS mm) centroid and voxel count of every tissue present.

    Only the non-background voxels are visited, so a whole-body scan costs little.
    """
    data = np.asarray(lm.data)
    index = np.nonzero(data)
    values = data[index]
    counts = np.bincount(values, minlength=anatomy.NUM_LABELS)
    sums = np.stack(
        [
            np.bincount(values, weights=i.astype(np.float64), minlength=anatomy.NUM_LABELS)
            for i in index
        ],
        axis=1,
    )
    centroids, n = {}, {}
    for t in anatomy.TISSUES:
        k = L[t]
        if counts[k]:
            voxel = sums[k] / counts[k]
            centroids[t] = _apply(lm.affine, voxel)
            n[t] = int(counts[k])
    return centroids, n


def heart_centre(centroids: dict[str, np.ndarray], counts: dict[str, int]) -> np.ndarray:
    """Centroid of Myo ∪ LV ∪ RV ∪ LA ∪ RA from the per-tissue centroids (disjoint sets)."""
    present = [t for t in HEART_TISSUES if t in centroids]
    if not present:
        raise InputError("no heart tissue (Myo, LV, RV, LA, RA) in the label map")
    w = np.array([counts[t] for t in present], float)
    return np.sum([centroids[t] * wi for t, wi in zip(present, w, strict=True)], axis=0) / w.sum()


def long_axis(lm: LabelMap) -> np.ndarray:
    """Unit vector (world) from the LV centroid to the LA centroid."""
    c, _ = label_centroids(lm)
    missing = [t for t in ("LV", "LA") if t not in c]
    if missing:
        raise LabelMapError(lm.path, f"has no {' or '.join(missing)}; the LV→LA axis is undefined")
    v = c["LA"] - c["LV"]
    return v / np.linalg.norm(v)


def dice(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Dice overlap per tissue of two label arrays on the same grid (NaN if both empty)."""
    return tissue_dice(a, b, empty=float("nan"))


# ---------------------------------------------------------------------------------
# Label-safe resampling.
# ---------------------------------------------------------------------------------
def _foreground_box(data: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive index bounds of the non-background voxels, or None if there are none."""
    box = bounding_box(data)
    if box is None:
        return None
    return np.array([b.start for b in box]), np.array([b.stop - 1 for b in box])


def _box_image(
    index_map: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the image of the index box [lo, hi] under a homogeneous matrix."""
    corners = np.array(
        [[(lo, hi)[b][i] for i, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)], float
    )
    mapped = _apply(index_map, corners)
    return mapped.min(axis=0), mapped.max(axis=0)


def _resample_soft(
    source: LabelMap, matrix: np.ndarray, shape: Sequence[int], affine: np.ndarray
) -> np.ndarray:
    """Linearly interpolated one-hot channels ``(7, *shape)`` of ``source`` through world
    map ``matrix`` on grid (shape, affine): output voxel q samples source index ``M q``
    with ``M = A_src⁻¹ · matrix⁻¹ · A_out``.
    """
    shape = tuple(int(s) for s in shape)
    data = np.asarray(source.data)
    m = np.linalg.inv(source.affine) @ np.linalg.inv(matrix) @ np.asarray(affine, float)
    out = np.zeros((anatomy.NUM_LABELS, *shape), np.float32)
    out[0] = 1.0
    box = _foreground_box(data)
    if box is None:
        return out
    # Outside the foreground box everything is background: only touch the part of the
    # output grid that the (slightly grown) box maps onto, and only that part of the source.
    s_lo = np.maximum(box[0] - 2, 0)
    s_hi = np.minimum(box[1] + 2, np.array(data.shape) - 1)
    o_lo, o_hi = _box_image(np.linalg.inv(m), s_lo, s_hi)
    o_lo = np.clip(np.floor(o_lo).astype(int) - 1, 0, np.array(shape))
    o_hi = np.clip(np.ceil(o_hi).astype(int) + 2, 0, np.array(shape))
    if np.any(o_hi <= o_lo):
        return out
    crop = data[s_lo[0] : s_hi[0] + 1, s_lo[1] : s_hi[1] + 1, s_lo[2] : s_hi[2] + 1]
    sub = rigid(translation=-s_lo) @ m @ rigid(translation=o_lo)
    sub_shape = tuple(int(v) for v in o_hi - o_lo)
    region = tuple(slice(int(a), int(b)) for a, b in zip(o_lo, o_hi, strict=True))
    kw = dict(matrix=sub[:3, :3], offset=sub[:3, 3], output_shape=sub_shape, mode="constant")
    present = np.flatnonzero(np.bincount(crop.ravel(), minlength=anatomy.NUM_LABELS))
    for k in sorted(set(present.tolist()) | {0}):
        channel = (crop == k).astype(np.float32)
        out[(k, *region)] = ndimage.affine_transform(
            channel, order=1, cval=1.0 if k == 0 else 0.0, prefilter=False, **kw
        )
    return out


# Output voxels are visited in blocks of _BLOCK voxels per axis, found coarse to fine; a
# block is skipped when no foreground lies under its image, so a 512 x 512 x 248 scanner
# grid costs about what the voxels near the heart cost (its box around the heart holds
# 5-7 times more).
_BLOCK_LEVELS = (16, 4)
_BLOCK = _BLOCK_LEVELS[-1]
_CHUNK = 1 << 21  # output voxels interpolated per call (memory: ~100 MB of coordinates)


def _cell_labels(data: np.ndarray) -> np.ndarray:
    """Bit ``k`` of ``bits[f + 1]``: label ``k`` is among the 8 voxels ``f + {0, 1}³`` of
    the linear-interpolation cell with lower corner ``f`` (``f`` from −1 to n − 1)."""
    padded = np.pad(np.left_shift(1, data.astype(np.uint8)), 1)  # outside: no label
    n = tuple(s + 1 for s in data.shape)
    bits = np.zeros(n, np.uint8)
    for d in np.ndindex(2, 2, 2):
        bits |= padded[d[0] : d[0] + n[0], d[1] : d[1] + n[1], d[2] : d[2] + n[2]]
    return bits


def _blocks_meeting(
    integral: np.ndarray, m: np.ndarray, lower: np.ndarray, size: int, shape: tuple[int, ...]
) -> np.ndarray:
    """The output blocks (lower corners ``lower``, N×3, edge ``size``) whose image under
    ``m`` can meet a true cell of the touch array whose summed-area table is ``integral``."""
    top = np.minimum(lower + size - 1, np.array(shape) - 1)
    corners = np.stack([np.where(bits, top, lower) for bits in np.ndindex(2, 2, 2)], axis=1)
    mapped = corners.astype(float) @ m[:3, :3].T + m[:3, 3]  # (N, 8, 3) source indices
    # The image of a box lies in the box of its corners' images, so every voxel's cell
    # corner lies in [floor(min), floor(max)]; one more cell each way absorbs rounding.
    limit = np.array(integral.shape) - 1
    lo = np.clip(np.floor(mapped.min(axis=1)).astype(int), 0, limit)
    hi = np.clip(np.floor(mapped.max(axis=1)).astype(int) + 3, 0, limit)
    total = np.zeros(len(lower), np.int64)
    for bits in np.ndindex(2, 2, 2):
        idx = tuple(np.where(bits[a], hi[:, a], lo[:, a]) for a in range(3))
        total += (-1) ** (3 - sum(bits)) * integral[idx]
    return lower[(total > 0) & np.all(hi > lo, axis=1)]


def _needed_blocks(touch: np.ndarray, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Lower corners (N×3) of the ``_BLOCK``-sized output blocks whose image under ``m``
    can meet a cell where ``touch`` (indexed as :func:`_cell_labels`) is true."""
    integral = np.zeros(tuple(s + 1 for s in touch.shape), np.int64)
    integral[1:, 1:, 1:] = touch.cumsum(0).cumsum(1).cumsum(2)
    size = _BLOCK_LEVELS[0]
    lower = np.indices(tuple(-(-s // size) for s in shape)).reshape(3, -1).T * size
    lower = _blocks_meeting(integral, m, lower, size, shape)
    for finer in _BLOCK_LEVELS[1:]:
        split = np.indices((size // finer,) * 3).reshape(3, -1).T * finer
        lower = (lower[:, None, :] + split[None]).reshape(-1, 3)
        lower = lower[np.all(lower < np.array(shape), axis=1)]
        size = finer
        lower = _blocks_meeting(integral, m, lower, size, shape)
    return lower


def _block_voxels(corners: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Indices (3×N, int64) of the output voxels of the blocks at ``corners``."""
    offsets = np.indices((_BLOCK,) * 3).reshape(3, -1)
    idx = (corners.T[:, :, None] + offsets[:, None, :]).reshape(3, -1)
    return idx[:, np.all(idx < np.array(shape)[:, None], axis=0)]


def _resample_hard(
    data: np.ndarray, m: np.ndarray, shape: tuple[int, ...], interpolation: str
) -> np.ndarray:
    """uint8 labels on an output grid of ``shape``; output voxel q samples source index m q.

    Equal, voxel for voxel, to interpolating every one-hot channel over the whole output
    grid (``ndimage.affine_transform``, constant mode; nearest: the labels themselves)
    and taking the argmax (ties: the lower label). A voxel whose interpolation cell holds
    no foreground is background, so only the others are interpolated, at coordinates
    computed as ``affine_transform`` computes them (shift first, then axis by axis), and
    each channel only where its label is in the cell (elsewhere it is exactly 0).
    """
    if interpolation not in ("linear", "nearest"):
        raise InputError(f"unknown interpolation {interpolation!r}; use 'linear' or 'nearest'")
    out = np.zeros(shape, np.uint8)
    box = _foreground_box(data)
    if box is None:
        return out
    # Only the source's foreground box (with a background margin) is read: inside the
    # grid, constant mode's cval equals the background it replaces.
    s_lo = np.maximum(box[0] - 2, 0)
    s_hi = np.minimum(box[1] + 2, np.array(data.shape) - 1)
    crop = data[s_lo[0] : s_hi[0] + 1, s_lo[1] : s_hi[1] + 1, s_lo[2] : s_hi[2] + 1]
    bits = _cell_labels(crop)
    touch = bits > 1  # some foreground label in the cell
    blocks = _needed_blocks(touch, rigid(translation=-s_lo) @ m, shape)
    present = np.flatnonzero(np.bincount(crop.ravel(), minlength=anatomy.NUM_LABELS))
    labels = [k for k in present.tolist() if k > 0]
    # A small source (a model-space sibling going back to a scanner grid) keeps its
    # channels; a large one (a scan being prepared) has a small output: one chunk.
    small = crop.size <= 1 << 22
    cache: dict[int, np.ndarray] = {}

    def channel(k: int) -> np.ndarray:
        value = cache.get(k)
        if value is None:
            value = (crop == k).astype(np.float32)
            if small:
                cache[k] = value
        return value

    cells = np.array(bits.shape)
    flat_bits = bits.ravel()
    flat_out = out.reshape(-1)
    kw = dict(mode="constant", prefilter=False)
    per_chunk = max(1, _CHUNK // _BLOCK**3)
    for b in range(0, len(blocks), per_chunk):
        q = _block_voxels(blocks[b : b + per_chunk], shape)
        c = np.stack([m[h, 3] + m[h, 0] * q[0] + m[h, 1] * q[1] + m[h, 2] * q[2] for h in range(3)])
        c -= s_lo[:, None]  # exact: an integer shift of a coordinate of at least its size
        cell = np.floor(c).astype(np.int64) + 1
        ok = np.all((cell >= 0) & (cell < cells[:, None]), axis=0)
        code = np.zeros(ok.shape, np.uint8)
        code[ok] = flat_bits[np.ravel_multi_index(tuple(cell[:, ok]), bits.shape)]
        keep = np.flatnonzero(code > 1)
        c, code = c[:, keep], code[keep]
        where = np.ravel_multi_index(tuple(q[:, keep]), shape)
        if interpolation == "nearest":
            flat_out[where] = ndimage.map_coordinates(crop, c, order=0, cval=0, **kw)
            continue
        best = ndimage.map_coordinates(channel(0), c, order=1, cval=1.0, **kw)
        lab = np.zeros(best.shape, np.uint8)
        for k in labels:  # ascending, so ties keep the lower label (deterministic)
            sel = np.flatnonzero(code & (1 << k))
            value = ndimage.map_coordinates(channel(k), c[:, sel], order=1, cval=0.0, **kw)
            better = value > best[sel]
            best[sel[better]] = value[better]
            lab[sel[better]] = k
        flat_out[where] = lab
    return out


def resample_labels(
    lm: LabelMap,
    matrix: np.ndarray,
    shape: Sequence[int],
    affine: np.ndarray,
    interpolation: Interpolation = "linear",
) -> LabelMap:
    """Map ``lm`` through the world transform ``matrix`` onto the grid (``shape``, ``affine``).

    Parameters
    ----------
    lm : source label map (any affine: LPS/RAS voxel axes, anisotropic, oblique).
    matrix : 4×4 world transform (mm) from ``lm``'s world to the target world.
    shape, affine : the target grid; ``affine`` maps its voxel indices to world mm.
    interpolation : ``"linear"`` (default) interpolates every one-hot channel linearly
        and takes the argmax, which does not alias thin structures and keeps volumes;
        ``"nearest"`` copies the nearest source label.

    Voxels of the target that fall outside the source grid become background.

    Example
    -------
    >>> import numpy as np
    >>> from siblings.io import LabelMap
    >>> lm = LabelMap(np.pad(np.ones((4, 4, 4), np.uint8), 2), np.eye(4))
    >>> out = resample_labels(lm, np.eye(4), (4, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    >>> int(out.data.sum())
    8
    """
    matrix = np.asarray(matrix, float)
    affine = np.asarray(affine, float)
    m = np.linalg.inv(lm.affine) @ np.linalg.inv(matrix) @ affine
    out = _resample_hard(np.asarray(lm.data), m, tuple(int(v) for v in shape), interpolation)
    return LabelMap(out, affine)


def soft_channels(
    lm: LabelMap, matrix: np.ndarray, shape: Sequence[int], affine: np.ndarray
) -> np.ndarray:
    """Linearly interpolated one-hot channels ``(7, *shape)`` of ``lm`` on a target grid."""
    return _resample_soft(lm, np.asarray(matrix, float), shape, affine)


# ---------------------------------------------------------------------------------
# The stored transform.
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedTransform:
    """Where a prepared map came from: one rigid world transform plus both grids.

    ``matrix`` maps scanner world coordinates (RAS+ mm, as in the source NIfTI) to
    prepared world coordinates (RAS+ mm; the prepared grid is ``target_affine``), in
    homogeneous form: ``x_prepared = matrix @ [x_scan, 1]``. ``source_shape`` and
    ``source_affine`` are the original scan grid, so :func:`unprepare` can put any
    prepared-space map back onto it, with the scan's NIfTI ``source_codes`` (qform and
    sform codes, None if unknown). ``steps`` records how the matrix was composed.

    Example
    -------
    >>> t = PreparedTransform.load("prepared/s0001.xfm.json")  # doctest: +SKIP
    >>> t.to_prepared([[10.0, -20.0, 35.0]])                   # doctest: +SKIP
    """

    matrix: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    target_shape: tuple[int, int, int]
    target_affine: np.ndarray
    steps: dict[str, Any] = field(default_factory=dict, compare=False)
    source_codes: tuple[int, int] | None = field(default=None, compare=False)

    def to_prepared(self, points_mm: np.ndarray) -> np.ndarray:
        """Scanner world points (N×3, RAS mm) → prepared world points."""
        return _apply(self.matrix, points_mm)

    def to_scanner(self, points_mm: np.ndarray) -> np.ndarray:
        """Prepared world points (N×3, RAS mm) → scanner world points."""
        return _apply(np.linalg.inv(self.matrix), points_mm)

    def itk_matrix(self) -> np.ndarray:
        """The same map as ITK/SimpleITK resampling expects it.

        ITK transforms used for resampling map points of the *output* (here: prepared)
        space to the *input* (scanner) space, in LPS. This is that 4×4 matrix; set it on
        a ``sitk.AffineTransform`` to resample a CT image into prepared space.
        """
        return RAS_TO_LPS @ np.linalg.inv(self.matrix) @ RAS_TO_LPS

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRANSFORM_FORMAT,
            "convention": "x_prepared = matrix @ [x_scan, 1]; RAS+ world millimetres (nibabel)",
            # Unrounded: a map resampled with the loaded transform must equal one resampled
            # with this one (a label tie at one voxel flipped with 12 decimals).
            "matrix": self.matrix.tolist(),
            "source": {
                "shape": list(self.source_shape),
                "affine": self.source_affine.tolist(),
                **({"xform_codes": list(self.source_codes)} if self.source_codes else {}),
            },
            "target": {"shape": list(self.target_shape), "affine": self.target_affine.tolist()},
            "itk_prepared_to_scan_lps": np.round(self.itk_matrix(), 12).tolist(),
            "steps": self.steps,
        }

    @classmethod
    def from_dict(
        cls, d: dict[str, Any], path: str | os.PathLike | None = None
    ) -> PreparedTransform:
        where = f"{path}: " if path is not None else ""
        if not isinstance(d, dict) or d.get("format") != TRANSFORM_FORMAT:
            raise InputError(
                f"{where}not a digital-siblings transform (expected format {TRANSFORM_FORMAT!r})"
            )
        try:
            matrix = np.asarray(d["matrix"], float)
            src_shape = tuple(int(v) for v in d["source"]["shape"])
            src_affine = np.asarray(d["source"]["affine"], float)
            tgt_shape = tuple(int(v) for v in d["target"]["shape"])
            tgt_affine = np.asarray(d["target"]["affine"], float)
            codes = d["source"].get("xform_codes")
            src_codes = None if codes is None else (int(codes[0]), int(codes[1]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"{where}malformed transform ({exc})") from None
        for name, m in (
            ("matrix", matrix),
            ("source affine", src_affine),
            ("target affine", tgt_affine),
        ):
            if m.shape != (4, 4) or not np.all(np.isfinite(m)):
                raise InputError(f"{where}{name} must be a finite 4x4 matrix")
        if len(src_shape) != 3 or len(tgt_shape) != 3:
            raise InputError(f"{where}grid shapes must have 3 entries")
        r = matrix[:3, :3]
        if not np.allclose(r.T @ r, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise InputError(f"{where}matrix is not a rigid transform (rotation + translation)")
        return cls(
            matrix,
            src_shape,  # type: ignore[arg-type]
            src_affine,
            tgt_shape,  # type: ignore[arg-type]
            tgt_affine,
            d.get("steps", {}),
            src_codes,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreparedTransform:
        """Read a transform JSON; errors name the file."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(d, path)


# ---------------------------------------------------------------------------------
# Registration (SPEC §2 step 5).
# ---------------------------------------------------------------------------------
# Label → intensity of the scalar image the ANTs engine registers (ANTsPy's rigid
# registration takes one image per side; Mattes mutual information only needs the
# values to be distinct).
_INTENSITY = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], np.float32)


@dataclass
class Reference:
    """A registration target: a prepared label map and its cached coarse channels.

    Build it once per cohort with :meth:`from_label_map` and pass it to
    :func:`prepare_label_map` for every subject.

    Example
    -------
    >>> from siblings.data.phantom import make_phantom
    >>> ref_map, _ = prepare_label_map(make_phantom(0, size=32)[0], size=32)
    >>> ref = Reference.from_label_map(ref_map, register_size=32)
    >>> ref.channels.shape
    (7, 32, 32, 32)
    """

    label_map: LabelMap
    register_size: int
    channels: np.ndarray  # (7, n, n, n) one-hot, linearly resampled to the coarse grid
    centroids: dict[str, np.ndarray]

    @classmethod
    def from_label_map(cls, lm: LabelMap, register_size: int = 48) -> Reference:
        grid = coarse_affine(register_size)
        channels = soft_channels(lm, np.eye(4), (register_size,) * 3, grid)
        centroids, _ = label_centroids(lm)
        return cls(lm, register_size, channels, centroids)


def coarse_affine(register_size: int) -> np.ndarray:
    """The registration grid: the prepared field of view at ``register_size``³."""
    return centred_affine(register_size)


def smooth_channels(channels: np.ndarray, sigma_vox: float) -> np.ndarray:
    """Gaussian-smooth every channel (``sigma_vox`` in voxels; 0 returns the input)."""
    if sigma_vox <= 0:
        return channels
    return np.stack([ndimage.gaussian_filter(c, sigma_vox, mode="nearest") for c in channels])


def overlap_ssd(fixed: np.ndarray, moving: np.ndarray) -> float:
    """Mean over voxels of the squared difference of the tissue channels, summed over
    channels (the metric the registration minimises)."""
    return float(np.mean(np.sum((fixed[1:] - moving[1:]) ** 2, axis=0)))


def _rodrigues(w: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(w))
    if theta < 1e-12:
        return np.eye(3)
    k = w / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * kx + (1.0 - math.cos(theta)) * kx @ kx


def centroid_alignment(
    moving_points: np.ndarray, fixed_points: np.ndarray, engine: str = "simpleitk"
) -> np.ndarray:
    """Least-squares rigid map (4×4, RAS) taking ``moving_points`` onto ``fixed_points``.

    With the SimpleITK engine this is ``sitk.LandmarkBasedTransformInitializer`` (in LPS,
    converted back); otherwise the closed-form Kabsch solution, which gives the same.
    """
    moving_points = np.asarray(moving_points, float)
    fixed_points = np.asarray(fixed_points, float)
    if engine == "simpleitk":
        import SimpleITK as sitk

        flip = RAS_TO_LPS[:3, :3]
        tx = sitk.LandmarkBasedTransformInitializer(
            sitk.VersorRigid3DTransform(),
            (fixed_points @ flip).ravel().tolist(),
            (moving_points @ flip).ravel().tolist(),
        )
        tx = sitk.VersorRigid3DTransform(tx)
        r = np.array(tx.GetMatrix()).reshape(3, 3)
        c, t = np.array(tx.GetCenter()), np.array(tx.GetTranslation())
        fixed_to_moving_lps = rigid(r, t + c - r @ c)  # ITK maps fixed → moving points
        return np.linalg.inv(RAS_TO_LPS @ fixed_to_moving_lps @ RAS_TO_LPS)
    mc, fc = moving_points.mean(axis=0), fixed_points.mean(axis=0)
    h = (moving_points - mc).T @ (fixed_points - fc)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rigid(r, fc - r @ mc)


def _affine_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points @ m[:3, :3].T + m[:3, 3]`` by broadcasting (no BLAS threads)."""
    return (
        points[:, 0:1] * m[:3, 0] + points[:, 1:2] * m[:3, 1] + points[:, 2:3] * m[:3, 2] + m[:3, 3]
    )


def _trilinear(volumes: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sample a stack of volumes ``(C, X, Y, Z)`` at index points ``(N, 3)`` → ``(N, C)``.

    Trilinear, zero outside the grid. All channels share the weights, so one pass over
    the eight cell corners serves every channel.
    """
    shape = np.array(volumes.shape[1:])
    base = np.floor(coords).astype(np.int64)
    frac = (coords - base).astype(np.float32)
    flat = volumes.reshape(volumes.shape[0], -1)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    out = np.zeros((volumes.shape[0], len(coords)), np.float32)
    for corner in np.ndindex(2, 2, 2):
        c = base + corner
        w = np.prod(np.where(np.array(corner, bool), frac, 1.0 - frac), axis=1)
        w *= np.all((c >= 0) & (c < shape), axis=1)
        out += flat[:, np.clip(c, 0, shape - 1) @ strides] * w
    return out.T


def _refine_channels(
    moving: np.ndarray,
    fixed: np.ndarray,
    grid_affine: np.ndarray,
    initial: np.ndarray,
    sigmas_vox: Sequence[float],
    iterations: int,
    margin_mm: float,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Minimise the SSD of smoothed one-hot tissue channels over rigid maps.

    Levenberg–Marquardt (damped Gauss–Newton) on ``Σ_c Σ_p (M_c(A p) − F_c(p))²``, with
    ``A`` the fixed → moving point map and ``p`` the fixed grid points within
    ``margin_mm`` of the heart. A step is a small rotation ``ω`` about the points'
    centre ``c`` plus a shift ``δ``: ``∂r/∂ω = (q − c) × ∇M_c(q)``, ``∂r/∂δ = ∇M_c(q)``.
    Coarse-to-fine over ``sigmas_vox``. Returns the moving → fixed map and a log.
    """
    voxel = float(np.linalg.norm(grid_affine[:3, 0]))
    to_index = np.linalg.inv(grid_affine)
    a = np.linalg.inv(initial)
    log: list[dict[str, Any]] = []
    for sigma in sigmas_vox:
        f_ch = smooth_channels(fixed[1:], sigma)
        m_ch = smooth_channels(moving[1:], sigma)
        # Image gradients in world units: d/d(world) = A⁻ᵀ d/d(index).
        lin = to_index[:3, :3]
        grads = np.stack([np.einsum("aijk,ab->bijk", np.stack(np.gradient(c)), lin) for c in m_ch])
        mask = ndimage.binary_dilation(
            f_ch.sum(axis=0) > 0.05, iterations=max(1, round(margin_mm / voxel))
        )
        idx = np.argwhere(mask).astype(np.float64)
        points = _affine_points(grid_affine, idx)
        f = f_ch[:, mask].T  # (N, 6)
        centre = points.mean(axis=0)

        stack = np.ascontiguousarray(
            np.concatenate([m_ch, grads.reshape(-1, *m_ch.shape[1:])]), dtype=np.float32
        )
        n_ch = len(m_ch)

        def sample(a: np.ndarray, with_gradient: bool, points=points, stack=stack, n_ch=n_ch):
            q = _affine_points(a, points)
            values = _trilinear(
                stack if with_gradient else stack[:n_ch], _affine_points(to_index, q)
            )
            m = values[:, :n_ch]
            g = values[:, n_ch:].reshape(len(q), n_ch, 3) if with_gradient else None
            return q, m, g

        q, m, g = sample(a, True)
        cost = float(np.sum((m - f) ** 2))
        start_cost, lam, done = cost, 1e-3, 0
        for done in range(1, iterations + 1):  # noqa: B007
            r = (m - f).reshape(-1)
            jac = np.concatenate([np.cross((q - centre)[:, None, :], g), g], axis=2).reshape(-1, 6)
            # einsum, not matmul: tall-skinny BLAS calls spin-wait on a busy machine.
            h, b = np.einsum("ni,nj->ij", jac, jac), np.einsum("ni,n->i", jac, r)
            accepted = False
            while lam < 1e8:
                d = np.linalg.solve(h + lam * np.diag(np.diag(h) + 1e-12), -b)
                rot = _rodrigues(d[:3])
                a_new = rigid(rot, centre - rot @ centre + d[3:]) @ a
                _, m_new, _ = sample(a_new, False)
                cost_new = float(np.sum((m_new - f) ** 2))
                if cost_new < cost:
                    accepted, lam = True, max(lam / 3.0, 1e-7)
                    break
                lam *= 4.0
            if not accepted:
                break
            a, cost = a_new, cost_new
            q, m, g = sample(a, True)
            if np.linalg.norm(d[:3]) < math.radians(0.01) and np.linalg.norm(d[3:]) < 0.01:
                break
        log.append(
            {
                "sigma_vox": sigma,
                "iterations": done,
                "points": len(points),
                "ssd_start": start_cost / len(points),
                "ssd_end": cost / len(points),
            }
        )
    return np.linalg.inv(a), log


def register_rigid(
    moving: np.ndarray,
    fixed: np.ndarray,
    grid_affine: np.ndarray,
    initial: np.ndarray | None = None,
    engine: Engine = "simpleitk",
    seed: int = 0,
    sigmas_vox: Sequence[float] = (2.0, 1.0),
    iterations: int = 50,
    margin_mm: float = 10.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Rigid (6-DOF) registration of two stacks of one-hot channels (SPEC §2 step 5).

    Parameters
    ----------
    moving, fixed : ``(7, n, n, n)`` one-hot (or soft) channels on the grid ``grid_affine``.
    initial : 4×4 world map (RAS mm) from moving to fixed space to start from.
    engine : ``"simpleitk"`` (default): the sum over tissue channels of squared
        differences of the Gaussian-smoothed channels, minimised by damped Gauss–Newton,
        coarse to fine (``sigmas_vox``), within ``margin_mm`` of the reference heart.
        (SimpleITK's registration framework refuses vector images, and on a single
        label-intensity image its metrics made the channel overlap worse than the
        centroid start, so the channel metric is minimised here directly.)
        ``"ants"``: ANTs ``Rigid`` (Mattes mutual information) on the label-intensity
        image, as in the paper; needs ``antspyx``.

    Returns
    -------
    (matrix, info)
        ``matrix`` maps moving world → fixed world (RAS mm); ``info`` records the
        engine, iterations and the channel SSD (σ = 1 voxel) before and after. The
        result is never worse than ``initial`` by that measure.
    """
    init = np.eye(4) if initial is None else np.asarray(initial, float)
    if engine == "simpleitk":
        matrix, levels = _refine_channels(
            moving, fixed, grid_affine, init, sigmas_vox, iterations, margin_mm
        )
        info: dict[str, Any] = {
            "engine": "simpleitk",
            "metric": "sum of squared differences of Gaussian-smoothed one-hot tissue channels",
            "optimiser": "damped Gauss-Newton (Levenberg-Marquardt), coarse to fine",
            "levels": levels,
        }
    elif engine == "ants":
        matrix, info = _register_ants(moving, fixed, grid_affine, init, seed)
    else:
        raise InputError(f"unknown registration engine {engine!r}; use 'simpleitk' or 'ants'")
    n = moving.shape[1:]
    f1 = smooth_channels(fixed, 1.0)
    before = smooth_channels(soft_resample_channels(moving, init, n, grid_affine), 1.0)
    after = smooth_channels(soft_resample_channels(moving, matrix, n, grid_affine), 1.0)
    info["ssd_initial"] = overlap_ssd(f1, before)
    info["ssd_final"] = overlap_ssd(f1, after)
    if info["ssd_final"] > info["ssd_initial"]:
        info["kept_initial"] = True  # never end worse than the starting point
        info["ssd_final"] = info["ssd_initial"]
        matrix = init
    return matrix, info


def soft_resample_channels(
    channels: np.ndarray, matrix: np.ndarray, shape: Sequence[int], affine: np.ndarray
) -> np.ndarray:
    """Resample float channels on grid ``affine`` through world map ``matrix`` (linear)."""
    m = np.linalg.inv(affine) @ np.linalg.inv(matrix) @ affine
    out = np.empty((channels.shape[0], *shape), np.float32)
    for k, c in enumerate(channels):
        out[k] = ndimage.affine_transform(
            c,
            m[:3, :3],
            offset=m[:3, 3],
            output_shape=tuple(shape),
            order=1,
            mode="constant",
            cval=1.0 if k == 0 else 0.0,
            prefilter=False,
        )
    return out


def _register_ants(moving, fixed, grid_affine, init, seed):
    try:
        import ants  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError(
            "registration engine 'ants' needs antspyx, which is not installed; "
            "install it with `pip install antspyx` (the [ants] extra) or use engine 'simpleitk'"
        ) from None

    lps = RAS_TO_LPS @ np.asarray(grid_affine, float)
    spacing = tuple(float(s) for s in np.linalg.norm(lps[:3, :3], axis=0))
    direction = lps[:3, :3] / np.array(spacing)

    def image(channels):
        # ants.from_numpy indexes arrays as (i, j, k) like nibabel.
        scalar = np.tensordot(_INTENSITY, smooth_channels(channels, 1.0), axes=1)
        return ants.from_numpy(
            scalar.astype(np.float32),
            origin=tuple(float(v) for v in lps[:3, 3]),
            spacing=spacing,
            direction=direction,
        )

    start = RAS_TO_LPS @ np.linalg.inv(init) @ RAS_TO_LPS  # fixed → moving, LPS
    with tempfile.TemporaryDirectory() as tmp:
        init_tx = ants.create_ants_transform(
            transform_type="AffineTransform",
            dimension=3,
            matrix=start[:3, :3],
            translation=start[:3, 3],
        )
        init_path = os.path.join(tmp, "init.mat")
        ants.write_transform(init_tx, init_path)
        result = ants.registration(
            fixed=image(fixed),
            moving=image(moving),
            type_of_transform="Rigid",
            initial_transform=[init_path],
            aff_metric="mattes",
            aff_random_sampling_rate=1.0,
            random_seed=seed,
            outprefix=os.path.join(tmp, "reg_"),
        )
        # fwdtransforms map fixed points to moving points (ITK convention); as in
        # antsApplyTransforms, the last one in the list acts first. ANTs collapses the
        # initial and the rigid stage into one affine file by default.
        total = np.eye(4)
        for path in result["fwdtransforms"]:
            tx = ants.read_transform(path)
            p = np.asarray(tx.parameters, float)
            c = np.asarray(tx.fixed_parameters, float)
            r = p[:9].reshape(3, 3)
            total = total @ rigid(r, p[9:12] + c - r @ c)
    matrix = np.linalg.inv(RAS_TO_LPS @ total @ RAS_TO_LPS)
    return matrix, {"engine": "ants", "metric": "Mattes mutual information (ANTs Rigid)"}


# ---------------------------------------------------------------------------------
# Preparation of one label map and its inverse.
# ---------------------------------------------------------------------------------
def reorientation(
    lm: LabelMap, centroids: tuple[dict[str, np.ndarray], dict[str, int]] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """SPEC §2 steps 3–4 as one world map: heart centre → origin, LV→LA axis → +z.

    ``centroids`` may pass :func:`label_centroids` ``(lm)`` if already computed.
    Returns the 4×4 matrix and a record of the centroids and angles.
    """
    centroids, counts = centroids if centroids is not None else label_centroids(lm)
    missing = [t for t in ("LV", "LA") if t not in centroids]
    if missing:
        raise LabelMapError(lm.path, f"has no {' or '.join(missing)}; cannot reorient (LV→LA axis)")
    centre = heart_centre(centroids, counts)
    axis = centroids["LA"] - centroids["LV"]
    r = rotation_between(axis, np.array([0.0, 0.0, 1.0]))
    matrix = rigid(r, -r @ centre)
    record = {
        "heart_centre_mm": centre.round(4).tolist(),
        "lv_centroid_mm": centroids["LV"].round(4).tolist(),
        "la_centroid_mm": centroids["LA"].round(4).tolist(),
        "axis_angle_to_z_before_deg": round(angle_to_z_deg(axis), 4),
        "rotation_deg": round(rotation_angle_deg(matrix), 4),
    }
    return matrix, record


def prepare_label_map(
    lm: LabelMap,
    reference: Reference | LabelMap | None = None,
    size: int = 128,
    interpolation: Interpolation = "linear",
    engine: Engine = "simpleitk",
    register_size: int = 48,
    keep_axis: bool = True,
    seed: int = 0,
) -> tuple[LabelMap, PreparedTransform]:
    """Bring one label map into the model's space (SPEC §2 steps 2–6).

    Parameters
    ----------
    lm : a cardiac label map (values 0–6) on any grid, e.g. a twin in scanner space.
    reference : a prepared map (or :class:`Reference`) to register to rigidly; None
        skips registration (reorientation and centring only).
    size : prepared grid size; voxels are 179.2 / size mm (1.4 mm at 128).
    interpolation : ``"linear"`` (one-hot + argmax, default) or ``"nearest"``.
    engine : registration engine, ``"simpleitk"`` or ``"ants"``.
    register_size : grid of the registration (coarse, same field of view).
    keep_axis : after registration, rotate about the heart centre so the LV→LA axis
        is exactly +z again (the registration's roll and shift are kept).
    seed : seed for engines that sample randomly.

    Returns
    -------
    (LabelMap, PreparedTransform)
        The prepared map on :func:`~siblings.io.centred_affine` ``(size)`` and the
        transform that :func:`unprepare` inverts.

    Example
    -------
    >>> from siblings.data.phantom import make_phantom
    >>> twin, _ = make_phantom(1, size=32)
    >>> prepared, t = prepare_label_map(twin, size=32)
    >>> bool(angle_to_z_deg(long_axis(prepared)) < 5.0)
    True
    """
    if size < 8:
        raise InputError(f"prepared grid size must be at least 8, got {size}")
    target_affine = centred_affine(size)
    target_shape = (size, size, size)
    subject_c, counts = label_centroids(lm)
    matrix, record = reorientation(lm, (subject_c, counts))
    steps: dict[str, Any] = {
        "resample": {"interpolation": interpolation, "voxel_mm": anatomy.voxel_size_mm(size)},
        "reorient": record,
        "crop": {
            "size": size,
            "centre": "heart centre (Myo ∪ LV ∪ RV ∪ LA ∪ RA) at the grid centre",
        },
    }
    if reference is not None:
        if isinstance(reference, LabelMap):
            reference = Reference.from_label_map(reference, register_size=min(register_size, size))
        n = reference.register_size
        grid = coarse_affine(n)
        moving = soft_channels(lm, matrix, (n,) * 3, grid)
        # Start: least-squares fit of the tissue centroids. It fixes the roll about the
        # long axis, which reorientation leaves open, and most of the rest.
        common = [t for t in anatomy.TISSUES if t in subject_c and t in reference.centroids]
        init = np.eye(4)
        if len(common) >= 3:
            init = centroid_alignment(
                _apply(matrix, np.array([subject_c[t] for t in common])),
                np.array([reference.centroids[t] for t in common]),
                engine=engine,
            )
        reg, info = register_rigid(moving, reference.channels, grid, init, engine=engine, seed=seed)
        info["grid"] = n
        info["centroid_start_rotation_deg"] = round(rotation_angle_deg(init), 4)
        info["rotation_deg"] = round(rotation_angle_deg(reg), 4)
        info["translation_mm"] = reg[:3, 3].round(4).tolist()
        matrix = reg @ matrix
        steps["register"] = info
        if keep_axis:
            lv, la = _apply(matrix, np.array([subject_c["LV"], subject_c["LA"]]))
            centre = _apply(matrix, heart_centre(subject_c, counts)[None])[0]
            tilt = rotation_between(la - lv, np.array([0.0, 0.0, 1.0]))
            fix = rigid(translation=centre) @ rigid(tilt) @ rigid(translation=-centre)
            steps["keep_axis"] = {"tilt_removed_deg": round(rotation_angle_deg(fix), 4)}
            matrix = fix @ matrix
    else:
        steps["register"] = {"skipped": "no reference"}
    out = resample_labels(lm, matrix, target_shape, target_affine, interpolation)
    transform = PreparedTransform(
        matrix=matrix,
        source_shape=lm.shape,
        source_affine=np.asarray(lm.affine, float),
        target_shape=target_shape,
        target_affine=target_affine,
        steps=steps,
        source_codes=lm.xform_codes,
    )
    return out, transform


def unprepare(
    label_map: LabelMap, transform: PreparedTransform, interpolation: Interpolation = "linear"
) -> LabelMap:
    """Map a label map in prepared space back onto the original scan grid (SPEC §2 step 6).

    ``label_map`` is any map on the prepared grid (the prepared twin itself, or a
    sibling made from it); the result has the scan's shape, affine and NIfTI qform/sform
    codes, so it overlays the original CT. Resampling is label-safe (one-hot linear +
    argmax by default) and touches only the voxels whose interpolation cell holds some
    of the map's foreground: the same labels as resampling the whole grid, in a fraction
    of the time on a CT grid (512 × 512 × 248: about 2 s instead of 8–11 s).

    Raises :class:`~siblings.io.LabelMapError` naming the file if ``label_map`` is not
    on the transform's prepared grid.

    Example
    -------
    >>> from siblings.io import read_label_map
    >>> t = PreparedTransform.load("prepared/s0001.xfm.json")             # doctest: +SKIP
    >>> sibling = read_label_map("siblings/s0001_psi0.5_000.nii.gz")        # doctest: +SKIP
    >>> on_scan = unprepare(sibling, t)                                     # doctest: +SKIP
    """
    if tuple(label_map.shape) != tuple(transform.target_shape):
        raise LabelMapError(
            label_map.path,
            f"grid is {'x'.join(map(str, label_map.shape))}, but the transform's prepared grid "
            f"is {'x'.join(map(str, transform.target_shape))}",
        )
    if not np.allclose(label_map.affine, transform.target_affine, atol=1e-3):
        raise LabelMapError(
            label_map.path,
            "affine differs from the transform's prepared grid (is this map in prepared space?)",
        )
    # The map's world is the prepared world; take it to scanner world with the inverse.
    # The grid is the transform's exact one: a map read from NIfTI holds its affine in
    # float32, which can flip a label tie against the same map kept in memory.
    back = resample_labels(
        LabelMap(label_map.data, transform.target_affine),
        np.linalg.inv(transform.matrix),
        transform.source_shape,
        transform.source_affine,
        interpolation,
    )
    # Only the voxels near the heart are interpolated (see _resample_hard); the rest of
    # the scan's grid is background, as full-grid resampling would make it.
    return LabelMap(back.data, back.affine, xform_codes=transform.source_codes)
