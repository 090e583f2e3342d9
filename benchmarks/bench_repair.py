"""Topology repair on a folder of label maps: maps passing every check and TV% before and
after, voxels changed (mean, max, share of a map's tissue) and CPU seconds per map.

Reads the maps once, then times :func:`siblings.repair.repair_topology` alone (no file
writes; ``siblings repair`` adds a NIfTI write per changed map). Without a folder it
makes ``--n`` phantoms with defects (``--defect-rate 1``: every subject has one or two
planted islands, septal holes or atrial bridges) in memory.

    python benchmarks/bench_repair.py /root/samples               # any cohort folder
    python benchmarks/bench_repair.py --n 100 --size 64 --seed 2  # phantoms with defects
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from siblings.data.phantom import make_phantom
from siblings.io import list_label_maps, read_label_map
from siblings.metrics.topology import tv_percent
from siblings.repair import DEFAULT_MAX_GAP, repair_topology


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=None, help="a folder of *.nii.gz label maps")
    ap.add_argument("--n", type=int, default=100, help="phantoms without a folder (default 100)")
    ap.add_argument("--size", type=int, default=64, help="phantom grid (default 64)")
    ap.add_argument("--seed", type=int, default=2, help="phantom seed (default 2)")
    ap.add_argument("--defect-rate", type=float, default=1.0)
    ap.add_argument("--max-gap", type=int, default=DEFAULT_MAX_GAP)
    args = ap.parse_args()

    if args.folder:
        maps = [read_label_map(p).data for p in list_label_maps(args.folder)]
        what = args.folder
    else:
        maps = [
            make_phantom(i, size=args.size, seed=args.seed, defect_rate=args.defect_rate)[0].data
            for i in range(args.n)
        ]
        what = (
            f"{args.n} phantoms at {args.size}³, seed {args.seed}, defect rate {args.defect_rate}"
        )
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    reps = [repair_topology(m, max_gap=args.max_gap) for m in maps]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(reps)
    changed = np.array([r.voxels_changed for r in reps])
    share = np.array([r.changed_fraction for r in reps])
    print(f"{what}: {n} maps, max_gap {args.max_gap}")
    print(
        f"passing all 12 checks: {sum(not any(r.before.values()) for r in reps)}/{n} before, "
        f"{sum(not any(r.after.values()) for r in reps)}/{n} after; TV% "
        f"{tv_percent([r.before for r in reps]):.2f} -> {tv_percent([r.after for r in reps]):.2f}"
    )
    print(
        f"voxels changed per map: mean {changed.mean():.2f}, max {changed.max()} "
        f"(max {100 * share.max():.3f}% of a map's tissue voxels)"
    )
    unfixed: dict[str, int] = {}
    for r in reps:
        for c in r.unfixed:
            unfixed[c] = unfixed.get(c, 0) + 1
    print(f"left unfixed: {unfixed or 'none'}")
    print(
        f"{cpu / n:.3f} s CPU ({wall / n:.3f} s wall) per map; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average before {load:.2f}"
    )


if __name__ == "__main__":
    main()
