"""The 12 topology checks of the paper's appendix B (SPEC §5).

Checks 1–5: Myo, LV, RV, LA and RA are each exactly one connected component
(26-connectivity). Checks 6–10: required contacts LV–Ao, LV–Myo, LV–LA, RV–Myo,
RV–RA. Checks 11–12: forbidden contacts LV–RV and LA–RA. Two tissues are in contact
when a voxel of one lies in the 3×3×3 neighbourhood of a voxel of the other (the
critical voxels of Gupta et al. 2022). A check is *violated* when it fails; the cohort
figure TV% is 100 × the mean fraction of violated checks.

:func:`topology_checks` works on the bounding box of the non-background voxels (nothing
outside it can form a component or a contact) and finds contacts with ``cc3d``'s region
graph; :func:`contact_matrix` is the plain NumPy definition, kept as the reference the
tests compare the fast path against.

Example
-------
>>> import numpy as np
>>> from siblings.metrics import topology_checks
>>> lab = np.zeros((8, 8, 8), np.uint8); lab[2:4, 2:4, 2:4] = 4  # a lone LV
>>> topology_checks(lab)["cc_LV"], topology_checks(lab)["cc_RV"]
(False, True)
"""

from __future__ import annotations

import itertools

import cc3d
import numpy as np

from .. import anatomy
from ..boxes import bounding_box
from ..errors import InputError

_NEIGHBOUR_OFFSETS = {
    # Half of each neighbourhood (one of each +o/-o pair): contact is symmetric.
    conn: [
        o
        for o in itertools.product((-1, 0, 1), repeat=3)
        if o > (0, 0, 0) and sum(abs(v) for v in o) <= {6: 1, 18: 2, 26: 3}[conn]
    ]
    for conn in (6, 18, 26)
}


def contact_matrix(label_map: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Symmetric ``(7, 7)`` boolean matrix: ``M[a, b]`` is True when labels a and b touch.

    Touching means a voxel of ``a`` has a voxel of ``b`` among its ``connectivity``
    neighbours (6, 18 or 26). The diagonal is left False.
    """
    if connectivity not in _NEIGHBOUR_OFFSETS:
        raise InputError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    lab = np.asarray(label_map)
    n = anatomy.NUM_LABELS
    seen = np.zeros(n * n, dtype=bool)
    for o in _NEIGHBOUR_OFFSETS[connectivity]:
        src = tuple(slice(max(0, -d), lab.shape[i] - max(0, d)) for i, d in enumerate(o))
        dst = tuple(slice(max(0, d), lab.shape[i] - max(0, -d)) for i, d in enumerate(o))
        a, b = lab[src], lab[dst]
        differ = a != b
        if differ.any():
            codes = a[differ].astype(np.int64) * n + b[differ]
            seen[np.unique(codes)] = True
    m = seen.reshape(n, n)
    m = m | m.T
    np.fill_diagonal(m, False)
    return m


def _crop(lab: np.ndarray) -> np.ndarray:
    box = bounding_box(lab)
    return lab[:0, :0, :0] if box is None else lab[box]


def tissue_contacts(label_map: np.ndarray, connectivity: int = 26) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``0 < a < b``, of non-background labels that touch.

    Same contact definition as :func:`contact_matrix` (without the background), computed
    in one C pass by ``cc3d.region_graph`` on the map's bounding box.
    """
    if connectivity not in _NEIGHBOUR_OFFSETS:
        raise InputError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    lab = np.ascontiguousarray(_crop(np.asarray(label_map)))
    if lab.size == 0:
        return set()
    edges = cc3d.region_graph(lab, connectivity=connectivity)
    return {(min(a, b), max(a, b)) for a, b in edges if a != 0 and b != 0}


def component_counts(
    label_map: np.ndarray, min_component_voxels: int = 0, connectivity: int = 26
) -> dict[str, int]:
    """Number of connected components of each tissue (components smaller than
    ``min_component_voxels`` voxels are not counted)."""
    lab = np.ascontiguousarray(_crop(np.asarray(label_map)))
    if lab.size == 0:
        return {t: 0 for t in anatomy.TISSUES}
    cc, n = cc3d.connected_components(lab, connectivity=connectivity, return_N=True)
    counts = {t: 0 for t in anatomy.TISSUES}
    if n == 0:
        return counts
    sizes = np.bincount(cc.ravel(), minlength=n + 1)
    # The label value of each component: any voxel of it will do.
    flat_cc, flat_lab = cc.ravel(), lab.ravel()
    owner = np.zeros(n + 1, dtype=np.int64)
    owner[flat_cc] = flat_lab
    for comp in range(1, n + 1):
        if sizes[comp] >= max(1, min_component_voxels):
            counts[anatomy.LABEL_NAMES[owner[comp]]] += 1
    return counts


def topology_checks(
    label_map: np.ndarray,
    min_component_voxels: int = 0,
    contact_connectivity: int = 26,
) -> dict[str, bool]:
    """The 12 checks of one label map, in SPEC §7 order; True means *violated*.

    Parameters
    ----------
    label_map : 3D integer array, values 0–6.
    min_component_voxels : components smaller than this are ignored by checks 1–5
        (default 0: every speck counts, as the paper defines the check).
    contact_connectivity : neighbourhood for contact, 26 (default, 3×3×3), 18 or 6.
    """
    lab = np.asarray(label_map)
    if lab.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {lab.shape}")
    lab = _crop(lab)
    counts = component_counts(lab, min_component_voxels)
    touch = tissue_contacts(lab, contact_connectivity)
    out: dict[str, bool] = {}
    for rule in anatomy.TOPOLOGY_RULES:
        if rule.kind == "components":
            out[rule.column] = counts[rule.tissues[0]] != 1
        else:
            a, b = sorted(anatomy.LABELS[t] for t in rule.tissues)
            touching = (a, b) in touch
            out[rule.column] = not touching if rule.kind == "required_contact" else touching
    return out


def checks_array(checks: list[dict[str, bool]]) -> np.ndarray:
    """Per-map check dicts as an ``(n, 12)`` boolean array in ``TOPOLOGY_COLUMNS`` order."""
    return np.array(
        [[bool(c[col]) for col in anatomy.TOPOLOGY_COLUMNS] for c in checks], dtype=bool
    ).reshape(-1, len(anatomy.TOPOLOGY_COLUMNS))


def violation_rates(checks: list[dict[str, bool]] | np.ndarray) -> dict[str, float]:
    """Per-check breakdown: the fraction of maps violating each of the 12 checks."""
    arr = checks if isinstance(checks, np.ndarray) else checks_array(checks)
    if arr.shape[0] == 0:
        raise ValueError("violation rates of an empty cohort are undefined")
    return {
        col: float(v) for col, v in zip(anatomy.TOPOLOGY_COLUMNS, arr.mean(axis=0), strict=True)
    }


def tv_percent(checks: list[dict[str, bool]] | np.ndarray) -> float:
    """TV% of a cohort: 100 × mean fraction of the 12 checks violated (SPEC §5)."""
    arr = (
        np.asarray([[c[col] for col in anatomy.TOPOLOGY_COLUMNS] for c in checks], dtype=float)
        if not isinstance(checks, np.ndarray)
        else checks.astype(float)
    )
    if arr.size == 0:
        raise ValueError("TV% of an empty cohort is undefined")
    return float(100.0 * arr.mean())
