"""Evaluation speed and memory: 360 maps of 128³ against a 512-map reference (issue 4).

    python benchmarks/bench_evaluate.py [--workers 2] [--n-boot 1000] [--cache DIR]

Generates two phantom cohorts at 128³ once and caches them (reference: seed 0, 512
maps; cohort: seed 1, 360 maps; defect rate 0.25), then runs ``siblings evaluate`` as a
fresh child process (reading, morphology, topology, occupancy heatmaps, bootstrap
intervals, figures and report.html) and prints:

- wall time of the child process, and maps per second;
- CPU time (user + system) of the child and its workers: on a machine whose cores are
  busy with other jobs, CPU time / cores is what the wall time would be on idle cores;
- peak memory: the child's own peak RSS and its largest worker's (``getrusage``), and the
  peak of the summed RSS of the whole process tree, sampled every 50 ms (shared
  library pages are counted once per process, so this overstates the true total).

Target: at most 60 s and 2 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _tree_rss_mb(root: int) -> float:
    """Summed VmRSS (MB) of ``root`` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    total_kb = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return total_kb / 1024.0


def _ensure_cohorts(cache: Path, workers: int) -> tuple[Path, Path]:
    from siblings.pipelines.phantom import generate_cohort

    out = []
    for name, n, seed in (("ref128", 512, 0), ("cohort128", 360, 1)):
        folder = cache / name
        have = len(list(folder.glob("phantom_*.nii.gz"))) if folder.exists() else 0
        if have != n or not (folder / "parameters.csv").exists():
            print(f"generating {n} phantoms at 128³ in {folder} (once) …", flush=True)
            generate_cohort(folder, n=n, size=128, seed=seed, defect_rate=0.25, workers=workers)
        out.append(folder)
    return out[0], out[1]


def _child(args: argparse.Namespace) -> None:
    from siblings.metrics import evaluate
    from siblings.pipelines.evaluate import write_evaluation

    t0 = time.perf_counter()
    ev = evaluate(args.cohort, args.reference, workers=args.workers, n_boot=args.n_boot)
    write_evaluation(ev, args.out)
    wall = time.perf_counter() - t0
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    print(
        json.dumps(
            {
                "wall_s": wall,
                "n": ev.metrics["n"],
                "n_reference": ev.metrics["n_reference"],
                "self_max_rss_mb": own.ru_maxrss / 1024.0,
                "worker_max_rss_mb": kids.ru_maxrss / 1024.0,
                "cpu_s": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
                "main_cpu_s": own.ru_utime + own.ru_stime,
                "tv_percent": ev.metrics["tv_percent"],
                "fd": ev.metrics["fd"],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "siblings_bench")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cohort", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return

    reference, cohort = _ensure_cohorts(args.cache, args.workers)
    out = Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    load0 = os.getloadavg()[0]
    cmd = [
        sys.executable, __file__, "--child", "--cohort", str(cohort), "--reference",
        str(reference), "--out", str(out), "--workers", str(args.workers),
        "--n-boot", str(args.n_boot),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_mb(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"evaluate failed with exit code {proc.returncode}")
    r = json.loads(stdout.strip().splitlines()[-1])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {cores} cores, load average {load0:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; workers {args.workers}; bootstrap {args.n_boot}"
    )
    print(f"evaluated {r['n']} maps against {r['n_reference']} (128³), outputs in {out}")
    print(
        f"wall time {wall:.1f} s (evaluate() {r['wall_s']:.1f} s), "
        f"{(r['n'] + r['n_reference']) / r['wall_s']:.1f} maps/s"
    )
    print(
        f"CPU time {r['cpu_s']:.1f} s (user + system, incl. workers) = "
        f"{r['cpu_s'] / args.workers:.1f} s per core over {args.workers} workers "
        f"(main process {r['main_cpu_s']:.1f} s)"
    )
    print(
        f"peak RSS: main {r['self_max_rss_mb']:.0f} MB, largest worker "
        f"{r['worker_max_rss_mb']:.0f} MB, whole process tree {peak:.0f} MB (sampled)"
    )
    ok = wall <= 60.0 and peak <= 2048.0
    print(f"target <= 60 s and <= 2 GB: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
