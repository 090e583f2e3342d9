"""The ``repair`` pipeline: label maps in, topology-repaired maps and their records out.

:func:`repair_maps` reads one map or every map of a folder, repairs each with
:func:`siblings.repair.repair_topology` (arrays only) and writes, into a staging folder
renamed onto ``out`` when every map is done (:func:`siblings.pipelines.staging.staging`):

- ``NAME.nii.gz``: the repaired map, same grid, affine and NIfTI codes; a map that needed
  no change (or that no fix could mend) is the input file, byte for byte;
- ``NAME.json``: its record (source file and hash, the 12 checks before and after, the
  fixes, voxels changed per label, what is left unfixed and why, and the input's own
  manifest ``NAME.json`` if it had one, under ``source_manifest``);
- ``repair.json``: the cohort's figures (maps passing every check and TV% before and
  after, voxels changed, unfixed checks) and the settings.

Nothing is changed in place: ``out`` must differ from the input's folder.
:func:`repair_records` is the same repair for maps in memory (``--repair`` of ``sample``,
``edit`` and ``augment``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import anatomy
from ..errors import InputError
from ..io import (
    LabelMap,
    list_label_maps,
    read_label_map,
    sha256_file,
    stem,
    write_bytes,
    write_json,
    write_label_map,
)
from ..labels import LabelScheme, load_scheme
from ..manifest import software_versions
from ..metrics.topology import tv_percent
from ..repair import DEFAULT_MAX_GAP, TopologyRepair, check_max_gap, repair_topology
from .staging import check_output, staging

PathLike = str | os.PathLike


@dataclass
class RepairRun:
    """What :func:`repair_maps` wrote: the maps, their repairs and the cohort's summary."""

    out: Path
    maps: list[Path]
    repairs: list[TopologyRepair]
    summary: dict[str, Any]


