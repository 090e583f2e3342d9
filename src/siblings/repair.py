"""Topology repair: the least change that makes a label map pass the 12 checks of SPEC §5.

:func:`repair_topology` takes a label map (an array; no files) and fixes what the checks
of :mod:`siblings.metrics.topology` call violated, each fix the smallest relabelling this
module knows for it:

- **a tissue in several components** (checks 1–5): every component but the largest is
  relabelled to the majority label of the voxels around it (its 26-neighbour shell: the
  surrounding tissue, or background), or joined to the largest by a bridge of at most
  ``max_gap`` voxels when that changes fewer voxels;
- **a forbidden contact** (checks 11–12): the voxels of one side that touch the other
  become a one-voxel layer of the separating tissue (:data:`SEPARATING_LAYER`:
  myocardium between the ventricles, background between the atria), so no voxel of
  one lies in the 3×3×3 neighbourhood of the other;
- **a missing required contact** (checks 6–10): the two tissues are joined by the
  shortest chain of at most ``max_gap`` voxels (through background first, then through
  any other label), painted as one of the two.

Each fix is tried in its variants (which side, which label, which path), the 12 checks
are measured after each, and the variant kept is the one with the fewest violations and
then the fewest changed voxels; a fix is kept only when it lowers the number of
violations (so the loop ends, and nothing is traded for an equal failure). A fix that
splits a tissue is followed by the component fix of that tissue within the same variant.
What no fix mends (a missing tissue, a required contact farther than ``max_gap``, a fix
that would break another check) is left as it is and named with a reason in
:attr:`TopologyRepair.unfixed`; it is never faked. A map that passes every check is
returned unchanged (the very array).

Example
-------
>>> import numpy as np
>>> from siblings.repair import repair_topology
>>> lab = np.zeros((12, 12, 12), np.uint8)
>>> lab[2:5, 2:5, 2:5] = 4; lab[9, 9, 9] = 4  # LV and a detached LV speck
>>> rep = repair_topology(lab)
>>> rep.before["cc_LV"], rep.after["cc_LV"], rep.voxels_changed
(True, False, 1)
>>> sorted(rep.unfixed)[:2]  # the other tissues are missing: reported, not made up
['adj_LV_Ao', 'adj_LV_LA']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

from . import anatomy
from .boxes import bounding_box
from .errors import InputError
from .metrics.topology import component_counts, topology_checks

L = anatomy.LABELS
_CUBE = np.ones((3, 3, 3), dtype=bool)

DEFAULT_MAX_GAP = 2
"""Longest chain of voxels (26-connected) a bridge or a contact closure may paint. Two
voxels close a gap of two background voxels: a hole in a wall, a seam left by argmax;
a chamber farther away than that is not "a small change" and is reported instead."""

SEPARATING_LAYER: dict[tuple[str, str], str] = {("LV", "RV"): "Myo", ("LA", "RA"): "background"}
"""The tissue of the one-voxel layer that separates each forbidden contact (checks 11–12)."""

_MAX_ROUNDS = 8


@dataclass
class TopologyRepair:
    """A repaired label map and what was done to it.

    Attributes
    ----------
    labels : the repaired map (the input array itself when nothing changed).
    before, after : the 12 checks (True = violated) of the input and of ``labels``.
    actions : the fixes kept, in order: ``check``, ``action``, ``voxels`` changed.
    unfixed : violated checks left as they are, each with the reason.
    tissue_voxels : non-background voxels of the input.
    changes : per label name, voxels it ``lost`` and ``gained``.
    transitions : ``(from, to) -> voxels`` for every relabelling done.
    """

    labels: np.ndarray
    before: dict[str, bool]
    after: dict[str, bool]
    actions: list[dict[str, Any]] = field(default_factory=list)
    unfixed: dict[str, str] = field(default_factory=dict)
    tissue_voxels: int = 0
    changes: dict[str, dict[str, int]] = field(default_factory=dict)
    transitions: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def voxels_changed(self) -> int:
        """Voxels whose label changed."""
        return int(sum(self.transitions.values()))

    @property
    def changed(self) -> bool:
        return self.voxels_changed > 0

    @property
    def changed_fraction(self) -> float:
        """Changed voxels as a fraction of the input's non-background voxels."""
        return self.voxels_changed / self.tissue_voxels if self.tissue_voxels else 0.0

    def record(self) -> dict[str, Any]:
        """A JSON-ready record: checks before and after, fixes, changes, what is unfixed."""
        return {
            "changed": self.changed,
            "voxels_changed": self.voxels_changed,
            "tissue_voxels": self.tissue_voxels,
            "changed_fraction_of_tissue": round(self.changed_fraction, 6),
            "changes_per_label": self.changes
            or {name: {"lost": 0, "gained": 0} for name in anatomy.LABEL_NAMES},
            "transitions": [
                {"from": a, "to": b, "voxels": n} for (a, b), n in sorted(self.transitions.items())
            ],
            "actions": self.actions,
            "checks_before": self.before,
            "checks_after": self.after,
            "violations_before": [c for c, v in self.before.items() if v],
            "violations_after": [c for c, v in self.after.items() if v],
            "unfixed": self.unfixed,
        }


