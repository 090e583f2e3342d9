"""TotalSegmentator ingest, quality control and per-subject preparation (SPEC §2).

This module reads and computes; it writes no file. The cohort run that writes the
prepared folder is :func:`siblings.pipelines.prepare.prepare_totalsegmentator`.

Layouts (one folder per subject under the dataset root, subject name = folder name):

- **v1** (the paper's data): ``<subject>/segmentations/<class>.nii.gz``, one binary
  file per class, with ``meta.csv`` (``;``-separated, ``image_id`` and ``split``) at
  the root.
- **v2 heartchambers_highres**, multi-label (``TotalSegmentator -ta
  heartchambers_highres --ml -o <subject>/heartchambers_highres.nii.gz``): values as in
  :data:`siblings.anatomy.TOTALSEG_V2_HEARTCHAMBERS_VALUES`, or as named by the label
  table TotalSegmentator stores in the file's NIfTI extension when it is there.
- **v2 heartchambers_highres**, per class (same task without ``--ml``, ``-o
  <subject>/heartchambers_highres``): ``<subject>/heartchambers_highres/<class>.nii.gz``.
- **v2 total only** (``<subject>/segmentations/heart.nii.gz``, no chambers) is refused
  with a reason saying how to get the chambers.

Per subject (:func:`prepare_subject`; each step recorded in ``DIR/<subject>.json``): completeness (all six
classes present and non-empty), truncation (no chamber or myocardium voxel on the
scan's outer faces), plausible chamber volumes, then
:func:`siblings.data.geometry.prepare_label_map` (resample, reorient, crop, rigid
registration to the reference) and a last check that the heart fits the prepared field
of view. Excluded subjects are listed in ``DIR/exclusions.csv`` with their reason;
nothing is dropped silently.

Example
-------
>>> from siblings.data.totalseg import format_summary
>>> from siblings.pipelines.prepare import prepare_totalsegmentator
>>> summary = prepare_totalsegmentator("Totalsegmentator_dataset", "prepared128")  # doctest: +SKIP
>>> print(format_summary(summary))  # kept/excluded counts, reference, reasons  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import os
import re
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import anatomy
from ..errors import InputError
from ..io import (
    LabelMap,
    LabelMapError,
    list_label_maps,
    read_json,
    read_label_map,
    read_nifti,
    stem,
)
from ..labels import LabelScheme
from ..manifest import software_versions
from ..metrics.overlap import dice_matrix
from . import geometry

L = anatomy.LABELS
PathLike = str | os.PathLike

DEFAULT_VOLUME_BOUNDS_ML: dict[str, tuple[float, float]] = {
    "LV": (20.0, 400.0),
    "RV": (20.0, 450.0),
    "LA": (10.0, 250.0),
    "RA": (10.0, 300.0),
}
"""Plausible blood-pool volumes (mL). Wide on purpose: they catch failed segmentations
(a chamber reduced to a fragment, two chambers merged), not unusual anatomy."""

TRUNCATION_TISSUES: tuple[str, ...] = ("Myo", "LV", "RV", "LA", "RA")
"""Tissues that must not touch the scan's field of view (the aorta always leaves it)."""

MEDOID_SIZE = 32
"""Grid of the overlap comparison that picks the medoid reference (5.6 mm voxels)."""

LAYOUT_NAMES = {
    "v1": "TotalSegmentator v1 (segmentations/<class>.nii.gz)",
    "v2-ml": "TotalSegmentator v2 heartchambers_highres, multi-label file",
    "v2-files": "TotalSegmentator v2 heartchambers_highres, one file per class",
    "v2-total": "TotalSegmentator v2 total task (whole heart only)",
    "labelmap": "multi-label map (one file per subject)",
}
MULTILABEL_NAMES = ("heartchambers_highres.nii.gz", "heartchambers_highres.nii")
_NIFTI = (".nii.gz", ".nii")


