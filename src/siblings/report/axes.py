"""What the slice panels of a figure may say about direction.

A figure's three orthogonal slices are cut along the array axes of a map. Whether the
panels may name those axes with the patient's directions (R/L, A/P, S/I) depends on
where the map came from, not on what its affine says. The rule
(:func:`panel_axes`):

1. **A map on a scanner grid** (its affine is not a model grid's,
   :func:`siblings.io.is_model_grid`): the letters of its affine, as nibabel's
   ``aff2axcodes`` gives them; the scan records where the patient is.
2. **A map on the model grid with the transform that prepared it from a scan** (the twin
   of an ``edit`` run that prepared it in that run, saved as ``twin/twin.xfm.json``): the
   patient direction nearest each model axis through that transform,
   ``aff2axcodes(inv(T) @ A)``, said to be derived, with the largest angle between a model
   axis and the direction it is named by.
3. **Any other map on the model grid**: "model axes". Preparation (SPEC §2) rotates each
   heart so its LV→LA axis lies along +z and registers it to a reference, so the model
   grid's axes differ from the patient's by each subject's own rotation, which the map
   does not carry; the affine's RAS names the prepared frame, not the patient. This
   covers a prepared twin read from a file (its ``<subject>.xfm.json`` is not read by the
   figures), its siblings, samples, a prepared cohort, and phantom files. Panels are then
   named by the model axes they show (``model axes 1, 2``), edges by the axis and the way
   its index grows (``axis 1 →``), and carry no letters.

The procedural phantom (:mod:`siblings.data.phantom`) is designed in a RAS frame and
rasterised after the same reorientation: a tilt of 11–33° over the first 200 subjects of
seeds 0 and 1, the nearest axes R, A, S for every one. A caller that made phantoms in
memory may pass ``"RAS"`` (basis ``given``); read back from a file, a phantom is a map
on the model grid like any other (rule 3).

Example
-------
>>> import numpy as np
>>> from siblings.io import centred_affine
>>> panel_axes((64, 64, 64), centred_affine(64)).codes is None     # model axes
True
>>> lps = np.diag([-1.0, -1.0, 2.5, 1.0])
>>> panel_axes((200, 200, 80), lps).codes
'LPS'
>>> [v.name for v in panel_axes((200, 200, 80), lps).views()]
['sagittal', 'coronal', 'axial']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import nibabel as nib
import numpy as np

from ..io import is_model_grid

MODEL_AXES = "model axes"
"""``orientation`` of panels whose array axes are not known to be the patient's."""

Basis = Literal["model grid", "affine", "transform", "given"]

_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
_PLANE = {
    "R": "sagittal",
    "L": "sagittal",
    "A": "coronal",
    "P": "coronal",
    "S": "axial",
    "I": "axial",
}
_UNIT = {
    "R": (1, 0, 0),
    "L": (-1, 0, 0),
    "A": (0, 1, 0),
    "P": (0, -1, 0),
    "S": (0, 0, 1),
    "I": (0, 0, -1),
}
# (horizontal, vertical) array axes of the view that holds axis 0, 1, 2 fixed.
_IN_PLANE = ((1, 2), (0, 2), (0, 1))


@dataclass(frozen=True)
class SliceView:
    """One view: its name and the labels of its (left, right, bottom, top) edges."""

    name: str
    edges: tuple[str, str, str, str]


