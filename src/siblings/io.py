"""Label-map files: NIfTI read/write with validation, atomic writes, manifests.

Affines travel with arrays (a :class:`LabelMap` is the pair); nothing is guessed about
orientation. Every write goes to a temporary file in the destination folder and is then
renamed, so a failed command never leaves a partial file behind. Gzipped NIfTI is
written deterministically (no timestamp, no file name in the gzip header), so the same
array and affine always give the same bytes.

Example
-------
>>> import numpy as np
>>> from siblings.io import LabelMap, write_label_map, read_label_map
>>> lm = LabelMap(np.zeros((8, 8, 8), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
>>> write_label_map("/tmp/example.nii.gz", lm)  # doctest: +SKIP
>>> read_label_map("/tmp/example.nii.gz").spacing  # doctest: +SKIP
(2.0, 2.0, 2.0)
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from . import anatomy
from . import labels as label_schemes
from .errors import SiblingsError
from .labels import LabelScheme, load_scheme

PathLike = str | os.PathLike


class LabelMapError(SiblingsError, ValueError):
    """A label-map file is unusable. The message names the file and what is wrong."""

    def __init__(
        self, path: PathLike | None, reason: str, *, arguments: Sequence[str] = ()
    ) -> None:
        self.path = None if path is None else Path(path)
        self.reason = reason
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{reason}", arguments=arguments)


@dataclass
class LabelMap:
    """A 3D integer label map (values 0–6, SPEC §1) with its voxel-to-world affine (mm).

    ``xform_codes`` are the NIfTI ``(qform_code, sform_code)`` of the file it was read
    from (None: not from a file); :func:`write_label_map` writes them back, so a map put
    back on a scan's grid says what the scan's header said (1 = scanner anatomical,
    2 = aligned, …). Without codes a map is written with 2/2. ``header`` is what
    :func:`read_label_map` recorded of the file's header (which form gave the affine,
    orientation, datatype, scaling), for manifests.
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = field(default=None, compare=False)
    xform_codes: tuple[int, int] | None = field(default=None, compare=False)
    header: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise LabelMapError(self.path, f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (norms of the affine's columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def centred_affine(size: int, spacing_mm: float | None = None) -> np.ndarray:
    """RAS+ isotropic affine of the model grid, with the grid centre at world origin."""
    v = anatomy.voxel_size_mm(size) if spacing_mm is None else float(spacing_mm)
    affine = np.diag([v, v, v, 1.0])
    affine[:3, 3] = -(size - 1) / 2.0 * v
    return affine


def is_model_grid(shape: Sequence[int], affine: np.ndarray, atol: float = 1e-3) -> bool:
    """True when ``(shape, affine)`` is a model grid: ``n``³ voxels with the affine
    :func:`centred_affine` gives for ``n`` (what ``prepare``, ``phantom``, ``sample`` and
    ``edit`` write).

    Such a grid is the prepared frame of SPEC §2, whose axes are not the patient's (its
    "RAS" names the prepared world); any other affine is a scanner grid.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or len(set(shape)) != 1 or shape[0] < 1:
        return False
    return bool(np.allclose(np.asarray(affine, float), centred_affine(shape[0]), atol=atol))


# ---------------------------------------------------------------------------------
# Atomic writes.
# ---------------------------------------------------------------------------------
def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _process_umask()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    The file gets the permissions an ordinary ``open(path, "w")`` would give (0666 less
    the umask), not the owner-only 0600 of the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (NumPy scalars and arrays allowed)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (provenance manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------
# NIfTI.
# ---------------------------------------------------------------------------------
MAX_VOXELS: int = 1 << 30
"""The largest map read: 2³⁰ voxels (1024³; a whole-body CT's label map at full resolution
has about 512 x 512 x 1000). A header declaring more is refused before any voxel is read,
so a tiny file claiming a huge grid allocates nothing (``max_voxels`` changes it)."""

_SLACK_BYTES = 1 << 20  # data allowed after the voxels a header declares (padding, junk)


def _as_labels(
    path: PathLike | None, array: np.ndarray, scheme: LabelScheme | None = None
) -> np.ndarray:
    """Validate values (finite, integral, mapped by ``scheme``) and return a uint8 array."""
    scheme = scheme or label_schemes.BUILT_IN[label_schemes.DEFAULT_SCHEME]
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise LabelMapError(
                path, "contains NaN or infinite values; a label map holds integers 0–6"
            )
        if not np.array_equal(array, np.round(array)):
            raise LabelMapError(path, "contains non-integer values; a label map holds integers 0–6")
        if array.size and float(np.max(np.abs(array))) >= 2**31:
            raise LabelMapError(
                path, f"holds values up to {float(np.max(np.abs(array))):.4g}; not label values"
            )
        array = array.astype(np.int32)
    elif array.dtype.kind not in "iub":
        raise LabelMapError(path, f"has data type {array.dtype}; a label map holds integers 0–6")
    if scheme.is_identity and array.dtype == np.uint8 and (not array.size or array.max() < 7):
        return np.array(array, dtype=np.uint8)  # a copy: never the file's memory map
    try:
        return scheme.remap(array)
    except label_schemes.UnmappedValuesError as exc:
        raise LabelMapError(path, exc.template, arguments=("labels",)) from None


def _check_gzip(path: Path, limit: int | None = None) -> int:
    """Decompress the whole gzip stream, so its CRC-32 and length trailer are checked.

    nibabel stops reading once it has the voxels: a file cut inside the trailer (its
    last 8 bytes) or just before it would otherwise load without an error. Returns the
    decompressed length; stops (returning more than ``limit``) past ``limit`` bytes.
    """
    total = 0
    with gzip.open(path, "rb") as f:
        while block := f.read(1 << 20):
            total += len(block)
            if limit is not None and total > limit:
                break
    return total


def _affine_problem(affine: np.ndarray) -> str | None:
    """Why a voxel-to-world affine is unusable (non-finite, singular), or None."""
    if not np.all(np.isfinite(affine)):
        return (
            "has a non-finite voxel-to-world affine (NaN or infinite in its qform/sform or pixdim)"
        )
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if singular.min() <= 1e-6 * max(singular.max(), 1e-300) or singular.min() < 1e-6:
        sizes = " x ".join(f"{v:.4g}" for v in np.linalg.norm(affine[:3, :3], axis=0))
        return f"has a singular voxel-to-world affine (voxel axes {sizes} mm; a zero pixdim?)"
    return None


def _header_record(img: Any, affine: np.ndarray) -> dict[str, Any]:
    """Where the affine came from, by nibabel's rule (sform if its code is set, else qform)."""
    hdr = img.header
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    record: dict[str, Any] = {
        "affine_from": "sform" if scode > 0 else "qform",
        "qform_code": qcode,
        "sform_code": scode,
        "orientation": "".join(nib.aff2axcodes(affine)),
        "voxel_mm": [round(float(v), 6) for v in np.linalg.norm(affine[:3, :3], axis=0)],
        "datatype": str(img.get_data_dtype()),
    }
    # nibabel moves the header's scaling into the data proxy when it loads a file.
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    if slope != 1.0 or inter != 0.0:
        record["scaling"] = {"scl_slope": slope, "scl_inter": inter}
    if qcode > 0 and scode > 0:
        qform = img.get_qform()
        corners = np.array([[i, j, k, 1.0] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        corners[:, :3] *= np.array(img.shape[:3]) - 1
        if np.all(np.isfinite(qform)):
            gap = np.linalg.norm((corners @ qform.T - corners @ affine.T)[:, :3], axis=1).max()
            if gap > 1e-3:
                record["qform_disagrees_mm"] = round(float(gap), 4)
                record["note"] = (
                    "qform and sform disagree; the sform is used (nibabel's rule, NIfTI's "
                    "preference for the sform when its code is set)"
                )
    return record


def read_nifti(
    path: PathLike, max_voxels: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int], dict[str, Any]]:
    """Read a 3D NIfTI's voxels, checking its header before any voxel is read.

    Returns ``(array, affine, (qform_code, sform_code), header_record)``: the voxels as
    stored (scaled by ``scl_slope``/``scl_inter`` when set), the voxel-to-world affine by
    nibabel's rule (the sform when its code is set, else the qform) and a record of the
    header (which form was used, whether the two disagree, orientation, datatype).

    Raises
    ------
    LabelMapError
        naming the file: missing, empty, not NIfTI, corrupt or truncated (gzip stream or
        data shorter than the header declares), a header declaring more than
        ``max_voxels`` (default :data:`MAX_VOXELS`), not 3D (a singleton 4th dimension
        is dropped), no orientation (qform and sform codes both 0), a non-finite or
        singular affine, a data type that cannot hold labels.
    """
    path = Path(path)
    cap = MAX_VOXELS if max_voxels is None else int(max_voxels)
    if not path.exists():
        raise LabelMapError(path, "no such file")
    if path.is_dir():
        raise LabelMapError(path, "is a folder, expected a NIfTI file")
    if path.stat().st_size == 0:
        raise LabelMapError(path, "is an empty file")
    unreadable = "cannot be read as NIfTI (corrupt or truncated?)"
    with warnings.catch_warnings(), _quiet_nibabel():
        # nibabel warns (and logs) while fixing odd headers; every problem that matters is
        # reported below as one line naming the file.
        warnings.simplefilter("ignore")
        try:
            _check_extensions(path)
            img = nib.load(str(path))
        except LabelMapError:
            raise
        except Exception as exc:  # nibabel, gzip, zlib and OS errors alike
            raise LabelMapError(path, f"{unreadable}: {_one_line(exc)}") from None
        if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is one too
            raise LabelMapError(
                path, f"is a {type(img).__name__}, expected a single-file NIfTI (.nii, .nii.gz)"
            )
        shape = tuple(int(s) for s in img.shape)
        if any(s < 1 for s in shape):
            raise LabelMapError(path, f"declares shape {shape}: a dimension without voxels")
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise LabelMapError(path, f"is {len(shape)}D with shape {shape}; a label map is 3D")
        n_voxels = math.prod(shape)
        if n_voxels > cap:
            raise LabelMapError(
                path,
                f"declares {'x'.join(map(str, shape))} = {n_voxels} voxels, more than the "
                f"{cap} a label map may have (not read)",
            )
        dtype = img.get_data_dtype()
        if dtype.kind not in "iubf":
            raise LabelMapError(path, f"has data type {dtype}; a label map holds integers 0–6")
        offset = int(img.dataobj.offset)
        needed = offset + n_voxels * dtype.itemsize
        try:
            size = (
                _check_gzip(path, needed + _SLACK_BYTES)
                if path.name.endswith(".gz")
                else path.stat().st_size
            )
        except Exception as exc:  # gzip, zlib and OS errors
            raise LabelMapError(path, f"{unreadable}: {_one_line(exc)}") from None
        if size < needed:
            raise LabelMapError(
                path,
                f"{unreadable}: its header declares {n_voxels * dtype.itemsize} bytes of "
                f"voxels from byte {offset}, the {'decompressed ' if path.name.endswith('.gz') else ''}"
                f"file holds {size} bytes",
            )
        if path.name.endswith(".gz") and size > needed + _SLACK_BYTES:
            raise LabelMapError(
                path,
                f"{unreadable}: it decompresses to more than the {needed} bytes its header "
                "declares",
            )
        codes = (int(img.header["qform_code"]), int(img.header["sform_code"]))
        if codes[1] <= 0 and codes[0] > 0:
            # nibabel "fixes" a zero or negative pixdim (to 1, or its absolute value) as it
            # loads; the qform's voxel size would then be a guess.
            pixdim = _raw_pixdim(path, type(img.header))
            if pixdim is not None and not (np.all(np.isfinite(pixdim)) and np.all(pixdim > 0)):
                raise LabelMapError(
                    path,
                    f"has pixdim[1..3] = {', '.join(f'{v:g}' for v in pixdim)}: the voxel size "
                    "its qform needs must be positive",
                )
        if codes == (0, 0):
            raise LabelMapError(
                path,
                "has no orientation: its qform_code and sform_code are both 0, so where its "
                "voxels lie in the patient is unknown; write it with a qform or sform",
            )
        affine = np.asarray(img.affine, dtype=np.float64)
        problem = _affine_problem(affine)
        if problem:
            raise LabelMapError(path, problem)
        try:
            array = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise LabelMapError(path, f"{unreadable}: {_one_line(exc)}") from None
        record = _header_record(img, affine)
    array = np.asarray(array).reshape(shape)
    return array, affine, codes, record


_MAX_EXTENSION_BYTES = 64 << 20  # header extensions (label tables, XML): far smaller


def _check_extensions(path: Path) -> None:
    """Refuse header extensions the file does not hold, before nibabel reads them.

    nibabel reads each extension with one ``read(esize)`` of the size its header field
    declares, so a tiny file declaring a 2 GB extension would allocate 2 GB. Walk them
    here with bounded reads: each must be at least 8 bytes, fit before the data offset
    (or the end of the file) and be there in full; all of them at most 64 MiB.
    """
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        block = f.read(544)
        klass = next(
            (
                k
                for k in (nib.Nifti1Header, nib.Nifti2Header)
                for order in ("<", ">")
                if len(block) >= 4
                and int(np.frombuffer(block[:4], order + "i4")[0]) == k.template_dtype.itemsize
            ),
            None,
        )
        if klass is None:
            return  # not NIfTI: nibabel refuses it
        size = klass.template_dtype.itemsize
        if len(block) < size + 4 or block[size] == 0:
            return  # no extension
        try:
            offset = float(klass(binaryblock=block[:size], check=False)["vox_offset"])
        except Exception:
            return
        if not math.isfinite(offset):
            return  # nibabel reads no extension then
        pos = size + 4
        remaining = offset - pos if offset >= pos else None  # None: nibabel reads to the end
        pending = block[pos:]
        total = 0

        def take(n: int) -> int:
            """Consume n bytes (bounded chunks); the number actually there."""
            nonlocal pending
            got = min(n, len(pending))
            pending = pending[got:]
            while got < n:
                chunk = f.read(min(1 << 20, n - got))
                if not chunk:
                    break
                got += len(chunk)
            return got

        while remaining is None or remaining >= 16:
            head = pending[:8]
            if len(head) < 8:
                head += f.read(8 - len(head))
                pending = b""
            else:
                pending = pending[8:]
            if len(head) < 8:
                return  # end of file: nibabel stops, or refuses a partial extension header
            esize = _int32(head[:4], block[:4], size)
            room = remaining if remaining is not None else math.inf
            if esize < 8 or esize > room:
                raise LabelMapError(
                    path,
                    f"cannot be read as NIfTI (corrupt or truncated?): a header extension "
                    f"declares {esize} bytes"
                    + (
                        f", {int(room)} are left before the voxels" if remaining is not None else ""
                    ),
                )
            total += esize
            if total > _MAX_EXTENSION_BYTES:
                raise LabelMapError(
                    path, f"has header extensions of more than {_MAX_EXTENSION_BYTES} bytes"
                )
            if take(esize - 8) < esize - 8:
                raise LabelMapError(
                    path,
                    f"cannot be read as NIfTI (corrupt or truncated?): it ends inside a "
                    f"{esize}-byte header extension",
                )
            if remaining is not None:
                remaining -= esize


def _int32(field: bytes, sizeof_hdr: bytes, size: int) -> int:
    """A header int32 in the byte order its ``sizeof_hdr`` field reveals."""
    order = "<" if int(np.frombuffer(sizeof_hdr, "<i4")[0]) == size else ">"
    return int(np.frombuffer(field, order + "i4")[0])


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's header-fixing log lines (they would print to stderr)."""
    import logging

    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _raw_pixdim(path: Path, header_class: Any) -> np.ndarray | None:
    """pixdim[1..3] as stored in the file, before nibabel's fixes (None if unreadable)."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            block = f.read(header_class.template_dtype.itemsize)
        raw = header_class(binaryblock=block, check=False)
        return np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    except Exception:
        return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def validate_grid(
    lm: LabelMap,
    shape: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    atol_mm: float = 1e-3,
) -> None:
    """Raise :class:`LabelMapError` unless ``lm`` has the required shape and voxel size."""
    if shape is not None and tuple(lm.shape) != tuple(shape):
        raise LabelMapError(
            lm.path, f"grid is {'x'.join(map(str, lm.shape))}, expected {'x'.join(map(str, shape))}"
        )
    if spacing is not None:
        want = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
        if not np.allclose(lm.spacing, want, atol=atol_mm):
            got = " x ".join(f"{s:.4g}" for s in lm.spacing)
            raise LabelMapError(
                lm.path,
                f"voxel size is {got} mm, expected {' x '.join(f'{s:.4g}' for s in want)} mm",
            )


def read_label_map(
    path: PathLike,
    shape: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    labels: str | PathLike | LabelScheme | None = None,
    max_voxels: int | None = None,
) -> LabelMap:
    """Read and validate a label-map NIfTI (``.nii`` or ``.nii.gz``).

    Parameters
    ----------
    path : path to the file.
    shape : required grid shape, or None for any.
    spacing : required voxel size in mm (scalar for isotropic), or None for any.
    labels : the file's label scheme (:func:`siblings.labels.load_scheme`: a built-in
        name, a JSON or nnU-Net ``dataset.json`` path); default ``siblings`` (0–6).
    max_voxels : refuse a header declaring more voxels (default :data:`MAX_VOXELS`).

    The map's ``header`` records which form gave the affine (nibabel's rule: the sform
    when its code is set, else the qform) and whether the two disagree; ``xform_codes``
    keeps the codes, so a map written back on this grid says what this header said.

    Raises
    ------
    LabelMapError
        naming the file, for everything :func:`read_nifti` refuses; NaN or non-integer
        values; values the scheme does not map (each listed with its voxel count); a
        grid or voxel size other than the one required.
    """
    path = Path(path)
    scheme = load_scheme(labels)
    array, affine, codes, header = read_nifti(path, max_voxels)
    lm = LabelMap(_as_labels(path, array, scheme), affine, path=path, xform_codes=codes)
    lm.header = header
    validate_grid(lm, shape, spacing)
    return lm


def to_nifti(lm: LabelMap) -> nib.Nifti1Image:
    """A Nifti1Image (uint8, label intent, mm units, sform and qform set) of ``lm``.

    Both forms hold the affine; their codes are ``lm.xform_codes`` (default 2/2, aligned).
    """
    img = nib.Nifti1Image(np.asarray(lm.data, dtype=np.uint8), lm.affine)
    hdr = img.header
    hdr.set_xyzt_units("mm")
    hdr.set_intent("label")
    qform_code, sform_code = lm.xform_codes if lm.xform_codes is not None else (2, 2)
    img.set_sform(lm.affine, code=int(sform_code))
    img.set_qform(lm.affine, code=int(qform_code))
    return img


def write_label_map(path: PathLike, lm: LabelMap) -> Path:
    """Write ``lm`` to ``path`` atomically; ``.nii.gz`` output is byte-reproducible."""
    path = Path(path)
    data = _as_labels(path, np.asarray(lm.data))
    raw = to_nifti(LabelMap(data, lm.affine, xform_codes=lm.xform_codes)).to_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    return write_bytes(path, raw)


def list_label_maps(folder: PathLike, min_count: int = 1) -> list[Path]:
    """Sorted ``*.nii.gz``/``*.nii`` files of a cohort folder; clear error if unusable."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and (p.name.endswith(".nii.gz") or p.name.endswith(".nii"))
        and not p.name.startswith(".")
        and not p.name.endswith(".xfm.nii.gz")
    )
    if len(files) < min_count:
        raise LabelMapError(
            folder, f"holds {len(files)} label map(s) (*.nii.gz), at least {min_count} needed"
        )
    return files