def summarise_repairs(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Cohort figures of repairs, from their records (:meth:`TopologyRepair.record`).

    Used for ``repair.json`` and by the ``--repair`` option of ``sample``, ``edit`` and
    ``augment`` (``run.json``, ``augment.json``).
    """
    if not records:
        raise InputError("a summary of no repaired maps is undefined")
    changed = np.array([r["voxels_changed"] for r in records], dtype=float)
    fraction = np.array([r["changed_fraction_of_tissue"] for r in records], dtype=float)
    unfixed: dict[str, int] = {}
    for r in records:
        for col in r["unfixed"]:
            unfixed[col] = unfixed.get(col, 0) + 1
    return {
        "n": len(records),
        "passing_all_checks_before": sum(not r["violations_before"] for r in records),
        "passing_all_checks_after": sum(not r["violations_after"] for r in records),
        "tv_percent_before": round(tv_percent([r["checks_before"] for r in records]), 3),
        "tv_percent_after": round(tv_percent([r["checks_after"] for r in records]), 3),
        "maps_changed": int(np.count_nonzero(changed)),
        "voxels_changed_mean": round(float(changed.mean()), 3),
        "voxels_changed_max": int(changed.max()),
        "changed_fraction_of_tissue_mean": round(float(fraction.mean()), 6),
        "changed_fraction_of_tissue_max": round(float(fraction.max()), 6),
        "unfixed_checks": {c: unfixed[c] for c in anatomy.TOPOLOGY_COLUMNS if c in unfixed},
    }


def repair_records(
    maps: np.ndarray | list[np.ndarray], max_gap: int = DEFAULT_MAX_GAP
) -> tuple[np.ndarray, list[TopologyRepair]]:
    """Repair maps in memory: the repaired stack ``(n, …)`` and one repair per map."""
    repairs = [repair_topology(m, max_gap=max_gap) for m in maps]
    return np.stack([r.labels for r in repairs]), repairs


def _inputs(src: Path) -> list[Path]:
    if src.is_dir():
        return list_label_maps(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    return [src]


def _check_out(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse an output that is the input's folder (no repair in place) or in the way."""
    here = (src if src.is_dir() else src.parent).resolve()
    if out.resolve() == here:
        raise InputError(
            f"{out}: {{out}} is the folder of the input maps; repair writes a new folder "
            "and never changes a map in place",
            arguments=("out",),
        )
    check_output(out, overwrite)


def _source_manifest(path: Path) -> Any | None:
    beside = path.parent / f"{stem(path)}.json"
    if not beside.is_file():
        return None
    try:
        return json.loads(beside.read_text())
    except (OSError, ValueError):
        return None


def map_record(path: Path, rep: TopologyRepair, max_gap: int) -> dict[str, Any]:
    """``NAME.json`` of one repaired map."""
    record: dict[str, Any] = {
        "method": "topology repair",
        "source": str(path),
        "source_sha256": sha256_file(path),
        "max_gap": max_gap,
        **rep.record(),
        "software": software_versions("repair"),
    }
    manifest = _source_manifest(path)
    if manifest is not None:
        record["source_manifest"] = manifest
    return record


def repair_maps(
    src: PathLike,
    out: PathLike,
    *,
    max_gap: int = DEFAULT_MAX_GAP,
    overwrite: bool = False,
    progress: bool = True,
    labels: str | PathLike | LabelScheme | None = None,
) -> RepairRun:
    """``siblings repair``: repair one map or a folder of maps into the folder ``out``.

    Parameters
    ----------
    src : a label map (``.nii.gz``/``.nii``) or a folder of them.
    out : output folder, new or empty (unless ``overwrite``), not the input's folder.
    max_gap : longest chain a bridge or a contact closure may paint, in voxels.
    overwrite : replace a non-empty ``out``.
    progress : progress bar.
    labels : the maps' label scheme (:func:`siblings.labels.load_scheme`; default
        ``siblings``); maps in another scheme are always written in this project's labels,
        and the scheme is recorded in each map's JSON and ``repair.json``.

    Returns
    -------
    RepairRun
        The maps written, each map's repair and the summary written to ``repair.json``.
    """
    from tqdm.auto import tqdm

    src, out = Path(src), Path(out)
    check_max_gap(max_gap)
    scheme = load_scheme(labels)
    paths = _inputs(src)
    _check_out(src, out, overwrite)
    t0 = time.perf_counter()
    written: list[Path] = []
    repairs: list[TopologyRepair] = []
    with staging(out) as stage:
        for path in tqdm(paths, desc="repair", unit="map", disable=not progress):
            lm = read_label_map(path, labels=scheme)
            rep = repair_topology(lm.data, max_gap=max_gap)
            target = stage / path.name
            if rep.changed or not scheme.is_identity:
                write_label_map(target, LabelMap(rep.labels, lm.affine, xform_codes=lm.xform_codes))
            else:
                write_bytes(target, path.read_bytes())
            write_json(
                stage / f"{stem(path)}.json",
                {**map_record(path, rep, max_gap), "labels": scheme.record()},
            )
            written.append(out / path.name)
            repairs.append(rep)
        seconds = time.perf_counter() - t0
        summary = {
            "source": str(src),
            "max_gap": max_gap,
            "labels": scheme.record(),
            **summarise_repairs([r.record() for r in repairs]),
            "seconds": round(seconds, 2),
            "seconds_per_map": round(seconds / len(paths), 4),
            "maps": [
                {
                    "file": p.name,
                    "voxels_changed": r.voxels_changed,
                    "violations_before": [c for c, v in r.before.items() if v],
                    "violations_after": [c for c, v in r.after.items() if v],
                }
                for p, r in zip(written, repairs, strict=True)
            ],
            "software": software_versions("repair"),
        }
        write_json(stage / "repair.json", summary)
    return RepairRun(out=out, maps=written, repairs=repairs, summary=summary)


def format_repair(run: RepairRun) -> str:
    """The lines ``siblings repair`` prints."""
    s = run.summary
    lines = [
        f"repaired {s['n']} map{'s' if s['n'] != 1 else ''} into {run.out}",
        f"  passing all 12 checks: {s['passing_all_checks_before']}/{s['n']} before, "
        f"{s['passing_all_checks_after']}/{s['n']} after "
        f"(TV {s['tv_percent_before']:.1f}% -> {s['tv_percent_after']:.1f}%)",
        f"  voxels changed: mean {s['voxels_changed_mean']:.1f}, max {s['voxels_changed_max']} "
        f"(at most {100 * s['changed_fraction_of_tissue_max']:.2f}% of a map's tissue); "
        f"{s['maps_changed']} map{'s' if s['maps_changed'] != 1 else ''} changed",
    ]
    if s["unfixed_checks"]:
        left = ", ".join(f"{c} ({k})" for c, k in s["unfixed_checks"].items())
        lines.append(f"  left unfixed (reasons in each NAME.json): {left}")
    return "\n".join(lines)
