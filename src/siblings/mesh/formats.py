"""File contents for surfaces, tetrahedral meshes and viewer scenes (bytes or text).

Writers return what a file holds; the pipelines write it (atomically, through
:mod:`siblings.io`). Formats, all in world millimetres:

- ``stl`` (binary) and ``obj``: one closed surface per tissue;
- ``vtp`` (VTK XML PolyData): one surface per tissue, and ``interfaces.vtp`` with every
  shared face once and its two labels (cell data ``labels``, 2 components);
- ``vtu`` (VTK XML UnstructuredGrid) and ``msh`` (Gmsh 2.2 ASCII): the tetrahedral mesh,
  cell data ``tissue`` (SPEC §1 value) and, in Gmsh, the physical and elementary tag;
- ``vtm`` (VTK multiblock, ParaView) naming one block per tissue, and ``mrml`` (a 3D
  Slicer scene) that loads each tissue's surface in the label colours of
  :data:`siblings.anatomy.COLOURS`.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from .. import anatomy

SURFACE_FORMATS = ("stl", "obj", "vtp")
VOLUME_FORMATS = ("vtu", "msh")
FORMATS = SURFACE_FORMATS + VOLUME_FORMATS
VTK_TETRA = 10


def stl_bytes(points: np.ndarray, triangles: np.ndarray, name: str = "surface") -> bytes:
    """Binary STL of a triangle surface (facet normals from the winding)."""
    p = np.asarray(points, dtype=np.float64)[np.asarray(triangles)]
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
    record = np.zeros(len(p), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    record["n"] = n
    record["v"] = p
    header = f"digital-siblings {name} (mm)".encode("ascii", "replace")[:80].ljust(80, b" ")
    return header + struct.pack("<I", len(p)) + record.tobytes()


def obj_text(points: np.ndarray, triangles: np.ndarray, name: str = "surface") -> str:
    """Wavefront OBJ of a triangle surface (1-based indices)."""
    lines = [f"# digital-siblings {name}, world mm", f"o {name}"]
    lines += [f"v {x:.5f} {y:.5f} {z:.5f}" for x, y, z in np.asarray(points)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(triangles)]
    return "\n".join(lines) + "\n"


def _data_array(name: str, data: np.ndarray, components: int = 1) -> str:
    kinds = {
        np.dtype("float32"): "Float32",
        np.dtype("float64"): "Float64",
        np.dtype("int32"): "Int32",
        np.dtype("int64"): "Int64",
        np.dtype("uint8"): "UInt8",
    }
    data = np.ascontiguousarray(data)
    raw = data.tobytes()
    payload = base64.b64encode(struct.pack("<Q", len(raw)) + raw).decode("ascii")
    return (
        f'<DataArray type="{kinds[data.dtype]}" Name={quoteattr(name)} '
        f'NumberOfComponents="{components}" format="binary">{payload}</DataArray>'
    )


def _vtk_file(kind: str, body: str) -> str:
    return (
        '<?xml version="1.0"?>\n'
        f'<VTKFile type="{kind}" version="1.0" byte_order="LittleEndian" '
        f'header_type="UInt64">\n<{kind}>\n{body}\n</{kind}>\n</VTKFile>\n'
    )


def vtp_text(
    points: np.ndarray,
    triangles: np.ndarray,
    cell_data: Mapping[str, np.ndarray] | None = None,
) -> str:
    """VTK XML PolyData of a triangle surface with optional cell arrays."""
    points = np.asarray(points, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.int64)
    cells = ""
    for name, values in (cell_data or {}).items():
        values = np.asarray(values)
        comps = 1 if values.ndim == 1 else values.shape[1]
        cells += _data_array(name, values, comps)
    body = (
        f'<Piece NumberOfPoints="{len(points)}" NumberOfPolys="{len(triangles)}">\n'
        f"<Points>{_data_array('Points', points, 3)}</Points>\n"
        f"<CellData>{cells}</CellData>\n"
        "<Polys>"
        + _data_array("connectivity", triangles.ravel())
        + _data_array("offsets", np.arange(3, 3 * len(triangles) + 1, 3, dtype=np.int64))
        + "</Polys>\n</Piece>"
    )
    return _vtk_file("PolyData", body)


def vtu_text(points: np.ndarray, cells: np.ndarray, tags: np.ndarray) -> str:
    """VTK XML UnstructuredGrid of linear tetrahedra with cell data ``tissue``."""
    points = np.asarray(points, dtype=np.float64)
    cells = np.asarray(cells, dtype=np.int64)
    body = (
        f'<Piece NumberOfPoints="{len(points)}" NumberOfCells="{len(cells)}">\n'
        f"<Points>{_data_array('Points', points, 3)}</Points>\n"
        f"<CellData>{_data_array('tissue', np.asarray(tags, dtype=np.int32))}</CellData>\n"
        "<Cells>"
        + _data_array("connectivity", cells.ravel())
        + _data_array("offsets", np.arange(4, 4 * len(cells) + 1, 4, dtype=np.int64))
        + _data_array("types", np.full(len(cells), VTK_TETRA, dtype=np.uint8))
        + "</Cells>\n</Piece>"
    )
    return _vtk_file("UnstructuredGrid", body)


def msh_text(points: np.ndarray, cells: np.ndarray, tags: np.ndarray) -> str:
    """Gmsh 2.2 ASCII mesh: tetrahedra (type 4) with physical = elementary = tissue tag."""
    points = np.asarray(points, dtype=np.float64)
    cells = np.asarray(cells, dtype=np.int64)
    tags = np.asarray(tags, dtype=np.int64)
    present = [int(v) for v in np.unique(tags)]
    lines = ["$MeshFormat", "2.2 0 8", "$EndMeshFormat", "$PhysicalNames", str(len(present))]
    lines += [f'3 {v} "{anatomy.LABEL_NAMES[v]}"' for v in present]
    lines += ["$EndPhysicalNames", "$Nodes", str(len(points))]
    lines += [f"{i + 1} {x:.6f} {y:.6f} {z:.6f}" for i, (x, y, z) in enumerate(points)]
    lines += ["$EndNodes", "$Elements", str(len(cells))]
    lines += [
        f"{i + 1} 4 2 {t} {t} {a + 1} {b + 1} {c + 1} {d + 1}"
        for i, ((a, b, c, d), t) in enumerate(zip(cells, tags, strict=True))
    ]
    lines += ["$EndElements"]
    return "\n".join(lines) + "\n"


def vtm_text(blocks: Sequence[tuple[str, str]]) -> str:
    """VTK multiblock (ParaView) with one named block per ``(name, relative file)``."""
    items = "\n".join(
        f"<DataSet index={quoteattr(str(i))} name={quoteattr(name)} file={quoteattr(file)}/>"
        for i, (name, file) in enumerate(blocks)
    )
    return (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="vtkMultiBlockDataSet" version="1.0" byte_order="LittleEndian">\n'
        f"<vtkMultiBlockDataSet>\n{items}\n</vtkMultiBlockDataSet>\n</VTKFile>\n"
    )


def mrml_text(models: Sequence[tuple[str, str]]) -> str:
    """A 3D Slicer scene loading each ``(tissue, relative file)`` in its label colour.

    Slicer reads model coordinates as LPS unless the file says otherwise; the surfaces
    here are RAS (NIfTI world), so each storage node says ``coordinateSystem="RAS"``.
    """
    nodes = []
    for i, (tissue, file) in enumerate(models, start=1):
        r, g, b = (c / 255.0 for c in anatomy.COLOURS[tissue])
        nodes.append(
            f'<ModelDisplay id="vtkMRMLModelDisplayNode{i}" name={quoteattr(tissue + "Display")} '
            f'color="{r:.4f} {g:.4f} {b:.4f}" opacity="1" visibility="true" '
            'scalarVisibility="false" backfaceCulling="false"></ModelDisplay>\n'
            f'<ModelStorage id="vtkMRMLModelStorageNode{i}" name={quoteattr(tissue + "Storage")} '
            f'fileName={quoteattr(file)} coordinateSystem="RAS"></ModelStorage>\n'
            f'<Model id="vtkMRMLModelNode{i}" name={quoteattr(tissue)} '
            f'displayNodeRef="vtkMRMLModelDisplayNode{i}" '
            f'storageNodeRef="vtkMRMLModelStorageNode{i}" '
            f'references="display:vtkMRMLModelDisplayNode{i};storage:vtkMRMLModelStorageNode{i};">'
            "</Model>"
        )
    return '<MRML version="Slicer4.4.0" userTags="">\n' + "\n".join(nodes) + "\n</MRML>\n"
