"""Hostile and broken NIfTI files (issue 15 item 5), property-based with hypothesis.

Headers are built field by field, past nibabel's own checks: random dims (0, negative,
huge), pixdims (0, negative, NaN, infinite), quaternions and srows (NaN, singular),
datatypes (valid, unknown, complex, RGB), offsets, scaling, codes, magic and byte order;
then data of random length, stored as .nii or .nii.gz, the gzip cut or replaced by
garbage. Property: :func:`siblings.io.read_label_map` returns a valid 3D label map or
raises :class:`siblings.io.LabelMapError` with a one-line message naming the file, never
anything else, and never allocates more than a few MB for these tiny files (the
declared size is checked against :data:`siblings.io.MAX_VOXELS` and the bytes the file
holds before any voxel is read). The CLI turns each into one line and exit 2, writing
nothing.
"""

from __future__ import annotations

import gzip
import math
import tracemalloc
import warnings
from datetime import timedelta

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siblings import cli
from siblings.io import LabelMap, LabelMapError, read_label_map

# Tiny files only: a read that allocates more than this follows a declared size.
PEAK_BYTES = 8 * 2**20

FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, 1e-30, 1e30, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)
DATATYPES = st.sampled_from(
    [2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 32, 128, 1792, 2304, 0, 3, 9999, -4]
)


@st.composite
def headers(draw) -> bytes:
    hdr = nib.Nifti1Header()
    s = hdr.structarr
    ndim = draw(st.integers(-2, 9))
    dims = [draw(st.one_of(st.integers(0, 9), st.integers(-3, 32767))) for _ in range(7)]
    s["dim"] = [ndim, *dims]
    s["pixdim"] = [draw(FLOATS) for _ in range(8)]
    code = draw(DATATYPES)
    s["datatype"] = code
    s["bitpix"] = draw(st.sampled_from([0, 1, 8, 16, 32, 64, 128, 7]))
    s["vox_offset"] = draw(st.sampled_from([0.0, 352.0, 348.0, 353.0, 1e9, -5.0, math.nan]))
    s["scl_slope"] = draw(FLOATS)
    s["scl_inter"] = draw(FLOATS)
    s["qform_code"] = draw(st.integers(-1, 5))
    s["sform_code"] = draw(st.integers(-1, 5))
    for name in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"):
        s[name] = draw(FLOATS)
    for name in ("srow_x", "srow_y", "srow_z"):
        s[name] = [draw(FLOATS) for _ in range(4)]
    s["magic"] = draw(st.sampled_from([b"n+1", b"ni1", b"n+2", b"xyz", b""]))
    s["sizeof_hdr"] = draw(st.sampled_from([348, 540, 0, 349]))
    if draw(st.booleans()):
        hdr = hdr.as_byteswapped(">")
    return hdr.binaryblock


@st.composite
def files(draw) -> tuple[str, bytes]:
    """(suffix, bytes) of a hostile file: a random header, an extension flag, data."""
    raw = draw(headers())
    raw += draw(st.sampled_from([b"\0\0\0\0", b"\1\0\0\0", b""]))
    raw += draw(st.binary(max_size=4096))
    kind = draw(st.sampled_from(["nii", "gz", "gz-cut", "gz-garbage", "garbage"]))
    if kind == "nii":
        return ".nii", raw
    if kind == "garbage":
        return ".nii.gz", draw(st.binary(min_size=1, max_size=600))
    packed = gzip.compress(raw, mtime=0)
    if kind == "gz-cut":
        packed = packed[: draw(st.integers(1, max(1, len(packed) - 1)))]
    elif kind == "gz-garbage":
        packed = packed[:10] + draw(st.binary(min_size=1, max_size=300))
    return ".nii.gz", packed


@st.composite
def plausible_files(draw) -> tuple[str, bytes]:
    """Files nibabel writes itself, with one field made hostile: closer to real files."""
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=3, max_size=5)))
    dtype = draw(st.sampled_from(["u1", "i2", "u2", "i4", "f4", "f8", "i8"]))
    data = draw(st.sampled_from(["zeros", "labels", "big", "nan"]))
    array = np.zeros(shape, dtype)
    if data == "labels":
        array[...] = np.arange(array.size).reshape(shape) % 7
    elif data == "big":
        array.flat[0] = 100
    elif data == "nan" and array.dtype.kind == "f":
        array.flat[-1] = np.nan
    img = nib.Nifti1Image(array, np.diag([1.0, 1.0, 1.0, 1.0]), dtype=array.dtype)
    img.set_qform(np.eye(4), code=draw(st.integers(0, 2)))
    written = img.to_bytes()  # what nibabel itself writes (offset, codes, sizes set)
    hdr = nib.Nifti1Header(binaryblock=written[:348], check=False)
    field = draw(st.sampled_from(["pixdim", "srow_x", "dim", "scl_slope", "vox_offset", "none"]))
    if field == "pixdim":
        hdr["pixdim"][1 + draw(st.integers(0, 2))] = draw(FLOATS)
    elif field == "srow_x":
        hdr["srow_x"] = [draw(FLOATS) for _ in range(4)]
    elif field == "dim":
        hdr["dim"][1 + draw(st.integers(0, 2))] = draw(st.integers(-2, 2**15 - 1))
    elif field == "scl_slope":
        hdr["scl_slope"] = draw(FLOATS)
    elif field == "vox_offset":
        hdr["vox_offset"] = draw(st.sampled_from([0.0, 1e6, 353.0]))
    raw = hdr.binaryblock + written[348:]
    if draw(st.booleans()):
        return ".nii", raw
    return ".nii.gz", gzip.compress(raw, mtime=0)