def stem(path: PathLike) -> str:
    """File name without ``.nii.gz``/``.nii``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# ---------------------------------------------------------------------------------
# One-hot tensors (SPEC §1).
# ---------------------------------------------------------------------------------
def one_hot(labels: Any, num_labels: int = anatomy.NUM_LABELS) -> Any:
    """One-hot encode integer labels; channel index == label value.

    ``(D, H, W)`` → ``(C, D, H, W)`` and ``(B, D, H, W)`` → ``(B, C, D, H, W)``.
    Accepts a NumPy array (returns float32 NumPy) or a torch tensor (returns float32
    tensor on the same device).
    """
    import torch

    if isinstance(labels, np.ndarray):
        return one_hot(torch.from_numpy(labels.astype(np.int64)), num_labels).numpy()
    t = labels.long()
    oh = torch.nn.functional.one_hot(t, num_labels).to(torch.float32)
    if t.ndim == 3:
        return oh.permute(3, 0, 1, 2).contiguous()
    if t.ndim == 4:
        return oh.permute(0, 4, 1, 2, 3).contiguous()
    raise ValueError(f"expected a 3D or batched 3D label array, got shape {tuple(t.shape)}")


def from_one_hot(probs: Any) -> Any:
    """Label map from channel scores by argmax over the channel axis (SPEC §1)."""
    import torch

    if isinstance(probs, np.ndarray):
        axis = 0 if probs.ndim == 4 else 1
        return np.argmax(probs, axis=axis).astype(np.uint8)
    dim = 0 if probs.ndim == 4 else 1
    return torch.argmax(probs, dim=dim).to(torch.uint8)


# ---------------------------------------------------------------------------------
# Colour tables for viewers.
# ---------------------------------------------------------------------------------
def colour_table(fmt: str = "slicer") -> str:
    """The label colour table as text: ``slicer`` (3D Slicer ``.ctbl``) or ``itksnap``."""
    if fmt == "slicer":
        lines = ["# 3D Slicer color table: digital-siblings cardiac labels", "# value name R G B A"]
        for i, name in enumerate(anatomy.LABEL_NAMES):
            r, g, b = anatomy.COLOURS[name]
            lines.append(f"{i} {name} {r} {g} {b} {0 if i == 0 else 255}")
        return "\n".join(lines) + "\n"
    if fmt == "itksnap":
        lines = [
            "################################################",
            "# ITK-SnAP Label Description File",
            "# digital-siblings cardiac labels",
            "# Columns = Index, R, G, B, A, VIS, MSH, LABEL",
            "################################################",
        ]
        for i, name in enumerate(anatomy.LABEL_NAMES):
            r, g, b = anatomy.COLOURS[name]
            vis = 0 if i == 0 else 1
            label = "Clear Label" if i == 0 else f"{name} ({anatomy.LONG_NAMES[name]})"
            lines.append(f'{i:5d} {r:5d} {g:4d} {b:4d} {vis:8.0f} {vis:2d} {vis:2d}    "{label}"')
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown colour-table format {fmt!r}; use 'slicer' or 'itksnap'")


def write_colour_tables(folder: PathLike) -> list[Path]:
    """Write ``labels.ctbl`` (3D Slicer) and ``labels_itksnap.txt`` (ITK-SNAP) into ``folder``."""
    folder = Path(folder)
    return [
        write_text(folder / "labels.ctbl", colour_table("slicer")),
        write_text(folder / "labels_itksnap.txt", colour_table("itksnap")),
    ]