class Excluded(Exception):
    """A subject fails quality control. ``reason`` starts with its kind: ``layout``,
    ``missing``, ``empty``, ``unreadable``, ``grid``, ``truncated``, ``volume``,
    ``field_of_view`` or ``error``."""

    def __init__(self, reason: str, record: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.record = record or {}


# ---------------------------------------------------------------------------------
# Finding subjects and their layout.
# ---------------------------------------------------------------------------------
@dataclass
class Subject:
    """One subject folder of a TotalSegmentator dataset."""

    name: str
    folder: Path
    layout: str  # v1 | v2-ml | v2-files | v2-total | missing
    split: str = ""
    files: dict[str, str] = field(default_factory=dict)  # tissue → path relative to folder


def _nifti_in(folder: Path, stem: str) -> Path | None:
    for suffix in _NIFTI:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def detect_layout(folder: PathLike) -> str | None:
    """The TotalSegmentator layout of a subject folder, or None if it holds none."""
    folder = Path(folder)
    if any((folder / n).is_file() for n in MULTILABEL_NAMES):
        return "v2-ml"
    hc = folder / "heartchambers_highres"
    if hc.is_dir():
        return "v2-files"
    seg = folder / "segmentations"
    if seg.is_dir():
        chambers = [c for t, c in anatomy.TOTALSEG_CLASSES.items() if t != "Ao"]
        if any(_nifti_in(seg, c) for c in chambers):
            return "v1"
        if _nifti_in(seg, anatomy.TOTALSEG_V2_WHOLE_HEART):
            return "v2-total"
        return "v1"  # a segmentations folder without cardiac classes: reported as missing
    return None


def read_meta(src: PathLike) -> dict[str, str]:
    """``image_id`` → ``split`` from a dataset's ``meta.csv`` (empty if there is none)."""
    path = Path(src) / "meta.csv"
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(_io.StringIO(text), delimiter=";"))
    if not rows or "image_id" not in rows[0]:
        raise InputError(f"{path}: expected ';'-separated columns including image_id and split")
    return {r["image_id"].strip(): (r.get("split") or "").strip() for r in rows}


