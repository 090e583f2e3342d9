"""Simulation-ready figures of a folder of label maps: repair, surfaces and a tetrahedral mesh.

For a folder of maps (a sampled cohort, a sibling run) this runs the project's own
pipelines, in order, and prints what issue 16 item 6 asks for:

1. ``siblings repair`` (:func:`siblings.pipelines.repair.repair_maps`) on every map into
   ``OUT/repaired``: TV% (SPEC §5, :func:`siblings.metrics.topology.tv_percent`) before
   and after, maps passing all 12 checks, voxels changed per tissue (lost/gained, mean and
   max per map, and as a share of that tissue's voxels), the checks left unfixed and their
   reasons; seconds per map of :func:`siblings.repair.repair_topology` alone (timed again
   per map in memory, for the spread) and of the whole pipeline (reading and writing);
2. ``siblings export --format stl`` (:func:`siblings.pipelines.export.export_maps`) on
   every repaired map into ``OUT/stl``: seconds per map (surface nets + smoothing, and the
   whole export), closed and 2-manifold surfaces, the enclosed volume per tissue against
   its voxel volume;
3. ``siblings export --format vtu --edge-mm EDGE`` on ``--mesh-n`` repaired maps drawn at
   random with ``--mesh-seed`` (all maps with ``--mesh-n 0``) into ``OUT/vtu``, one export
   per map: CPU and wall seconds per map (median and range; TetGen's share from
   ``export.json``), cells, inverted cells, minimum dihedral angle and radius ratio (min,
   p1, median), and per-tag volume against the voxel volume.

CPU seconds (``time.process_time``) are given beside wall seconds: on a shared machine
the wall time mostly measures the other jobs. ``--stages`` runs a subset (later stages
read ``OUT/repaired``); every figure goes to ``OUT/simready.json`` as it is made. Large
files stay in ``OUT``; point it outside the repository.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_simready.py \\
        /root/siblings_train/experiments_v2/unconditional/synthetic --out /tmp/simready_uncond
    python benchmarks/bench_simready.py demo_out/perturb_psi0.5 --out /tmp/sr --mesh-n 0
    python benchmarks/bench_simready.py maps --out /tmp/sr --stages repair,surfaces
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from siblings import anatomy
from siblings.io import list_label_maps, read_label_map, stem
from siblings.metrics.topology import tv_percent
from siblings.pipelines.export import export_maps
from siblings.pipelines.repair import repair_maps
from siblings.repair import DEFAULT_MAX_GAP, repair_topology

TISSUES = [n for n in anatomy.LABEL_NAMES if n != "background"]


def _spread(x: list[float] | np.ndarray) -> str:
    a = np.asarray(x, dtype=float)
    return f"median {np.median(a):.2f}, min {a.min():.2f}, max {a.max():.2f}"


def repair_figures(src: Path, out: Path, max_gap: int) -> tuple[dict, list[Path]]:
    """Repair every map with the pipeline; per-tissue changes and in-memory timings."""
    paths = list_label_maps(src)
    t0, c0 = time.perf_counter(), time.process_time()
    run = repair_maps(src, out, max_gap=max_gap, overwrite=True, progress=False)
    pipeline_s, pipeline_cpu = time.perf_counter() - t0, time.process_time() - c0
    # Time the repair alone per map (the same function the pipeline calls), for the spread.
    wall, cpu, tissue_counts = [], [], []
    for path in paths:
        data = read_label_map(path).data
        tissue_counts.append(np.bincount(data.ravel(), minlength=anatomy.NUM_LABELS))
        w0, c0 = time.perf_counter(), time.process_time()
        repair_topology(data, max_gap=max_gap)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    records = [r.record() for r in run.repairs]
    per_tissue = {}
    for t in TISSUES:
        v = anatomy.LABELS[t]
        lost = np.array([r["changes_per_label"][t]["lost"] for r in records], dtype=float)
        gained = np.array([r["changes_per_label"][t]["gained"] for r in records], dtype=float)
        count = np.array([c[v] for c in tissue_counts], dtype=float)
        share = (lost + gained) / np.maximum(count, 1)
        per_tissue[t] = {
            "lost_mean": float(lost.mean()),
            "lost_max": int(lost.max()),
            "gained_mean": float(gained.mean()),
            "gained_max": int(gained.max()),
            "share_of_tissue_mean": float(share.mean()),
            "share_of_tissue_max": float(share.max()),
        }
    background = {
        "lost_mean": float(
            np.mean([r["changes_per_label"]["background"]["lost"] for r in records])
        ),
        "gained_mean": float(
            np.mean([r["changes_per_label"]["background"]["gained"] for r in records])
        ),
    }
    reasons: dict[str, dict[str, int]] = {}
    for r in records:
        for col, why in r["unfixed"].items():
            reasons.setdefault(col, {})
            reasons[col][why] = reasons[col].get(why, 0) + 1
    before_rates = {
        c: sum(r["checks_before"][c] for r in records) for c in anatomy.TOPOLOGY_COLUMNS
    }
    after_rates = {c: sum(r["checks_after"][c] for r in records) for c in anatomy.TOPOLOGY_COLUMNS}
    figures = {
        "n": len(records),
        "tv_percent_before": tv_percent([r["checks_before"] for r in records]),
        "tv_percent_after": tv_percent([r["checks_after"] for r in records]),
        "passing_before": sum(not r["violations_before"] for r in records),
        "passing_after": sum(not r["violations_after"] for r in records),
        "maps_changed": sum(r["changed"] for r in records),
        "voxels_changed_mean": float(np.mean([r["voxels_changed"] for r in records])),
        "voxels_changed_max": int(max(r["voxels_changed"] for r in records)),
        "changed_fraction_of_tissue_max": float(
            max(r["changed_fraction_of_tissue"] for r in records)
        ),
        "per_tissue": per_tissue,
        "background": background,
        "violations_before": {c: k for c, k in before_rates.items() if k},
        "violations_after": {c: k for c, k in after_rates.items() if k},
        "unfixed_reasons": reasons,
        "repair_wall_s": wall,
        "repair_cpu_s": cpu,
        "pipeline_s_per_map": pipeline_s / len(records),
        "pipeline_cpu_s_per_map": pipeline_cpu / len(records),
    }
    return figures, list(run.maps)


def surface_figures(run: dict, cpu_s: float) -> dict:
    """Closedness, manifoldness, volume error and seconds from an export run's record."""
    maps = run["maps"]
    errors = {t: [] for t in TISSUES}
    closed = manifold = 0
    for rec in maps.values():
        tissues = rec["tissues"]
        closed += all(t["closed"] for t in tissues.values())
        manifold += all(t["manifold"] for t in tissues.values())
        for name, t in tissues.items():
            errors[name].append(100 * (t["volume_ml"] / t["voxel_volume_ml"] - 1))
    return {
        "n": len(maps),
        "surface_s": [rec["surface_seconds"] for rec in maps.values()],
        "export_s_per_map": run["seconds"] / len(maps),
        "export_cpu_s_per_map": cpu_s / len(maps),
        "all_closed_maps": closed,
        "all_manifold_maps": manifold,
        "volume_error_pct": {t: e for t, e in errors.items() if e},
    }


