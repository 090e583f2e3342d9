"""Procedural four-chamber phantom cohort: the embedded default dataset.

Each subject is drawn in world millimetres and rasterised on a ``size``³ grid spanning
the common 179.2 mm field of view (SPEC §1), so volumes in mL agree across grids. The
phantom looks like a real heart *after* SPEC §2 preparation: the LV→LA axis points
along +z, ventricles below the valve plane (z < 0), atria above it.

Anatomy, by construction:

- LV: a prolate ellipsoid cut at the valve plane; myocardium an 8–12 mm shell around it.
- Handedness: situs solitus in RAS+ (+x the patient's right, +y anterior, +z
  superior): the LV lies to the patient's left, the RV anterior and to the right of it,
  the LA posterior, the RA to the patient's right of the LA. Every subject has a
  positive sign of ((c_RV − c_LV) × (c_LA − c_LV)) · (c_RA − c_LV) (SPEC §1) with a
  margin: the RV is placed 20–50° anterior of the patient's right in the axial plane,
  which keeps the RA clearly off the LV–RV–LA plane. (Until this fix the design frame was a
  mirror image: it called −x the patient's right.)
- RV: a crescent wrapped around the septum (an ellipsoid offset to the patient's right
  and anterior, minus the LV's outer wall), so septal myocardium always separates it
  from the LV.
- LA on top of the LV (posterior), RA on top of the RV, with a gap between the atria.
- Aorta: a tube leaving the LV outflow (between the RV in front and the LA behind)
  upwards and to the right, then arching posteriorly and to the left.

Volumes come from a correlated log-normal model: a shared body-size factor plus
per-chamber variation, medians near LV 100, RV 85, LA 60, RA 70 mL, and a rare
subgroup with a dilated RV (about 9% of subjects end up with RV > 115 mL, like the
paper's 47 of 512). Shape varies beyond volume (LV elongation and truncation, wall
thickness, chamber tilts, RV wrap), so axis lengths are not a function of volume.

Defects, at a chosen rate, mimic a segmentation network's errors: a small detached
island of a tissue, a small contact bridge between the atria, a thin hole through the
septal myocardium. With ``defect_rate=0`` every subject passes all 12 topology checks.

Each subject depends only on ``(seed, index)``, so a cohort is byte-identical for a seed
whatever the number of worker processes. This module computes in memory
(:func:`make_phantom`, :func:`parameters_csv`, :func:`summarise_cohort`); the cohort's
files are written and read by :mod:`siblings.pipelines.phantom`.

Example
-------
>>> from siblings.data.phantom import make_phantom
>>> lm, params = make_phantom(0, size=32, seed=0)
>>> lm.shape, round(params["voxel_mm"], 2)
((32, 32, 32), 5.6)
"""

from __future__ import annotations

import csv
import io as _io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

from .. import anatomy
from ..boxes import bounding_box
from ..errors import InputError
from ..io import LabelMap, centred_affine

L = anatomy.LABELS

# Median chamber volumes (mL) and the rare dilated-RV subgroup.
MEDIAN_VOLUME_ML = {"LV": 100.0, "RV": 85.0, "LA": 60.0, "RA": 70.0}
VOLUME_BOUNDS_ML = {
    "LV": (45.0, 220.0),
    "RV": (40.0, 260.0),
    "LA": (25.0, 140.0),
    "RA": (30.0, 160.0),
}
BODY_SD = 0.13  # shared log-volume factor (correlates the chambers)
CHAMBER_SD = {"LV": 0.12, "RV": 0.13, "LA": 0.15, "RA": 0.15}
RARE_FRACTION = 0.065
RARE_RV_FACTOR = 1.6
DEFECT_KINDS = ("island", "atrial_contact", "septal_hole")
REORIENT_GRID = 48  # coarse grid on which the LV→LA reorientation is estimated


