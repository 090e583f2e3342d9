"""``siblings export``: label maps to surfaces, tagged tetrahedral meshes and viewer scenes.

Per map ``NAME.nii.gz`` a folder ``OUT/NAME/`` (world mm, from the NIfTI affine):

- ``stl``/``obj``/``vtp``: ``<tissue>.<format>``, one closed outward surface per tissue
  present; ``vtp`` adds ``interfaces.vtp`` (each shared face once, cell data ``labels``);
- ``vtu``/``msh``: ``mesh.<format>`` (tetrahedra, cell data ``tissue``),
  ``mesh_quality.json`` (dihedral angles, radius ratios, edge lengths, volumes per tag),
  and the tissue surfaces as ``<tissue>.vtp``;
- ``scene.mrml`` (3D Slicer: every tissue surface in its label colour) and, where the
  surfaces are VTK files, ``scene.vtm`` (ParaView: one named block per tissue);
- ``export.json``: what was written, with the checks of every surface (closed,
  consistently oriented, enclosed volume against the voxel volume) and timings.

A whole export goes through a staging folder (nothing half-written at ``OUT``). The
edit, sample and augment pipelines call :func:`export_into` on their own staging folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import anatomy
from ..errors import InputError, OutputExistsError
from ..io import (
    LabelMap,
    PathLike,
    list_label_maps,
    read_json,
    read_label_map,
    sha256_file,
    stem,
    write_bytes,
    write_json,
    write_text,
)
from ..labels import LabelScheme, load_scheme
from ..mesh import formats
from ..mesh.surfaces import DEFAULT_ITERATIONS, closed_surface_report, surface_nets, tissue_surface
from ..mesh.volume import DEFAULT_EDGE_MM, check_edge, mesh_quality, tetrahedralize
from .staging import staging

FORMATS = formats.FORMATS


def check_format(fmt: str, argument: str = "format") -> str:
    """``fmt`` lower-cased if it is one of :data:`FORMATS` (an :class:`InputError` otherwise)."""
    value = str(fmt).strip().lower().lstrip(".")
    if value not in FORMATS:
        raise InputError(
            "{" + argument + "} must be one of " + ", ".join(FORMATS) + f", got {fmt!r}",
            arguments=(argument,),
        )
    if value in formats.VOLUME_FORMATS:
        from ..mesh.volume import _tetgen

        _tetgen()  # refuse before any work when the extra is missing
    return value


def export_map(
    lm: LabelMap,
    folder: Path,
    fmt: str,
    *,
    edge_mm: float = DEFAULT_EDGE_MM,
    iterations: int = DEFAULT_ITERATIONS,
    source: Path | None = None,
) -> dict:
    """Write one map's surfaces (and mesh) into ``folder``; return its record.

    Parameters
    ----------
    lm : the label map (its affine gives world mm).
    folder : an existing folder to write into (a staging folder).
    fmt : one of :data:`FORMATS`.
    edge_mm : target tetrahedron edge length in mm (volume formats).
    iterations : Taubin smoothing passes (0: the raw voxel-faithful surface).
    source : the map's file, recorded with its hash.
    """
    fmt = fmt.lower()
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    surface = surface_nets(lm.data, lm.affine, iterations=iterations)
    surface_s = time.perf_counter() - t0
    voxel_ml = lm.voxel_volume_ml
    surface_fmt = fmt if fmt in formats.SURFACE_FORMATS else "vtp"
    files: list[str] = []
    tissues: dict[str, dict] = {}
    for value in surface.tissues:
        name = anatomy.LABEL_NAMES[value]
        points, triangles = tissue_surface(surface, value)
        file = f"{name}.{surface_fmt}"
        if surface_fmt == "stl":
            write_bytes(folder / file, formats.stl_bytes(points, triangles, name))
        elif surface_fmt == "obj":
            write_text(folder / file, formats.obj_text(points, triangles, name))
        else:
            label = np.full(len(triangles), value, dtype=np.int32)
            write_text(folder / file, formats.vtp_text(points, triangles, {"tissue": label}))
        files.append(file)
        report = closed_surface_report(points, triangles)
        report["voxel_volume_ml"] = float((lm.data == value).sum() * voxel_ml)
        report["file"] = file
        tissues[name] = report
    if fmt == "vtp":
        write_text(
            folder / "interfaces.vtp",
            formats.vtp_text(
                surface.points, surface.triangles, {"labels": surface.labels.astype(np.int32)}
            ),
        )
        files.append("interfaces.vtp")
    record: dict = {
        "format": fmt,
        "units": "mm (world, from the NIfTI affine)",
        "smoothing": {"method": "taubin", "iterations": int(iterations)},
        "surface_seconds": round(surface_s, 3),
        "tissues": tissues,
    }
    if source is not None:
        record["source"] = str(source)
        record["source_sha256"] = sha256_file(source)
    if fmt in formats.VOLUME_FORMATS:
        t0 = time.perf_counter()
        mesh = tetrahedralize(surface, lm.data, edge_mm=edge_mm)
        record["mesh_seconds"] = round(time.perf_counter() - t0, 3)
        file = f"mesh.{fmt}"
        if fmt == "vtu":
            write_text(folder / file, formats.vtu_text(mesh.points, mesh.cells, mesh.tags))
        else:
            write_text(folder / file, formats.msh_text(mesh.points, mesh.cells, mesh.tags))
        quality = mesh_quality(mesh)
        quality["voxel_volume_ml"] = {
            anatomy.LABEL_NAMES[v]: float((lm.data == v).sum() * voxel_ml) for v in surface.tissues
        }
        write_json(folder / "mesh_quality.json", quality)
        files += [file, "mesh_quality.json"]
        record["mesh"] = {"file": file, "quality": "mesh_quality.json", "edge_mm": mesh.edge_mm}
    models = [(name, t["file"]) for name, t in tissues.items()]
    write_text(folder / "scene.mrml", formats.mrml_text(models))
    files.append("scene.mrml")
    if surface_fmt == "vtp":
        blocks = list(models)
        if fmt == "vtu":
            blocks.append(("mesh", "mesh.vtu"))
        write_text(folder / "scene.vtm", formats.vtm_text(blocks))
        files.append("scene.vtm")
    record["files"] = [*files, "export.json"]
    write_json(folder / "export.json", record)
    return record


def _sources(source: PathLike) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        return list_label_maps(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    return [path]


def export_maps(
    source: PathLike,
    out: PathLike,
    fmt: str,
    *,
    edge_mm: float = DEFAULT_EDGE_MM,
    iterations: int = DEFAULT_ITERATIONS,
    overwrite: bool = False,
    labels: str | PathLike | LabelScheme | None = None,
) -> dict:
    """Export a label map or a folder of them into ``out`` (one folder per map).

    Parameters
    ----------
    source : a ``.nii.gz`` label map or a folder of them.
    out : output folder; refused if it exists unless ``overwrite``.
    fmt : ``stl``, ``obj``, ``vtp``, ``vtu`` or ``msh``.
    edge_mm : target edge length of the tetrahedra in mm (``vtu``, ``msh``).
    iterations : Taubin smoothing passes.
    overwrite : replace an existing ``out``.
    labels : the maps' label scheme (:func:`siblings.labels.load_scheme`; default
        ``siblings``), recorded in ``export.json``.

    Returns
    -------
    dict
        The run's record (also ``out/export.json``): per map its folder and record.
    """
    fmt = check_format(fmt)
    edge = check_edge(edge_mm)
    if int(iterations) < 0:
        raise InputError(
            "{iterations} must be 0 or more, got " + str(iterations), arguments=("iterations",)
        )
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"{out} exists; choose another {{out}} or pass {{overwrite}}",
            arguments=("out", "overwrite"),
        )
    scheme = load_scheme(labels)
    paths = _sources(source)
    maps = [read_label_map(p, labels=scheme) for p in paths]
    names = [stem(p) for p in paths]
    if len(set(names)) != len(names):
        raise InputError(f"{source}: two maps share a name")
    started = time.perf_counter()
    with staging(out) as stage:
        records = {}
        for path, lm, name in zip(paths, maps, names, strict=True):
            records[name] = export_map(
                lm, stage / name, fmt, edge_mm=edge, iterations=int(iterations), source=path
            )
        run = {
            "format": fmt,
            "edge_mm": edge,
            "iterations": int(iterations),
            "n": len(records),
            "labels": scheme.record(),
            "seconds": round(time.perf_counter() - started, 3),
            "maps": {name: {"folder": name, **rec} for name, rec in records.items()},
        }
        write_json(stage / "export.json", run)
    return run


def export_into(
    stage: Path,
    maps: Sequence[Path],
    fmt: str,
    *,
    edge_mm: float = DEFAULT_EDGE_MM,
    iterations: int = DEFAULT_ITERATIONS,
    folder: str = "mesh",
) -> dict[str, dict]:
    """Export maps already written under ``stage`` and record the files in their manifests.

    Each map ``stage/…/NAME.nii.gz`` goes to ``stage/folder/NAME/``; its manifest
    ``NAME.json`` beside it (if any) gains ``"mesh"``: the format, the folder relative to
    ``stage`` and the files. For the ``--export`` option of edit, sample and augment.
    """
    fmt = fmt.lower()
    records = {}
    for path in maps:
        name = stem(path)
        target = stage / folder / name
        rec = export_map(read_label_map(path), target, fmt, edge_mm=edge_mm, iterations=iterations)
        entry = {
            "format": fmt,
            "folder": f"{folder}/{name}",
            "files": [f"{folder}/{name}/{f}" for f in rec["files"]],
        }
        if "mesh" in rec:
            entry["edge_mm"] = rec["mesh"]["edge_mm"]
        manifest = path.parent / f"{name}.json"
        if manifest.exists():
            data = read_json(manifest)
            data["mesh"] = entry
            write_json(manifest, data)
        records[name] = entry
    return records
