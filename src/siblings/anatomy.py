"""The cardiac label schema, as data.

Everything the rest of the package needs to know about the anatomy lives here: label
values and names (SPEC §1), display colours, tissue groups, the 12 topology rules of
the paper's appendix B (SPEC §5), grid presets with their common field of view, and the
TotalSegmentator class maps (SPEC §2).

Example
-------
>>> from siblings import anatomy
>>> anatomy.LABELS["LV"]
4
>>> [rule.column for rule in anatomy.TOPOLOGY_RULES][:2]
['cc_Myo', 'cc_LV']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# SPEC §1: one-hot channel index == label value.
LABEL_NAMES: tuple[str, ...] = ("background", "Ao", "Myo", "RV", "LV", "RA", "LA")
LABELS: dict[str, int] = {name: value for value, name in enumerate(LABEL_NAMES)}
NUM_LABELS: int = len(LABEL_NAMES)
TISSUES: tuple[str, ...] = LABEL_NAMES[1:]

LONG_NAMES: dict[str, str] = {
    "background": "background",
    "Ao": "aorta",
    "Myo": "left-ventricular myocardium",
    "RV": "right ventricle blood pool",
    "LV": "left ventricle blood pool",
    "RA": "right atrium",
    "LA": "left atrium",
}

# Chambers in the order of the 12-d morphology vector (SPEC §5).
CHAMBERS: tuple[str, ...] = ("LV", "RV", "LA", "RA")
MORPHOLOGY_QUANTITIES: tuple[str, ...] = ("volume_ml", "major_mm", "minor_mm")
MORPHOLOGY_COLUMNS: tuple[str, ...] = tuple(
    f"{chamber}_{quantity}" for chamber in CHAMBERS for quantity in MORPHOLOGY_QUANTITIES
)

# RGB 0-255. Red hues for the left heart, blue for the right, as in cardiac atlases.
COLOURS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "Ao": (230, 159, 0),
    "Myo": (204, 121, 167),
    "RV": (0, 114, 178),
    "LV": (213, 94, 0),
    "RA": (86, 180, 233),
    "LA": (240, 228, 66),
}


def tissue_set(names: str | list[str] | set[str] | tuple[str, ...]) -> frozenset[str]:
    """Parse tissue names (``"LV,RV"`` or an iterable) into a validated set.

    Raises ``ValueError`` naming the unknown tissue and listing the valid ones.
    """
    if isinstance(names, str):
        items = [n.strip() for n in names.split(",") if n.strip()]
    else:
        items = [str(n).strip() for n in names]
    by_lower = {t.lower(): t for t in LABEL_NAMES}
    out = set()
    for item in items:
        canonical = by_lower.get(item.lower())
        if canonical is None:
            raise ValueError(f"unknown tissue {item!r}; valid tissues are {', '.join(LABEL_NAMES)}")
        out.add(canonical)
    if not out:
        raise ValueError("no tissue given")
    return frozenset(out)


# ---------------------------------------------------------------------------------
# Topology rules (paper appendix B, SPEC §5). Order and column names are fixed (§7).
# ---------------------------------------------------------------------------------
RuleKind = Literal["components", "required_contact", "forbidden_contact"]


@dataclass(frozen=True)
class TopologyRule:
    """One of the 12 binary topology checks.

    ``kind`` is ``components`` (the tissue must be exactly one connected component),
    ``required_contact`` (the two tissues must touch) or ``forbidden_contact`` (they
    must not touch).
    """

    column: str
    kind: RuleKind
    tissues: tuple[str, ...]

    @property
    def description(self) -> str:
        if self.kind == "components":
            return f"{self.tissues[0]} is one connected component"
        a, b = self.tissues
        if self.kind == "required_contact":
            return f"{a} touches {b}"
        return f"{a} does not touch {b}"


TOPOLOGY_RULES: tuple[TopologyRule, ...] = (
    *(TopologyRule(f"cc_{t}", "components", (t,)) for t in ("Myo", "LV", "RV", "LA", "RA")),
    *(
        TopologyRule(f"adj_{a}_{b}", "required_contact", (a, b))
        for a, b in (("LV", "Ao"), ("LV", "Myo"), ("LV", "LA"), ("RV", "Myo"), ("RV", "RA"))
    ),
    *(
        TopologyRule(f"sep_{a}_{b}", "forbidden_contact", (a, b))
        for a, b in (("LV", "RV"), ("LA", "RA"))
    ),
)
TOPOLOGY_COLUMNS: tuple[str, ...] = tuple(rule.column for rule in TOPOLOGY_RULES)

# ---------------------------------------------------------------------------------
# Grids (SPEC §1): every preset spans the same 179.2 mm field of view.
# ---------------------------------------------------------------------------------
FIELD_OF_VIEW_MM: float = 179.2


def voxel_size_mm(size: int) -> float:
    """Isotropic voxel size (mm) of a ``size``³ grid spanning the common field of view."""
    if size <= 0:
        raise ValueError(f"grid size must be positive, got {size}")
    return FIELD_OF_VIEW_MM / size


# ---------------------------------------------------------------------------------
# TotalSegmentator (SPEC §2).
# ---------------------------------------------------------------------------------
# v1 `total` task: one binary file per class in <subject>/segmentations/<class>.nii.gz.
TOTALSEG_CLASSES: dict[str, str] = {
    "Ao": "aorta",
    "Myo": "heart_myocardium",
    "RV": "heart_ventricle_right",
    "LV": "heart_ventricle_left",
    "RA": "heart_atrium_right",
    "LA": "heart_atrium_left",
}
TOTALSEG_V1_FILES: dict[str, int] = {cls: LABELS[t] for t, cls in TOTALSEG_CLASSES.items()}

# v2 `heartchambers_highres` task: same class names, multi-label file values below
# (TotalSegmentator's class map for that task; pulmonary_artery is not used).
TOTALSEG_V2_HEARTCHAMBERS_VALUES: dict[int, str] = {
    1: "heart_myocardium",
    2: "heart_atrium_left",
    3: "heart_ventricle_left",
    4: "heart_atrium_right",
    5: "heart_ventricle_right",
    6: "aorta",
    7: "pulmonary_artery",
}
# The v2 `total` task has only the whole heart: chambers cannot be recovered from it.
TOTALSEG_V2_WHOLE_HEART: str = "heart"