def mesh_figures(runs: dict[str, tuple[dict, float, float]], folder: Path) -> dict:
    """TetGen seconds, quality and per-tag volume error of one vtu export run per map."""
    out: dict = {"n": len(runs), "maps": {}}
    for name, (run, wall, cpu) in runs.items():
        rec = run["maps"][name]
        q = json.loads((folder / name / name / "mesh_quality.json").read_text())
        vol_err = {
            t: 100 * (q["volume_ml"].get(t, 0.0) / v - 1) for t, v in q["voxel_volume_ml"].items()
        }
        out["maps"][name] = {
            "mesh_s": rec["mesh_seconds"],
            "export_s": wall,
            "export_cpu_s": cpu,
            "cells": q["cells"],
            "points": q["points"],
            "inverted": q["inverted_cells"],
            "edge_median_mm": q["edge_mm"]["median"],
            "dihedral": q["min_dihedral_deg"],
            "radius_ratio": q["radius_ratio"],
            "volume_error_pct": vol_err,
        }
    return out


def print_report(what: str, rep: dict, surf: dict | None, mesh: dict | None, edge: float) -> None:
    n = rep["n"]
    print(f"## {what}: {n} maps")
    print(
        f"repair: passing all 12 checks {rep['passing_before']}/{n} before, "
        f"{rep['passing_after']}/{n} after ({100 * rep['passing_after'] / n:.1f}%); TV% "
        f"{rep['tv_percent_before']:.3f} -> {rep['tv_percent_after']:.3f}; "
        f"{rep['maps_changed']} maps changed"
    )
    print(f"  violations before: {rep['violations_before'] or 'none'}")
    print(f"  violations after:  {rep['violations_after'] or 'none'}")
    print(
        f"  voxels changed per map: mean {rep['voxels_changed_mean']:.2f}, max "
        f"{rep['voxels_changed_max']} (max {100 * rep['changed_fraction_of_tissue_max']:.3f}% "
        "of a map's tissue voxels)"
    )
    print("  | tissue | lost mean / max | gained mean / max | share of tissue mean / max |")
    print("  |---|---|---|---|")
    for t, f in rep["per_tissue"].items():
        print(
            f"  | {t} | {f['lost_mean']:.2f} / {f['lost_max']} | {f['gained_mean']:.2f} / "
            f"{f['gained_max']} | {100 * f['share_of_tissue_mean']:.4f}% / "
            f"{100 * f['share_of_tissue_max']:.3f}% |"
        )
    b = rep["background"]
    print(f"  background: lost mean {b['lost_mean']:.2f}, gained mean {b['gained_mean']:.2f}")
    if rep["unfixed_reasons"]:
        print("  left unfixed:")
        for col, reasons in rep["unfixed_reasons"].items():
            for why, k in sorted(reasons.items(), key=lambda kv: -kv[1]):
                print(f"    {col} x{k}: {why}")
    else:
        print("  left unfixed: none")
    print(
        f"  repair_topology per map: CPU {_spread(rep['repair_cpu_s'])} s; wall "
        f"{_spread(rep['repair_wall_s'])} s; siblings repair (read + repair + write) "
        f"{rep['pipeline_s_per_map']:.3f} s wall, {rep['pipeline_cpu_s_per_map']:.3f} s CPU per map"
    )
    if surf is None:
        return
    errs = surf["volume_error_pct"]
    worst = max(max(abs(e) for e in v) for v in errs.values())
    print(
        f"surfaces (stl): surface nets + Taubin {_spread(surf['surface_s'])} s per map; whole "
        f"export {surf['export_s_per_map']:.2f} s wall, {surf['export_cpu_s_per_map']:.2f} s CPU "
        f"per map; all tissues closed in "
        f"{surf['all_closed_maps']}/{surf['n']} maps, 2-manifold in "
        f"{surf['all_manifold_maps']}/{surf['n']}; volume vs voxels: worst {worst:.2f}%, "
        + ", ".join(f"{t} {np.mean(np.abs(e)):.2f}" for t, e in errs.items())
        + " (mean |error| %)"
    )
    if mesh is None:
        return
    m = list(mesh["maps"].values())
    print(
        f"tetrahedral mesh (vtu, {edge} mm), {mesh['n']} maps: whole export CPU "
        f"{_spread([x['export_cpu_s'] for x in m])} s per map; wall "
        f"{_spread([x['export_s'] for x in m])} s, of which TetGen "
        f"{_spread([x['mesh_s'] for x in m])} s"
    )
    print(
        f"  cells {_spread([x['cells'] / 1e3 for x in m])} thousand; inverted "
        f"{sum(x['inverted'] for x in m)}; edge median {_spread([x['edge_median_mm'] for x in m])} mm"
    )
    for key, label, fmt in (
        ("dihedral", "min dihedral (deg)", ".1f"),
        ("radius_ratio", "radius ratio", ".3f"),
    ):
        lo = min(x[key]["min"] for x in m)
        p1 = [x[key]["p1"] for x in m]
        med = [x[key]["median"] for x in m]
        print(
            f"  {label}: worst cell {lo:{fmt}}; p1 {min(p1):{fmt}}-{max(p1):{fmt}}; "
            f"median {min(med):{fmt}}-{max(med):{fmt}} (range over maps)"
        )
    worst_tag = max(max(abs(e) for e in x["volume_error_pct"].values()) for x in m)
    per_tag = {
        t: max(abs(x["volume_error_pct"].get(t, 0.0)) for x in m) for t in m[0]["volume_error_pct"]
    }
    print(
        f"  per-tag volume vs voxels: worst {worst_tag:.2f}%; per tag max |error| "
        + ", ".join(f"{t} {e:.2f}%" for t, e in per_tag.items())
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a folder of *.nii.gz label maps")
    ap.add_argument("--out", type=Path, required=True, help="output folder (outside the repo)")
    ap.add_argument("--max-gap", type=int, default=DEFAULT_MAX_GAP)
    ap.add_argument("--edge-mm", type=float, default=2.0)
    ap.add_argument("--mesh-n", type=int, default=16, help="maps to mesh (0: all)")
    ap.add_argument("--mesh-seed", type=int, default=0)
    ap.add_argument(
        "--stages",
        default="repair,surfaces,mesh",
        help="comma-separated subset of repair,surfaces,mesh (later stages read OUT/repaired "
        "and OUT/simready.json of an earlier run)",
    )
    args = ap.parse_args()
    stages = set(args.stages.split(","))
    load = os.getloadavg()[0]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average {load:.2f}",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "simready.json"
    result = json.loads(saved.read_text()) if saved.exists() else {"source": str(args.folder)}
    if "repair" in stages:
        result["repair"], _ = repair_figures(args.folder, args.out / "repaired", args.max_gap)
        print(f"repair done ({result['repair']['n']} maps)", flush=True)
        saved.write_text(json.dumps(result))
    repaired = list_label_maps(args.out / "repaired")
    if "surfaces" in stages:
        c0 = time.process_time()
        stl = export_maps(args.out / "repaired", args.out / "stl", "stl", overwrite=True)
        result["surfaces"] = surface_figures(stl, time.process_time() - c0)
        print("surfaces done", flush=True)
        saved.write_text(json.dumps(result))
    if "mesh" in stages:
        chosen = repaired
        if 0 < args.mesh_n < len(repaired):
            rng = np.random.default_rng(args.mesh_seed)
            idx = sorted(rng.choice(len(repaired), size=args.mesh_n, replace=False).tolist())
            chosen = [repaired[i] for i in idx]
        print(f"meshing {len(chosen)} maps: {', '.join(stem(p) for p in chosen)}", flush=True)
        shutil.rmtree(args.out / "vtu", ignore_errors=True)
        runs = {}
        for p in chosen:  # one export per map, to time each (wall and CPU)
            t0, c0 = time.perf_counter(), time.process_time()
            run = export_maps(p, args.out / "vtu" / stem(p), "vtu", edge_mm=args.edge_mm)
            runs[stem(p)] = (run, time.perf_counter() - t0, time.process_time() - c0)
            one = mesh_figures({stem(p): runs[stem(p)]}, args.out / "vtu")["maps"][stem(p)]
            print(f"  {stem(p)}: {json.dumps(one)}", flush=True)
            result["mesh"] = mesh_figures(runs, args.out / "vtu")
            result["mesh"]["seed"] = args.mesh_seed
            saved.write_text(json.dumps(result))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print_report(
        str(args.folder), result["repair"], result.get("surfaces"), result.get("mesh"), args.edge_mm
    )


if __name__ == "__main__":
    main()