def find_subjects(src: PathLike, split: str | None = None) -> list[Subject]:
    """The subjects of a dataset root (or of a single subject folder), sorted by name.

    Subjects listed in ``meta.csv`` whose folder is missing are returned with layout
    ``missing`` so that they are reported, not dropped. ``split`` keeps one split.
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such folder")
    if not src.is_dir():
        raise NotADirectoryError(f"{src}: not a folder (expected a TotalSegmentator dataset)")
    own = detect_layout(src)
    if own is not None:
        return [Subject(src.name, src, own)]
    meta = read_meta(src)
    if split is not None and not meta:
        raise InputError(
            f"{src}: {{split}} needs a meta.csv with a split column", arguments=("split",)
        )
    subjects = {}
    for d in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        layout = detect_layout(d)
        if layout is not None:
            subjects[d.name] = Subject(d.name, d, layout, meta.get(d.name, ""))
    for name, sp in meta.items():
        if name not in subjects:
            subjects[name] = Subject(name, src / name, "missing", sp)
    out = [subjects[k] for k in sorted(subjects)]
    if split is not None:
        out = [s for s in out if s.split == split]
    return out


# ---------------------------------------------------------------------------------
# Loading one subject as a label map (values 0–6) in scanner space.
# ---------------------------------------------------------------------------------
def _load_nifti(path: Path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    rel = path.relative_to(folder).as_posix()
    try:
        data, affine, _, _ = read_nifti(path)
    except LabelMapError as exc:  # every header and data check of io, worded for this file
        raise Excluded(f"unreadable: {rel} {exc.reason}") from None
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise Excluded(f"unreadable: {rel} contains NaN or infinite values")
    return data, affine


def label_table(path: PathLike) -> dict[int, str] | None:
    """The value → class-name table TotalSegmentator stores in a multi-label file's
    NIfTI extension (a CaretExtension XML label table), or None if there is none."""
    try:
        img = nib.load(str(path))
    except Exception:
        return None
    for ext in img.header.extensions:
        content = ext.get_content()
        if isinstance(content, bytes) and b"LabelTable" in content:
            try:
                root = ET.fromstring(content.decode("utf-8", "replace").strip().rstrip("\x00"))
            except ET.ParseError:
                return None
            table = {}
            for lab in root.iter("Label"):
                with contextlib.suppress(KeyError, ValueError):
                    table[int(lab.attrib["Key"])] = (lab.text or "").strip()
            return table or None
    return None


def load_subject(
    subject: Subject, labels: dict[str, Any] | None = None
) -> tuple[LabelMap, dict[str, Any]]:
    """Read a subject's cardiac classes into one label map on the scan grid.

    ``labels`` is the record (:meth:`siblings.labels.LabelScheme.record`) of the scheme
    of a ``labelmap`` subject's file (default ``siblings``); TotalSegmentator layouts name
    their classes by file name or by the task's class map.

    Raises :class:`Excluded` (with a reason naming the file) if the layout is the v2
    whole-heart-only one, a class file is missing, unreadable, empty or on another grid,
    or a tissue is missing from a multi-label map.
    """
    folder, layout = subject.folder, subject.layout
    if layout == "labelmap":
        return _load_labelmap(subject, labels)
    if layout == "missing":
        raise Excluded(f"missing: subject folder {folder} (listed in meta.csv) not found")
    if layout == "v2-total":
        raise Excluded(
            "layout: TotalSegmentator v2 `total` output has only the whole heart "
            f"(segmentations/{anatomy.TOTALSEG_V2_WHOLE_HEART}.nii.gz), not the chambers and "
            "myocardium; run `TotalSegmentator -i ct.nii.gz -o <subject>/heartchambers_highres "
            "-ta heartchambers_highres` (a licensed v2 task) and prepare again"
        )
    record: dict[str, Any] = {"layout": layout, "layout_name": LAYOUT_NAMES[layout]}
    if layout == "v2-ml":
        path = next(folder / n for n in MULTILABEL_NAMES if (folder / n).is_file())
        rel = path.relative_to(folder).as_posix()
        data, affine = _load_nifti(path, folder)
        if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
            raise Excluded(f"unreadable: {rel} contains non-integer values; expected class values")
        data = data.astype(np.int64)
        table = label_table(path)
        record["label_table"] = "NIfTI extension" if table else "TotalSegmentator class map"
        table = table or anatomy.TOTALSEG_V2_HEARTCHAMBERS_VALUES
        value_of = {name: v for v, name in table.items()}
        labels = np.zeros(data.shape, np.uint8)
        problems = []
        for tissue, cls in anatomy.TOTALSEG_CLASSES.items():
            if cls not in value_of:
                problems.append(f"missing: {tissue} ({cls}) is not in the label table of {rel}")
                continue
            mask = data == value_of[cls]
            if not mask.any():
                problems.append(
                    f"empty: {tissue} ({cls}, value {value_of[cls]}) has no voxels in {rel}"
                )
            labels[mask] = L[tissue]
        record["files"] = [rel]
        if problems:
            raise Excluded(outside_reason(labels) or "; ".join(problems), record)
        return LabelMap(labels, affine), record

    sub = folder / ("segmentations" if layout == "v1" else "heartchambers_highres")
    labels = None
    affine = None
    first = None
    problems = []
    overlap = 0
    files = []
    for tissue, cls in anatomy.TOTALSEG_CLASSES.items():
        path = _nifti_in(sub, cls)
        if path is None:
            problems.append(f"missing: {tissue} class file {sub.name}/{cls}.nii.gz not found")
            continue
        rel = path.relative_to(folder).as_posix()
        files.append(rel)
        data, aff = _load_nifti(path, folder)
        if labels is None:
            labels, affine, first = np.zeros(data.shape, np.uint8), aff, rel
        elif data.shape != labels.shape or not np.allclose(aff, affine, atol=1e-3):
            raise Excluded(
                f"grid: {rel} (shape {data.shape}) is not on the grid of {first} "
                f"(shape {labels.shape}); all class files of a subject must share one grid",
                record,
            )
        mask = data > 0
        if not mask.any():
            problems.append(f"empty: {tissue} ({rel}) has no voxels")
        overlap += int(np.count_nonzero(mask & (labels > 0)))
        labels[mask] = L[tissue]
    record["files"] = files
    record["overlapping_voxels"] = overlap
    if problems:
        raise Excluded(
            (labels is not None and outside_reason(labels)) or "; ".join(problems), record
        )
    assert labels is not None and affine is not None
    return LabelMap(labels, affine), record


def _load_labelmap(subject: Subject, labels: dict[str, Any] | None) -> tuple[LabelMap, dict]:
    """A ``labelmap`` subject: one multi-label file read through its label scheme."""
    from ..labels import load_scheme

    scheme = LabelScheme.from_record(labels) if labels else load_scheme(None)
    path = subject.folder
    record: dict[str, Any] = {
        "layout": "labelmap",
        "layout_name": LAYOUT_NAMES["labelmap"],
        "files": [path.name],
        "labels": scheme.record(),
    }
    try:
        lm = read_label_map(path, labels=scheme)
    except LabelMapError as exc:
        # Worded as the flag: the reason lands in exclusions.csv, read beside the command.
        reason = InputError(exc.reason, arguments=tuple(exc.arguments)).worded(
            lambda argument: "--" + argument.replace("_", "-")
        )
        raise Excluded(f"unreadable: {path.name} {reason}", record) from None
    record["header"] = lm.header
    data = np.asarray(lm.data)
    empty = [t for t in anatomy.TISSUES if not (data == L[t]).any()]
    if empty:
        reason = outside_reason(data) or "; ".join(
            f"empty: {t} has no voxels in {path.name} (scheme {scheme.name!r})" for t in empty
        )
        raise Excluded(reason, record)
    return lm, record


def find_label_maps(src: PathLike) -> list[Subject]:
    """The subjects of a folder of multi-label maps (or one map): one per file, by stem."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    files = [src] if src.is_file() else list_label_maps(src, min_count=0)
    subjects: dict[str, Subject] = {}
    for f in files:
        name = stem(f)
        if name in subjects:
            raise InputError(
                f"{src}: {subjects[name].folder.name} and {f.name} are one subject ({name}); "
                "keep one of them"
            )
        subjects[name] = Subject(name, f, "labelmap")
    return [subjects[k] for k in sorted(subjects)]


