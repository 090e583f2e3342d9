"""Geometry of preparation: label-safe resampling, orientation handling, the stored
transform, registration and the inverse map. Fixtures are small synthetic volumes or
phantoms whose right answer is known by construction."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from siblings import anatomy
from siblings.data import geometry as g
from siblings.data.phantom import make_phantom
from siblings.data.phantom_scans import axis_angle, place_in_scanner, scanner_affine
from siblings.io import LabelMap, LabelMapError, centred_affine

L = anatomy.LABELS


def world_centroid(lm: LabelMap, label: int) -> np.ndarray:
    """Centroid in world mm, computed directly (independently of geometry.py)."""
    idx = np.argwhere(lm.data == label).astype(float)
    return idx.mean(axis=0) @ lm.affine[:3, :3].T + lm.affine[:3, 3]


def lv_la_angle_deg(lm: LabelMap) -> float:
    v = world_centroid(lm, L["LA"]) - world_centroid(lm, L["LV"])
    return math.degrees(math.acos(v[2] / np.linalg.norm(v)))


def volumes_ml(lm: LabelMap) -> dict[str, float]:
    counts = np.bincount(lm.data.ravel(), minlength=7)
    vox = abs(np.linalg.det(lm.affine[:3, :3])) / 1000.0
    return {t: counts[L[t]] * vox for t in anatomy.TISSUES}


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum())


# ---------------------------------------------------------------------------------
# Small pieces.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "a",
    [[1.0, 2.0, 3.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.3, -0.2, -0.9]],
)
def test_rotation_between_takes_a_onto_b_with_a_proper_rotation(a):
    b = np.array([0.0, 0.0, 1.0])
    r = g.rotation_between(np.array(a), b)
    assert np.allclose(r @ (np.array(a) / np.linalg.norm(a)), b, atol=1e-12)
    assert np.allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(r), 1.0)


def test_simpleitk_centroid_alignment_equals_the_closed_form_fit():
    rng = np.random.default_rng(3)
    moving = rng.normal(0, 40, size=(6, 3))
    true = g.rigid(axis_angle(rng.normal(size=3), 33.0), [5.0, -7.0, 12.0])
    fixed = moving @ true[:3, :3].T + true[:3, 3] + rng.normal(0, 0.5, size=(6, 3))
    sitk_fit = g.centroid_alignment(moving, fixed, engine="simpleitk")
    kabsch = g.centroid_alignment(moving, fixed, engine="numpy")
    assert np.allclose(sitk_fit, kabsch, atol=1e-6)
    assert g.rotation_angle_deg(np.linalg.inv(true) @ sitk_fit) < 1.0


# ---------------------------------------------------------------------------------
# Label-safe resampling.
# ---------------------------------------------------------------------------------
def test_linear_resampling_never_invents_a_label_between_two_others():
    # Slabs of Myo (2) and LA (6) side by side: interpolating label *values* would put
    # LV (4) on their interface; one-hot interpolation + argmax must not.
    data = np.zeros((40, 40, 40), np.uint8)
    data[8:32, 8:32, 8:20] = L["Myo"]
    data[8:32, 8:32, 20:32] = L["LA"]
    lm = LabelMap(data, np.eye(4))
    move = g.rigid(axis_angle([1, 2, 3], 17.0), [0.3, -0.4, 0.25])
    out = g.resample_labels(lm, move, (40, 40, 40), np.eye(4) * [0.9, 0.9, 0.9, 1])
    assert set(np.unique(out.data)) == {0, L["Myo"], L["LA"]}
    nearest = g.resample_labels(lm, move, (40, 40, 40), np.eye(4), interpolation="nearest")
    assert set(np.unique(nearest.data)) == {0, L["Myo"], L["LA"]}


def test_identity_resampling_is_exact_for_both_interpolations():
    lm, _ = make_phantom(2, size=32)
    for method in ("linear", "nearest"):
        out = g.resample_labels(lm, np.eye(4), lm.shape, lm.affine, interpolation=method)
        assert np.array_equal(out.data, lm.data)


def test_same_anatomy_stored_with_lps_or_ras_voxel_axes_prepares_identically():
    phantom, _ = make_phantom(4, size=48)
    pose = g.rigid(axis_angle([0.2, 1.0, -0.4], 25.0), [6.0, -4.0, 9.0])
    shape, spacing = (120, 110, 70), (1.6, 1.6, 2.6)
    scans = [
        place_in_scanner(phantom, pose, shape, scanner_affine(shape, spacing, o))
        for o in ("RAS", "LPS")
    ]
    # Same world content, mirrored arrays: LPS stores x and y reversed.
    assert np.array_equal(scans[0].data, scans[1].data[::-1, ::-1, :])
    maps = [g.prepare_label_map(s, size=48)[0] for s in scans]
    agree = np.mean(maps[0].data == maps[1].data)
    assert agree > 0.9999


def test_resampling_an_anisotropic_oblique_scan_keeps_chamber_volumes():
    phantom, _ = make_phantom(5, size=64)
    tilt = axis_angle([1.0, -1.0, 0.5], 14.0)
    shape, spacing = (180, 170, 100), (1.2, 1.2, 2.2)
    scan = place_in_scanner(
        phantom,
        g.rigid(axis_angle([0, 1, 0], 30.0)),
        shape,
        scanner_affine(shape, spacing, "LPS", tilt=tilt),
    )
    prepared, _ = g.prepare_label_map(scan, size=64)
    before, after = volumes_ml(scan), volumes_ml(prepared)
    for c in anatomy.CHAMBERS:
        assert abs(after[c] / before[c] - 1.0) < 0.03, (c, before[c], after[c])


# ---------------------------------------------------------------------------------
# Preparation and its inverse.
# ---------------------------------------------------------------------------------
def test_prepared_map_has_the_lv_la_axis_on_z_and_the_heart_centred():
    phantom, _ = make_phantom(6, size=48)
    shape, spacing = (130, 130, 80), (1.5, 1.5, 2.5)
    pose = g.rigid(axis_angle([1.0, 0.3, 0.0], -38.0), [15.0, -10.0, 20.0])
    scan = place_in_scanner(phantom, pose, shape, scanner_affine(shape, spacing, "LPS"))
    assert lv_la_angle_deg(scan) > 10.0  # the pose really moved the axis
    prepared, transform = g.prepare_label_map(scan, size=48)
    assert prepared.shape == (48, 48, 48)
    assert np.allclose(prepared.affine, centred_affine(48))
    assert lv_la_angle_deg(prepared) < 1.0
    heart = np.isin(prepared.data, [L[t] for t in g.HEART_TISSUES])
    centre = np.argwhere(heart).mean(axis=0) * anatomy.voxel_size_mm(
        48
    ) - 23.5 * anatomy.voxel_size_mm(48)
    assert np.linalg.norm(centre) < 1.0  # mm
    assert transform.steps["register"] == {"skipped": "no reference"}


def test_registration_recovers_a_known_rigid_motion():
    # Register a map to a moved copy of itself: the answer is the motion.
    ref, _ = make_phantom(8, size=64)
    motion = g.rigid(axis_angle([0.3, -0.5, 1.0], 12.0), [6.0, -4.0, 3.0])
    n = 48
    grid = g.coarse_affine(n)
    fixed = g.soft_channels(ref, np.eye(4), (n,) * 3, grid)
    moving = g.soft_channels(ref, np.linalg.inv(motion), (n,) * 3, grid)
    found, info = g.register_rigid(moving, fixed, grid, initial=np.eye(4))
    error = found @ np.linalg.inv(motion)
    assert g.rotation_angle_deg(error) < 0.5
    assert np.linalg.norm(error[:3, 3]) < 1.0  # mm at the origin (heart centre)
    assert info["ssd_final"] < 0.2 * info["ssd_initial"]


def test_registration_to_a_reference_improves_overlap_and_keeps_the_axis():
    ref_map, _ = g.prepare_label_map(make_phantom(0, size=64)[0], size=64)
    reference = g.Reference.from_label_map(ref_map, register_size=48)
    phantom, _ = make_phantom(9, size=64)
    shape, spacing = (160, 160, 90), (1.5, 1.5, 2.5)
    pose = g.rigid(
        axis_angle([0.0, 0.0, 1.0], 35.0), [5.0, 5.0, -5.0]
    )  # a roll the axis leaves open
    scan = place_in_scanner(phantom, pose, shape, scanner_affine(shape, spacing, "RAS"))
    plain, _ = g.prepare_label_map(scan, size=64)
    registered, t = g.prepare_label_map(scan, reference=reference, size=64)

    def mean_dice(m):
        return np.mean([dice(m.data, ref_map.data, L[x]) for x in anatomy.TISSUES])

    assert mean_dice(registered) > mean_dice(plain) + 0.05
    assert t.steps["register"]["ssd_final"] <= t.steps["register"]["ssd_initial"]
    assert lv_la_angle_deg(registered) < 1.0


def test_unprepare_puts_the_map_back_on_the_scan_grid_at_the_paper_resolution():
    # SPEC's paper grid (128³, 1.4 mm) from a 0.8 x 0.8 x 1.5 mm scan and back.
    phantom, _ = make_phantom(3, size=128)
    shape, spacing = (260, 260, 140), (0.8, 0.8, 1.5)
    pose = g.rigid(axis_angle([0.5, 1.0, 0.2], 30.0), [8.0, -6.0, 4.0])
    scan = place_in_scanner(phantom, pose, shape, scanner_affine(shape, spacing, "LPS"))
    ref_map, _ = g.prepare_label_map(make_phantom(1, size=64)[0], size=128)
    prepared, transform = g.prepare_label_map(scan, reference=ref_map, size=128)
    back = g.unprepare(prepared, transform)
    assert back.shape == scan.shape
    assert np.allclose(back.affine, scan.affine)
    for t in anatomy.TISSUES:
        assert dice(back.data, scan.data, L[t]) >= 0.95, t


def full_grid_labels(
    lm: LabelMap, matrix: np.ndarray, shape: tuple, affine: np.ndarray, interpolation: str
) -> np.ndarray:
    """Label-safe resampling the plain way: every channel over the whole output grid."""
    from scipy import ndimage

    m = np.linalg.inv(lm.affine) @ np.linalg.inv(matrix) @ affine
    kw = dict(matrix=m[:3, :3], offset=m[:3, 3], output_shape=shape, mode="constant")
    if interpolation == "nearest":
        return ndimage.affine_transform(lm.data, order=0, cval=0, prefilter=False, **kw)
    best = np.full(shape, -1.0, np.float32)
    labels = np.zeros(shape, np.uint8)
    for k in range(anatomy.NUM_LABELS):
        channel = (lm.data == k).astype(np.float32)
        value = ndimage.affine_transform(
            channel, order=1, cval=float(k == 0), prefilter=False, **kw
        )
        better = value > best
        best[better], labels[better] = value[better], k
    return labels


@pytest.fixture(scope="module")
def oblique_twin() -> LabelMap:
    """A phantom on a CT-like grid: anisotropic LAS voxels, tilted 9° (oblique)."""
    phantom, _ = make_phantom(2, size=64)
    shape, spacing = (150, 140, 96), (0.98, 0.98, 1.26)
    las = scanner_affine(shape, spacing, "RAS", tilt=axis_angle([1.0, 0.4, 0.2], 9.0))
    las[:3, 0] *= -1.0  # i runs to the patient's left
    las[:3, 3] -= las[:3, 0] * (shape[0] - 1)
    pose = g.rigid(axis_angle([0.3, 1.0, -0.4], 25.0), [6.0, -4.0, 10.0])
    return place_in_scanner(phantom, pose, shape, las)


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_unprepare_equals_resampling_the_whole_scan_grid(oblique_twin, interpolation):
    # unprepare interpolates only where the sibling's foreground can reach; everywhere
    # else full-grid resampling gives background too, so the two agree voxel for voxel.
    prepared, transform = g.prepare_label_map(oblique_twin, size=32)
    sibling = prepared.data.copy()
    sibling[2, 2, 2] = L["Ao"]  # a stray voxel far from the heart must come back as well
    sibling[29, 30, 3:6] = L["RA"]
    sib = LabelMap(sibling, prepared.affine)
    back = g.unprepare(sib, transform, interpolation)
    inverse = np.linalg.inv(transform.matrix)
    want = full_grid_labels(sib, inverse, oblique_twin.shape, oblique_twin.affine, interpolation)
    assert back.data.shape == want.shape
    assert np.array_equal(back.data, want)
    assert set(np.unique(want)) == set(range(7))  # every label reached the scan grid
    # and the other direction (scan -> model grid, preparation) as well
    forward = g.resample_labels(oblique_twin, transform.matrix, (32,) * 3, prepared.affine)
    assert np.array_equal(
        forward.data,
        full_grid_labels(oblique_twin, transform.matrix, (32,) * 3, prepared.affine, "linear"),
    )


def test_a_single_voxel_at_the_source_corner_is_resampled_as_on_the_whole_grid():
    data = np.zeros((12, 12, 12), np.uint8)
    data[0, 11, 0] = L["LV"]
    lm = LabelMap(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    move = g.rigid(axis_angle([1, 2, 3], 31.0), [2.0, 14.0, -3.0])
    affine = scanner_affine((70, 60, 50), (0.7, 0.8, 0.9), "LPS")
    out = g.resample_labels(lm, move, (70, 60, 50), affine)
    assert np.array_equal(out.data, full_grid_labels(lm, move, (70, 60, 50), affine, "linear"))


@pytest.mark.parametrize("codes", [(1, 0), (2, 2), (0, 1)])
def test_scan_grid_outputs_keep_the_scans_qform_and_sform_codes(tmp_path, codes):
    import nibabel as nib

    from siblings.io import read_label_map, write_label_map

    phantom, _ = make_phantom(4, size=32)
    shape = (90, 80, 50)
    affine = scanner_affine(shape, (2.0, 2.0, 3.0), "LPS")
    scan = place_in_scanner(phantom, g.rigid(axis_angle([1, 0, 1], 15.0)), shape, affine)
    img = nib.Nifti1Image(scan.data, affine)
    img.set_qform(affine, code=codes[0])
    img.set_sform(affine, code=codes[1])
    nib.save(img, tmp_path / "scan.nii.gz")
    twin = read_label_map(tmp_path / "scan.nii.gz")
    assert twin.xform_codes == codes
    prepared, transform = g.prepare_label_map(twin, size=32)
    again = g.PreparedTransform.load(transform.save(tmp_path / "scan.xfm.json"))
    assert again.source_codes == codes
    write_label_map(tmp_path / "back.nii.gz", g.unprepare(prepared, again))
    hdr = nib.load(tmp_path / "back.nii.gz").header
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == codes
    assert np.allclose(nib.load(tmp_path / "back.nii.gz").affine, affine, atol=1e-4)
    # A model-space map has no scanner behind it: aligned (2/2) as before.
    write_label_map(tmp_path / "model.nii.gz", prepared)
    hdr = nib.load(tmp_path / "model.nii.gz").header
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (2, 2)


def test_unprepare_refuses_a_map_that_is_not_on_the_prepared_grid(tmp_path):
    phantom, _ = make_phantom(0, size=32)
    _, transform = g.prepare_label_map(phantom, size=32)
    wrong = LabelMap(
        np.zeros((40, 40, 40), np.uint8), centred_affine(40), path=tmp_path / "sib.nii.gz"
    )
    with pytest.raises(LabelMapError, match=r"sib\.nii\.gz: grid is 40x40x40"):
        g.unprepare(wrong, transform)


# ---------------------------------------------------------------------------------
# The stored transform.
# ---------------------------------------------------------------------------------
def test_transform_json_round_trip_and_itk_convention(tmp_path):
    phantom, _ = make_phantom(7, size=32)
    shape = (90, 80, 50)
    scan = place_in_scanner(
        phantom,
        g.rigid(axis_angle([1, 1, 0], 20.0), [3, 2, 1]),
        shape,
        scanner_affine(shape, (2.0, 2.0, 3.0)),
    )
    _, t = g.prepare_label_map(scan, size=32)
    path = t.save(tmp_path / "s.xfm.json")
    again = g.PreparedTransform.load(path)
    assert np.allclose(again.matrix, t.matrix, atol=1e-10)
    assert again.source_shape == shape and again.target_shape == (32, 32, 32)
    assert np.allclose(again.source_affine, scan.affine)
    # Points: scanner → prepared → scanner, and the ITK (LPS, prepared → scan) matrix.
    p = np.array([[10.0, -20.0, 30.0], [0.0, 5.0, -7.0]])
    assert np.allclose(again.to_scanner(again.to_prepared(p)), p)
    lps = np.diag([-1.0, -1.0, 1.0])
    q = again.to_prepared(p)
    itk = again.itk_matrix()
    assert np.allclose((q @ lps) @ itk[:3, :3].T + itk[:3, 3], p @ lps)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"format": "something else"}), "not a digital-siblings transform"),
        (
            json.dumps(
                {
                    "format": g.TRANSFORM_FORMAT,
                    "matrix": (np.eye(4) * 2).tolist(),
                    "source": {"shape": [4, 4, 4], "affine": np.eye(4).tolist()},
                    "target": {"shape": [4, 4, 4], "affine": np.eye(4).tolist()},
                }
            ),
            "not a rigid transform",
        ),
    ],
)
def test_bad_transform_files_are_refused_with_the_file_named(tmp_path, content, message):
    path = tmp_path / "bad.xfm.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        g.PreparedTransform.load(path)
    assert "bad.xfm.json" in str(err.value)


def test_ants_engine_without_antspyx_gives_a_clear_error():
    pytest.importorskip("SimpleITK")
    try:
        import ants  # noqa: F401

        pytest.skip("antspyx is installed")
    except ImportError:
        pass
    ch = np.zeros((7, 8, 8, 8), np.float32)
    ch[0] = 1
    with pytest.raises(RuntimeError, match="needs antspyx"):
        g.register_rigid(ch, ch, g.coarse_affine(8), engine="ants")
