"""The torch Dataset over a prepared folder and the label-safe augmentation (SPEC §3).

Axis conventions, fixed here once: a label batch is ``(B, D, H, W)``. ``theta`` from
:meth:`RandomAffineLabels.sample_theta` acts on normalised coordinates ``(x, y, z)``
with x along W (array axis 3 of the batch), y along H, z along D, and an output voxel
at ``q`` samples the input at ``A·q + t``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from siblings import anatomy
from siblings.data.dataset import LabelMapDataset, RandomAffineLabels
from siblings.data.phantom import make_phantom
from siblings.io import LabelMap, LabelMapError, read_label_map, write_label_map
from siblings.pipelines.phantom import generate_cohort

L = anatomy.LABELS


@pytest.fixture(scope="module")
def folder32(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared32")
    generate_cohort(out, n=4, size=32, seed=0, defect_rate=0.0, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def heart64() -> torch.Tensor:
    """One clean phantom at 64³ as a ``(1, 64, 64, 64)`` uint8 batch."""
    return torch.from_numpy(make_phantom(1, size=64, seed=0)[0].data)[None]


def random_labels(shape, values=tuple(range(7)), seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.choice(np.array(values, dtype=np.uint8), size=shape))


def theta_from(matrix, shift=(0.0, 0.0, 0.0)) -> torch.Tensor:
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    theta[0, :, :3] = torch.tensor(matrix, dtype=torch.float64)
    theta[0, :, 3] = torch.tensor(shift, dtype=torch.float64)
    return theta


def volumes(labels: torch.Tensor) -> np.ndarray:
    return np.bincount(labels.flatten().numpy(), minlength=7).astype(float)


# ---------------------------------------------------------------------------------
# Dataset.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", [True, False])
def test_dataset_returns_one_hot_tensors_of_the_files(folder32, cache):
    ds = LabelMapDataset(folder32, size=32, cache=cache)
    assert len(ds) == 4
    assert [p.name for p in ds.files] == [f"phantom_{i:04d}.nii.gz" for i in range(4)]
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (7, 32, 32, 32) and x.dtype == torch.float32
        assert torch.equal(x.sum(0), torch.ones(32, 32, 32))
        labels = read_label_map(ds.files[i]).data
        assert torch.equal(x.argmax(0), torch.from_numpy(labels.astype(np.int64)))
        assert torch.equal(ds.labels(i), torch.from_numpy(labels))


def test_dataset_batches_with_a_dataloader(folder32):
    loader = torch.utils.data.DataLoader(LabelMapDataset(folder32, size=32), batch_size=2)
    batch = next(iter(loader))
    assert batch.shape == (2, 7, 32, 32, 32)


def test_dataset_accepts_a_list_of_files_and_refuses_an_empty_one(folder32):
    files = sorted(folder32.glob("*.nii.gz"))[:2]
    assert len(LabelMapDataset(files, size=32)) == 2
    with pytest.raises(ValueError, match="no label maps"):
        LabelMapDataset([])


def test_wrong_grid_raises_an_error_naming_the_file(folder32):
    first = folder32 / "phantom_0000.nii.gz"
    with pytest.raises(LabelMapError, match=r"grid is 32x32x32, expected 64x64x64") as info:
        LabelMapDataset(folder32, size=64)
    assert str(info.value).startswith(f"{first}: ")
    # Without the cache the same error comes when the map is first read.
    ds = LabelMapDataset(folder32, size=64, cache=False)
    with pytest.raises(LabelMapError, match=r"phantom_0002\.nii\.gz: grid is 32x32x32"):
        ds[2]


def test_right_grid_with_the_wrong_voxel_size_is_refused(tmp_path):
    # 32 voxels of 2.8 mm span 89.6 mm, not the 179.2 mm field of view of the presets.
    path = write_label_map(
        tmp_path / "half_fov.nii.gz",
        LabelMap(np.zeros((32,) * 3, np.uint8), np.diag([2.8, 2.8, 2.8, 1.0])),
    )
    with pytest.raises(
        LabelMapError,
        match=r"half_fov\.nii\.gz: voxel size is 2\.8 x 2\.8 x 2\.8 mm, expected 5\.6",
    ):
        LabelMapDataset(tmp_path, size=32)
    assert len(LabelMapDataset([path], size=32, spacing=2.8)) == 1


# ---------------------------------------------------------------------------------
# Augmentation: exact known answers.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["nearest", "onehot"])
def test_identity_augmentation_is_exact(heart64, mode):
    labels = torch.cat([heart64, random_labels((1, 64, 64, 64))])
    identity = RandomAffineLabels(
        scale=(1.0, 1.0), rotation_deg=0.0, translation_vox=0.0, mode=mode
    )
    assert torch.equal(identity(labels), labels)
    never = RandomAffineLabels(mode=mode, p=0.0)  # the paper's ranges, never applied
    assert torch.equal(never(labels, generator=torch.Generator().manual_seed(0)), labels)


# Rotation by +90° about each theta axis and the np.rot90 it equals on (D, H, W) arrays.
ROT90 = {
    "about_x(W)": ([[1, 0, 0], [0, 0, -1], [0, 1, 0]], (0, 1)),
    "about_y(H)": ([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], (2, 0)),
    "about_z(D)": ([[0, -1, 0], [1, 0, 0], [0, 0, 1]], (1, 2)),
}


@pytest.mark.parametrize("mode", ["nearest", "onehot"])
@pytest.mark.parametrize("axis", list(ROT90))
@pytest.mark.parametrize("size", [8, 9])
def test_rotation_by_90_degrees_equals_rot90(mode, axis, size):
    matrix, rot90_axes = ROT90[axis]
    labels = random_labels((1, size, size, size))
    out = RandomAffineLabels(mode=mode)(labels, theta=theta_from(matrix))
    expected = np.rot90(labels[0].numpy(), k=1, axes=rot90_axes)
    np.testing.assert_array_equal(out[0].numpy(), expected)
    # Four quarter turns are the identity.
    for _ in range(3):
        out = RandomAffineLabels(mode=mode)(out, theta=theta_from(matrix))
    assert torch.equal(out, labels)


def test_drawn_rotation_of_90_degrees_uses_the_same_axes(monkeypatch):
    # sample_theta builds Rz·Ry·Rx from angles (about x, y, z); pin the draw to +90° about z.
    aug = RandomAffineLabels(
        scale=(1.0, 1.0), rotation_deg=90.0, translation_vox=0.0, mode="nearest"
    )
    fixed = torch.tensor([[0.0, 0.5, 0.5, 1.0, 0.5, 0.5, 0.5, 0.0]], dtype=torch.float64)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: fixed.clone())
    theta = aug.sample_theta(1, 8)
    np.testing.assert_allclose(
        theta[0].numpy(), theta_from(ROT90["about_z(D)"][0])[0].numpy(), atol=1e-12
    )


def shifted(src: np.ndarray, tx: int, ty: int, tz: int) -> np.ndarray:
    """``out[d, h, w] = src[d + tz, h + ty, w + tx]``, zero outside the grid."""
    out = np.zeros_like(src)
    n = src.shape[0]
    dst_sl = tuple(slice(max(0, -k), n - max(0, k)) for k in (tz, ty, tx))
    src_sl = tuple(slice(max(0, k), n - max(0, -k)) for k in (tz, ty, tx))
    out[dst_sl] = src[src_sl]
    return out


def test_drawn_translation_shifts_by_the_nearest_whole_voxels_in_nearest_mode():
    size, labels = 16, random_labels((1, 16, 16, 16), seed=3)
    aug = RandomAffineLabels(
        scale=(1.0, 1.0), rotation_deg=0.0, translation_vox=4.0, mode="nearest"
    )
    g = torch.Generator().manual_seed(7)
    for _ in range(5):
        theta = aug.sample_theta(1, size, generator=g)
        shift_vox = theta[0, :, 3].numpy() * size / 2.0  # (x, y, z) = (W, H, D)
        assert np.all(np.abs(shift_vox) <= 4.0)
        if np.any(np.abs(np.abs(shift_vox) % 1.0 - 0.5) < 1e-3):
            continue  # a tie between two voxels: no single right answer
        expected = shifted(labels[0].numpy(), *(int(v) for v in np.round(shift_vox)))
        np.testing.assert_array_equal(aug(labels, theta=theta)[0].numpy(), expected)


@pytest.mark.parametrize("mode", ["nearest", "onehot"])
def test_whole_voxel_translation_is_an_exact_shift(mode):
    # One-hot interpolation blends neighbours for fractional shifts; whole voxels are exact.
    size, labels = 16, random_labels((1, 16, 16, 16), seed=5)
    tx, ty, tz = 3, -2, 1
    theta = theta_from(np.eye(3), shift=(2 * tx / size, 2 * ty / size, 2 * tz / size))
    out = RandomAffineLabels(mode=mode)(labels, theta=theta)
    np.testing.assert_array_equal(out[0].numpy(), shifted(labels[0].numpy(), tx, ty, tz))


def test_sampled_transforms_stay_inside_the_paper_ranges():
    aug = RandomAffineLabels()  # scale 0.5-1.5, rotation ±180°, translation ±20 voxels
    size = 64
    theta = aug.sample_theta(2000, size, generator=torch.Generator().manual_seed(0))
    a, t = theta[:, :, :3], theta[:, :, 3]
    # A = R/s: s from the determinant, R orthonormal with det +1.
    s = torch.linalg.det(a) ** (-1 / 3)
    assert s.min() >= 0.5 - 1e-9 and s.max() <= 1.5 + 1e-9
    assert s.min() < 0.52 and s.max() > 1.48
    r = a * s[:, None, None]
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye, atol=1e-9, rtol=0)
    shift_vox = t * size / 2.0
    assert shift_vox.abs().max() <= 20.0 and shift_vox.abs().max() > 19.0
    # Angles cover the full ±180° (the rotation angle of R reaches close to 180°).
    angle = torch.rad2deg(torch.arccos(((r.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
    assert angle.max() > 170.0


def test_same_generator_seed_gives_the_same_augmentation(heart64):
    aug = RandomAffineLabels()
    a = aug(heart64, generator=torch.Generator().manual_seed(5))
    b = aug(heart64, generator=torch.Generator().manual_seed(5))
    c = aug(heart64, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------
# Augmentation: label safety and volumes.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["nearest", "onehot"])
def test_augmentation_never_invents_labels(heart64, mode):
    aug = RandomAffineLabels(mode=mode)
    g = torch.Generator().manual_seed(1)
    some = random_labels((2, 32, 32, 32), values=(0, 2, 5), seed=4)
    for _ in range(3):
        out = aug(heart64, generator=g)
        assert out.dtype == heart64.dtype
        assert set(torch.unique(out).tolist()) <= set(range(7))
        assert set(torch.unique(aug(some, generator=g)).tolist()) <= {0, 2, 5}


def test_onehot_rotation_preserves_tissue_volumes(heart64):
    aug = RandomAffineLabels(
        scale=(1.0, 1.0), rotation_deg=180.0, translation_vox=0.0, mode="onehot"
    )
    g = torch.Generator().manual_seed(2)
    before = volumes(heart64[0])
    for _ in range(3):
        after = volumes(aug(heart64, generator=g)[0])
        for t in ("Myo", "RV", "LV", "RA", "LA"):
            assert after[L[t]] == pytest.approx(before[L[t]], rel=0.03), t


@pytest.mark.parametrize("mode", ["nearest", "onehot"])
@pytest.mark.parametrize("s", [0.8, 1.25])
def test_scaling_by_s_changes_volumes_by_s_cubed(heart64, mode, s):
    aug = RandomAffineLabels(scale=(s, s), rotation_deg=0.0, translation_vox=0.0, mode=mode)
    before, after = volumes(heart64[0]), volumes(aug(heart64)[0])
    for t in ("Myo", "RV", "LV"):
        assert after[L[t]] / before[L[t]] == pytest.approx(s**3, rel=0.04), t


def test_bad_mode_and_bad_shape_are_refused(heart64):
    with pytest.raises(ValueError, match="unknown interpolation mode 'cubic'"):
        RandomAffineLabels(mode="cubic")(heart64)
    with pytest.raises(ValueError, match=r"expected labels \(B, D, H, W\)"):
        RandomAffineLabels()(heart64[0])