# ---------------------------------------------------------------------------------
# Small pieces: neighbourhoods, components, shortest chains.
# ---------------------------------------------------------------------------------
def _dilate(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=_CUBE)


def _violations(checks: dict[str, bool]) -> int:
    return sum(checks.values())


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected components of ``mask`` and their sizes (index 0 = outside)."""
    cc = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    return cc, np.bincount(cc.ravel())


def _shell_majority(lab: np.ndarray, comp: np.ndarray) -> int:
    """The most common label around ``comp`` (ties: the lower label)."""
    shell = _dilate(comp) & ~comp
    if not shell.any():
        return L["background"]
    return int(np.argmax(np.bincount(lab[shell], minlength=anatomy.NUM_LABELS)))


def _chain(
    sources: np.ndarray, targets: np.ndarray, allowed: np.ndarray, max_len: int
) -> list[tuple[int, int, int]] | None:
    """The shortest 26-connected chain of ``allowed`` voxels from ``sources`` to ``targets``.

    The chain's first voxel neighbours ``sources`` and its last neighbours ``targets``;
    at most ``max_len`` voxels, else None. Breadth-first by dilation; ties go to the
    lowest index, so the chain is deterministic.
    """
    reached = sources.copy()
    near_target = _dilate(targets)
    layers: list[np.ndarray] = []
    frontier = sources
    for _ in range(max_len):
        new = _dilate(frontier) & allowed & ~reached
        if not new.any():
            return None
        layers.append(new)
        reached |= new
        hit = new & near_target
        if hit.any():
            v = tuple(int(i) for i in np.argwhere(hit)[0])
            chain = [v]
            for layer in reversed(layers[:-1]):
                lo = [max(0, i - 1) for i in v]
                window = layer[lo[0] : v[0] + 2, lo[1] : v[1] + 2, lo[2] : v[2] + 2]
                step = np.argwhere(window)[0]
                v = tuple(int(a + b) for a, b in zip(step, lo, strict=True))
                chain.append(v)
            return chain
        frontier = new
    return None


def _paint(lab: np.ndarray, chain: list[tuple[int, int, int]], value: int) -> np.ndarray:
    out = lab.copy()
    for v in chain:
        out[v] = value
    return out


# ---------------------------------------------------------------------------------
# The fixes: each yields (name, candidate map) variants; the caller measures them.
# ---------------------------------------------------------------------------------
Variants = Iterator[tuple[str, np.ndarray, int]]
"""(name, candidate map, rank): among variants with equally few violations the lower rank
wins, then the fewer changed voxels."""


def _component_variants(lab: np.ndarray, tissue: str, max_gap: int) -> Variants:
    """Checks 1–5: every component but the largest relabelled, or bridged to it."""
    value = L[tissue]
    cc, sizes = _components(lab == value)
    if len(sizes) <= 2:  # zero or one component: nothing to do here
        return
    sizes[0] = 0
    main = int(np.argmax(sizes))
    others = [c for c in np.argsort(-sizes, kind="stable") if c not in (0, main) and sizes[c]]
    relabelled = lab.copy()
    for c in others:
        comp = cc == c
        relabelled[comp] = _shell_majority(relabelled, comp)
    yield "relabel islands to the surrounding label", relabelled, 0
    for through, name in ((L["background"], "background"), (None, "any label")):
        bridged = lab.copy()
        for c in others:
            comp = cc == c
            allowed = (bridged != value) if through is None else (bridged == through)
            chain = _chain(comp, (bridged == value) & ~comp, allowed & ~comp, max_gap)
            # A component joins the rest of its tissue as it grows, so aim at all of it.
            if chain is not None and len(chain) < sizes[c]:
                bridged = _paint(bridged, chain, value)
            else:
                bridged[comp] = _shell_majority(bridged, comp)
        yield f"bridge islands through {name} (else relabel)", bridged, 1


def _separation_variants(lab: np.ndarray, a: str, b: str) -> Variants:
    """Checks 11–12: one side's contact voxels become the separating layer."""
    layer = SEPARATING_LAYER[(a, b)]
    for side, other in ((a, b), (b, a)):
        touching = (lab == L[side]) & _dilate(lab == L[other])
        out = lab.copy()
        out[touching] = L[layer]
        yield f"{side} voxels touching {other} -> {layer}", out, 0