# ---------------------------------------------------------------------------------
# Truncation (SPEC §2 step 1): the same reasons for prepare and for edit.
# ---------------------------------------------------------------------------------
def outside_reason(data: np.ndarray) -> str | None:
    """The reason for a map whose heart the scan (mostly) misses, or None.

    An abdominal CT segmented by TotalSegmentator typically has no chamber and either no
    myocardium or a few voxels of it on the scan's top slice.
    """
    data = np.asarray(data)
    counts = {t: int(np.count_nonzero(data == L[t])) for t in TRUNCATION_TISSUES}
    if any(counts[c] for c in anatomy.CHAMBERS):
        return None
    chambers = ", ".join(anatomy.CHAMBERS)
    if counts["Myo"] == 0:
        return (
            f"empty: no heart in the scan (Myo, {chambers} have no voxels); the scan does "
            "not cover the heart (an abdominal CT?)"
        )
    where = "on the scan's boundary" if L["Myo"] in touches_boundary(data) else "inside the scan"
    return (
        f"truncated: the heart is mostly outside the scan's field of view (Myo {counts['Myo']} "
        f"voxels, {where}; {chambers} have none); the scan does not cover the heart "
        "(an abdominal CT?)"
    )


def truncation_reason(lm: LabelMap) -> str | None:
    """Why a scanner-space map's heart is cut by the scan, or None (the aorta may leave it).

    ``truncated: LV, Myo touch the scan's field-of-view boundary (cut off by the scan)``,
    or the reason of :func:`outside_reason` when the chambers are missing altogether.
    """
    data = np.asarray(lm.data)
    outside = outside_reason(data)
    if outside:
        return outside
    edge = touches_boundary(data)
    cut = [t for t in TRUNCATION_TISSUES if L[t] in edge]
    if not cut:
        return None
    return (
        f"truncated: {', '.join(cut)} touch{'es' if len(cut) == 1 else ''} the scan's "
        "field-of-view boundary (cut off by the scan)"
    )


