"""The seed twin: a label map (or TotalSegmentator subject) brought onto the model grid.

This module owns the one twin type, :class:`Twin` (the map on the model grid, where it
came from, its transform back to the scanner), and how twins are resolved:
:func:`resolve_twin` for one twin in any space (used as is, resampled, or prepared as
SPEC §2 says, registered to :func:`registration_reference`), and
:func:`read_rare_twins` for the maps of a cohort folder on the model grid that meet a
condition (augmentation's rare twins, paper §4.5).

Example
-------
>>> from siblings.data.twin import resolve_twin
>>> twin = resolve_twin("twin.nii.gz", size=64)                       # doctest: +SKIP
>>> twin.space, twin.label_map.shape                                  # doctest: +SKIP
('prepared', (64, 64, 64))
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from .. import anatomy
from ..errors import InputError
from ..io import (
    LabelMap,
    LabelMapError,
    centred_affine,
    is_model_grid,
    list_label_maps,
    read_label_map,
    sha256_file,
    validate_grid,
)
from ..labels import LabelScheme, load_scheme
from . import geometry

PathLike = str | os.PathLike


class TwinCondition(Protocol):
    """What :func:`read_rare_twins` needs of a condition
    (:class:`siblings.metrics.condition.Condition` is one)."""

    @property
    def columns(self) -> tuple[str, ...]: ...

    def __call__(self, features: Mapping[str, float]) -> bool: ...


@dataclass
class Twin:
    """A seed twin on the model grid, and where it came from.

    Attributes
    ----------
    label_map : the twin on the model's grid (``centred_affine(size)``).
    source : the file or folder the user gave.
    sha256 : hash of the source file (for a TotalSegmentator folder: of the list of its
        class files and their hashes).
    kind : ``label map`` or ``TotalSegmentator subject (<layout>)``.
    space : ``model`` (used as is), ``model grid <S>³`` (another preset's grid,
        resampled) or ``prepared`` (prepared here, SPEC §2).
    transform : scanner → model-space transform when the twin came from another space.
    original : the twin on its original grid (None when it was already in model space).
    record : how it was resolved (preparation steps, round-trip Dice, …).
    features : its morphology (SPEC §7 columns) when it was measured, e.g. the rare
        twins of augmentation (:func:`read_rare_twins`).
    labels : the label scheme its file was read with (:meth:`LabelScheme.record`).
    header : what :func:`siblings.io.read_label_map` recorded of the file's header
        (which of qform/sform gave the affine, orientation, datatype, scaling).
    """

    label_map: LabelMap
    source: Path
    sha256: str
    kind: str
    space: str
    transform: geometry.PreparedTransform | None = None
    original: LabelMap | None = None
    record: dict = field(default_factory=dict)
    features: dict[str, float] = field(default_factory=dict)
    labels: dict[str, Any] | None = None
    header: dict[str, Any] | None = None

    @property
    def in_other_space(self) -> bool:
        """True when siblings are also written back on the twin's original grid."""
        return self.transform is not None

    def to_patient(self) -> np.ndarray | None:
        """Model world → the patient's scanner world (4×4, RAS+ mm), when known.

        Known only for a twin prepared here from a scanner grid: the inverse of its
        transform. A twin read on a model grid (used as is, or resampled from another
        preset's grid) carries no relation to the patient, so None: preparation
        rotated and registered it (SPEC §2), and its affine's RAS names that frame.
        """
        t = self.transform
        if t is None or is_model_grid(t.source_shape, t.source_affine):
            return None
        return np.linalg.inv(t.matrix)

    def missing_tissues(self) -> list[str]:
        """Tissues (labels 1–6) absent from the twin."""
        data = self.label_map.data
        return [t for t in anatomy.TISSUES if not (data == anatomy.LABELS[t]).any()]

    def describe(self) -> dict[str, Any]:
        """The twin's entry in manifests (with its label scheme and header, when read)."""
        entry = {
            "file": str(self.source),
            "sha256": self.sha256,
            "kind": self.kind,
            "space": self.space,
            "model_space_sha256": hashlib.sha256(
                np.ascontiguousarray(self.label_map.data, np.uint8).tobytes()
            ).hexdigest(),
        }
        if self.labels is not None:
            entry["labels"] = self.labels
        if self.header is not None:
            entry["header"] = self.header
        return entry