def check_read(tmp_path, suffix: str, raw: bytes) -> str:
    """Read one hostile file: a valid map or a LabelMapError; bounded memory. The outcome."""
    path = tmp_path / f"hostile{suffix}"
    path.write_bytes(raw)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning would be a stray line on stderr
            lm = read_label_map(path)
    except LabelMapError as exc:
        text = str(exc)
        assert text.startswith(f"{path}: ") and "\n" not in text, text
        outcome = text[len(str(path)) + 2 :].split(" ")[0:2]
        return " ".join(outcome)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < PEAK_BYTES, f"read allocated {peak} bytes for a {len(raw)}-byte file"
    assert isinstance(lm, LabelMap) and lm.data.ndim == 3 and lm.data.dtype == np.uint8
    assert lm.data.size == 0 or int(lm.data.max()) <= 6
    assert np.all(np.isfinite(lm.affine)) and abs(np.linalg.det(lm.affine[:3, :3])) > 0
    return "read"


OUTCOMES: dict[str, int] = {}


def _run(tmp_path_factory, example) -> None:
    tmp = tmp_path_factory.getbasetemp() / "hostile"  # one folder: each case rewrites it
    tmp.mkdir(exist_ok=True)
    for old in tmp.iterdir():
        old.unlink()
    outcome = check_read(tmp, *example)
    OUTCOMES[outcome] = OUTCOMES.get(outcome, 0) + 1


FAST = settings(
    max_examples=60,
    deadline=timedelta(seconds=10),
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LONG = settings(
    max_examples=5000,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FAST
@given(example=st.one_of(files(), plausible_files()))
def test_hostile_files_give_a_one_line_error_or_a_valid_map(tmp_path_factory, example):
    _run(tmp_path_factory, example)


@pytest.mark.slow
@LONG
@given(example=st.one_of(files(), plausible_files()))
def test_many_hostile_files_give_a_one_line_error_or_a_valid_map(tmp_path_factory, example):
    _run(tmp_path_factory, example)


# ---------------------------------------------------------------------------------
# The command line on a few hostile files: one line, exit 2, nothing written.
# ---------------------------------------------------------------------------------
def _huge(path):
    hdr = nib.Nifti1Header()
    hdr["dim"] = [3, 20000, 20000, 20000, 1, 1, 1, 1]
    hdr.set_sform(np.eye(4), code=1)
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 64, mtime=0))


def _nan_affine(path):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    img.header["srow_x"] = [np.nan, 0, 0, 0]
    path.write_bytes(gzip.compress(img.header.binaryblock + b"\0" * 4 + b"\0" * 64, mtime=0))


def _garbage(path):
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 3)


def _cut(path):
    img = nib.Nifti1Image(np.ones((16, 16, 16), np.uint8), np.eye(4))
    path.write_bytes(gzip.compress(img.to_bytes(), mtime=0)[:-30])


def _extension_bomb(path):
    # A 2 GB header extension declared by a file of a few hundred bytes.
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    img.header["vox_offset"] = 4096
    size = np.array([2**31 - 16, 0], "<i4").tobytes()
    path.write_bytes(gzip.compress(img.header.binaryblock + b"\1\0\0\0" + size + b"\0" * 64))


def _no_orientation(path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), None), str(path))


HOSTILE = {
    "huge": (_huge, "declares 20000x20000x20000"),
    "nan_affine": (_nan_affine, "non-finite voxel-to-world affine"),
    "garbage": (_garbage, "cannot be read as NIfTI"),
    "cut": (_cut, "corrupt or truncated"),
    "no_orientation": (_no_orientation, "has no orientation"),
    "extension_bomb": (_extension_bomb, "a header extension declares 2147483632 bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_cli_reports_a_hostile_file_in_one_line_and_writes_nothing(
    tmp_path, case, capsys, monkeypatch
):
    make, reason = HOSTILE[case]
    bad = tmp_path / "data" / "bad.nii.gz"
    bad.parent.mkdir()
    make(bad)
    (bad.parent / "bad_2.nii.gz").write_bytes(bad.read_bytes())  # evaluate needs k + 1 maps
    monkeypatch.setattr(cli, "_load_model", lambda args: pytest.fail("model loaded"))
    evaluate = ["evaluate", str(bad.parent), "--reference", str(bad.parent), "--k", "1"]
    runs = {
        "edit": ["edit", "perturb", str(bad), "--psi", "0.5", "--out", str(tmp_path / "e")],
        "evaluate": [*evaluate, "--out", str(tmp_path / "v")],
    }
    for name, argv in runs.items():
        code = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (name, err)
        assert str(bad) in err[0] and reason in err[0], (name, err[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