# ---------------------------------------------------------------------------------
# Quality control.
# ---------------------------------------------------------------------------------
def parse_volume_bounds(items: Sequence[str] | None) -> dict[str, tuple[float, float]]:
    """Parse ``["LV=20:400", "RA=10:300"]`` over the defaults (clear error if malformed)."""
    bounds = dict(DEFAULT_VOLUME_BOUNDS_ML)
    for item in items or ():
        m = re.fullmatch(r"\s*(\w+)\s*=\s*([0-9.]+)\s*:\s*([0-9.]+)\s*", item)
        if not m or m.group(1) not in anatomy.CHAMBERS:
            raise InputError(
                f"volume bound {item!r} is not CHAMBER=MIN:MAX with CHAMBER in {', '.join(anatomy.CHAMBERS)}"
            )
        lo, hi = float(m.group(2)), float(m.group(3))
        if not 0 <= lo < hi:
            raise InputError(f"volume bound {item!r}: need 0 <= MIN < MAX")
        bounds[m.group(1)] = (lo, hi)
    return bounds


def touches_boundary(data: np.ndarray) -> set[int]:
    """Labels with a voxel on any of the array's six outer faces."""
    faces = [data[0], data[-1], data[:, 0], data[:, -1], data[:, :, 0], data[:, :, -1]]
    return set(np.unique(np.concatenate([f.ravel() for f in faces])).tolist()) - {0}


