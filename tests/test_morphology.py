"""Morphology features: known answers on analytic ellipsoids, agreement with scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.measure import regionprops

from siblings import anatomy
from siblings.io import LabelMap, centred_affine
from siblings.metrics import morphology, morphology_vector


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (
        f(math.radians(a)) for a in (ax, ay, az) for f in (math.cos, math.sin)
    )
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def ellipsoid_map(
    semi_mm: tuple[float, float, float],
    label: int = anatomy.LABELS["LV"],
    size: int = 128,
    spacing: tuple[float, float, float] = (1.4, 1.4, 1.4),
    rotation: np.ndarray | None = None,
    centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Voxels whose centres lie inside the ellipsoid (world mm, grid centred at 0)."""
    axes = [
        (np.arange(size) - (size - 1) / 2.0) * s - c
        for s, c in zip(spacing, centre_mm, strict=True)
    ]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([x, y, z], axis=-1)
    if rotation is not None:  # coordinates in the ellipsoid's frame
        pts = pts @ rotation
    a, b, c = semi_mm
    inside = (pts[..., 0] / a) ** 2 + (pts[..., 1] / b) ** 2 + (pts[..., 2] / c) ** 2 <= 1.0
    lab = np.zeros((size,) * 3, dtype=np.uint8)
    lab[inside] = label
    return lab


@pytest.mark.parametrize(
    "semi, rotation",
    [
        ((50.0, 30.0, 20.0), None),
        ((45.0, 25.0, 18.0), (30.0, -20.0, 65.0)),  # oblique: axes must not depend on the grid
        ((22.0, 21.0, 20.0), (10.0, 50.0, 0.0)),  # nearly a sphere
    ],
)
def test_ellipsoid_volume_and_axes_within_2_percent_at_128(semi, rotation):
    rot = None if rotation is None else _rotation(*rotation)
    lab = ellipsoid_map(semi, rotation=rot)
    m = morphology(lab, spacing_mm=1.4)
    a, b, c = semi
    assert m["LV_volume_ml"] == pytest.approx(4.0 / 3.0 * math.pi * a * b * c / 1000.0, rel=0.02)
    assert m["LV_major_mm"] == pytest.approx(2 * max(semi), rel=0.02)
    assert m["LV_minor_mm"] == pytest.approx(2 * min(semi), rel=0.02)


def test_each_chamber_lands_in_its_own_columns():
    lab = np.zeros((128,) * 3, dtype=np.uint8)
    semis = {
        "LV": (30.0, 20.0, 15.0),
        "RV": (25.0, 12.0, 10.0),
        "LA": (15.0, 15.0, 15.0),
        "RA": (20.0, 14.0, 8.0),
    }
    centres = {"LV": (-40, -40, 0), "RV": (40, -40, 0), "LA": (-40, 40, 0), "RA": (40, 40, 0)}
    for name, semi in semis.items():
        part = ellipsoid_map(semi, label=anatomy.LABELS[name], centre_mm=centres[name])
        lab[part > 0] = part[part > 0]
    vec = morphology_vector(lab, 1.4)
    assert vec.shape == (12,)
    for name, (a, b, c) in semis.items():
        j = anatomy.MORPHOLOGY_COLUMNS.index(f"{name}_volume_ml")
        assert vec[j] == pytest.approx(4 / 3 * math.pi * a * b * c / 1000, rel=0.02)
        assert vec[j + 1] == pytest.approx(2 * a, rel=0.02)
        assert vec[j + 2] == pytest.approx(2 * c, rel=0.02)


def test_anisotropic_voxels_are_scaled_before_the_covariance():
    # 1 x 2 x 3 mm voxels: the same world ellipsoid gives the same mm answers.
    semi = (40.0, 30.0, 24.0)
    lab = ellipsoid_map(semi, size=96, spacing=(1.0, 2.0, 3.0))
    m = morphology(lab, spacing_mm=(1.0, 2.0, 3.0))
    assert m["LV_volume_ml"] == pytest.approx(4 / 3 * math.pi * 40 * 30 * 24 / 1000, rel=0.02)
    assert m["LV_major_mm"] == pytest.approx(80.0, rel=0.02)
    assert m["LV_minor_mm"] == pytest.approx(48.0, rel=0.02)


def test_label_map_uses_its_affine_and_an_array_needs_spacing():
    lab = ellipsoid_map((30.0, 20.0, 15.0), size=64, spacing=(2.8,) * 3)
    lm = LabelMap(lab, centred_affine(64))  # 2.8 mm voxels
    assert morphology(lm) == morphology(lab, spacing_mm=2.8)
    # An oblique affine (rotated voxel axes) gives the same lengths as the plain one.
    oblique = centred_affine(64).copy()
    oblique[:3, :3] = _rotation(20.0, 35.0, -10.0) @ oblique[:3, :3]
    got = morphology(LabelMap(lab, oblique))
    for key, value in morphology(lm).items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9)
    with pytest.raises(ValueError, match="spacing_mm"):
        morphology(lab)
    with pytest.raises(ValueError, match="positive"):
        morphology(lab, spacing_mm=(1.0, -1.0, 1.0))


def test_matches_skimage_regionprops_axis_lengths_with_spacing():
    rng = np.random.default_rng(3)
    lab = np.zeros((40, 36, 30), dtype=np.uint8)
    # Irregular blobs: unions of random boxes, one per chamber.
    for name in anatomy.CHAMBERS:
        v = anatomy.LABELS[name]
        for _ in range(4):
            lo = rng.integers(0, 20, size=3)
            hi = lo + rng.integers(3, 12, size=3)
            lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = v
    spacing = (0.9, 1.7, 2.3)
    m = morphology(lab, spacing_mm=spacing)
    props = {p.label: p for p in regionprops(lab, spacing=spacing)}
    for name in anatomy.CHAMBERS:
        p = props[anatomy.LABELS[name]]
        assert m[f"{name}_major_mm"] == pytest.approx(p.axis_major_length, rel=1e-9)
        assert m[f"{name}_minor_mm"] == pytest.approx(p.axis_minor_length, rel=1e-9, abs=1e-9)
        assert m[f"{name}_volume_ml"] == pytest.approx(
            p.num_pixels * np.prod(spacing) / 1000, rel=1e-12
        )


def test_missing_chamber_is_zero_and_single_voxel_has_zero_axes():
    lab = np.zeros((16, 16, 16), dtype=np.uint8)
    lab[4:10, 4:12, 5:9] = anatomy.LABELS["LV"]
    lab[12, 12, 12] = anatomy.LABELS["RA"]
    m = morphology(lab, spacing_mm=2.0)
    assert m["RV_volume_ml"] == m["RV_major_mm"] == m["RV_minor_mm"] == 0.0
    assert m["LA_volume_ml"] == 0.0
    assert m["RA_volume_ml"] == pytest.approx(0.008)
    assert m["RA_major_mm"] == m["RA_minor_mm"] == 0.0
    assert m["LV_volume_ml"] == pytest.approx(6 * 8 * 4 * 8 / 1000)
    assert list(m) == list(anatomy.MORPHOLOGY_COLUMNS)