@dataclass(frozen=True)
class PanelAxes:
    """What the panels of a map may say about direction (see the module's rule).

    Attributes
    ----------
    codes : the patient direction of each array axis (``"RAS"``, ``"LPS"``, …), or None
        for model axes (no letters).
    basis : where ``codes`` come from: ``"model grid"`` (None: model axes), ``"affine"``
        (the map's scanner affine), ``"transform"`` (derived through a stored transform),
        ``"given"`` (a caller's codes).
    max_angle_deg : the largest angle between an array axis and the patient direction
        its letter names (0 for an axis-aligned grid); None when not measured.
    """

    codes: str | None = None
    basis: Basis = "model grid"
    max_angle_deg: float | None = None

    @property
    def model(self) -> bool:
        """True for model axes (no patient letters)."""
        return self.codes is None

    @classmethod
    def of(cls, value: PanelAxes | str | Mapping[str, Any] | None) -> PanelAxes:
        """Coerce a figure's ``orientation`` argument.

        ``None`` or ``"model axes"``: model axes; three letters: codes the caller gives; a
        mapping: a :meth:`record` (as in a ``metrics.json``'s ``grid.axes``).
        """
        if isinstance(value, PanelAxes):
            return value
        if value is None or value == MODEL_AXES:
            return cls()
        if isinstance(value, Mapping):
            codes = value.get("axes")
            if codes in (None, MODEL_AXES):
                return cls()
            angle = value.get("max_angle_deg")
            return cls(str(codes), value.get("basis", "given"), angle)
        codes = str(value).upper()
        if len(codes) != 3 or any(c not in _OPPOSITE for c in codes):
            raise ValueError(f"orientation must be 3 axis codes (e.g. 'RAS') or {MODEL_AXES!r}")
        if {_PLANE[c] for c in codes} != {"sagittal", "coronal", "axial"}:
            raise ValueError(f"axis codes {codes!r} name one direction twice")
        return cls(codes, "given")

    def views(self) -> tuple[SliceView, SliceView, SliceView]:
        """The three views, holding array axis 0, 1, 2 fixed, in that order.

        With letters, a view is named by the plane it cuts (the letter of its fixed axis:
        R/L sagittal, A/P coronal, S/I axial) and each edge by the direction it faces
        (the high index of axis ``k`` faces ``codes[k]``). With model axes, a view is
        named by the two model axes it shows and the right and top edges by the axis
        whose index grows towards them.
        """
        out = []
        for fixed, (h, v) in enumerate(_IN_PLANE):
            if self.codes is None:
                out.append(
                    SliceView(f"model axes {h}, {v}", ("", f"axis {h} →", "", f"axis {v} ↑"))
                )
            else:
                c = self.codes
                edges = (_OPPOSITE[c[h]], c[h], _OPPOSITE[c[v]], c[v])
                out.append(SliceView(_PLANE[c[fixed]], edges))
        return tuple(out)  # type: ignore[return-value]

    def note(self) -> str:
        """One sentence for a caption: what the panels' labels mean and where they come from."""
        if self.codes is None:
            return (
                "Model axes: slices along the model grid's axes 0, 1, 2 (arrows: growing "
                "index). The grid is the prepared frame (SPEC §2: LV→LA along +axis 2, "
                "registered to a reference), not the patient's axes, so no patient "
                "directions are drawn."
            )
        off = (
            f"; each axis within {self.max_angle_deg:.0f}° of the direction it is named by"
            if self.max_angle_deg is not None and self.max_angle_deg >= 0.5
            else ""
        )
        if self.basis == "transform":
            return (
                f"Letters ({self.codes}): the patient direction nearest each model axis, "
                f"derived through the twin's stored transform{off}."
            )
        if self.basis == "affine":
            return f"Letters ({self.codes}): the patient's directions from the map's affine{off}."
        return f"Letters: axis codes {self.codes} of the map's axes{off}."

    def record(self) -> dict[str, Any]:
        """For manifests: ``axes`` (codes or ``"model axes"``), ``basis``, ``max_angle_deg``."""
        rec: dict[str, Any] = {"axes": self.codes or MODEL_AXES, "basis": self.basis}
        if self.max_angle_deg is not None:
            rec["max_angle_deg"] = round(float(self.max_angle_deg), 2)
        return rec


def axis_codes(affine: np.ndarray) -> tuple[str, float]:
    """The patient direction nearest each array axis of a voxel→RAS+ world ``affine``
    (nibabel's ``aff2axcodes``), and the largest angle (degrees) between an axis and the
    direction it is named by."""
    m = np.asarray(affine, float)[:3, :3]
    codes = "".join(nib.aff2axcodes(np.block([[m, np.zeros((3, 1))], [np.zeros((1, 3)), 1.0]])))
    cols = m / np.linalg.norm(m, axis=0)
    cosines = [float(cols[:, i] @ np.array(_UNIT[c], float)) for i, c in enumerate(codes)]
    return codes, max(math.degrees(math.acos(min(1.0, max(-1.0, x)))) for x in cosines)


def panel_axes(
    shape: Sequence[int], affine: np.ndarray, *, to_patient: np.ndarray | None = None
) -> PanelAxes:
    """What the panels of a map with this grid may say (the module's rule).

    Parameters
    ----------
    shape, affine : the map's grid (voxel → world, RAS+ mm).
    to_patient : 4×4 matrix from the map's world to the patient's scanner world (RAS+
        mm): the inverse of the transform that prepared the map from a scan
        (``numpy.linalg.inv(transform.matrix)``). Give it only when the map was prepared
        from a scanner grid; a map merely resampled between model grids has none.
    """
    if to_patient is not None:
        codes, angle = axis_codes(np.asarray(to_patient, float) @ np.asarray(affine, float))
        return PanelAxes(codes, "transform", angle)
    if is_model_grid(shape, affine):
        return PanelAxes()
    codes, angle = axis_codes(affine)
    return PanelAxes(codes, "affine", angle)


def grid_axes(grid: Mapping[str, Any] | None) -> PanelAxes:
    """The panel axes of a ``metrics.json`` ``grid``: its ``axes`` record (an edit run's),
    else the rule on its ``shape`` and ``affine`` (``siblings evaluate`` of folders), else
    model axes (maps summarised in memory carry no affine to tell)."""
    grid = grid or {}
    if grid.get("axes") is not None:
        return PanelAxes.of(grid["axes"])
    if grid.get("affine") is not None and grid.get("shape"):
        return panel_axes(grid["shape"], np.asarray(grid["affine"], float))
    return PanelAxes()


__all__ = [
    "MODEL_AXES",
    "PanelAxes",
    "SliceView",
    "axis_codes",
    "grid_axes",
    "panel_axes",
]