def quality_control(lm: LabelMap, volume_bounds: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Truncation and volume checks of a complete scanner-space map.

    Returns the record (volumes, tissues on the boundary); raises :class:`Excluded`.
    """
    volumes = geometry.label_volumes_ml(lm)
    edge = touches_boundary(np.asarray(lm.data))
    cut = [t for t in TRUNCATION_TISSUES if L[t] in edge]
    record = {
        "volumes_ml": {t: round(v, 3) for t, v in volumes.items()},
        "on_scan_boundary": sorted(anatomy.LABEL_NAMES[k] for k in edge),
        "voxel_mm": [round(s, 4) for s in lm.spacing],
        "shape": list(lm.shape),
        "orientation": "".join(nib.aff2axcodes(lm.affine)),
        "volume_bounds_ml": {c: list(b) for c, b in volume_bounds.items()},
    }
    problems = []
    if cut:
        problems.append(truncation_reason(lm))
    for c in anatomy.CHAMBERS:
        lo, hi = volume_bounds[c]
        if not lo <= volumes[c] <= hi:
            problems.append(
                f"volume: {c} {volumes[c]:.1f} mL is outside the plausible {lo:g}–{hi:g} mL"
            )
    if problems:
        raise Excluded("; ".join(problems), record)
    return record


# ---------------------------------------------------------------------------------
# One subject, end to end (runs in worker processes).
# ---------------------------------------------------------------------------------
_REFERENCE_CACHE: dict[str, geometry.Reference] = {}


def _reference(path: str, register_size: int) -> geometry.Reference:
    stat = os.stat(path)  # a rewritten file at the same path is a new reference
    key = f"{path}@{register_size}@{stat.st_mtime_ns}@{stat.st_size}"
    if key not in _REFERENCE_CACHE:
        _REFERENCE_CACHE.clear()
        _REFERENCE_CACHE[key] = geometry.Reference.from_label_map(
            read_label_map(path), register_size
        )
    return _REFERENCE_CACHE[key]


def _load_and_check(
    subject: Subject, bounds: dict[str, tuple[float, float]], labels: dict | None = None
) -> tuple[LabelMap, dict]:
    steps: dict[str, Any] = {}
    try:
        lm, steps["load"] = load_subject(subject, labels)
    except Excluded as exc:
        steps["load"] = exc.record
        exc.record = steps
        raise
    try:
        steps["qc"] = quality_control(lm, bounds)
    except Excluded as exc:
        steps["qc"] = exc.record
        exc.record = steps
        raise
    return lm, steps


def survey_subject(job: dict) -> dict:
    """Pass 1 (medoid search): QC plus the reoriented, centred map on a coarse grid.

    A subject that fails QC comes back with its (final) ``manifest``, for the caller to
    write; it does not depend on the reference.
    """
    subject = _subject(job["subject"])
    try:
        lm, _ = _load_and_check(subject, job["bounds"], job["settings"].get("labels"))
        matrix, _ = geometry.reorientation(lm)
        n = MEDOID_SIZE
        coarse = geometry.resample_labels(lm, matrix, (n,) * 3, geometry.coarse_affine(n))
        return {"subject": subject.name, "ok": True, "coarse": coarse.data}
    except Excluded as exc:
        manifest = _base_manifest(subject, job["settings"], None)
        manifest.update(steps=exc.record, status="excluded", reason=exc.reason)
        return {"subject": subject.name, "ok": False, "reason": exc.reason, "manifest": manifest}
    except Exception as exc:  # reported by pass 2, which tries this subject again
        return {
            "subject": subject.name,
            "ok": False,
            "reason": f"error: {type(exc).__name__}: {exc}",
        }


def subject_outputs(out: Path, name: str) -> dict[str, Path]:
    """The prepared map, transform and manifest paths of subject ``name`` in ``out``."""
    return {
        "map": out / f"{name}.nii.gz",
        "transform": out / f"{name}.xfm.json",
        "manifest": out / f"{name}.json",
    }


def _base_manifest(subject: Subject, settings: dict, reference: dict | None) -> dict[str, Any]:
    source = (
        {"file": str(subject.folder), "layout": subject.layout}
        if subject.layout == "labelmap"
        else {"folder": str(subject.folder), "layout": subject.layout, "split": subject.split}
    )
    return {
        "subject": subject.name,
        "source": source,
        "settings": settings,
        "reference": reference,
        "software": software_versions("prepare"),
    }


def prepare_subject(job: dict) -> tuple[dict[str, Any], LabelMap | None, Any]:
    """Pass 2: one subject from its TotalSegmentator files to its prepared map, in memory.

    Returns the subject's manifest, its prepared map and its forward transform; an
    excluded subject (or one whose preparation raised) has a manifest with ``status``
    ``"excluded"`` and its ``reason``, and no map. A prepared subject's manifest gets its
    ``status`` when its files are written.
    """
    subject = _subject(job["subject"])
    settings = job["settings"]
    manifest = _base_manifest(subject, settings, job["reference"])
    try:
        lm, steps = _load_and_check(subject, job["bounds"], settings.get("labels"))
        manifest["steps"] = steps
        reference = None
        if job["reference_path"] and not job["is_reference"]:
            reference = _reference(job["reference_path"], settings["register_size"])
        prepared, transform = geometry.prepare_label_map(
            lm,
            reference=reference,
            size=settings["size"],
            interpolation=settings["interpolation"],
            engine=settings["engine"],
            register_size=settings["register_size"],
            keep_axis=settings["keep_axis"],
            seed=settings["seed"],
        )
        steps.update(transform.steps)
        if job["is_reference"]:
            steps["register"] = {"skipped": "this subject is the reference"}
        before = steps["qc"]["volumes_ml"]
        after = geometry.label_volumes_ml(prepared)
        edge = touches_boundary(prepared.data)
        axis = geometry.angle_to_z_deg(geometry.long_axis(prepared))
        steps["output"] = {
            "volumes_ml": {t: round(v, 3) for t, v in after.items()},
            "volume_change_percent": {
                t: round(100.0 * (after[t] / before[t] - 1.0), 3)
                for t in anatomy.TISSUES
                if before[t] > 0
            },
            "lv_la_axis_angle_to_z_deg": round(axis, 4),
            "on_grid_boundary": sorted(anatomy.LABEL_NAMES[k] for k in edge),
        }
        cut = [t for t in TRUNCATION_TISSUES if L[t] in edge]
        if cut:
            raise Excluded(
                f"field_of_view: {', '.join(cut)} reach{'es' if len(cut) == 1 else ''} the edge of the "
                f"{anatomy.FIELD_OF_VIEW_MM:g} mm prepared grid (heart larger than the field of view)"
            )
        return manifest, prepared, transform
    except Excluded as exc:
        manifest.setdefault("steps", exc.record)
        manifest.update(status="excluded", reason=exc.reason)
    except Exception as exc:  # report, never drop silently
        manifest.update(
            status="excluded",
            reason=f"error: {type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        )
    return manifest, None, None


# ---------------------------------------------------------------------------------
# The cohort.
# ---------------------------------------------------------------------------------
def medoid(coarse: dict[str, np.ndarray]) -> tuple[str, dict[str, float]]:
    """The subject with the highest mean Dice (over tissues and other subjects).

    ``coarse`` maps subject → label array, all on one grid. Returns the subject and
    every subject's mean Dice to the others. Ties go to the first name.
    """
    names = sorted(coarse)
    if len(names) == 1:
        return names[0], {names[0]: 1.0}
    flat = np.stack([coarse[n].ravel() for n in names])
    total = np.zeros((len(names), len(names)))
    for t in anatomy.TISSUES:
        total += dice_matrix(flat == L[t], empty=0.0)
    total /= len(anatomy.TISSUES)
    np.fill_diagonal(total, 0.0)
    score = total.sum(axis=1) / (len(names) - 1)
    best = int(np.argmax(score))
    return names[best], {n: round(float(s), 5) for n, s in zip(names, score, strict=True)}


def check_options(size: int, engine: str, interpolation: str) -> None:
    """Refuse a grid below 16, an unknown engine or interpolation, and ants uninstalled."""
    if size < 16:
        raise InputError(f"{{size}} must be at least 16, got {size}", arguments=("size",))
    if engine not in ("simpleitk", "ants"):
        raise InputError(f"unknown registration engine {engine!r}; use 'simpleitk' or 'ants'")
    if interpolation not in ("linear", "nearest"):
        raise InputError(f"unknown interpolation {interpolation!r}; use 'linear' or 'nearest'")
    if engine == "ants":
        try:
            import ants  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            raise InputError(
                "{engine} ants needs antspyx, which is not installed; "
                "install it with `pip install antspyx` or use {engine} simpleitk",
                arguments=("engine",),
            ) from None


def check_subjects(src: Path, subjects: list[Subject]) -> None:
    """Refuse a dataset with no subject, or with only v2 ``total`` subjects (no chambers)."""
    if not subjects:
        raise InputError(
            f"{src}: no TotalSegmentator subjects found (expected <subject>/segmentations/"
            "<class>.nii.gz, <subject>/heartchambers_highres.nii.gz or "
            "<subject>/heartchambers_highres/<class>.nii.gz)"
        )
    if all(s.layout == "v2-total" for s in subjects):
        raise InputError(
            f"{src}: TotalSegmentator v2 `total` layout (segmentations/heart.nii.gz): it has only "
            "the whole heart, not the four chambers and the myocardium that preparation needs; "
            "run the heartchambers_highres task (TotalSegmentator -i ct.nii.gz -o "
            "<subject>/heartchambers_highres -ta heartchambers_highres) and prepare again"
        )


def prepare_settings(
    size: int,
    interpolation: str,
    engine: str,
    register_size: int,
    keep_axis: bool,
    seed: int,
    bounds: dict[str, tuple[float, float]],
) -> dict[str, Any]:
    """The settings every manifest records; a re-run with other settings redoes all."""
    return {
        "size": int(size),
        "voxel_mm": anatomy.voxel_size_mm(size),
        "interpolation": interpolation,
        "engine": engine,
        "register_size": int(min(register_size, size)),
        "keep_axis": bool(keep_axis),
        "seed": int(seed),
        "volume_bounds_ml": {c: list(b) for c, b in bounds.items()},
    }


_NEEDS_NO_REFERENCE = ("layout", "missing", "empty", "unreadable", "grid", "truncated", "volume")


def _reference_key(info: dict | None) -> str:
    if not info:
        return ""
    if info.get("kind") == "medoid":
        return f"medoid:{info['subject']}"
    if info.get("kind") == "file":
        return f"file:{info['sha256']}"
    return str(info.get("kind"))


def finished_manifest(out: Path, subject: str, settings: dict, reference: dict) -> dict | None:
    """The manifest of a subject already done with these settings, else None."""
    paths = subject_outputs(out, subject)
    if not paths["manifest"].is_file():
        return None
    try:
        m = read_json(paths["manifest"])
    except ValueError:
        return None
    if m.get("settings") != settings:
        return None
    kind = str(m.get("reason", "")).split(":", 1)[0]
    if m.get("status") == "excluded" and kind in _NEEDS_NO_REFERENCE:
        return m  # failed quality control: the reference does not matter
    if _reference_key(m.get("reference")) != _reference_key(reference):
        return None
    if m.get("status") == "prepared" and paths["map"].is_file() and paths["transform"].is_file():
        return m
    if m.get("status") == "excluded" and kind == "field_of_view":
        return m
    return None


def exclusions_csv(rows: list[tuple[str, str]]) -> str:
    """``exclusions.csv``'s text: a ``subject,reason`` header, then one row per subject."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["subject", "reason"])
    w.writerows(rows)
    return buf.getvalue()


def subject_job(subject: Subject) -> dict:
    """A subject as a picklable dict (what a worker process gets)."""
    d = asdict(subject)
    d["folder"] = str(subject.folder)
    return d


def _subject(d: dict) -> Subject:
    return Subject(**{**d, "folder": Path(d["folder"])})


def read_exclusions(out: PathLike) -> dict[str, str]:
    """``subject`` → ``reason`` from a prepared folder's ``exclusions.csv``."""
    path = Path(out) / "exclusions.csv"
    with open(path, newline="") as f:
        return {r["subject"]: r["reason"] for r in csv.DictReader(f)}


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    ref = summary["reference"]
    if ref.get("kind") == "medoid":
        ref_text = (
            f"medoid subject {ref['subject']} (mean Dice {ref['mean_dice']:.3f} to the others)"
        )
    elif ref.get("kind") == "file":
        ref_text = ref["file"]
    else:
        ref_text = "none"
    lines = [
        f"{summary['prepared']} of {summary['subjects']} subjects prepared, {summary['excluded']} excluded"
        + (f" ({summary['skipped']} already finished)" if summary["skipped"] else ""),
        f"reference: {ref_text}",
    ]
    if summary["reasons"]:
        lines.append(
            "exclusions: "
            + ", ".join(f"{k} {v}" for k, v in summary["reasons"].items())
            + f" (see {Path(summary['out']) / 'exclusions.csv'})"
        )
    lines.append(f"wrote {summary['out']}")
    return "\n".join(lines)