def _contact_variants(lab: np.ndarray, a: str, b: str, max_gap: int) -> Variants:
    """Checks 6–10: the shortest chain from ``a`` to ``b``, painted as either."""
    ma, mb = lab == L[a], lab == L[b]
    if not ma.any() or not mb.any():
        return
    for through, name in ((lab == L["background"], "background"), (~(ma | mb), "any label")):
        chain = _chain(ma, mb, through, max_gap)
        if chain is None:
            continue
        for paint in (a, b):
            yield (
                f"{len(chain)}-voxel chain through {name} painted {paint}",
                _paint(lab, chain, L[paint]),
                0,
            )


# ---------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------
def _settle(cand: np.ndarray, before: dict[str, bool], max_gap: int) -> np.ndarray:
    """Mend the components a fix split (checks 1–5 it newly violates), best variant each."""
    checks = topology_checks(cand)
    for tissue in ("Myo", "LV", "RV", "LA", "RA"):
        col = f"cc_{tissue}"
        if checks[col] and not before[col]:
            best = _best(cand, _component_variants(cand, tissue, max_gap), _violations(checks))
            if best is not None:
                cand, checks = best[1], best[2]
    return cand


def _best(
    lab: np.ndarray,
    variants: Variants,
    to_beat: int,
    settle: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[str, np.ndarray, dict[str, bool], int] | None:
    """The variant with the fewest violations (then fewest changes), if below ``to_beat``."""
    best = None
    for name, cand, rank in variants:
        if settle is not None:
            cand = settle(cand)
        checks = topology_checks(cand)
        key = (_violations(checks), rank, int(np.count_nonzero(cand != lab)))
        if key[0] < to_beat and (best is None or key < best[0]):
            best = (key, name, cand, checks)
    return None if best is None else (best[1], best[2], best[3], best[0][2])


def _variants_for(lab: np.ndarray, rule: anatomy.TopologyRule, max_gap: int) -> Variants:
    if rule.kind == "components":
        return _component_variants(lab, rule.tissues[0], max_gap)
    a, b = rule.tissues
    if rule.kind == "forbidden_contact":
        return _separation_variants(lab, a, b)
    return _contact_variants(lab, a, b, max_gap)


def _gap_voxels(lab: np.ndarray, a: str, b: str) -> int:
    """Background-or-other voxels between the nearest voxels of ``a`` and ``b`` (chessboard)."""
    dist = ndimage.distance_transform_cdt(lab != L[b], metric="chessboard")
    return int(dist[lab == L[a]].min()) - 1


def _reason(lab: np.ndarray, rule: anatomy.TopologyRule, max_gap: int) -> str:
    """Why a violated check was left as it is."""
    counts = component_counts(lab)
    missing = [t for t in rule.tissues if counts[t] == 0]
    if missing:
        return f"{' and '.join(missing)} missing: a missing tissue is not made up"
    if rule.kind == "components":
        t = rule.tissues[0]
        return (
            f"{t} is {counts[t]} components; no relabelling or bridge of at most "
            f"{max_gap} voxels mends it without breaking another check"
        )
    a, b = rule.tissues
    if rule.kind == "required_contact":
        gap = _gap_voxels(lab, a, b)
        if gap > max_gap:
            return (
                f"{a} and {b} are {gap} voxels apart, more than max_gap = {max_gap}: "
                "a contact that far is not forced"
            )
        return f"a chain of {gap} voxels joining {a} and {b} would break another check"
    layer = SEPARATING_LAYER[(a, b)]
    return f"no one-voxel {layer} layer between {a} and {b} keeps the other checks"


def _changes(before: np.ndarray, after: np.ndarray) -> tuple[dict, dict]:
    diff = before != after
    src, dst = before[diff], after[diff]
    per_label = {
        name: {"lost": int(np.count_nonzero(src == v)), "gained": int(np.count_nonzero(dst == v))}
        for v, name in enumerate(anatomy.LABEL_NAMES)
    }
    codes = np.bincount(src.astype(np.int64) * anatomy.NUM_LABELS + dst, minlength=49)
    transitions = {
        (
            anatomy.LABEL_NAMES[c // anatomy.NUM_LABELS],
            anatomy.LABEL_NAMES[c % anatomy.NUM_LABELS],
        ): int(codes[c])
        for c in np.flatnonzero(codes)
    }
    return per_label, transitions


def check_max_gap(max_gap: int) -> None:
    """Refuse a negative ``max_gap`` (:class:`InputError` naming it)."""
    if max_gap < 0:
        raise InputError(f"{{max_gap}} must be 0 or more, got {max_gap}", arguments=("max_gap",))


def repair_topology(label_map: np.ndarray, max_gap: int = DEFAULT_MAX_GAP) -> TopologyRepair:
    """Repair the topology of one label map with the least change (see the module text).

    Parameters
    ----------
    label_map : 3D integer array, values 0–6 (SPEC §1).
    max_gap : longest chain, in voxels, that a bridge between two components of a tissue
        or a closure of a required contact may paint (default :data:`DEFAULT_MAX_GAP`).

    Returns
    -------
    TopologyRepair
        The repaired map, the 12 checks before and after, the fixes kept, the changes
        per label and the checks left violated with their reasons. A map that passes
        every check comes back as the very array, unchanged.
    """
    lab = np.asarray(label_map)
    if lab.ndim != 3:
        raise InputError(f"expected a 3D label map, got shape {lab.shape}")
    if lab.dtype.kind not in "iub" or (lab.size and (lab.min() < 0 or lab.max() > 6)):
        raise InputError("a label map holds integers 0–6")
    check_max_gap(max_gap)
    before = topology_checks(lab)
    tissue_voxels = int(np.count_nonzero(lab))
    rep = TopologyRepair(lab, before, before, tissue_voxels=tissue_voxels)
    if not any(before.values()):
        return rep
    # Everything a fix may touch lies within max_gap + 1 voxels of a tissue.
    box = bounding_box(lab, pad=max_gap + 2)
    assert box is not None  # a map with violations but no tissue has all tissues missing
    work = lab[box].astype(np.uint8)
    checks = topology_checks(work)
    for _ in range(_MAX_ROUNDS):
        progressed = False
        for rule in anatomy.TOPOLOGY_RULES:
            if not checks[rule.column]:
                continue
            current = checks
            best = _best(
                work,
                _variants_for(work, rule, max_gap),
                _violations(current),
                settle=lambda cand, current=current: _settle(cand, current, max_gap),
            )
            if best is None:
                continue
            name, work, checks, n = best
            rep.actions.append({"check": rule.column, "action": name, "voxels": n})
            progressed = True
        if not progressed or not any(checks.values()):
            break
    if not rep.actions:
        rep.unfixed = {
            r.column: _reason(lab[box], r, max_gap)
            for r in anatomy.TOPOLOGY_RULES
            if before[r.column]
        }
        return rep
    out = lab.copy()
    out[box] = work.astype(lab.dtype)
    rep.labels, rep.after = out, checks
    rep.changes, rep.transitions = _changes(lab[box], work)
    rep.unfixed = {
        r.column: _reason(work, r, max_gap) for r in anatomy.TOPOLOGY_RULES if checks[r.column]
    }
    return rep
