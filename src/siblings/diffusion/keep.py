"""Exact keep: a localized sibling composed in label space (SPEC §4, "Beyond the paper").

The paper keeps tissues in latent space only (eq. 5): the kept region of the latent is
the twin's, but what the decoder makes of it is the VAE's reconstruction, so a kept
tissue comes back as well as the VAE reconstructs it. Exact keep composes the sibling
from the twin and the decoded map, on one grid (the model grid, and again the twin's
own scanner grid), so that every voxel of a kept tissue in the twin stays that tissue
and kept tissues appear nowhere else. :func:`compose_exact` is the whole rule.

Example
-------
>>> import numpy as np
>>> from siblings.diffusion.keep import compose_exact
>>> twin = np.zeros((9, 9, 9), np.uint8)
>>> twin[2:7, 2:5, 2:7] = 3                       # RV, kept
>>> twin[2:7, 5:7, 2:7] = 4                       # LV, regenerated
>>> decoded = np.zeros_like(twin)
>>> decoded[2:7, 1:4, 2:7] = 3                    # the decoder moved the RV …
>>> decoded[2:7, 4:8, 2:7] = 4                    # … and put the LV against it
>>> out = compose_exact(twin, decoded, kept_labels=[1, 3, 5, 6])
>>> bool(np.array_equal(out.labels == 3, twin == 3)), out.changed["separators"] > 0
(True, True)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import cc3d
import numpy as np
from scipy import ndimage

from .. import anatomy
from ..boxes import bounding_box
from ..errors import InputError

KeepMode = Literal["exact", "latent"]
KEEP_MODES: tuple[str, ...] = ("exact", "latent")
"""``exact``: :func:`compose_exact` after decoding (the product's default); ``latent``:
the paper's eq. 5 alone (its experiments use it)."""

L = anatomy.LABELS
_BG = L["background"]
_OUT = 255  # padding outside the grid, and voxels that do not vote
FORBIDDEN_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (L[r.tissues[0]], L[r.tissues[1]])
    for r in anatomy.TOPOLOGY_RULES
    if r.kind == "forbidden_contact"
)
"""SPEC §5's forbidden contacts (LV–RV, LA–RA) as label pairs."""
ONE_COMPONENT: tuple[int, ...] = tuple(
    L[r.tissues[0]] for r in anatomy.TOPOLOGY_RULES if r.kind == "components"
)
"""Tissues that must be one connected component (Myo, LV, RV, LA, RA)."""
# Between ventricles the wall is myocardium (the septum); between atria it is not
# labelled, so background. The first of these that is not kept separates the pair.
_SEPARATORS: dict[frozenset[int], tuple[int, ...]] = {
    frozenset((L["LV"], L["RV"])): (L["Myo"], _BG),
    frozenset((L["LA"], L["RA"])): (_BG,),
}
_CUBE = np.ones((3, 3, 3), bool)


@dataclass
class Composition:
    """A composed sibling and what the seam rule changed (voxel counts per step)."""

    labels: np.ndarray
    changed: dict[str, int] = field(default_factory=dict)
    rounds: int = 0

    def record(self) -> dict[str, int]:
        """The manifest entry: voxels relabelled by each step, and the rounds used."""
        return {**self.changed, "rounds": self.rounds}


