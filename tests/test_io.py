"""Label-map I/O: round trips, validation errors that name the file, atomic writes,
one-hot conversion and viewer colour tables (SPEC §1, issue 3 part 3)."""

from __future__ import annotations

import doctest
import gzip
import hashlib
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from siblings import anatomy, io
from siblings.io import (
    LabelMap,
    LabelMapError,
    atomic_path,
    centred_affine,
    colour_table,
    from_one_hot,
    list_label_maps,
    one_hot,
    read_label_map,
    write_colour_tables,
    write_label_map,
)


def random_labels(shape=(10, 11, 12), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 7, shape).astype(np.uint8)


def oblique_affine() -> np.ndarray:
    """Anisotropic voxels (1.0, 1.5, 2.0 mm), rotated 30° about z, shifted origin."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.0, 1.5, 2.0])
    affine[:3, 3] = [-12.5, 40.0, 7.25]
    return affine


def save_raw(path: Path, array: np.ndarray, affine=None) -> Path:
    """Write an arbitrary array with nibabel, bypassing our validation."""
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def written(tmp_path) -> tuple[Path, LabelMap]:
    lm = LabelMap(random_labels(), oblique_affine())
    return write_label_map(tmp_path / "map.nii.gz", lm), lm


# ---------------------------------------------------------------------------------
# Round trips.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_round_trip_keeps_labels_affine_and_voxel_size(tmp_path, suffix):
    lm = LabelMap(random_labels(), oblique_affine())
    back = read_label_map(write_label_map(tmp_path / f"map{suffix}", lm))
    assert back.data.dtype == np.uint8
    np.testing.assert_array_equal(back.data, lm.data)
    # NIfTI stores the sform in float32.
    np.testing.assert_allclose(back.affine, lm.affine, atol=1e-5)
    assert back.spacing == pytest.approx((1.0, 1.5, 2.0), abs=1e-6)
    assert back.voxel_volume_ml == pytest.approx(1.0 * 1.5 * 2.0 / 1000.0)
    assert back.path == tmp_path / f"map{suffix}"


def test_written_header_declares_label_intent_mm_units_and_both_transforms(written):
    path, lm = written
    hdr = nib.load(str(path)).header
    assert hdr.get_data_dtype() == np.uint8
    assert hdr.get_xyzt_units()[0] == "mm"
    assert hdr.get_intent()[0] == "label"
    assert int(hdr["sform_code"]) == 2 and int(hdr["qform_code"]) == 2
    np.testing.assert_allclose(hdr.get_qform(), lm.affine, atol=1e-5)


def test_same_map_gives_the_same_bytes_and_a_reread_map_rewrites_identically(tmp_path, written):
    path, lm = written
    again = write_label_map(tmp_path / "again.nii.gz", lm)
    assert again.read_bytes() == path.read_bytes()
    rewritten = write_label_map(tmp_path / "rewritten.nii.gz", read_label_map(path))
    assert rewritten.read_bytes() == path.read_bytes()


def test_gzip_header_has_no_timestamp_and_no_file_name(written):
    raw = written[0].read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    flags, mtime = raw[3], int.from_bytes(raw[4:8], "little")
    assert mtime == 0
    assert flags & 0x08 == 0  # FNAME
    assert gzip.decompress(raw)  # and it is a valid gzip stream


def test_float_file_with_integral_values_is_accepted_as_labels(tmp_path):
    labels = random_labels((6, 6, 6))
    path = save_raw(tmp_path / "float.nii.gz", labels.astype(np.float32))
    lm = read_label_map(path)
    assert lm.data.dtype == np.uint8
    np.testing.assert_array_equal(lm.data, labels)


def test_trailing_singleton_dimension_is_dropped(tmp_path):
    labels = random_labels((5, 6, 7))
    lm = read_label_map(save_raw(tmp_path / "t1.nii.gz", labels[..., None]))
    np.testing.assert_array_equal(lm.data, labels)


def test_centred_affine_puts_the_grid_centre_at_world_origin():
    for size in (32, 64, 128):
        a = centred_affine(size)
        centre = a @ np.array([(size - 1) / 2] * 3 + [1.0])
        np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
        assert LabelMap(np.zeros((size,) * 3, np.uint8), a).spacing == pytest.approx(
            (anatomy.voxel_size_mm(size),) * 3
        )


# ---------------------------------------------------------------------------------
# Validation: every error names the file.
# ---------------------------------------------------------------------------------
BAD_ARRAYS = {
    "four_d": (np.zeros((4, 4, 4, 2), np.uint8), r"is 4D .*a label map is 3D"),
    "two_d": (np.zeros((4, 4), np.uint8), r"is 2D"),
    "nan": (np.where(random_labels((4, 4, 4)) > 3, np.nan, 1.0).astype(np.float32), "NaN"),
    "half": (np.full((4, 4, 4), 2.5, np.float32), "non-integer"),
    "label7": (np.pad(np.full((3, 3, 3), 7, np.int16), 1), r"outside 0–6: 7 \(27 voxels\)"),
    "minus1": (np.pad(np.full((3, 3, 3), -1, np.int16), 1), r"outside 0–6: -1 \(27 voxels\)"),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_invalid_content_raises_an_error_naming_the_file(tmp_path, case):
    array, reason = BAD_ARRAYS[case]
    path = save_raw(tmp_path / f"{case}.nii.gz", array)
    with pytest.raises(LabelMapError, match=reason) as info:
        read_label_map(path)
    assert str(info.value).startswith(f"{path}: ")
    assert info.value.path == path


def test_empty_file_is_refused_by_name(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(LabelMapError, match=r"empty file") as info:
        read_label_map(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_file_and_folder_are_refused_by_name(tmp_path):
    with pytest.raises(LabelMapError, match=r"missing\.nii\.gz: no such file"):
        read_label_map(tmp_path / "missing.nii.gz")
    with pytest.raises(LabelMapError, match="is a folder"):
        read_label_map(tmp_path)


def test_non_nifti_bytes_are_refused_by_name(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(b"not a NIfTI file at all")
    with pytest.raises(LabelMapError, match="cannot be read as NIfTI") as info:
        read_label_map(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("keep", ["header", "half", "all_but_9_bytes", "all_but_1_byte"])
def test_truncated_gzip_is_refused_by_name(tmp_path, keep):
    # A real map, large enough that its deflate stream spans more than the header.
    lm = LabelMap(random_labels((24, 24, 24)), centred_affine(24))
    raw = write_label_map(tmp_path / "whole.nii.gz", lm).read_bytes()
    n = {
        "header": 100,
        "half": len(raw) // 2,
        # Cuts inside the gzip trailer (CRC-32 and length) leave every voxel decodable:
        # only a check of the whole stream notices them.
        "all_but_9_bytes": len(raw) - 9,
        "all_but_1_byte": len(raw) - 1,
    }[keep]
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(raw[:n])
    with pytest.raises(LabelMapError, match=r"corrupt or truncated") as info:
        read_label_map(path)
    assert str(info.value).startswith(f"{path}: ")


def test_wrong_grid_or_voxel_size_is_refused_by_name(written):
    path, _ = written
    with pytest.raises(LabelMapError, match=r"grid is 10x11x12, expected 32x32x32") as info:
        read_label_map(path, shape=(32, 32, 32))
    assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(
        LabelMapError, match=r"voxel size is 1 x 1\.5 x 2 mm, expected 2\.8"
    ) as info:
        read_label_map(path, spacing=2.8)
    assert str(info.value).startswith(f"{path}: ")
    # The right requirements pass.
    assert read_label_map(path, shape=(10, 11, 12), spacing=(1.0, 1.5, 2.0)).shape == (10, 11, 12)


# ---------------------------------------------------------------------------------
# Atomic writes.
# ---------------------------------------------------------------------------------
def test_writing_an_invalid_map_raises_and_leaves_no_file(tmp_path):
    target = tmp_path / "out" / "bad.nii.gz"
    data = np.zeros((4, 4, 4), np.uint8)
    data[1, 1, 1] = 9
    with pytest.raises(LabelMapError, match=r"bad\.nii\.gz: has labels outside 0–6: 9 \(1 voxel\)"):
        write_label_map(target, LabelMap(data, np.eye(4)))
    leftovers = list(target.parent.iterdir()) if target.parent.exists() else []
    assert leftovers == []


def test_failed_rewrite_keeps_the_previous_file(tmp_path, written):
    path, _ = written
    before = path.read_bytes()
    with pytest.raises(LabelMapError):
        write_label_map(path, LabelMap(np.full((4, 4, 4), 9, np.uint8), np.eye(4)))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.nii.gz"]


def test_exception_during_serialisation_leaves_neither_target_nor_part_file(tmp_path):
    target = tmp_path / "maps" / "x.nii.gz"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".part")
        tmp.write_bytes(b"half a fi")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in target.parent.iterdir()] == ["x.nii.gz"]
    # Without an exception the temporary file becomes the target.
    with atomic_path(tmp_path / "maps" / "y.bin") as tmp:
        tmp.write_bytes(b"complete")
    assert (tmp_path / "maps" / "y.bin").read_bytes() == b"complete"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.nii.gz", "y.bin"]


def test_json_round_trip_with_numpy_values_and_named_errors(tmp_path):
    obj = {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3), "p": tmp_path, "s": {2, 1}}
    io.write_json(tmp_path / "m.json", obj)
    assert io.read_json(tmp_path / "m.json") == {
        "n": 3,
        "x": 0.5,
        "a": [0, 1, 2],
        "p": str(tmp_path),
        "s": [1, 2],
    }
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        io.read_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match=r"none\.json: no such file"):
        io.read_json(tmp_path / "none.json")


def test_sha256_file_known_answer(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert io.sha256_file(tmp_path / "abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert io.sha256_file(tmp_path / "abc") == hashlib.sha256(b"abc").hexdigest()


# ---------------------------------------------------------------------------------
# Cohort folders.
# ---------------------------------------------------------------------------------
def test_list_label_maps_is_sorted_and_skips_hidden_transform_and_other_files(tmp_path):
    for name in ("b.nii.gz", "a.nii", "c.nii.gz", ".a.nii.gz.x.part", ".hidden.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    for name in ("a.xfm.nii.gz", "params.csv", "b.json"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d.nii.gz").mkdir()
    assert [p.name for p in list_label_maps(tmp_path)] == ["a.nii", "b.nii.gz", "c.nii.gz"]
    assert io.stem(tmp_path / "b.nii.gz") == "b" and io.stem("a.nii") == "a"


def test_list_label_maps_errors_name_the_folder(tmp_path):
    with pytest.raises(LabelMapError, match=r"holds 0 label map\(s\)") as info:
        list_label_maps(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_label_maps(tmp_path / "nope")
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        list_label_maps(tmp_path / "f")


# ---------------------------------------------------------------------------------
# One-hot tensors.
# ---------------------------------------------------------------------------------
def test_one_hot_channel_index_is_the_label_value_numpy():
    labels = random_labels((5, 6, 7))
    oh = one_hot(labels)
    assert oh.shape == (7, 5, 6, 7) and oh.dtype == np.float32
    np.testing.assert_array_equal(oh.sum(0), 1.0)
    for c in range(7):
        np.testing.assert_array_equal(oh[c], (labels == c).astype(np.float32))
    np.testing.assert_array_equal(from_one_hot(oh), labels)


def test_one_hot_of_a_torch_batch_and_argmax_back():
    labels = torch.from_numpy(np.stack([random_labels((4, 5, 6), seed=s) for s in (1, 2)]))
    oh = one_hot(labels)
    assert oh.shape == (2, 7, 4, 5, 6) and oh.dtype == torch.float32
    assert torch.equal(oh[1, 3], (labels[1] == 3).float())
    assert torch.equal(from_one_hot(oh), labels)
    # Decoding scores (not exact one-hot) takes the largest channel.
    scores = 0.1 * oh + 0.2 * torch.roll(oh, shifts=1, dims=1)
    assert torch.equal(from_one_hot(scores), (labels + 1) % 7)


def test_one_hot_refuses_other_ranks():
    with pytest.raises(ValueError, match="3D or batched 3D"):
        one_hot(np.zeros((4, 4), np.uint8))


# ---------------------------------------------------------------------------------
# Colour tables.
# ---------------------------------------------------------------------------------
def test_slicer_colour_table_has_value_name_rgba_lines_for_the_seven_labels():
    rows = [
        line.split()
        for line in colour_table("slicer").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(rows) == 7
    for value, row in enumerate(rows):
        assert len(row) == 6
        assert int(row[0]) == value
        assert row[1] == anatomy.LABEL_NAMES[value]
        assert tuple(int(v) for v in row[2:5]) == anatomy.COLOURS[row[1]]
        assert int(row[5]) == (0 if value == 0 else 255)


def test_itksnap_colour_table_has_eight_columns_and_a_quoted_label():
    lines = [
        line
        for line in colour_table("itksnap").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 7
    for value, line in enumerate(lines):
        cols = shlex.split(line)
        assert len(cols) == 8
        assert line.rstrip().endswith('"') and line.count('"') == 2
        idx, r, g, b, a, vis, msh, label = cols
        assert int(idx) == value
        name = anatomy.LABEL_NAMES[value]
        assert (int(r), int(g), int(b)) == anatomy.COLOURS[name]
        assert 0.0 <= float(a) <= 1.0
        assert int(vis) in (0, 1) and int(msh) in (0, 1)
        assert label == "Clear Label" if value == 0 else label.startswith(f"{name} (")
    assert float(shlex.split(lines[4])[4]) == 1.0  # LV opaque


def test_write_colour_tables_writes_both_files(tmp_path):
    paths = write_colour_tables(tmp_path / "tables")
    assert [p.name for p in paths] == ["labels.ctbl", "labels_itksnap.txt"]
    assert paths[0].read_text() == colour_table("slicer")
    assert paths[1].read_text() == colour_table("itksnap")
    with pytest.raises(ValueError, match="unknown colour-table format 'paraview'"):
        colour_table("paraview")


def test_module_docstring_example_runs():
    result = doctest.testmod(io)
    assert result.attempted > 0 and result.failed == 0