# ---------------------------------------------------------------------------------
# Geometry on a grid.
# ---------------------------------------------------------------------------------
def _rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class _Grid:
    """A ``size``³ grid over the common field of view.

    ``frame`` = (R, pivot) rotates every shape drawn on the grid by R about ``pivot``
    (mm): the subject is designed in its own frame and rasterised already reoriented,
    which is exact (no resampling of labels).
    """

    size: int
    frame: tuple[np.ndarray, np.ndarray] | None = None

    def _place(self, centre: np.ndarray, rot: np.ndarray | None = None):
        if self.frame is None:
            return centre, rot
        r, pivot = self.frame
        return r @ (np.asarray(centre) - pivot) + pivot, None if rot is None else r @ rot

    @property
    def voxel(self) -> float:
        return anatomy.voxel_size_mm(self.size)

    @property
    def coords(self) -> np.ndarray:
        return (np.arange(self.size) - (self.size - 1) / 2.0) * self.voxel

    def box(self, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice]:
        lo = np.floor((centre - radius) / self.voxel + (self.size - 1) / 2.0).astype(int)
        hi = np.ceil((centre + radius) / self.voxel + (self.size - 1) / 2.0).astype(int) + 1
        lo, hi = np.clip(lo, 0, self.size), np.clip(hi, 0, self.size)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]

    def local(self, sl: tuple[slice, slice, slice], centre: np.ndarray, rot: np.ndarray):
        """Coordinates of the voxels in box ``sl`` in the frame (centre, rot columns)."""
        c = self.coords
        d = [
            c[s][shape] - centre[i]
            for i, (s, shape) in enumerate(
                zip(
                    sl,
                    (
                        (slice(None), None, None),
                        (None, slice(None), None),
                        (None, None, slice(None)),
                    ),
                    strict=True,
                )
            )
        ]
        return [d[0] * rot[0, k] + d[1] * rot[1, k] + d[2] * rot[2, k] for k in range(3)]

    def ellipsoid(
        self, centre: np.ndarray, rot: np.ndarray, semi: np.ndarray, cap: float | None = None
    ) -> np.ndarray:
        """Boolean mask of an ellipsoid, optionally cut to local ``u3 <= cap``."""
        out = np.zeros((self.size,) * 3, dtype=bool)
        centre, rot = self._place(centre, rot)
        sl = self.box(centre, float(np.max(semi)))
        if any(s.stop <= s.start for s in sl):
            return out
        u = self.local(sl, centre, rot)
        inside = (u[0] / semi[0]) ** 2 + (u[1] / semi[1]) ** 2 + (u[2] / semi[2]) ** 2 <= 1.0
        if cap is not None:
            inside &= u[2] <= cap
        out[sl] = inside
        return out

    def tube(self, points: np.ndarray, radius: float) -> np.ndarray:
        """Boolean mask of the union of balls of ``radius`` swept along ``points``."""
        out = np.zeros((self.size,) * 3, dtype=bool)
        c = self.coords
        for p in points:
            p, _ = self._place(p)
            sl = self.box(p, radius)
            if any(s.stop <= s.start for s in sl):
                continue
            dx = (c[sl[0]] - p[0])[:, None, None]
            dy = (c[sl[1]] - p[1])[None, :, None]
            dz = (c[sl[2]] - p[2])[None, None, :]
            out[sl] |= dx**2 + dy**2 + dz**2 <= radius**2
        return out


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``binary_dilation`` by a 3×3×3 cube, ``iterations`` times, on the mask's box only.

    Nothing farther than ``iterations`` voxels from the mask can change, so this equals
    dilating the whole grid (the benchmark's largest cost at 128³ otherwise).
    """
    out = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask, pad=iterations)
    if box is not None:
        out[box] = ndimage.binary_dilation(
            mask[box], iterations=iterations, structure=np.ones((3, 3, 3))
        )
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    box = bounding_box(mask)
    if box is None:
        return mask
    # Cropping keeps the raster order of the voxels, hence cc3d's labels and tie-breaks.
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = cc3d.largest_k(mask[box].astype(np.uint8), k=1, connectivity=26) > 0
    return out


def _calibrated(
    shape_fn: Callable[[float], np.ndarray],
    blocked: np.ndarray,
    target_voxels: float,
    iterations: int = 4,
) -> np.ndarray:
    """Scale a shape until its unblocked, connected part has ``target_voxels`` voxels."""
    s = 1.0
    mask = _largest_component(shape_fn(s) & ~blocked)
    for _ in range(iterations):
        got = int(mask.sum())
        if got == 0 or abs(got / target_voxels - 1.0) < 0.01:
            break
        s *= (target_voxels / got) ** (1.0 / 3.0)
        mask = _largest_component(shape_fn(s) & ~blocked)
    return mask


# ---------------------------------------------------------------------------------
# Subject parameters.
# ---------------------------------------------------------------------------------
def _draw_parameters(rng: np.random.Generator) -> dict:
    body = float(rng.standard_normal())
    rare = bool(rng.random() < RARE_FRACTION)
    target = {}
    for chamber, median in MEDIAN_VOLUME_ML.items():
        v = median * math.exp(BODY_SD * body + CHAMBER_SD[chamber] * float(rng.standard_normal()))
        if chamber == "RV" and rare:
            v *= RARE_RV_FACTOR
        target[chamber] = float(np.clip(v, *VOLUME_BOUNDS_ML[chamber]))
    size_scale = math.exp(BODY_SD * body / 3.0)
    return {
        "body_factor": body,
        "rare_rv": rare,
        "target": target,
        "lv_elongation": float(rng.uniform(1.5, 2.3)),
        "lv_anisotropy": float(rng.uniform(0.85, 1.15)),
        "lv_truncation": float(rng.uniform(0.25, 0.45)),
        "wall_mm": float(rng.uniform(8.0, 12.0)),
        "lv_tilt_deg": (float(rng.uniform(-10, 10)), float(rng.uniform(-10, 10))),
        "rv_angle_deg": float(rng.uniform(20, 50)),
        "rv_offset": float(rng.uniform(0.45, 0.7)),
        "rv_wrap": float(rng.uniform(1.2, 1.6)),
        "rv_length": float(rng.uniform(0.7, 0.9)),
        "la_shape": (float(rng.uniform(0.85, 1.2)), float(rng.uniform(0.7, 1.0))),
        "ra_shape": (float(rng.uniform(0.8, 1.1)), float(rng.uniform(0.8, 1.2))),
        "atrial_tilt_deg": (float(rng.uniform(-12, 12)), float(rng.uniform(-12, 12))),
        "aorta_radius_mm": float(rng.uniform(11.0, 14.0)) * size_scale,
        "aorta_tilt_deg": float(rng.uniform(10, 30)),
        "aorta_height_mm": float(rng.uniform(35, 55)),
        "jitter_mm": rng.uniform(-3, 3, size=3),
    }


def _truncated_ellipsoid_volume(r1: float, r2: float, length: float, h: float) -> float:
    """Volume of an ellipsoid with semi-axes (r1, r2, length) cut at u3 = h·length."""
    return math.pi * r1 * r2 * length * (h - h**3 / 3.0 + 2.0 / 3.0)


def _build(grid: _Grid, p: dict) -> tuple[np.ndarray, dict]:
    """Rasterise one clean subject (no defects). Returns labels and geometry facts."""
    vox_ml = grid.voxel**3 / 1000.0
    t = p["target"]
    lab = np.zeros((grid.size,) * 3, dtype=np.uint8)

    # LV cavity: truncated prolate ellipsoid; long axis tilted a little from +z.
    h, e, k = p["lv_truncation"], p["lv_elongation"], p["lv_anisotropy"]
    r = (t["LV"] * 1000.0 / (math.pi * e * (h - h**3 / 3 + 2 / 3))) ** (1 / 3)
    r1, r2, length = r * math.sqrt(k), r / math.sqrt(k), r * e
    rot_lv = _rotation(*p["lv_tilt_deg"], 0.0)
    # RAS design frame: +x the patient's right, +y anterior, +z superior. The LV sits
    # to the patient's left (-x) of the heart centre.
    base_lv = np.array([-14.0, 0.0, 0.0]) + p["jitter_mm"]  # centre of the mitral cap
    axis = rot_lv[:, 2]
    centre_lv = base_lv - h * length * axis
    cap = h * length
    w = p["wall_mm"]

    lv = grid.ellipsoid(centre_lv, rot_lv, np.array([r1, r2, length]), cap)
    outer = grid.ellipsoid(centre_lv, rot_lv, np.array([r1 + w, r2 + w, length + w]), cap)
    myo = outer & ~lv
    lab[myo] = L["Myo"]
    lab[lv] = L["LV"]

    # Aorta: from the anterior-septal part of the mitral cap (towards the patient's right,
    # between the RV outflow in front and the LA behind), up and rightwards, then
    # arching back and to the left.
    rad = p["aorta_radius_mm"]
    start = base_lv + rot_lv @ np.array([0.35 * r1, 0.3 * r2, -2.0])
    tilt = math.radians(p["aorta_tilt_deg"])
    up = np.array([0.25 * math.sin(tilt), math.sin(tilt), math.cos(tilt)])
    top = start + p["aorta_height_mm"] * up
    arch_r = 22.0
    # Semicircular arch in the sagittal plane, drifting to the patient's left (-x).
    arch = [
        top + arch_r * np.array([-0.3 * (1 - math.cos(a)), math.cos(a) - 1.0, math.sin(a)])
        for a in np.linspace(0, math.pi, 18)
    ]
    ascending = [start + s * (top - start) for s in np.linspace(0, 1, 14)]
    descending = [arch[-1] - np.array([0, 0, d]) for d in np.linspace(0, 70, 16)]
    path = ascending + arch + descending
    if not p.get("aorta_arch", True):  # a stress case: straight up, no arch (data/stress.py)
        path = [start + s * (top - start) for s in np.linspace(0, 2.5, 36)]
    aorta = grid.tube(np.array(path), rad) & (lab == 0)
    lab[aorta] = L["Ao"]

    # RV: crescent around the septum, offset anterior (+y) and to the patient's right
    # (+x): rv_angle_deg is measured in the axial plane from +x towards +y.
    phi = math.radians(p["rv_angle_deg"])
    direction = rot_lv @ np.array([math.cos(phi), math.sin(phi), 0.0])
    r_outer = math.sqrt((r1 + w) * (r2 + w))
    rot_rv = rot_lv @ _rotation(0.0, 0.0, math.degrees(phi))
    centre_rv = centre_lv + p["rv_offset"] * r_outer * direction + 0.15 * length * axis
    rv_semi0 = np.array([0.75 * r_outer, p["rv_wrap"] * r_outer, p["rv_length"] * length])
    blocked = lab != 0

    def rv_fn(s: float) -> np.ndarray:
        return grid.ellipsoid(centre_rv, rot_rv, s * rv_semi0, cap=cap - 0.15 * length)

    # The RV must never touch the LV: keep one voxel of myocardium in between.
    blocked_rv = blocked | _dilate(lab == L["LV"], iterations=1)
    rv = _calibrated(rv_fn, blocked_rv, t["RV"] / vox_ml)
    lab[rv] = L["RV"]

    # Atria above the valve plane: LA over the LV (posterior), RA over the RV.
    rot_at = _rotation(*p["atrial_tilt_deg"], 0.0)
    a_la = (t["LA"] * 1000.0 * 3 / (4 * math.pi)) ** (1 / 3)
    la_semi0 = (
        a_la
        * np.array([p["la_shape"][0], p["la_shape"][1], 1.0])
        / (p["la_shape"][0] * p["la_shape"][1]) ** (1 / 3)
    )
    centre_la = base_lv + np.array([-8.0, -0.45 * la_semi0[1] - 4.0, 0.7 * la_semi0[2]])

    def la_fn(s: float) -> np.ndarray:
        return grid.ellipsoid(centre_la, rot_at, s * la_semi0)

    la = _calibrated(la_fn, lab != 0, t["LA"] / vox_ml)
    lab[la] = L["LA"]

    a_ra = (t["RA"] * 1000.0 * 3 / (4 * math.pi)) ** (1 / 3)
    ra_semi0 = (
        a_ra
        * np.array([p["ra_shape"][0], p["ra_shape"][1], 1.0])
        / (p["ra_shape"][0] * p["ra_shape"][1]) ** (1 / 3)
    )
    rv_top = centre_rv.copy()
    rv_top[2] = base_lv[2]
    centre_ra = rv_top + np.array(
        [0.5 * ra_semi0[0], -0.35 * ra_semi0[1] - 6.0, 0.75 * ra_semi0[2]]
    )
    # A gap of at least one voxel (and ~3 mm) keeps the atria apart.
    gap = max(1, math.ceil(3.0 / grid.voxel))
    blocked_ra = (lab != 0) | _dilate(lab == L["LA"], iterations=gap)

    def ra_fn(s: float) -> np.ndarray:
        return grid.ellipsoid(centre_ra, rot_at, s * ra_semi0)

    ra = _calibrated(ra_fn, blocked_ra, t["RA"] / vox_ml)
    lab[ra] = L["RA"]
    return lab, {
        "lv_long_axis_mm": 2 * length,
        "lv_radius_mm": r,
    }


def _align_to_z(v: np.ndarray) -> np.ndarray:
    """The smallest rotation taking direction ``v`` onto +z (Rodrigues' formula)."""
    a = v / np.linalg.norm(v)
    axis = np.cross(a, [0.0, 0.0, 1.0])
    s2, c = float(axis @ axis), float(a[2])
    if s2 < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + k + k @ k * (1.0 - c) / s2


def _centroid_mm(grid: _Grid, mask: np.ndarray) -> np.ndarray:
    return (np.argwhere(mask).mean(axis=0) - (grid.size - 1) / 2.0) * grid.voxel


def _reorientation(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (and pivot) that makes the subject's LV→LA centroid vector point along +z.

    This is SPEC §2 step 3, which every prepared real heart has been through. It is
    estimated on a fixed coarse grid (twice: the second pass corrects the first one's
    residual), so a subject gets the same rotation whatever grid it is drawn on.
    """
    r, pivot = np.eye(3), np.zeros(3)
    for first in (True, False):
        grid = _Grid(REORIENT_GRID, frame=(r, pivot))
        lab = _clean(_build(grid, p)[0])
        lv = _centroid_mm(grid, lab == L["LV"])
        if first:  # rotate about the LV centroid (translation is undone by _centre)
            pivot = lv
        r = _align_to_z(_centroid_mm(grid, lab == L["LA"]) - lv) @ r
    return r, pivot


def _clean(lab: np.ndarray) -> np.ndarray:
    """Keep the largest component of every checked tissue (stray corners → background)."""
    for name in ("Myo", "LV", "RV", "LA", "RA", "Ao"):
        m = lab == L[name]
        keep = _largest_component(m)
        lab[m & ~keep] = 0
    return lab


def _centre(lab: np.ndarray) -> np.ndarray:
    """Shift so the centroid of Myo ∪ chambers sits at the grid centre (SPEC §2 step 4)."""
    heart = np.isin(lab, [L["Myo"], L["LV"], L["RV"], L["LA"], L["RA"]])
    c = np.array(ndimage.center_of_mass(heart))
    shift = np.round((np.array(lab.shape) - 1) / 2.0 - c).astype(int)
    # A whole-voxel shift is a copy between slices (out[i + shift] = lab[i], 0 elsewhere).
    out = np.zeros_like(lab)
    dst = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(shift, lab.shape, strict=True))
    src = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(shift, lab.shape, strict=True))
    out[dst] = lab[src]
    return out


# ---------------------------------------------------------------------------------
# Defects.
# ---------------------------------------------------------------------------------
def _ball(shape: tuple[int, ...], centre: np.ndarray, radius: float) -> np.ndarray:
    idx = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(idx, centre, strict=True)) <= radius**2


def _defect_island(lab: np.ndarray, rng: np.random.Generator) -> str:
    tissue = str(rng.choice(["Myo", "LV", "RV", "LA", "RA"]))
    mask = lab == L[tissue]
    # Background voxels 3-5 voxels from the tissue and >= 3 from any other tissue. They
    # lie within 5 voxels of the tissue's box, and only voxels within 3 of them decide
    # the test, so distances on the box grown by 8 give the whole grid's candidates, in
    # the same order.
    box = bounding_box(mask, pad=8)
    if box is None:
        return "none"
    dist_t = ndimage.distance_transform_edt(~mask[box])
    dist_any = ndimage.distance_transform_edt(lab[box] == 0)
    cand = np.argwhere((dist_t >= 3) & (dist_t <= 5) & (dist_any >= 3))
    if len(cand) == 0:
        return "none"
    centre = cand[rng.integers(len(cand))] + [s.start for s in box]
    lab[_ball(lab.shape, centre, 1.0) & (lab == 0)] = L[tissue]
    return f"island_{tissue}"


def _bridge(lab: np.ndarray, a: int, b: int, fill: int, rng: np.random.Generator) -> bool:
    """Paint a one-voxel-wide line from a voxel of ``a`` to the nearest voxel of ``b``."""
    ma, mb = lab == a, lab == b
    if not ma.any() or not mb.any():
        return False
    # Both tissues (and a one-voxel margin for the erosion) fit in this box, so the
    # distance transform and the erosion there equal the whole grid's.
    box = bounding_box(ma | mb, pad=1)
    ma, mb = ma[box], mb[box]
    dist_b, (ix, iy, iz) = ndimage.distance_transform_edt(~mb, return_indices=True)
    border_a = ma & ~ndimage.binary_erosion(ma)
    cand = np.argwhere(border_a)
    d = dist_b[border_a]
    near = cand[d <= d.min() + 1.0]
    p = near[rng.integers(len(near))]
    q = np.array([ix[tuple(p)], iy[tuple(p)], iz[tuple(p)]])
    offset = np.array([s.start for s in box])
    p, q = p + offset, q + offset
    n = int(np.ceil(np.abs(q - p).max())) + 1
    for s in np.linspace(0.0, 1.0, n + 1):
        v = tuple(np.round(p + s * (q - p)).astype(int))
        if lab[v] not in (a, b):
            lab[v] = fill
    return True


def _defect_atrial_contact(lab: np.ndarray, rng: np.random.Generator) -> str:
    return "atrial_contact" if _bridge(lab, L["RA"], L["LA"], L["RA"], rng) else "none"


def _defect_septal_hole(lab: np.ndarray, rng: np.random.Generator) -> str:
    # A thin hole through the septal myocardium filled with LV blood: LV touches RV.
    return "septal_hole" if _bridge(lab, L["LV"], L["RV"], L["LV"], rng) else "none"


_DEFECTS = {
    "island": _defect_island,
    "atrial_contact": _defect_atrial_contact,
    "septal_hole": _defect_septal_hole,
}


# ---------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------
def make_phantom(
    index: int,
    size: int = 128,
    seed: int = 0,
    defect_rate: float = 0.0,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[LabelMap, dict]:
    """One phantom subject on a ``size``³ grid (179.2 mm field of view).

    Parameters
    ----------
    index : subject number within the cohort.
    size : grid size in voxels per axis (voxel size 179.2 / size mm).
    seed : cohort seed; the subject depends only on ``(seed, index)``.
    defect_rate : probability that the subject carries segmentation-like defects.
    overrides : replace drawn parameters after the draw (so everything else about the
        subject stays as drawn), for shapes outside the cohort's ranges (the stress set
        of :mod:`siblings.data.stress`): any key of the drawn parameters (e.g.
        ``wall_mm``), ``target`` as a partial dict of chamber volumes in mL (not clipped
        to :data:`VOLUME_BOUNDS_ML`), and ``aorta_arch`` (False: a straight ascending
        aorta, no arch). The cohort never uses them.

    Returns
    -------
    (LabelMap, dict)
        The label map (RAS+, centred affine) and its ground truth: drawn parameters,
        measured volumes in mL of every tissue, and the defects applied.
    """
    if not 0.0 <= defect_rate <= 1.0:
        raise InputError(f"defect rate must be in [0, 1], got {defect_rate}")
    if size < 16:
        raise InputError(f"grid size must be at least 16 voxels, got {size}")
    rng = np.random.default_rng([int(seed), int(index)])
    p = _draw_parameters(rng)
    if overrides:
        p = _override(p, overrides)
    grid = _Grid(size, frame=_reorientation(p))
    lab, facts = _build(grid, p)
    lab = _centre(_clean(lab))

    defects: list[str] = []
    if rng.random() < defect_rate:
        n_defects = 1 if rng.random() < 0.7 else 2
        for kind in rng.choice(DEFECT_KINDS, size=n_defects, replace=False):
            d = _DEFECTS[str(kind)](lab, rng)
            if d != "none":
                defects.append(d)

    vox_ml = grid.voxel**3 / 1000.0
    counts = np.bincount(lab.ravel(), minlength=anatomy.NUM_LABELS)
    row = {
        "subject": f"phantom_{index:04d}",
        "index": index,
        "seed": seed,
        "size": size,
        "voxel_mm": grid.voxel,
        "rare_rv": int(p["rare_rv"]),
        "body_factor": p["body_factor"],
        **{f"{c}_target_ml": p["target"][c] for c in anatomy.CHAMBERS},
        **{f"{t}_volume_ml": counts[L[t]] * vox_ml for t in anatomy.TISSUES},
        "lv_elongation": p["lv_elongation"],
        "lv_anisotropy": p["lv_anisotropy"],
        "lv_truncation": p["lv_truncation"],
        "wall_mm": p["wall_mm"],
        "lv_tilt_x_deg": p["lv_tilt_deg"][0],
        "lv_tilt_y_deg": p["lv_tilt_deg"][1],
        "rv_angle_deg": p["rv_angle_deg"],
        "rv_wrap": p["rv_wrap"],
        "aorta_radius_mm": p["aorta_radius_mm"],
        "lv_long_axis_mm": facts["lv_long_axis_mm"],
        "defects": ";".join(defects),
    }
    if overrides:
        row["overrides"] = repr(dict(overrides))
    return LabelMap(lab, centred_affine(size)), row


def _override(p: dict, overrides: Mapping[str, Any]) -> dict:
    """The drawn parameters ``p`` with ``overrides`` (see :func:`make_phantom`)."""
    allowed = set(p) | {"aorta_arch"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise InputError(
            f"unknown phantom parameter(s) {', '.join(unknown)}; use {', '.join(sorted(allowed))}"
        )
    out = {**p, **overrides}
    if "target" in overrides:
        bad = sorted(set(overrides["target"]) - set(MEDIAN_VOLUME_ML))
        if bad:
            raise InputError(f"unknown chamber(s) {', '.join(bad)} in target; use LV, RV, LA, RA")
        out["target"] = {**p["target"], **{k: float(v) for k, v in overrides["target"].items()}}
    return out


def parameters_csv(rows: list[dict]) -> str:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def summarise_cohort(rows: list[dict]) -> str:
    """A short text table of a phantom cohort: chamber volume quantiles and defects."""
    lines = [
        f"{len(rows)} subjects, grid {int(rows[0]['size'])}³ at {float(rows[0]['voxel_mm']):.2f} mm"
    ]
    lines.append(f"{'chamber':8s} {'p10':>7s} {'median':>7s} {'p90':>7s}  (mL)")
    for c in anatomy.CHAMBERS:
        v = np.array([float(r[f"{c}_volume_ml"]) for r in rows])
        q = np.percentile(v, [10, 50, 90])
        lines.append(f"{c:8s} {q[0]:7.1f} {q[1]:7.1f} {q[2]:7.1f}")
    rv = np.array([float(r["RV_volume_ml"]) for r in rows])
    defects = sum(1 for r in rows if r["defects"])
    lines.append(
        f"RV > 115 mL: {int((rv > 115).sum())} of {len(rows)} ({100 * (rv > 115).mean():.1f}%)"
    )
    lines.append(f"subjects with defects: {defects} of {len(rows)}")
    return "\n".join(lines)
