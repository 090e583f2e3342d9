"""Real NIfTI headers (issue 15 item 3) and truncated hearts (item 4).

Known answers: a map stored with an LPS, permuted or oblique affine must put every
tissue at the same world position (mm) as the RAS original; qform-only and sform-only
files use the form whose code is set, and a disagreeing pair uses the sform (nibabel's
rule), said in the header record; other datatypes and scaled data holding whole numbers
read as the same labels; a scanner-space output keeps the input's codes. A heart cut by
the scan is refused by `edit` with `prepare`'s reason unless `--allow-truncated`.
"""

from __future__ import annotations

import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from siblings import anatomy, cli
from siblings.data import geometry
from siblings.data import totalseg as ts
from siblings.data.phantom import make_phantom
from siblings.data.phantom_scans import place_in_scanner, scanner_affine, write_totalseg_subject
from siblings.data.twin import resolve_twin
from siblings.errors import InputError
from siblings.io import LabelMap, LabelMapError, read_label_map, write_label_map

L = anatomy.LABELS


def write(path, data, *, qform=None, qcode=0, sform=None, scode=0, slope=None, inter=None):
    """A NIfTI with exactly the forms and codes given (nibabel would fill in others)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.asarray(data).dtype)
    hdr.set_data_shape(np.asarray(data).shape)
    hdr.set_qform(qform if qform is not None else np.eye(4), code=qcode)
    hdr.set_sform(sform if sform is not None else np.eye(4), code=scode)
    img = nib.Nifti1Image(np.asarray(data), None, header=hdr)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


def centroids(lm: LabelMap) -> dict[str, np.ndarray]:
    out = {}
    for t in anatomy.TISSUES:
        idx = np.argwhere(lm.data == L[t]).astype(float)
        out[t] = idx.mean(axis=0) @ lm.affine[:3, :3].T + lm.affine[:3, 3]
    return out


@pytest.fixture(scope="module")
def phantom() -> LabelMap:
    return make_phantom(0, size=32, seed=0)[0]


def flipped(lm: LabelMap, axes: tuple[int, ...]) -> LabelMap:
    """The same voxels stored with the given array axes reversed (e.g. RAS → LPS)."""
    data, affine = np.asarray(lm.data), lm.affine.copy()
    for ax in axes:
        data = np.flip(data, ax)
        flip = np.eye(4)
        flip[ax, ax], flip[ax, 3] = -1.0, lm.shape[ax] - 1
        affine = affine @ flip
    return LabelMap(np.ascontiguousarray(data), affine)


def rotation(axis, angle_deg) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(4)
    r[:3, :3] = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    return r


def test_lps_las_and_permuted_maps_read_back_to_the_same_world_positions(tmp_path, phantom):
    truth = centroids(phantom)
    cases = {
        "LPS": flipped(phantom, (0, 1)),
        "LAS": flipped(phantom, (0,)),
        "permuted": LabelMap(
            np.ascontiguousarray(np.transpose(phantom.data, (2, 0, 1))),
            phantom.affine[:, [2, 0, 1, 3]],
        ),
    }
    for name, lm in cases.items():
        path = write(tmp_path / f"{name}.nii.gz", lm.data, qform=lm.affine, qcode=1,
                     sform=lm.affine, scode=1)  # fmt: skip
        back = read_label_map(path)
        expected = {"LPS": "LPS", "LAS": "LAS", "permuted": "SRA"}[name]
        assert back.header["orientation"] == expected
        for t, c in centroids(back).items():
            np.testing.assert_allclose(c, truth[t], atol=1e-3, err_msg=f"{name} {t}")


def test_an_oblique_affine_moves_every_tissue_by_its_rotation(tmp_path, phantom):
    r = rotation((1.0, 2.0, 0.5), 27.0)
    path = write(tmp_path / "oblique.nii.gz", phantom.data, sform=r @ phantom.affine, scode=1)
    back = read_label_map(path)
    for t, c in centroids(back).items():
        np.testing.assert_allclose(c, r[:3, :3] @ centroids(phantom)[t], atol=1e-3)


def test_an_lps_twin_prepares_to_the_model_map_of_its_ras_original(tmp_path, phantom):
    shape, spacing = (40, 40, 24), (5.0, 5.0, 8.0)
    ras = place_in_scanner(phantom, np.eye(4), shape, scanner_affine(shape, spacing, "RAS"))
    lps = flipped(ras, (0, 1))
    a = geometry.prepare_label_map(ras, size=32, interpolation="nearest")[0]
    b = geometry.prepare_label_map(lps, size=32, interpolation="nearest")[0]
    np.testing.assert_array_equal(a.data, b.data)


def test_qform_only_and_sform_only_files_use_the_form_that_is_set(tmp_path, phantom):
    a = phantom.affine
    q = read_label_map(write(tmp_path / "q.nii.gz", phantom.data, qform=a, qcode=1))
    s = read_label_map(write(tmp_path / "s.nii.gz", phantom.data, sform=a, scode=1))
    for lm, form, codes in ((q, "qform", (1, 0)), (s, "sform", (0, 1))):
        np.testing.assert_allclose(lm.affine, a, atol=1e-5)
        assert lm.header["affine_from"] == form and lm.xform_codes == codes


def test_disagreeing_forms_use_the_sform_and_say_so(tmp_path, phantom):
    shifted = phantom.affine.copy()
    shifted[:3, 3] += (6.0, 0.0, 8.0)  # the qform 10 mm away
    path = write(tmp_path / "both.nii.gz", phantom.data, qform=shifted, qcode=1,
                 sform=phantom.affine, scode=2)  # fmt: skip
    lm = read_label_map(path)
    np.testing.assert_allclose(lm.affine, phantom.affine, atol=1e-5)
    assert lm.header["affine_from"] == "sform"
    assert lm.header["qform_disagrees_mm"] == pytest.approx(10.0, abs=1e-3)
    assert "sform is used" in lm.header["note"]


def test_a_file_without_orientation_is_refused(tmp_path, phantom):
    path = write(tmp_path / "none.nii.gz", phantom.data)
    with pytest.raises(LabelMapError, match="has no orientation: its qform_code and sform_code"):
        read_label_map(path)


def test_anisotropic_voxels_and_other_datatypes_read_as_the_same_labels(tmp_path, phantom):
    aniso = np.diag([0.7, 0.9, 2.5, 1.0])
    for dtype in (np.int16, np.uint16, np.int32, np.float32, np.float64, np.int8):
        path = write(tmp_path / f"{np.dtype(dtype).name}.nii", phantom.data.astype(dtype),
                     sform=aniso, scode=1)  # fmt: skip
        lm = read_label_map(path)
        np.testing.assert_array_equal(lm.data, phantom.data)
        assert lm.data.dtype == np.uint8
        assert lm.spacing == pytest.approx((0.7, 0.9, 2.5), abs=1e-6)
        assert lm.header["datatype"] == np.dtype(dtype).name


def test_scaled_data_is_read_through_its_slope(tmp_path):
    raw = np.arange(4, dtype=np.int16).repeat(16).reshape(4, 4, 4)
    path = write(tmp_path / "scaled.nii.gz", raw, sform=np.eye(4), scode=1, slope=2.0, inter=0.0)
    lm = read_label_map(path)
    np.testing.assert_array_equal(lm.data, 2 * raw)
    assert lm.header["scaling"] == {"scl_slope": 2.0, "scl_inter": 0.0}
    half = write(tmp_path / "half.nii.gz", raw, sform=np.eye(4), scode=1, slope=0.5, inter=0.0)
    with pytest.raises(LabelMapError, match="non-integer values"):
        read_label_map(half)


def test_a_singleton_fourth_dimension_is_dropped(tmp_path, phantom):
    path = write(tmp_path / "4d.nii.gz", phantom.data[..., None], sform=phantom.affine, scode=1)
    lm = read_label_map(path)
    assert lm.shape == phantom.shape
    np.testing.assert_array_equal(lm.data, phantom.data)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused(tmp_path, value):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = value
    path = write(tmp_path / "nan.nii.gz", data, sform=np.eye(4), scode=1)
    with pytest.raises(LabelMapError, match="NaN or infinite") as info:
        read_label_map(path)
    assert str(info.value).startswith(f"{path}: ")


def test_non_finite_and_singular_affines_are_refused(tmp_path):
    data = np.zeros((4, 4, 4), np.uint8)
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(LabelMapError, match="non-finite voxel-to-world affine"):
        read_label_map(write(tmp_path / "nan.nii.gz", data, sform=bad, scode=1))
    flat = np.diag([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(LabelMapError, match="singular voxel-to-world affine"):
        read_label_map(write(tmp_path / "flat.nii.gz", data, sform=flat, scode=1))


def test_a_huge_declared_grid_is_refused_before_any_allocation(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float64)
    hdr["dim"] = [3, 30000, 30000, 30000, 1, 1, 1, 1]  # 2.7e13 voxels, 216 TB
    hdr.set_sform(np.eye(4), code=1)
    path = tmp_path / "huge.nii"
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 800)
    tracemalloc.start()
    try:
        with pytest.raises(LabelMapError, match=r"declares 30000x30000x30000 = \d+ voxels"):
            read_label_map(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    # Under the cap but more than the file holds: refused as truncated, nothing read.
    hdr["dim"] = [3, 512, 512, 512, 1, 1, 1, 1]
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 800)
    with pytest.raises(LabelMapError, match="header declares 1073741824 bytes"):
        read_label_map(path)
    with pytest.raises(LabelMapError, match="more than the 1000 a label map may have"):
        read_label_map(path, max_voxels=1000)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_huge_declared_header_extension_is_refused_without_allocating_it(tmp_path, suffix):
    # Found by the hostile-file property test: nibabel reads an extension with one
    # read(esize), so a 424-byte file declaring 9 MB allocated 9 MB (2 GB possible).
    hdr = nib.Nifti1Header()
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 4096
    raw = hdr.binaryblock + b"\1\0\0\0" + np.array([2**31 - 16, 4], "<i4").tobytes()
    path = tmp_path / f"ext{suffix}"
    path.write_bytes(gzip.compress(raw, mtime=0) if suffix == ".nii.gz" else raw)
    tracemalloc.start()
    try:
        with pytest.raises(LabelMapError, match="a header extension declares 2147483632 bytes"):
            read_label_map(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_a_scanner_space_output_keeps_the_input_codes(tmp_path, phantom):
    shape, spacing = (40, 40, 24), (5.0, 5.0, 8.0)
    scan = place_in_scanner(phantom, np.eye(4), shape, scanner_affine(shape, spacing, "LPS"))
    path = write(tmp_path / "twin.nii.gz", scan.data, qform=scan.affine, qcode=1)
    twin = resolve_twin(path, 32, register_to="none")
    back = geometry.unprepare(twin.label_map, twin.transform)
    assert back.xform_codes == (1, 0)
    out = write_label_map(tmp_path / "back.nii.gz", back)
    img = nib.load(str(out))
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 0)
    assert twin.describe()["header"]["affine_from"] == "qform"


# ---------------------------------------------------------------------------------
# Truncated hearts (item 4).
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scan(phantom) -> LabelMap:
    shape, spacing = (40, 40, 30), (5.0, 5.0, 6.0)
    return place_in_scanner(phantom, np.eye(4), shape, scanner_affine(shape, spacing, "RAS"))


def cropped(lm: LabelMap, z0: int, z1: int) -> LabelMap:
    """The scan with only slices z0..z1-1 (its affine moved with them)."""
    shift = np.eye(4)
    shift[2, 3] = z0
    return LabelMap(np.ascontiguousarray(lm.data[:, :, z0:z1]), lm.affine @ shift)


def z_range(lm: LabelMap, tissues) -> tuple[int, int]:
    z = np.nonzero(np.isin(lm.data, [L[t] for t in tissues]))[2]
    return int(z.min()), int(z.max())


def test_edit_refuses_a_twin_whose_scan_cuts_the_lv(tmp_path, scan):
    lo, hi = z_range(scan, ["LV"])
    cut = cropped(scan, (lo + hi) // 2, scan.shape[2])  # the scan starts mid-LV
    path = write(tmp_path / "cut.nii.gz", cut.data, sform=cut.affine, scode=1)
    expected = ts.truncation_reason(read_label_map(path))
    assert expected.startswith("truncated: ") and "LV" in expected
    with pytest.raises(InputError) as info:
        resolve_twin(path, 32, register_to="none")
    assert expected in str(info.value)
    assert "pass --allow-truncated to edit it anyway" in info.value.worded(cli.flag)
    twin = resolve_twin(path, 32, register_to="none", allow_truncated=True)
    assert twin.record["allow_truncated"] is True


def test_the_aorta_may_leave_the_scan(tmp_path, scan):
    heart_top = z_range(scan, ["Myo", "LV", "RV", "LA", "RA"])[1]
    assert z_range(scan, ["Ao"])[1] > heart_top + 1  # the phantom's aorta rises above
    top = cropped(scan, 0, heart_top + 2)
    assert L["Ao"] in ts.touches_boundary(top.data)
    path = write(tmp_path / "ao.nii.gz", top.data, sform=top.affine, scode=1)
    assert resolve_twin(path, 32, register_to="none").space == "prepared"


def test_edit_cli_refuses_a_truncated_twin_in_one_line_before_loading_the_model(
    tmp_path, scan, capsys, monkeypatch
):
    lo, hi = z_range(scan, ["LV"])
    cut = cropped(scan, (lo + hi) // 2, scan.shape[2])
    path = write(tmp_path / "cut.nii.gz", cut.data, sform=cut.affine, scode=1)
    monkeypatch.setattr(cli, "_load_model", lambda args: pytest.fail("model loaded"))
    out = tmp_path / "sibs"
    code = cli.main(["edit", "perturb", str(path), "--psi", "0.5", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "truncated: " in err[0] and "LV" in err[0] and "--allow-truncated" in err[0]
    assert not out.exists()


def test_an_abdominal_ct_says_the_heart_is_outside_the_scan(tmp_path, scan):
    # TotalSegmentator on an abdominal CT: a few myocardium voxels on the top slice.
    data = np.zeros((40, 40, 20), np.uint8)
    data[18:21, 20:22, -1] = L["Myo"]
    data[10:14, 10:14, 10:] = L["Ao"]  # the descending aorta runs through
    lm = LabelMap(data, scan.affine)
    subject = tmp_path / "s0042"
    write_totalseg_subject(subject, lm, layout="v1")
    with pytest.raises(ts.Excluded) as info:
        ts.load_subject(ts.Subject("s0042", subject, "v1"))
    reason = info.value.reason
    assert reason.startswith("truncated: the heart is mostly outside the scan's field of view")
    assert "Myo 6 voxels, on the scan's boundary; LV, RV, LA, RA have none" in reason
    with pytest.raises(InputError, match="the heart is mostly outside"):
        resolve_twin(subject, 32)
    data[data == L["Myo"]] = 0
    assert ts.outside_reason(data).startswith("empty: no heart in the scan")