def compose_exact(
    twin: np.ndarray,
    decoded: np.ndarray,
    kept_labels: Iterable[int],
    *,
    max_rounds: int = 8,
) -> Composition:
    """Compose a localized sibling: the twin's kept tissues, the decoded map elsewhere.

    Parameters
    ----------
    twin : the twin's label map (values 0–6).
    decoded : the decoded sibling on the same grid (for the scanner grid: the
        model-space sibling put back on it).
    kept_labels : the kept labels (tissues; 0 too when the background is kept). The
        other labels are *regenerated*; voxels where the twin has a regenerated label
        form the *free* region.
    max_rounds : cap on the repetitions of steps 3–4.

    The seam rule, in order (neighbours and contacts are 26-connected, as SPEC §5's
    checks; ties go to the lowest label value):

    1. **Kept voxels.** Every voxel where the twin has a kept label gets the twin's
       label; every free voxel starts with the decoded label.
    2. **Claims.** A free voxel where the decoded map has a kept label takes the label
       most frequent among its free neighbours that hold a regenerated label; the
       claim fills inward from its border, layer by layer (a neighbour filled in one
       layer votes in the next). A claim that no regenerated label reaches takes the
       twin's own label there.
    3. **Forbidden contacts** (LV–RV, LA–RA). A free voxel of one of these chambers
       whose neighbour is its forbidden partner, where the partner voxel is kept or
       either voxel was relabelled by this composition, becomes the separator:
       myocardium between ventricles (background if the myocardium is kept),
       background between atria; the twin's own label if the separator is kept.
    4. **Detached pieces.** For each regenerated tissue that must be one component (Myo,
       LV, RV, LA, RA), a connected component of it survives if, for some component of
       that tissue in the decoded map, it holds the most of that component's voxels.
       Every other piece (cut off by the kept tissues, or made only of relabelled
       voxels) is dropped to background; when background is kept, it is filled from
       its surroundings as a claim is, without its own label.

    Steps 3–4 repeat until nothing changes (at most ``max_rounds``; with a regenerated
    background one round settles it, since background joins no contact or component).

    What holds by construction: every voxel the twin has of a kept tissue is that tissue
    in the result, and kept tissues appear nowhere else (kept-tissue Dice against the
    twin is 1.0). With the background regenerated (the default), the composition also
    makes no forbidden contact (each left is between two regenerated tissues, as the
    decoder made it, or the twin's own between kept tissues) and no island (each
    regenerated one-component tissue has at most as many components as in the decoded
    map).

    Only the box around both maps' foreground (padded) is worked on: outside it both are
    background, and so is the result.
    """
    twin = np.asarray(twin)
    decoded = np.asarray(decoded)
    if twin.shape != decoded.shape:
        raise ValueError(f"twin {twin.shape} and decoded {decoded.shape} grids differ")
    kept_lut = np.zeros(256, bool)
    kept_lut[list(kept_labels)] = True
    if kept_lut[1 : anatomy.NUM_LABELS].all():
        raise InputError("every tissue is kept: there is nothing to regenerate")
    # Outside the box around both foregrounds, twin and decoded map are background, and
    # so is the result whichever way background goes.
    out = np.zeros(twin.shape, np.uint8)
    box = bounding_box(twin, decoded, pad=2)
    if box is None:
        return Composition(out, {"claims": 0, "separators": 0, "detached": 0}, 0)
    t, d = twin[box], decoded[box]
    kept = kept_lut[t]
    free = ~kept
    s = np.where(kept, t, d).astype(np.uint8)  # 1. kept voxels
    # 2. Claims: decoded kept labels outside the twin's kept voxels.
    claims = free & kept_lut[d]
    n_claims = int(claims.sum())
    if n_claims:
        left = _fill(s, claims, votable=free & ~claims)
        s[left] = t[left]
    background_free = not kept_lut[_BG]
    regenerated = [k for k in ONE_COMPONENT if not kept_lut[k]]
    n_sep = n_det = 0
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        # 3. Forbidden contacts, all from one snapshot, each in the box around the
        # chamber's free voxels (its hits and their neighbours lie there).
        relabelled = free & (s != d)
        sep = np.zeros(s.shape, np.uint8)
        todo = np.zeros(s.shape, bool)
        for a, b in FORBIDDEN_PAIRS:
            for x, y in ((a, b), (b, a)):
                chamber = free & (s == x)
                near_box = bounding_box(chamber, pad=1)
                if near_box is None:
                    continue
                c, sb, rb = chamber[near_box], s[near_box], relabelled[near_box]
                if kept_lut[y]:
                    # After step 2 a kept label is only on the twin's own voxels, so
                    # every y there is kept, and no relabelled voxel is y.
                    near = _dilate(sb == y)
                else:
                    near = (rb & _dilate(sb == y)) | _dilate(rb & (sb == y))
                hit = c & near
                if hit.any():
                    options = [k for k in _SEPARATORS[frozenset((x, y))] if not kept_lut[k]]
                    sep[near_box][hit] = options[0] if options else _OUT
                    todo[near_box] |= hit
        if todo.any():
            fallback = todo & (sep == _OUT)
            sep[fallback] = t[fallback]
            s[todo] = sep[todo]
            n_sep += int(todo.sum())
        # 4. Detached pieces of regenerated one-component tissues.
        dropped_any = False
        for k in regenerated:
            mask, decoded_mask = s == k, d == k
            tissue_box = bounding_box(mask | decoded_mask, pad=0)
            if tissue_box is None:
                continue
            drop = np.zeros(s.shape, bool)
            drop[tissue_box] = _detached(mask[tissue_box], decoded_mask[tissue_box])
            if not drop.any():
                continue
            dropped_any = True
            n_det += int(drop.sum())
            if background_free:
                s[drop] = _BG
            else:
                votable = free & ~drop & (s != k) & ~kept_lut[s]
                left = _fill(s, drop, votable=votable)
                s[left] = t[left]
        # A regenerated background joins no contact or component: one round settles it.
        if background_free or (not todo.any() and not dropped_any):
            break
    out[box] = s
    return Composition(out, {"claims": n_claims, "separators": n_sep, "detached": n_det}, rounds)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """The mask and its 26 neighbours (a 3×3×3 maximum, computed axis by axis)."""
    if not mask.any():
        return mask
    return ndimage.maximum_filter(mask.view(np.uint8), size=3, mode="constant") > 0


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    if not mask.any():
        return np.zeros(mask.shape, np.uint32), 0
    return cc3d.connected_components(mask, connectivity=26, return_N=True)


