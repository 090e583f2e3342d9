"""Phantom hearts placed in scanner space and written as TotalSegmentator would.

The real TotalSegmentator dataset needs a download (and its chamber task a licence),
so this module makes stand-ins whose right answer is known: a phantom subject
(:func:`siblings.data.phantom.make_phantom`) is given a random rigid pose, sampled onto
an anisotropic scanner grid with LPS or RAS voxel axes (optionally oblique) and a field
of view larger than the heart, and written in one of TotalSegmentator's layouts:

- ``v1``: ``<subject>/segmentations/<class>.nii.gz``, one binary file per class;
- ``v2-ml``: ``<subject>/heartchambers_highres.nii.gz``, one multi-label file
  (``TotalSegmentator --task heartchambers_highres --ml``), with the label table in a
  NIfTI extension as TotalSegmentator writes it;
- ``v2-files``: ``<subject>/heartchambers_highres/<class>.nii.gz`` (the same task
  without ``--ml``);
- ``v2-total``: ``<subject>/segmentations/heart.nii.gz`` and ``aorta.nii.gz`` only
  (the v2 ``total`` task, which has no chambers).

Faults can be injected to exercise quality control: a missing class file, an empty
class, a chamber cut by the scan's field of view, an implausibly small chamber, a
corrupt file. Sampling here is plain nearest neighbour, written independently of
:mod:`siblings.data.geometry`, so tests of that module do not grade their own homework.

Example
-------
>>> from siblings.data.phantom_scans import make_totalseg_dataset
>>> rows = make_totalseg_dataset("ts_demo", n=4, phantom_size=64)   # doctest: +SKIP
>>> # then: siblings prepare totalsegmentator ts_demo --out prepared
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .. import anatomy
from ..errors import InputError
from ..io import LabelMap, write_bytes, write_text
from .phantom import make_phantom

L = anatomy.LABELS
LAYOUTS = ("v1", "v2-ml", "v2-files", "v2-total")
FAULTS = ("missing_class", "empty_class", "truncated", "tiny_chamber", "corrupt_file")
# The reason prefix that preparation reports for each fault (see siblings.data.totalseg).
EXPECTED_REASON = {
    "missing_class": "missing",
    "empty_class": "empty",
    "truncated": "truncated",
    "tiny_chamber": "volume",
    "corrupt_file": "unreadable",
    "total_only": "layout",
}


def axis_angle(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``angle_deg`` (right-handed)."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    t = math.radians(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def random_pose(
    rng: np.random.Generator, max_rotation_deg: float = 40.0, max_shift_mm: float = 20.0
) -> np.ndarray:
    """A random rigid pose (4×4): rotation up to ``max_rotation_deg`` about a random axis,
    and a shift of up to ``max_shift_mm`` along each axis."""
    axis = rng.standard_normal(3)
    pose = np.eye(4)
    pose[:3, :3] = axis_angle(axis, float(rng.uniform(-max_rotation_deg, max_rotation_deg)))
    pose[:3, 3] = rng.uniform(-max_shift_mm, max_shift_mm, size=3)
    return pose


def scanner_affine(
    shape: Sequence[int],
    spacing: Sequence[float],
    orientation: str = "LPS",
    centre_mm: Sequence[float] = (0.0, 0.0, 0.0),
    tilt: np.ndarray | None = None,
) -> np.ndarray:
    """Affine (voxel → RAS mm) of a scanner grid centred on ``centre_mm``.

    ``orientation`` names where the voxel axes point: ``"RAS"`` (i → left-to-right…) or
    ``"LPS"`` (i → towards the patient's left, j → posterior, k → superior, as DICOM
    stores CT). ``tilt`` optionally rotates the grid (an oblique acquisition).
    """
    signs = {"RAS": (1.0, 1.0, 1.0), "LPS": (-1.0, -1.0, 1.0)}
    if orientation not in signs:
        raise InputError(f"orientation must be 'RAS' or 'LPS', got {orientation!r}")
    direction = np.diag(signs[orientation])
    if tilt is not None:
        direction = np.asarray(tilt, float) @ direction
    a = np.eye(4)
    a[:3, :3] = direction * np.asarray(spacing, float)
    half = (np.asarray(shape, float) - 1.0) / 2.0
    a[:3, 3] = np.asarray(centre_mm, float) - a[:3, :3] @ half
    return a


def place_in_scanner(
    lm: LabelMap, pose: np.ndarray, shape: Sequence[int], affine: np.ndarray
) -> LabelMap:
    """Sample ``lm`` moved by ``pose`` (its world → scanner world) onto a scanner grid.

    Nearest neighbour; scanner voxels outside ``lm``'s grid are background.
    """
    shape = tuple(int(s) for s in shape)
    # Scanner voxel → source voxel: A_src⁻¹ · pose⁻¹ · A_scan.
    m = np.linalg.inv(lm.affine) @ np.linalg.inv(pose) @ affine
    # Only visit the scanner voxels that can see the source grid.
    corners = np.array(list(np.ndindex(2, 2, 2)), float) * (np.array(lm.shape) - 1)
    inv = np.linalg.inv(m)
    hit = corners @ inv[:3, :3].T + inv[:3, 3]
    lo = np.clip(np.floor(hit.min(0)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(hit.max(0)).astype(int) + 2, 0, shape)
    out = np.zeros(shape, np.uint8)
    if np.any(hi <= lo):
        return LabelMap(out, affine)
    j, k = np.meshgrid(np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]), indexing="ij")
    for i in range(lo[0], hi[0]):  # one slice at a time keeps memory small
        pts = np.stack([np.full(j.size, i), j.ravel(), k.ravel()]).astype(np.float64)
        src = m[:3, :3] @ pts + m[:3, 3:4]
        values = ndimage.map_coordinates(lm.data, src, order=0, mode="constant", cval=0)
        out[i, lo[1] : hi[1], lo[2] : hi[2]] = values.reshape(j.shape)
    return LabelMap(out, affine)


# ---------------------------------------------------------------------------------
# TotalSegmentator files.
# ---------------------------------------------------------------------------------
def _nifti_bytes(
    data: np.ndarray, affine: np.ndarray, label_table: dict[int, str] | None = None
) -> bytes:
    img = nib.Nifti1Image(np.asarray(data, np.uint8), affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    if label_table:
        # TotalSegmentator's --ml output carries a CaretExtension label table (code 0).
        labels = "".join(
            f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>\n'
            for k, v in label_table.items()
        )
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0">'
            f"<LabelTable>\n{labels}</LabelTable><VolumeType><![CDATA[Label]]></VolumeType>"
            "</VolumeInformation></CaretExtension>\n"
        )
        img.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode("utf-8")))
    import gzip

    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def write_totalseg_subject(
    folder: str | os.PathLike,
    lm: LabelMap,
    layout: str = "v1",
    drop: Sequence[str] = (),
    empty: Sequence[str] = (),
) -> list[Path]:
    """Write a scanner-space cardiac map in a TotalSegmentator layout.

    ``drop`` lists tissues whose class file (or value) is left out, ``empty`` tissues
    whose file is written but empty. Returns the written files.
    """
    folder = Path(folder)
    data, affine = np.asarray(lm.data), lm.affine
    written: list[Path] = []
    if layout in ("v1", "v2-files"):
        sub = folder / ("segmentations" if layout == "v1" else "heartchambers_highres")
        for tissue, cls in anatomy.TOTALSEG_CLASSES.items():
            if tissue in drop:
                continue
            mask = np.zeros(data.shape, np.uint8) if tissue in empty else (data == L[tissue])
            written.append(write_bytes(sub / f"{cls}.nii.gz", _nifti_bytes(mask, affine)))
    elif layout == "v2-ml":
        value_of = {cls: v for v, cls in anatomy.TOTALSEG_V2_HEARTCHAMBERS_VALUES.items()}
        ml = np.zeros(data.shape, np.uint8)
        for tissue, cls in anatomy.TOTALSEG_CLASSES.items():
            if tissue in drop or tissue in empty:
                continue
            ml[data == L[tissue]] = value_of[cls]
        table = dict(anatomy.TOTALSEG_V2_HEARTCHAMBERS_VALUES)
        written.append(
            write_bytes(folder / "heartchambers_highres.nii.gz", _nifti_bytes(ml, affine, table))
        )
    elif layout == "v2-total":
        sub = folder / "segmentations"
        heart = np.isin(data, [L[t] for t in ("Myo", "LV", "RV", "LA", "RA")])
        written.append(
            write_bytes(
                sub / f"{anatomy.TOTALSEG_V2_WHOLE_HEART}.nii.gz", _nifti_bytes(heart, affine)
            )
        )
        written.append(write_bytes(sub / "aorta.nii.gz", _nifti_bytes(data == L["Ao"], affine)))
    else:
        raise InputError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    return written


def write_meta_csv(
    folder: str | os.PathLike, subjects: Sequence[str], splits: Sequence[str]
) -> Path:
    """``meta.csv`` as in the TotalSegmentator dataset (``;``-separated)."""
    lines = ["image_id;age;gender;institute;study_type;split"]
    for s, split in zip(subjects, splits, strict=True):
        lines.append(f"{s};60;m;A;ct thorax;{split}")
    return write_text(Path(folder) / "meta.csv", "\n".join(lines) + "\n")


def make_totalseg_dataset(
    out: str | os.PathLike,
    n: int = 8,
    phantom_size: int = 64,
    spacing: Sequence[float] = (1.5, 1.5, 2.5),
    fov_mm: Sequence[float] = (260.0, 260.0, 230.0),
    layouts: Sequence[str] = ("v1",),
    faults: dict[int, str] | None = None,
    seed: int = 0,
    max_rotation_deg: float = 40.0,
) -> list[dict]:
    """Write ``n`` phantom subjects (``s0000``…) in TotalSegmentator layout, plus ``meta.csv``.

    Parameters
    ----------
    out : dataset root.
    n : number of subjects.
    phantom_size : grid of the phantom before placement (1.4 mm at 128).
    spacing, fov_mm : scanner voxel size and field of view (mm) per axis.
    layouts : layouts cycled over the subjects (see module docstring).
    faults : subject index → fault kind (``missing_class``, ``empty_class``,
        ``truncated``, ``tiny_chamber``, ``corrupt_file``).
    seed : everything depends only on ``seed`` (phantom ``i`` is ``make_phantom(i, seed)``).

    Returns
    -------
    list of dict
        One row per subject: ``subject``, ``layout``, ``orientation``, ``fault``,
        ``expected_reason`` (prefix of the exclusion reason, or "" if it should be
        kept), the pose, and the scanner-space map (``label_map``) for checks.
    """
    faults = dict(faults or {})
    out = Path(out)
    rows: list[dict] = []
    shape = tuple(round(f / s) for f, s in zip(fov_mm, spacing, strict=True))
    for i in range(n):
        rng = np.random.default_rng([int(seed), 7919, i])
        phantom, _ = make_phantom(i, size=phantom_size, seed=seed)
        layout = layouts[i % len(layouts)]
        orientation = ("LPS", "RAS")[i % 2]
        fault = faults.get(i, "")
        pose = random_pose(rng, max_rotation_deg=max_rotation_deg)
        tilt = axis_angle(rng.standard_normal(3), 12.0) if i % 4 == 3 else None
        centre = np.zeros(3)
        if fault == "truncated":
            # Put the top of the atria 12 mm outside the scan (above its last slice).
            pts = np.argwhere(np.isin(phantom.data, [L["LA"], L["RA"]]))
            world = pts @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]
            top = (world @ pose[:3, :3].T + pose[:3, 3])[:, 2].max()
            centre[2] = top - 12.0 - fov_mm[2] / 2.0
        affine = scanner_affine(shape, spacing, orientation, centre, tilt)
        scan = place_in_scanner(phantom, pose, shape, affine)
        if fault == "tiny_chamber":
            # A segmentation failure: only a 9 mm ball (about 3 mL) of the LA survives.
            idx = np.argwhere(scan.data == L["LA"])
            world = idx @ affine[:3, :3].T + affine[:3, 3]
            far = np.linalg.norm(world - world.mean(axis=0), axis=1) > 9.0
            scan.data[tuple(idx[far].T)] = 0
        subject = f"s{i:04d}"
        drop = ("RA",) if fault == "missing_class" else ()
        empty = ("RV",) if fault == "empty_class" else ()
        files = write_totalseg_subject(out / subject, scan, layout, drop=drop, empty=empty)
        if fault == "corrupt_file":
            raw = files[-1].read_bytes()
            files[-1].write_bytes(raw[: len(raw) // 2])  # a truncated download
        expected = EXPECTED_REASON.get(fault, "") if fault else ""
        if layout == "v2-total":
            expected = EXPECTED_REASON["total_only"]
        rows.append(
            {
                "subject": subject,
                "layout": layout,
                "orientation": orientation,
                "oblique": tilt is not None,
                "fault": fault,
                "expected_reason": expected,
                "pose": pose,
                "label_map": scan,
            }
        )
    write_meta_csv(
        out, [r["subject"] for r in rows], ["train" if i % 5 else "test" for i in range(n)]
    )
    return rows
