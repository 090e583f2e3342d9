"""Surfaces and tetrahedral meshes of label maps, in world mm (siblings.mesh, siblings export).

Known answers: an ellipsoid sampled on an oblique, anisotropic grid (analytic volume and
centre), phantom hearts (voxel volumes and centroids per tissue), two touching boxes
(their shared interface). Volume meshes need the ``mesh`` extra (TetGen; meshio to read
them back) and are skipped without it.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import trimesh

from siblings import anatomy
from siblings.data.phantom import make_phantom
from siblings.errors import InputError
from siblings.io import LabelMap, write_label_map
from siblings.mesh.formats import stl_bytes
from siblings.mesh.surfaces import (
    closed_surface_report,
    enclosed_centroid,
    enclosed_volume,
    surface_nets,
    tissue_surface,
)
from siblings.pipelines.export import export_maps


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, cy, cz = np.cos([ax, ay, az])
    sx, sy, sz = np.sin([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(spacing=(1.4, 1.0, 1.8), mirror: bool = False) -> np.ndarray:
    """Rotated about all three axes, anisotropic voxels, off-origin (optionally mirrored)."""
    a = np.eye(4)
    a[:3, :3] = _rotation(0.4, -0.3, 0.7) @ np.diag(spacing)
    if mirror:
        a[:3, 0] *= -1
    a[:3, 3] = [-20.0, 13.0, 7.5]
    return a


def world(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


# Ellipsoid in world mm: semi-axes (mm) and a frame rotated in the world; its centre is
# off the grid's centre by a fraction of a voxel.
SEMI = np.array([11.0, 8.0, 7.0])
FRAME = _rotation(0.2, 0.5, -0.3)


def ellipsoid_centre(affine: np.ndarray, shape=(32, 32, 32)) -> np.ndarray:
    return affine[:3, :3] @ (np.array(shape) / 2.0 - [0.3, 0.7, 0.45]) + affine[:3, 3]


def ellipsoid_map(affine: np.ndarray, shape=(32, 32, 32)) -> np.ndarray:
    local = (world(affine, shape) - ellipsoid_centre(affine, shape)) @ FRAME
    return (((local / SEMI) ** 2).sum(-1) <= 1.0).astype(np.uint8) * anatomy.LABELS["LV"]


def watertight(points: np.ndarray, triangles: np.ndarray) -> trimesh.Trimesh:
    mesh = trimesh.Trimesh(points, triangles, process=False)
    assert mesh.is_watertight
    assert mesh.is_winding_consistent
    return mesh


@pytest.mark.parametrize("mirror", [False, True], ids=["oblique", "oblique-mirrored"])
def test_ellipsoid_surface_is_closed_outward_with_analytic_volume_and_centre(mirror):
    affine = oblique_affine(mirror=mirror)
    lab = ellipsoid_map(affine)
    centre = ellipsoid_centre(affine)
    # The grid must hold the whole ellipsoid for the analytic answer to apply.
    assert lab[[0, -1]].sum() == lab[:, [0, -1]].sum() == lab[:, :, [0, -1]].sum() == 0
    points, triangles = tissue_surface(surface_nets(lab, affine), "LV")
    mesh = watertight(points, triangles)
    analytic = 4.0 / 3.0 * np.pi * SEMI.prod()
    voxels = lab.astype(bool).sum() * abs(np.linalg.det(affine[:3, :3]))
    volume = enclosed_volume(points, triangles)
    assert volume > 0  # normals point outwards, also through a mirroring affine
    assert mesh.volume == pytest.approx(volume)
    assert volume == pytest.approx(analytic, rel=0.03)
    assert volume == pytest.approx(voxels, rel=0.03)
    voxel_mm = min(np.linalg.norm(affine[:3, :3], axis=0))
    assert np.linalg.norm(enclosed_centroid(points, triangles) - centre) < voxel_mm


def test_smoothing_brings_the_staircase_closer_to_the_ellipsoid_without_shrinking():
    affine = oblique_affine(spacing=(1.2, 1.2, 1.2))
    lab = ellipsoid_map(affine)

    def radial_error(iterations: int) -> tuple[float, float]:
        p, t = tissue_surface(surface_nets(lab, affine, iterations=iterations), "LV")
        r = np.sqrt(((((p - ellipsoid_centre(affine)) @ FRAME) / SEMI) ** 2).sum(-1))
        return float(np.sqrt(((r - 1.0) ** 2).mean())), enclosed_volume(p, t)

    raw_error, raw_volume = radial_error(0)
    smooth_error, smooth_volume = radial_error(10)
    assert raw_volume == pytest.approx(lab.astype(bool).sum() * 1.2**3)  # the voxels' faces
    assert smooth_error < 0.6 * raw_error
    assert smooth_volume == pytest.approx(raw_volume, rel=0.02)  # Laplacian alone shrinks


@pytest.fixture(scope="module")
def oblique_phantom() -> LabelMap:
    lm, _ = make_phantom(3, size=32, seed=0)
    return LabelMap(lm.data, oblique_affine(spacing=(5.6, 4.2, 6.3)))


def test_phantom_tissue_surfaces_are_watertight_with_voxel_volumes_and_centroids(
    oblique_phantom,
):
    lm = oblique_phantom
    surface = surface_nets(lm.data, lm.affine)
    voxel_ml = lm.voxel_volume_ml
    voxel_mm = min(lm.spacing)
    assert surface.tissues == [1, 2, 3, 4, 5, 6]
    for value in surface.tissues:
        points, triangles = tissue_surface(surface, value)
        watertight(points, triangles)
        report = closed_surface_report(points, triangles)
        assert report["closed"] and report["oriented"] and report["manifold"]
        mask = lm.data == value
        assert report["volume_ml"] == pytest.approx(mask.sum() * voxel_ml, rel=0.03)
        voxel_centroid = world(lm.affine, lm.shape)[mask].mean(axis=0)
        assert np.linalg.norm(enclosed_centroid(points, triangles) - voxel_centroid) < voxel_mm


def test_touching_tissues_share_their_interface_faces_with_opposite_normals():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:5, 2:8, 2:8] = anatomy.LABELS["LV"]
    lab[5:8, 2:8, 2:8] = anatomy.LABELS["Myo"]
    surface = surface_nets(lab, np.eye(4), iterations=3)
    # 6x6 voxel faces between the boxes, two triangles each, stored once.
    assert surface.interfaces()[(2, 4)] == 72
    lv = tissue_surface(surface, "LV")
    myo = tissue_surface(surface, "Myo")

    def faces(points, triangles):
        return {tuple(np.round(points[t], 6).ravel()) for t in triangles}

    shared_lv = faces(*lv)
    # Each interface triangle of the LV is a Myo triangle run the other way.
    reversed_myo = {tuple(np.round(myo[0][t[::-1]], 6).ravel()) for t in myo[1]}
    assert len(shared_lv & reversed_myo) == 72


def test_edge_touching_voxels_of_one_tissue_still_give_a_two_manifold_surface():
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[2, 2, 2] = lab[3, 3, 2] = anatomy.LABELS["RV"]  # touch along one edge only
    surface = surface_nets(lab, np.eye(4), iterations=0)
    assert surface.interfaces() == {(0, 3): 24}  # the shared mesh: 12 voxel faces
    points, triangles = tissue_surface(surface, "RV", separation=0.0)
    mesh = watertight(points, triangles)  # the edge's vertices split per voxel
    assert mesh.body_count == 2
    assert enclosed_volume(points, triangles) == pytest.approx(2.0)


def test_stl_bytes_read_back_as_the_same_closed_surface(oblique_phantom):
    points, triangles = tissue_surface(
        surface_nets(oblique_phantom.data, oblique_phantom.affine), "LV"
    )
    import io

    mesh = trimesh.load(io.BytesIO(stl_bytes(points, triangles, "LV")), file_type="stl")
    assert len(mesh.faces) == len(triangles)
    assert mesh.volume == pytest.approx(enclosed_volume(points, triangles), rel=1e-4)


def _vtk_arrays(path) -> dict[str, np.ndarray]:
    """Decode the base64 DataArrays of one of our VTK XML files (UInt64 headers)."""
    kinds = {"Float64": "<f8", "Float32": "<f4", "Int32": "<i4", "Int64": "<i8", "UInt8": "u1"}
    out = {}
    for da in ET.parse(path).getroot().iter("DataArray"):
        raw = base64.b64decode(da.text)
        (n,) = struct.unpack("<Q", raw[:8])
        values = np.frombuffer(raw[8 : 8 + n], dtype=kinds[da.get("type")])
        comps = int(da.get("NumberOfComponents", "1"))
        out[da.get("Name")] = values.reshape(-1, comps) if comps > 1 else values
    return out


def test_export_vtp_writes_surfaces_interfaces_and_scenes(tmp_path, oblique_phantom):
    write_label_map(tmp_path / "in" / "heart.nii.gz", oblique_phantom)
    run = export_maps(tmp_path / "in", tmp_path / "out", "vtp")
    folder = tmp_path / "out" / "heart"
    record = json.loads((folder / "export.json").read_text())
    assert run["maps"]["heart"]["files"] == record["files"]
    for name in anatomy.TISSUES:
        arrays = _vtk_arrays(folder / f"{name}.vtp")
        triangles = arrays["connectivity"].reshape(-1, 3)
        watertight(arrays["Points"], triangles)
        assert record["tissues"][name]["closed"] and record["tissues"][name]["manifold"]
        assert (arrays["tissue"] == anatomy.LABELS[name]).all()
    interfaces = _vtk_arrays(folder / "interfaces.vtp")
    pairs = {tuple(sorted(p)) for p in interfaces["labels"].tolist()}
    assert (2, 4) in pairs and (0, 4) in pairs  # LV-Myo shared, LV skin
    scene = ET.parse(folder / "scene.mrml").getroot()
    colours = {m.get("name")[: -len("Display")]: m.get("color") for m in scene.iter("ModelDisplay")}
    r, g, b = anatomy.COLOURS["LV"]
    assert colours["LV"] == f"{r / 255:.4f} {g / 255:.4f} {b / 255:.4f}"
    files = [s.get("fileName") for s in scene.iter("ModelStorage")]
    assert all((folder / f).exists() for f in files) and len(files) == 6
    blocks = ET.parse(folder / "scene.vtm").getroot().iter("DataSet")
    assert {d.get("name") for d in blocks} == set(anatomy.TISSUES)


def test_export_refuses_an_unknown_format_and_a_bad_edge(tmp_path, oblique_phantom):
    write_label_map(tmp_path / "heart.nii.gz", oblique_phantom)
    with pytest.raises(InputError, match="format must be one of stl, obj, vtp, vtu, msh"):
        export_maps(tmp_path / "heart.nii.gz", tmp_path / "out", "ply")
    with pytest.raises(InputError, match="edge_mm must be a positive length"):
        export_maps(tmp_path / "heart.nii.gz", tmp_path / "out", "stl", edge_mm=0)
    assert not (tmp_path / "out").exists()


def test_volume_formats_without_the_extra_say_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tetgen(name, *args, **kwargs):
        if name == "tetgen":
            raise ImportError("No module named 'tetgen'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tetgen)
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:6, 2:6, 2:6] = 4
    write_label_map(tmp_path / "cube.nii.gz", LabelMap(lab, np.eye(4)))
    with pytest.raises(InputError, match=r"pip install digital-siblings\[mesh\]"):
        export_maps(tmp_path / "cube.nii.gz", tmp_path / "out", "vtu")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------
# Volume meshes (the ``mesh`` extra).
# --------------------------------------------------------------------------------------
def _two_tissue_map() -> LabelMap:
    """LV ellipsoid inside a Myo shell with an Ao box touching it, 16³, oblique grid."""
    affine = oblique_affine(spacing=(2.5, 2.0, 3.0))
    pts = world(affine, (16, 16, 16))
    centre = pts[8, 8, 8]
    r = np.linalg.norm((pts - centre) / [8.0, 7.0, 9.0], axis=-1)
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[r <= 1.6] = anatomy.LABELS["Myo"]
    lab[r <= 1.0] = anatomy.LABELS["LV"]
    lab[11:14, 6:10, 6:10] = anatomy.LABELS["Ao"]
    return LabelMap(lab, affine)


def _meshio_tets(meshio, path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mesh = meshio.read(path)
    tags = [
        np.asarray(d).ravel()
        for d, c in zip(mesh.cell_data[key], mesh.cells, strict=True)
        if c.type == "tetra"
    ]
    return mesh.points, mesh.get_cells_type("tetra"), np.concatenate(tags)


def _check_tagged(lm: LabelMap, points, tets, tags) -> None:
    from siblings.mesh.volume import signed_volumes

    assert set(np.unique(tags)) == {1, 2, 4}  # every tissue of the map, nothing else
    volume = signed_volumes(points, tets)
    assert (volume > 0).all()  # no inverted cell
    for value in (1, 2, 4):
        voxels = (lm.data == value).sum() * lm.voxel_volume_ml * 1000
        assert volume[tags == value].sum() == pytest.approx(voxels, rel=0.05)


def test_export_vtu_mesh_reads_back_tagged_with_voxel_volumes_and_quality(tmp_path):
    pytest.importorskip("tetgen")
    meshio = pytest.importorskip("meshio")
    lm = _two_tissue_map()
    write_label_map(tmp_path / "m.nii.gz", lm)
    export_maps(tmp_path / "m.nii.gz", tmp_path / "out", "vtu", edge_mm=4.0)
    folder = tmp_path / "out" / "m"
    points, tets, tags = _meshio_tets(meshio, folder / "mesh.vtu", "tissue")
    _check_tagged(lm, points, tets, tags)
    quality = json.loads((folder / "mesh_quality.json").read_text())
    assert quality["inverted_cells"] == 0
    assert quality["cells"] == len(tets)
    assert 0 < quality["min_dihedral_deg"]["min"] <= quality["min_dihedral_deg"]["median"]
    assert 0 < quality["radius_ratio"]["min"] <= quality["radius_ratio"]["max"] <= 1 + 1e-9
    assert quality["target_edge_mm"] == 4.0
    assert {b.get("file") for b in ET.parse(folder / "scene.vtm").getroot().iter("DataSet")} >= {
        "mesh.vtu",
        "LV.vtp",
    }


@pytest.fixture(scope="module")
def tet_mesh():
    pytest.importorskip("tetgen")
    from siblings.mesh.volume import tetrahedralize

    lm = _two_tissue_map()
    return lm, tetrahedralize(surface_nets(lm.data, lm.affine), lm.data, edge_mm=6.0)


def test_msh_reads_back_with_physical_tags_and_names(tmp_path, tet_mesh):
    meshio = pytest.importorskip("meshio")
    from siblings.mesh.formats import msh_text

    lm, mesh = tet_mesh
    (tmp_path / "m.msh").write_text(msh_text(mesh.points, mesh.cells, mesh.tags))
    points, tets, tags = _meshio_tets(meshio, tmp_path / "m.msh", "gmsh:physical")
    _check_tagged(lm, points, tets, tags)
    names = meshio.read(tmp_path / "m.msh").field_data
    assert names["LV"][0] == 4 and names["Myo"][0] == 2 and names["Ao"][0] == 1


def test_quality_of_a_regular_tetrahedron_is_ideal():
    from siblings.mesh.volume import cell_quality

    points = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
    dihedral, ratio = cell_quality(points, np.array([[0, 1, 2, 3]]))
    assert dihedral[0] == pytest.approx(np.degrees(np.arccos(1 / 3)))
    assert ratio[0] == pytest.approx(1.0)
    flat = points.copy()
    flat[3] = [0.0, 0.0, -1.0 + 1e-6]
    _, ratio = cell_quality(flat, np.array([[0, 1, 2, 3]]))
    assert ratio[0] < 1e-3


def test_finer_target_edge_gives_more_and_smaller_cells(tet_mesh):
    from siblings.mesh.volume import mesh_quality, tetrahedralize

    lm, coarse = tet_mesh
    fine = tetrahedralize(surface_nets(lm.data, lm.affine), lm.data, edge_mm=3.0)
    assert len(fine.cells) > len(coarse.cells)
    assert mesh_quality(fine)["edge_mm"]["max"] < mesh_quality(coarse)["edge_mm"]["max"]


def test_cli_export_writes_one_folder_per_map_and_words_errors_as_flags(tmp_path, capsys):
    from siblings.cli import main

    lab = np.zeros((10, 10, 10), np.uint8)
    lab[3:7, 3:7, 3:7] = anatomy.LABELS["LV"]
    for name in ("a", "b"):
        write_label_map(tmp_path / "maps" / f"{name}.nii.gz", LabelMap(lab, oblique_affine()))
    assert (
        main(["export", str(tmp_path / "maps"), "--format", "obj", "--out", str(tmp_path / "o")])
        == 0
    )
    assert "exported 2 map(s) as obj" in capsys.readouterr().out
    mesh = trimesh.load(tmp_path / "o" / "a" / "LV.obj", process=False)
    assert mesh.is_watertight and mesh.volume > 0
    assert (tmp_path / "o" / "b" / "scene.mrml").exists()
    code = main(
        [
            "export",
            str(tmp_path / "maps"),
            "--format",
            "stl",
            "--smooth",
            "-1",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 2
    assert "--smooth must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------
# --export on the commands that write maps.
# --------------------------------------------------------------------------------------
@pytest.mark.slow  # an edit run with the micro model: ~40 s on 2 shared cores
def test_edit_export_writes_each_siblings_surfaces_and_records_them_in_its_manifest(
    micro, tmp_path
):
    from siblings.cli import main
    from siblings.io import centred_affine, read_label_map

    twin, _ = make_phantom(1, size=32, seed=3)
    write_label_map(tmp_path / "twin.nii.gz", LabelMap(twin.data, centred_affine(32)))
    out = tmp_path / "sibs"
    args = [
        "edit", "perturb", tmp_path / "twin.nii.gz", "--psi", 0.5, "--n", 2, "--steps", 2,
        "--batch", 2, "--n-boot", 20, "--checkpoint", micro.checkpoint, "--device", "cpu",
        "--quiet", "--invert-steps", 0, "--export", "stl", "--out", out,
    ]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    for i in range(2):
        name = f"sibling_{i:05d}"
        manifest = json.loads((out / f"{name}.json").read_text())
        entry = manifest["mesh"]
        assert entry["format"] == "stl" and entry["folder"] == f"mesh/{name}"
        assert all((out / f).is_file() for f in entry["files"])
        lm = read_label_map(out / f"{name}.nii.gz")
        record = json.loads((out / "mesh" / name / "export.json").read_text())
        for tissue, rec in record["tissues"].items():
            mesh = trimesh.load(out / "mesh" / name / rec["file"])  # merged by position
            # The micro model's siblings are rough: a tissue may pinch along a voxel edge
            # (closed, not 2-manifold there), so manifold is not asserted here.
            assert rec["closed"] and rec["oriented"]
            voxels = (lm.data == anatomy.LABELS[tissue]).sum() * lm.voxel_volume_ml
            assert rec["voxel_volume_ml"] == pytest.approx(voxels)
            assert mesh.volume / 1000 == pytest.approx(rec["volume_ml"], rel=1e-3)
    # The report shows the twin and the siblings in 3D beside the slices.
    html = (out / "report" / "report.html").read_text()
    assert html.count('id="view3d"') == 1
    view = json.loads(re.search(r'id="view3d-data">(.*?)</script>', html, re.S).group(1))
    assert [m["title"] for m in view["maps"]] == ["twin", "sibling_00000", "sibling_00001"]


def test_edit_refuses_an_unknown_export_format_before_loading_the_model(tmp_path, capsys):
    from siblings.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(
            ["edit", "perturb", str(tmp_path / "none.nii.gz"), "--psi", "0.5", "--export", "ply",
             "--out", str(tmp_path / "o")]
        )  # fmt: skip
    assert exit_.value.code == 2
    assert "--export: invalid choice: 'ply'" in capsys.readouterr().err


@pytest.mark.slow  # sampling with the micro model: ~30 s on 2 shared cores
def test_sample_export_writes_each_samples_mesh_folder_and_records_it(micro, tmp_path):
    from siblings.cli import main

    out = tmp_path / "s"
    args = ["sample", "--n", 2, "--steps", 2, "--batch", 2, "--checkpoint", micro.checkpoint,
            "--device", "cpu", "--export", "vtp", "--out", out]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    for i in range(2):
        name = f"sample_{i:05d}"
        entry = json.loads((out / f"{name}.json").read_text())["mesh"]
        assert entry["format"] == "vtp" and entry["folder"] == f"mesh/{name}"
        assert "mesh/" + name + "/interfaces.vtp" in entry["files"]
        assert all((out / f).is_file() for f in entry["files"])


def test_augment_refuses_a_bad_export_edge_before_loading_the_model(tmp_path):
    from siblings.augment import check_settings
    from siblings.pipelines.augment import augment

    def never():
        raise AssertionError("the model must not load")

    settings = check_settings("RV_volume_ml > 1", "uncond", 1)
    with pytest.raises(InputError, match="export_edge_mm must be a positive length"):
        augment(never, tmp_path, settings, tmp_path / "o", export="stl", export_edge_mm=-1)