def _folder_hash(folder: Path, files: Iterable[str]) -> str:
    lines = [f"{rel} {sha256_file(folder / rel)}" for rel in sorted(files)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def registration_reference(
    register_to: PathLike | Literal["phantom", "none"] | None, size: int
) -> geometry.Reference | None:
    """The map a twin from another space is rigidly registered to (SPEC §2 step 5).

    ``"phantom"``: the first subject of the default phantom cohort on the model grid
    (the shipped weights were trained on that cohort); ``"none"``/None: no registration
    (reorientation and centring only); a path: a map already in model space, e.g. the
    medoid of the cohort the checkpoint was trained on.
    """
    if register_to is None or str(register_to) == "none":
        return None
    if str(register_to) == "phantom":
        from .phantom import make_phantom

        lm = make_phantom(0, size=size, seed=0)[0]
    else:
        lm = read_label_map(register_to)
    return geometry.Reference.from_label_map(lm, register_size=min(48, lm.shape[0]))


def _totalseg_twin(folder: Path) -> tuple[LabelMap, str, str, dict]:
    from . import totalseg

    layout = totalseg.detect_layout(folder)
    if layout is None:
        subjects = [d for d in folder.iterdir() if d.is_dir() and totalseg.detect_layout(d)]
        if subjects:
            raise InputError(
                f"{folder}: holds {len(subjects)} TotalSegmentator subjects; a twin is one "
                f"subject folder (e.g. {subjects[0]})"
            )
        raise InputError(
            f"{folder}: not a TotalSegmentator subject folder (expected segmentations/<class>"
            ".nii.gz, heartchambers_highres.nii.gz or heartchambers_highres/<class>.nii.gz) "
            "and not a label-map file"
        )
    subject = totalseg.Subject(folder.name, folder, layout)
    try:
        lm, record = totalseg.load_subject(subject)
    except totalseg.Excluded as exc:
        raise InputError(f"{folder}: cannot use this subject as a twin: {exc.reason}") from None
    kind = f"TotalSegmentator subject ({totalseg.LAYOUT_NAMES[layout]})"
    if record.get("layout") == "v2-ml":
        record["labels"] = (
            {"name": "NIfTI extension label table", "source": record["files"][0]}
            if record.get("label_table") == "NIfTI extension"
            else load_scheme("totalsegmentator-heartchambers").record()
        )
    else:
        record["labels"] = {
            "name": "TotalSegmentator class files",
            "mapping": {cls: tissue for tissue, cls in anatomy.TOTALSEG_CLASSES.items()},
        }
    return lm, _folder_hash(folder, record.get("files", [])), kind, record


def resolve_twin(
    path: PathLike,
    size: int,
    *,
    register_to: PathLike | Literal["phantom", "none"] | None = "phantom",
    interpolation: geometry.Interpolation = "linear",
    progress: bool = False,
    labels: str | PathLike | LabelScheme | None = None,
    allow_truncated: bool = False,
) -> Twin:
    """Bring the twin at ``path`` onto the model's ``size``³ grid.

    Parameters
    ----------
    path : a label-map NIfTI (values 0–6) in any space, or a TotalSegmentator subject
        folder.
    size : the model's grid (``model.preset.size``).
    register_to : registration target for twins prepared here (see
        :func:`registration_reference`).
    interpolation : label resampling, one-hot ``"linear"`` + argmax or ``"nearest"``.
    progress : a progress line while a twin from another space is prepared (it can take
        tens of seconds for a CT-sized grid).
    labels : the label scheme of a twin file (:func:`siblings.labels.load_scheme`;
        default ``siblings``). A TotalSegmentator folder's classes are named by its files.
    allow_truncated : edit a twin from another space whose chambers or myocardium the
        scan cuts (by default refused with the reason ``prepare`` excludes it for).

    A map whose grid and affine are those of the model (``centred_affine(size)``) is
    used unchanged. A map on the centred grid of another size (a twin prepared for
    another preset) is only resampled. Anything else is prepared (SPEC §2): it needs an
    LV and an LA to be reoriented.

    Raises
    ------
    LabelMapError, ValueError, FileNotFoundError
        naming the file: unreadable, not a label map, values its scheme does not map, not
        a usable subject folder, a heart the scan cuts (unless ``allow_truncated``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    scheme = load_scheme(labels)
    target_shape, target_affine = (size,) * 3, centred_affine(size)
    if path.is_dir():
        if labels is not None and not scheme.is_identity:
            raise InputError(
                f"{path}: {{labels}} applies to a label-map file; a TotalSegmentator subject "
                "folder's classes are named by its files",
                arguments=("labels",),
            )
        lm, digest, kind, load_record = _totalseg_twin(path)
        labels_record, header = load_record.get("labels"), None
    else:
        lm, digest, kind, load_record = (
            read_label_map(path, labels=scheme),
            sha256_file(path),
            "label map",
            {},
        )
        labels_record, header = scheme.record(), lm.header
        if lm.shape == target_shape and np.allclose(lm.affine, target_affine, atol=1e-3):
            return Twin(
                LabelMap(lm.data, target_affine, path),
                path,
                digest,
                kind,
                "model",
                labels=labels_record,
                header=header,
            )
    s = lm.shape[0]
    other_model_grid = (
        not path.is_dir()
        and lm.shape == (s, s, s)
        and np.allclose(lm.affine, centred_affine(s), atol=1e-3)
    )
    if not other_model_grid:  # a scan's grid: its field of view may cut the heart
        check_truncation(lm, path, allow_truncated)
    record: dict[str, Any] = {"load": load_record} if load_record else {}
    if allow_truncated:
        record["allow_truncated"] = True
    from tqdm.auto import tqdm

    bar = tqdm(
        total=2,
        desc=f"prepare twin {path.name} ({'x'.join(map(str, lm.shape))})",
        unit="step",
        disable=not progress,
    )
    bar.set_postfix_str("reorient, register, resample")
    if other_model_grid:
        # In model space already, on another preset's grid: resample only.
        matrix = np.eye(4)
        space = f"model grid {s}³ (resampled to {size}³)"
        model_lm = geometry.resample_labels(lm, matrix, target_shape, target_affine, interpolation)
        steps = {"resample": {"interpolation": interpolation, "from_grid": s, "to_grid": size}}
        transform = geometry.PreparedTransform(
            matrix, lm.shape, lm.affine, target_shape, target_affine, steps
        )
    else:
        space = "prepared"
        reference = registration_reference(register_to, size)
        model_lm, transform = geometry.prepare_label_map(
            lm, reference=reference, size=size, interpolation=interpolation
        )
        record["register_to"] = str(register_to)
    bar.update(1)
    bar.set_postfix_str("round trip to its grid")
    back = geometry.unprepare(model_lm, transform, interpolation)
    record["roundtrip_dice"] = {
        t: round(v, 4) for t, v in geometry.dice(back.data, np.asarray(lm.data)).items()
    }
    bar.update(1)
    bar.close()
    return Twin(
        LabelMap(model_lm.data, target_affine),
        path,
        digest,
        kind,
        space,
        transform=transform,
        original=LabelMap(np.asarray(lm.data, np.uint8), lm.affine, xform_codes=lm.xform_codes),
        record=record,
        labels=labels_record,
        header=header,
    )


def check_truncation(lm: LabelMap, path: PathLike, allow_truncated: bool = False) -> None:
    """Refuse a scanner-space twin whose chambers or myocardium the scan cuts.

    The reason is the one ``prepare`` excludes such a subject for
    (:func:`siblings.data.totalseg.truncation_reason`); the aorta may leave the scan.
    With ``allow_truncated`` the twin passes.
    """
    from .totalseg import truncation_reason

    reason = truncation_reason(lm)
    if reason and not allow_truncated:
        raise InputError(
            f"{path}: {reason}; pass {{allow_truncated}} to edit it anyway",
            arguments=("allow_truncated",),
        )


def read_rare_twins(
    data: PathLike,
    size: int,
    voxel_mm: float,
    condition: TwinCondition,
    measure: Callable[[LabelMap], dict[str, float]],
    *,
    grid_name: str = "",
    progress: bool = False,
    labels: str | PathLike | LabelScheme | None = None,
) -> list[Twin]:
    """The maps of ``data`` meeting ``condition``, as :class:`Twin` on the model grid.

    Parameters
    ----------
    data : folder of label maps, every one on the model's ``size``³ grid of
        ``voxel_mm`` voxels.
    size, voxel_mm : the model's grid.
    condition : called on each map's features (``measure(map)``); ``columns`` names the
        features it reads (quoted with their ranges when no map meets it).
    measure : the morphology of a map by SPEC §7 column (``siblings evaluate``'s).
    grid_name : the model's preset name, for the message of a map off its grid.
    progress : a progress bar.
    labels : the maps' label scheme (:func:`siblings.labels.load_scheme`; default
        ``siblings``), recorded in each twin.

    Only the rare twins are kept in memory; each has ``kind="label map"``,
    ``space="model"`` and its ``features``.
    """
    from tqdm.auto import tqdm

    scheme = load_scheme(labels)
    files = list_label_maps(data, min_count=0)
    if not files:
        raise LabelMapError(
            data, "holds no label maps (*.nii.gz or *.nii); augment needs the real cohort"
        )
    twins, seen = [], {c: [] for c in condition.columns}
    for p in tqdm(files, desc="read data", unit="map", disable=not progress):
        lm = read_label_map(p, labels=scheme)
        try:
            validate_grid(lm, (size,) * 3, voxel_mm)
        except LabelMapError as exc:
            raise LabelMapError(
                p, f"{exc.reason}: the {grid_name!r} model's grid (prepare the data first)"
            ) from None
        morph = measure(lm)
        for c in condition.columns:
            seen[c].append(morph[c])
        if condition(morph):
            twins.append(
                Twin(
                    lm,
                    p,
                    sha256_file(p),
                    "label map",
                    "model",
                    features=morph,
                    labels=scheme.record(),
                    header=lm.header,
                )
            )
    if not twins:
        ranges = "; ".join(f"{c} ranges {min(v):.4g} to {max(v):.4g}" for c, v in seen.items())
        raise InputError(
            f"{data}: no map meets {condition} ({len(files)} map(s); {ranges}); "
            "there is no rare cohort to grow"
        )
    return twins


__all__ = [
    "Twin",
    "TwinCondition",
    "check_truncation",
    "read_rare_twins",
    "registration_reference",
    "resolve_twin",
]
