"""Wall time to generate the phantom cohort (issue 3: 512 subjects at 128³ in ≤ 2 minutes).

Generates the cohort into a temporary folder exactly as ``siblings phantom`` does
(process pool, NIfTI writes, parameters.csv) and prints the wall time and subjects/s.
``--profile K`` instead profiles K subjects in this process and prints where the time
goes, by function.

    python benchmarks/bench_phantom.py                      # 512 at 128³, all cores
    python benchmarks/bench_phantom.py --n 64 --size 64 --workers 1
    python benchmarks/bench_phantom.py --profile 8
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import tempfile
import time

from siblings.data.phantom import make_phantom, summarise_cohort
from siblings.pipelines.phantom import generate_cohort

BUDGET_S = 120.0  # issue 3: 512 subjects at 128³ within 2 minutes on 2 cores


def describe_machine(workers: int) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{workers} worker process(es), load average before the run {load:.2f}"
    )


def profile(k: int, size: int, seed: int, defect_rate: float, top: int = 15) -> None:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for i in range(k):
        make_phantom(i, size=size, seed=seed, defect_rate=defect_rate)
    prof.disable()
    wall = time.perf_counter() - t0
    print(f"profiled {k} subjects at {size}³ in one process: {wall / k:.3f} s per subject")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="subjects (default 512)")
    ap.add_argument("--size", type=int, default=128, help="grid size (default 128)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--defect-rate", type=float, default=0.25)
    ap.add_argument("--profile", type=int, default=0, metavar="K", help="profile K subjects")
    args = ap.parse_args()

    if args.profile:
        profile(args.profile, args.size, args.seed, args.defect_rate)
        return

    workers = args.workers or min(args.n, os.cpu_count() or 1)
    print(
        f"phantom benchmark: {args.n} subjects at {args.size}³, seed {args.seed}, "
        f"defect rate {args.defect_rate}"
    )
    print(describe_machine(workers))
    with tempfile.TemporaryDirectory(prefix="bench_phantom_") as tmp:
        t0 = time.perf_counter()
        rows = generate_cohort(
            tmp,
            n=args.n,
            size=args.size,
            seed=args.seed,
            defect_rate=args.defect_rate,
            workers=workers,
            progress=False,
        )
        wall = time.perf_counter() - t0
        size_mb = sum(e.stat().st_size for e in os.scandir(tmp)) / 1e6
    print(summarise_cohort(rows))
    print(f"wrote {size_mb:.1f} MB")
    print(
        f"wall time {wall:.1f} s, {args.n / wall:.2f} subjects/s, {wall / args.n * workers:.3f} "
        f"core-s per subject"
    )
    if args.n == 512 and args.size == 128:
        verdict = "within" if wall <= BUDGET_S else "OVER"
        print(f"{verdict} the issue's budget of {BUDGET_S:.0f} s for 512 subjects at 128³")


if __name__ == "__main__":
    main()
