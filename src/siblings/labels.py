"""Input label schemes: how the values of a user's segmentation map onto SPEC §1's labels.

Segmentations come with their own value conventions (TotalSegmentator's
``heartchambers_highres`` task, MM-WHS ground truth codes, an nnU-Net model's
``dataset.json``, a lab's own). A :class:`LabelScheme` sends each source value to one of
this project's labels (``background``, ``Ao``, ``Myo``, ``RV``, ``LV``, ``RA``, ``LA``);
every command reading label maps takes one (``--labels SCHEME|FILE``) and records it in
its manifests (:meth:`LabelScheme.record`).

- Built-in schemes: :data:`BUILT_IN` (``siblings labels --list`` prints them).
- A JSON file mapping source values to tissue names or ``background``:
  ``{"205": "Myo", "500": "LV", "850": "background"}``; the key ``"*"`` (value
  ``"background"``) sends every other value to the background.
- An nnU-Net ``dataset.json``: its ``labels`` names are matched to tissues through
  :data:`COMMON_NAMES` (case, ``_``, ``-`` and spaces do not matter).

A value the scheme does not map is an error listing every such value with its voxel
count (:meth:`LabelScheme.remap`), unless the scheme sends the others to background.
This module reads scheme files but writes none; it imports only :mod:`siblings.anatomy`
and :mod:`siblings.errors`.

Example
-------
>>> import numpy as np
>>> from siblings.labels import load_scheme
>>> mmwhs = load_scheme("mmwhs")
>>> mmwhs.remap(np.array([0, 205, 500, 850])).tolist()
[0, 2, 4, 0]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import anatomy
from .errors import InputError

PathLike = str | os.PathLike

DEFAULT_SCHEME = "siblings"
_UNMAPPED = 255  # lookup-table entry of a value the scheme does not map
_CHUNK_VOXELS = 1 << 24  # remap in slabs of at most this many voxels (bounded memory)
_MAX_TABLE = 1 << 16  # wider value ranges: np.unique (a table of 2^20 int64 counts took 8 MB)


class LabelSchemeError(InputError):
    """A label scheme (name or file) is unusable; the message says why and what to do."""


class UnmappedValuesError(InputError):
    """A map holds values its scheme does not map; ``counts`` is value → voxel count.

    The message (without the file's name) names the argument ``{labels}``.
    """

    def __init__(self, message: str, counts: Mapping[int, int]) -> None:
        self.counts = dict(counts)
        super().__init__(message, arguments=("labels",))


@dataclass(frozen=True)
class LabelScheme:
    """Source value → project label name (SPEC §1), with where the table came from.

    Attributes
    ----------
    name : the built-in scheme's name, or the file's name.
    values : source value → label name (one of :data:`siblings.anatomy.LABEL_NAMES`).
    source : ``"built-in"``, or the path of the JSON / ``dataset.json`` file.
    description : one line for ``siblings labels --list``.
    source_names : source value → the source's own class name (tables, records).
    other : ``"error"`` (default: unmapped values are refused) or ``"background"``.
    sha256 : hash of the scheme file (None for a built-in scheme).
    """

    name: str
    values: Mapping[int, str]
    source: str = "built-in"
    description: str = ""
    source_names: Mapping[int, str] = field(default_factory=dict)
    other: Literal["error", "background"] = "error"
    sha256: str | None = None

    @property
    def is_identity(self) -> bool:
        """True for a scheme that maps 0–6 onto themselves and nothing else."""
        return self.other == "error" and dict(self.values) == dict(enumerate(anatomy.LABEL_NAMES))

    def label_of(self) -> dict[int, int]:
        """Source value → project label value."""
        return {int(v): anatomy.LABELS[name] for v, name in self.values.items()}

    def remap(self, array: np.ndarray) -> np.ndarray:
        """The map's project labels (uint8, same shape); refuses values it does not map.

        Parameters
        ----------
        array : integer or boolean source values (a reader checks floats are whole
            numbers and converts them first).

        Raises
        ------
        UnmappedValuesError
            listing each unmapped value with its voxel count (``counts``), and saying how
            to map them; :func:`siblings.io.read_label_map` prefixes the file's name.
        """
        array = np.asarray(array)
        if array.dtype.kind == "b":
            array = array.view(np.uint8)
        if array.dtype.kind not in "iu":
            raise TypeError(f"remap needs integer values, got {array.dtype}")
        if array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous:
            # NIfTI voxels come in Fortran order: keep it, so that sums over the map
            # (volumes, moments) add the same voxels in the same order as the source's.
            return self.remap(array.T).T
        label_of = self.label_of()
        fill = anatomy.LABELS["background"] if self.other == "background" else _UNMAPPED
        if array.size == 0:
            return np.zeros(array.shape, np.uint8)
        lo, hi = int(np.min(array)), int(np.max(array))
        if hi - lo + 1 > _MAX_TABLE:
            return self._remap_sparse(array, label_of, fill)
        lut = np.full(hi - lo + 1, fill, np.uint8)
        for v, lab in label_of.items():
            if lo <= v <= hi:
                lut[v - lo] = lab
        out = np.empty(array.shape, np.uint8)
        flat_in, flat_out = array.reshape(-1), out.reshape(-1)
        counts = np.zeros(hi - lo + 1, np.int64)
        for s in range(0, flat_in.size, _CHUNK_VOXELS):
            index = flat_in[s : s + _CHUNK_VOXELS].astype(np.int64) - lo
            flat_out[s : s + _CHUNK_VOXELS] = lut[index]
            if self.other == "error":
                counts += np.bincount(index, minlength=hi - lo + 1)
        if self.other == "error":
            bad = np.flatnonzero((lut == _UNMAPPED) & (counts > 0))
            if bad.size:
                raise self._unmapped({int(i) + lo: int(counts[i]) for i in bad})
        return out

    def _remap_sparse(self, array: np.ndarray, label_of: dict[int, int], fill: int) -> np.ndarray:
        values, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
        mapped = np.array([label_of.get(int(v), fill) for v in values], np.uint8)
        if self.other == "error":
            bad = {
                int(v): int(c)
                for v, c, m in zip(values, counts, mapped, strict=True)
                if m == _UNMAPPED
            }
            if bad:
                raise self._unmapped(bad)
        return mapped[inverse].reshape(array.shape)

    def _unmapped(self, bad: dict[int, int]) -> UnmappedValuesError:
        shown = sorted(bad)[:8]
        listed = ", ".join(f"{v} ({bad[v]} voxel{'s' if bad[v] != 1 else ''})" for v in shown)
        if len(bad) > len(shown):
            listed += f" and {len(bad) - len(shown)} more value(s)"
        fits = [
            name
            for name, scheme in BUILT_IN.items()
            if scheme is not self and not scheme.is_identity and set(bad) <= set(scheme.values)
        ]
        hint = f"; they are values of {{labels}} {' or '.join(fits)}" if fits else ""
        if self.is_identity:
            expected = ", ".join(f"{i}={n}" for i, n in enumerate(anatomy.LABEL_NAMES))
            text = (
                f"has labels outside 0–{anatomy.NUM_LABELS - 1}: {listed}{hint}; expected "
                f"{expected}; for a map in another label scheme pass {{labels}} SCHEME|FILE "
                "(schemes: `siblings labels --list`)"
            )
        else:
            text = (
                f"has values the {self.name!r} label scheme does not map: {listed}{hint}; pass "
                "the map's own scheme with {labels}, or a JSON file that maps them (to "
                '"background" to drop them; `siblings labels --list`)'
            )
        return UnmappedValuesError(text, counts=bad)

    def record(self) -> dict[str, Any]:
        """The scheme's entry in manifests: enough to rebuild it (:meth:`from_record`)."""
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "mapping": {str(v): self.values[v] for v in sorted(self.values)},
            "other": self.other,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LabelScheme:
        """The scheme a manifest entry (:meth:`record`) describes."""
        return cls(
            name=str(record["name"]),
            values={int(k): str(v) for k, v in record["mapping"].items()},
            source=str(record.get("source", "built-in")),
            other=record.get("other", "error"),
            sha256=record.get("sha256"),
        )

    def table(self) -> str:
        """The scheme as aligned text lines (``source value  → label (source name)``)."""
        lines = [f"{self.name}: {self.description}" if self.description else self.name]
        for v in sorted(self.values):
            own = self.source_names.get(v, "")
            lines.append(f"  {v:>5} -> {self.values[v]:<10} {own}".rstrip())
        if self.other == "background":
            lines.append("      * -> background  (every other value)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------
# Built-in schemes.
# ---------------------------------------------------------------------------------
def _built_in(name: str, description: str, table: dict[int, tuple[str, str]]) -> LabelScheme:
    return LabelScheme(
        name=name,
        values={v: tissue for v, (tissue, _) in table.items()},
        description=description,
        source_names={v: own for v, (_, own) in table.items()},
    )


BUILT_IN: dict[str, LabelScheme] = {
    s.name: s
    for s in (
        _built_in(
            "siblings",
            "this project's labels (SPEC §1; the default)",
            {v: (n, anatomy.LONG_NAMES[n]) for v, n in enumerate(anatomy.LABEL_NAMES)},
        ),
        _built_in(
            "totalsegmentator-heartchambers",
            "TotalSegmentator v2 heartchambers_highres multi-label file "
            "(pulmonary artery -> background)",
            {
                0: ("background", "background"),
                **{
                    v: (
                        "background"
                        if cls == "pulmonary_artery"
                        else next(t for t, c in anatomy.TOTALSEG_CLASSES.items() if c == cls),
                        cls,
                    )
                    for v, cls in anatomy.TOTALSEG_V2_HEARTCHAMBERS_VALUES.items()
                },
            },
        ),
        _built_in(
            "mmwhs",
            "MM-WHS ground-truth codes (pulmonary artery -> background)",
            {
                0: ("background", "background"),
                205: ("Myo", "myocardium of the left ventricle"),
                420: ("LA", "left atrium blood cavity"),
                500: ("LV", "left ventricle blood cavity"),
                550: ("RA", "right atrium blood cavity"),
                600: ("RV", "right ventricle blood cavity"),
                820: ("Ao", "ascending aorta"),
                850: ("background", "pulmonary artery"),
            },
        ),
        _built_in(
            "mmwhs-ordinal",
            "MM-WHS classes numbered 1-7 in code order (205, 420, 500, 550, 600, 820, 850)",
            {
                0: ("background", "background"),
                1: ("Myo", "myocardium of the left ventricle (205)"),
                2: ("LA", "left atrium blood cavity (420)"),
                3: ("LV", "left ventricle blood cavity (500)"),
                4: ("RA", "right atrium blood cavity (550)"),
                5: ("RV", "right ventricle blood cavity (600)"),
                6: ("Ao", "ascending aorta (820)"),
                7: ("background", "pulmonary artery (850)"),
            },
        ),
    )
}
"""The schemes known by name (``siblings labels --list``)."""


# ---------------------------------------------------------------------------------
# Names of classes in other conventions (nnU-Net dataset.json, JSON schemes).
# ---------------------------------------------------------------------------------
COMMON_NAMES: dict[str, tuple[str, ...]] = {
    "background": (
        "background",
        "bg",
        "pulmonary artery",
        "pa",
        "pulmonary trunk",
        "pulmonary_artery",
    ),
    "Ao": ("ao", "aorta", "ascending aorta", "aortic root", "aa"),
    "Myo": (
        "myo",
        "myocardium",
        "lv myocardium",
        "lv myo",
        "lvm",
        "myo lv",
        "left ventricular myocardium",
        "left ventricle myocardium",
        "myocardium of the left ventricle",
        "heart myocardium",
    ),
    "RV": (
        "rv",
        "right ventricle",
        "right ventricular blood pool",
        "right ventricle blood pool",
        "rv blood pool",
        "right ventricle blood cavity",
        "right ventricle cavity",
        "rv cavity",
        "heart ventricle right",
    ),
    "LV": (
        "lv",
        "left ventricle",
        "left ventricular blood pool",
        "left ventricle blood pool",
        "lv blood pool",
        "left ventricle blood cavity",
        "left ventricle cavity",
        "lv cavity",
        "heart ventricle left",
    ),
    "RA": (
        "ra",
        "right atrium",
        "right atrial blood pool",
        "right atrium blood pool",
        "right atrium blood cavity",
        "right atrium cavity",
        "ra cavity",
        "heart atrium right",
    ),
    "LA": (
        "la",
        "left atrium",
        "left atrial blood pool",
        "left atrium blood pool",
        "left atrium blood cavity",
        "left atrium cavity",
        "la cavity",
        "heart atrium left",
    ),
}
"""Class names (normalised: lower case, ``_``/``-`` as spaces) matched to each label when
an nnU-Net ``dataset.json`` or a JSON scheme names classes; the pulmonary artery, which
this project has no label for, goes to the background."""


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


_BY_NAME: dict[str, str] = {
    **{_normalise(alias): label for label, aliases in COMMON_NAMES.items() for alias in aliases},
    **{_normalise(label): label for label in anatomy.LABEL_NAMES},
}


def tissue_of(name: str) -> str | None:
    """The project label a class name means (:data:`COMMON_NAMES`), or None."""
    return _BY_NAME.get(_normalise(str(name)))


# ---------------------------------------------------------------------------------
# Loading a scheme.
# ---------------------------------------------------------------------------------
def _error(path: Path, reason: str) -> LabelSchemeError:
    return LabelSchemeError(
        f"{path}: {reason} (the file given to {{labels}})", arguments=("labels",)
    )


def _int_key(path: Path, key: Any) -> int:
    try:
        return int(str(key).strip())
    except ValueError:
        raise _error(path, f"{key!r} is not an integer source value") from None


def _from_mapping(path: Path, table: Mapping[str, Any], digest: str) -> LabelScheme:
    values: dict[int, str] = {}
    own: dict[int, str] = {}
    other: Literal["error", "background"] = "error"
    for key, target in table.items():
        if str(key).strip() == "*":
            if tissue_of(str(target)) != "background":
                raise _error(path, f'"*" can only map to "background", not {target!r}')
            other = "background"
            continue
        label = tissue_of(str(target)) if isinstance(target, str) else None
        if label is None:
            raise _error(
                path,
                f"value {key}: {target!r} is not a tissue; use one of "
                f"{', '.join(anatomy.LABEL_NAMES)} (or a name in the common-names table)",
            )
        values[_int_key(path, key)] = label
        own[_int_key(path, key)] = str(target)
    if not values:
        raise _error(path, "maps no value")
    values.setdefault(0, "background")
    return LabelScheme(
        name=path.name,
        values=values,
        source=str(path),
        description="JSON mapping",
        source_names=own,
        other=other,
        sha256=digest,
    )


def _from_nnunet(path: Path, labels: Any, digest: str) -> LabelScheme:
    """nnU-Net v2 (``{"name": value}``) or v1 (``{"value": "name"}``) ``labels``."""
    if not isinstance(labels, Mapping) or not labels:
        raise _error(path, "'labels' is not a non-empty object")
    pairs: list[tuple[str, int]] = []
    for key, val in labels.items():
        if isinstance(val, list | dict):
            raise _error(
                path,
                f"label {key!r} is a region ({val!r}); region-based nnU-Net labels cannot be "
                "mapped, write a JSON scheme of the predicted values instead",
            )
        if isinstance(val, str):  # v1: value -> name
            pairs.append((val, _int_key(path, key)))
        else:
            pairs.append((str(key), _int_key(path, val)))
    values, unmatched = {}, []
    for name, value in pairs:
        label = tissue_of(name)
        if label is None:
            unmatched.append(f"{name!r} ({value})")
        else:
            values[value] = label
    if unmatched:
        raise _error(
            path,
            f"cannot match the nnU-Net label name(s) {', '.join(unmatched)} to a tissue; "
            "write a JSON scheme mapping their values instead (see docs/inputs.md)",
        )
    return LabelScheme(
        name=path.name,
        values=values,
        source=str(path),
        description="nnU-Net dataset.json labels",
        source_names={v: n for n, v in pairs},
        sha256=digest,
    )


def read_scheme_file(path: PathLike) -> LabelScheme:
    """A scheme from a JSON mapping or an nnU-Net ``dataset.json`` (with ``labels``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        obj = json.loads(raw.decode("utf-8-sig"))
    except OSError as exc:
        raise _error(path, f"cannot be read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _error(path, f"is not valid JSON ({exc})") from None
    if not isinstance(obj, Mapping):
        raise _error(path, "is not a JSON object of source value -> tissue")
    digest = hashlib.sha256(raw).hexdigest()
    if "labels" in obj:
        return _from_nnunet(path, obj["labels"], digest)
    return _from_mapping(path, obj, digest)


def load_scheme(labels: str | PathLike | LabelScheme | None = None) -> LabelScheme:
    """The scheme named by ``labels``: a built-in name, a JSON/``dataset.json`` path, a
    :class:`LabelScheme` (returned as is), or None (``siblings``, the project's own)."""
    if labels is None:
        return BUILT_IN[DEFAULT_SCHEME]
    if isinstance(labels, LabelScheme):
        return labels
    text = str(labels)
    if text in BUILT_IN:
        return BUILT_IN[text]
    path = Path(text)
    if path.is_file():
        return read_scheme_file(path)
    if path.suffix.lower() == ".json" or os.sep in text:
        raise LabelSchemeError(
            f"{path}: no such label-scheme file (given to {{labels}})", arguments=("labels",)
        )
    raise LabelSchemeError(
        f"unknown label scheme {text!r} for {{labels}}; use one of {', '.join(BUILT_IN)} "
        "or a JSON file (`siblings labels --list`)",
        arguments=("labels",),
    )


def list_schemes() -> str:
    """Every built-in scheme as text (what ``siblings labels --list`` prints)."""
    return "\n\n".join(s.table() for s in BUILT_IN.values())


__all__ = [
    "BUILT_IN",
    "COMMON_NAMES",
    "DEFAULT_SCHEME",
    "LabelScheme",
    "LabelSchemeError",
    "UnmappedValuesError",
    "list_schemes",
    "load_scheme",
    "read_scheme_file",
    "tissue_of",
]