def _detached(mask: np.ndarray, decoded_mask: np.ndarray) -> np.ndarray:
    """Voxels of the components of ``mask`` that hold the most of no component of
    ``decoded_mask`` (both on one grid, holding all of the tissue's voxels)."""
    if not mask.any():
        return mask
    both = mask & decoded_mask
    parts, n = _components(mask)
    if n == 1 and both.any():  # the one piece holds the most of what it overlaps
        return np.zeros(mask.shape, bool)
    ref, n_ref = _components(decoded_mask)
    pairs = np.bincount(
        ref[both].astype(np.int64) * (n + 1) + parts[both], minlength=(n_ref + 1) * (n + 1)
    ).reshape(n_ref + 1, n + 1)
    survive = np.zeros(n + 1, bool)
    for j in range(1, n_ref + 1):
        row = pairs[j, 1:]
        if row.max() > 0:
            survive[1 + int(np.argmax(row))] = True
    return mask & ~survive[parts]


def _fill(s: np.ndarray, todo: np.ndarray, votable: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Give each ``todo`` voxel of ``s`` (in place) the label most frequent among its
    ``votable`` neighbours, layer by layer inward; returns the voxels none reached."""
    padded = np.full(tuple(n + 2 for n in s.shape), _OUT, np.uint8)
    inner = tuple(slice(1, -1) for _ in range(3))
    padded[inner] = np.where(votable & ~todo, s, _OUT)
    strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1])
    offsets = (
        np.array([np.dot(o, strides) for o in np.ndindex(3, 3, 3) if o != (1, 1, 1)])
        - strides.sum()
    )
    flat = padded.reshape(-1)
    pending = np.ravel_multi_index(tuple(np.argwhere(todo).T + 1), padded.shape)
    while pending.size:
        chosen = np.full(pending.size, _OUT, np.uint8)
        for c in range(0, pending.size, chunk):
            votes = flat[pending[c : c + chunk, None] + offsets[None, :]]
            counts = np.stack([(votes == k).sum(axis=1) for k in range(anatomy.NUM_LABELS)], 1)
            best = np.argmax(counts, axis=1)  # the first maximum: the lowest label
            has = counts[np.arange(len(best)), best] > 0
            chosen[c : c + chunk][has] = best[has]
        done = chosen != _OUT
        if not done.any():
            break
        flat[pending[done]] = chosen[done]  # votes from the next layer on
        pending = pending[~done]
    filled = padded[inner]
    s[todo] = np.where(filled[todo] == _OUT, s[todo], filled[todo])
    left = np.zeros(s.shape, bool)
    if pending.size:
        left[tuple(np.array(np.unravel_index(pending, padded.shape)) - 1)] = True
    return left


__all__ = [
    "FORBIDDEN_PAIRS",
    "KEEP_MODES",
    "ONE_COMPONENT",
    "Composition",
    "KeepMode",
    "compose_exact",
]
