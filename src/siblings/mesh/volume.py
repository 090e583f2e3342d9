"""A conforming tetrahedral mesh of a whole heart with one tissue tag per cell.

The multi-label surface (:func:`siblings.mesh.surfaces.surface_nets`: each interface
once, shared by the two tissues it separates) is the piecewise-linear complex that TetGen
fills with tetrahedra (Si 2015, ``-pq…aA``): no tetrahedron crosses a surface face, so
tissues meet on shared faces and the mesh conforms across interfaces. TetGen numbers the
regions the surface encloses (``-A``); each region is tagged with the tissue (SPEC §1
label value) that holds most of its cells' centroids on the voxel grid.

A target edge length h in mm bounds every cell's volume by that of the regular
tetrahedron of edge h (h³ / 6√2); the surface keeps the resolution of the voxel grid (its
triangles are never coarsened, only split when quality asks for it). Quality: the
minimum dihedral angle and the radius ratio (3 r_in / r_circ, 1 for the regular
tetrahedron, 0 for a flat one) of every cell, summarised by :func:`mesh_quality`.

TetGen comes with the optional extra: ``pip install digital-siblings[mesh]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import anatomy
from ..errors import InputError
from .surfaces import LabelSurface

EXTRA_HINT = "pip install digital-siblings[mesh]"
DEFAULT_EDGE_MM = 2.0
# TetGen's quality bounds: radius-edge ratio (-q) and minimum dihedral angle in degrees.
MIN_RATIO = 1.5
MIN_DIHEDRAL_DEG = 10.0


@dataclass
class TetMesh:
    """Tetrahedra in world mm with a tissue tag per cell.

    Attributes
    ----------
    points : (n, 3) float64, world mm.
    cells : (m, 4) int64 vertex indices, positively oriented (signed volume > 0).
    tags : (m,) int64 tissue label value of each cell (SPEC §1).
    edge_mm : the target edge length the mesh was made with.
    """

    points: np.ndarray
    cells: np.ndarray
    tags: np.ndarray
    edge_mm: float

    def tag_volumes_ml(self) -> dict[str, float]:
        """Volume in mL of the cells of each tissue present."""
        vol = signed_volumes(self.points, self.cells)
        out = {}
        for value in np.unique(self.tags):
            out[anatomy.LABEL_NAMES[int(value)]] = float(vol[self.tags == value].sum() / 1000)
        return out


def _tetgen():
    try:
        import tetgen
    except ImportError as err:
        raise InputError(f"volume meshes (vtu, msh) need TetGen: {EXTRA_HINT}") from err
    return tetgen


def check_edge(edge_mm: float, argument: str = "edge_mm") -> float:
    """``edge_mm`` as a positive float (an :class:`InputError` naming ``argument`` otherwise)."""
    edge = float(edge_mm)
    if not np.isfinite(edge) or edge <= 0:
        raise InputError(
            "{" + argument + "} must be a positive length in mm, got " + repr(edge_mm),
            arguments=(argument,),
        )
    return edge


def tetrahedralize(
    surface: LabelSurface,
    labels: np.ndarray,
    *,
    edge_mm: float = DEFAULT_EDGE_MM,
    min_ratio: float = MIN_RATIO,
    min_dihedral_deg: float = MIN_DIHEDRAL_DEG,
) -> TetMesh:
    """Fill the multi-label surface with tetrahedra tagged by tissue.

    Parameters
    ----------
    surface : the map's multi-label surface (world mm).
    labels : the label map it was made from (for the tags), on ``surface.affine``'s grid.
    edge_mm : target edge length in mm (bounds the cell volume to h³/6√2).
    min_ratio, min_dihedral_deg : TetGen's quality bounds (radius-edge ratio, degrees).

    Returns
    -------
    TetMesh

    Raises
    ------
    InputError
        TetGen is not installed, the map holds no tissue, or TetGen cannot mesh the
        surface (it then says why).
    """
    edge = check_edge(edge_mm)
    if not len(surface.triangles):
        raise InputError("the map holds no tissue: nothing to mesh")
    tetgen = _tetgen()
    used = np.unique(surface.triangles)
    remap = np.full(len(surface.points), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    gen = tetgen.TetGen(
        surface.points[used].astype(np.float64), remap[surface.triangles].astype(np.int32)
    )
    try:
        nodes, elems, attrib, _ = gen.tetrahedralize(
            plc=True,
            quality=True,
            minratio=float(min_ratio),
            mindihedral=float(min_dihedral_deg),
            fixedvolume=True,
            maxvolume=edge**3 / (6.0 * np.sqrt(2.0)),
            regionattrib=True,
            quiet=True,
        )
    except RuntimeError as err:
        raise InputError(f"TetGen could not mesh the surface: {err}") from err
    points = np.asarray(nodes, dtype=np.float64)
    cells = np.asarray(elems, dtype=np.int64)[:, :4]
    region = np.asarray(attrib).reshape(-1).astype(np.int64)
    vol = signed_volumes(points, cells)
    flip = vol < 0
    cells[flip] = cells[flip][:, [0, 2, 1, 3]]
    tags = _region_tags(points, cells, region, np.asarray(labels), surface.affine)
    keep = tags != 0  # regions of background enclosed by tissue (e.g. a hole) are dropped
    return TetMesh(points, cells[keep], tags[keep], edge)


def _region_tags(
    points: np.ndarray,
    cells: np.ndarray,
    region: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
) -> np.ndarray:
    """The majority voxel label at the centroids of each region's cells."""
    centroids = points[cells].mean(axis=1)
    index = (centroids - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    ijk = np.clip(np.rint(index).astype(np.int64), 0, np.array(labels.shape) - 1)
    at = labels[tuple(ijk.T)].astype(np.int64)
    regions, inverse = np.unique(region, return_inverse=True)
    votes = np.zeros((len(regions), anatomy.NUM_LABELS), dtype=np.int64)
    np.add.at(votes, (inverse, at), 1)
    return np.argmax(votes, axis=1)[inverse]


def signed_volumes(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Signed volume of each tetrahedron (mm³; > 0 when positively oriented)."""
    p = points[cells]
    return (
        np.einsum("ij,ij->i", np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), p[:, 3] - p[:, 0])
        / 6.0
    )


def cell_quality(points: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum dihedral angle (degrees) and radius ratio 3·r_in/r_circ of each cell."""
    p = points[cells].astype(np.float64)  # (m, 4, 3)
    faces = ((1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 1, 2))
    normals = []
    areas = []
    for f in faces:
        n = np.cross(p[:, f[1]] - p[:, f[0]], p[:, f[2]] - p[:, f[0]])
        # Point the normal away from the opposite vertex (outward).
        opposite = p[:, ({0, 1, 2, 3} - set(f)).pop()]
        s = np.sign(np.einsum("ij,ij->i", n, p[:, f[0]] - opposite))
        normals.append(n * s[:, None])
        areas.append(np.linalg.norm(n, axis=1) / 2.0)
    unit = [n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300) for n in normals]
    angles = []
    for i in range(4):
        for j in range(i + 1, 4):
            cos = np.clip(-np.einsum("ij,ij->i", unit[i], unit[j]), -1.0, 1.0)
            angles.append(np.degrees(np.arccos(cos)))
    min_dihedral = np.min(np.stack(angles, axis=1), axis=1)

    volume = np.abs(signed_volumes(points, cells))
    r_in = 3.0 * volume / np.maximum(np.sum(areas, axis=0), 1e-300)
    # Circumradius: |a|²(b×c) + |b|²(c×a) + |c|²(a×b) over 12 V, edges from vertex 0.
    a, b, c = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]
    num = (
        np.sum(a * a, axis=1)[:, None] * np.cross(b, c)
        + np.sum(b * b, axis=1)[:, None] * np.cross(c, a)
        + np.sum(c * c, axis=1)[:, None] * np.cross(a, b)
    )
    r_circ = np.linalg.norm(num, axis=1) / np.maximum(12.0 * volume, 1e-300)
    return min_dihedral, 3.0 * r_in / np.maximum(r_circ, 1e-300)


def mesh_quality(mesh: TetMesh) -> dict:
    """Quality figures of a mesh: cell counts, dihedral angles, radius ratios, edges, tags."""
    dihedral, ratio = cell_quality(mesh.points, mesh.cells)
    vol = signed_volumes(mesh.points, mesh.cells)
    edges = np.concatenate([mesh.cells[:, [i, j]] for i in range(4) for j in range(i + 1, 4)])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    length = np.linalg.norm(mesh.points[edges[:, 0]] - mesh.points[edges[:, 1]], axis=1)

    def summary(x: np.ndarray) -> dict[str, float]:
        return {
            "min": float(x.min()),
            "p1": float(np.percentile(x, 1)),
            "p5": float(np.percentile(x, 5)),
            "median": float(np.median(x)),
            "max": float(x.max()),
        }

    return {
        "points": len(mesh.points),
        "cells": len(mesh.cells),
        "inverted_cells": int((vol <= 0).sum()),
        "target_edge_mm": mesh.edge_mm,
        "edge_mm": summary(length),
        "min_dihedral_deg": summary(dihedral),
        "radius_ratio": summary(ratio),
        "cells_per_tissue": {
            anatomy.LABEL_NAMES[int(v)]: int((mesh.tags == v).sum()) for v in np.unique(mesh.tags)
        },
        "volume_ml": mesh.tag_volumes_ml(),
    }
