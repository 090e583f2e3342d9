"""Accuracy, speed and memory of `siblings prepare totalsegmentator` on phantom scans.

    python benchmarks/bench_prepare.py [--n 9] [--size 128] [--spacing 0.8,0.8,1.5]
                                       [--fov 300,300,250] [--phantom-size 128] [--workers 2]

Builds a TotalSegmentator-layout dataset from phantom subjects (random rigid poses up to
40°, LPS and RAS voxel axes, every fourth grid oblique; subjects 2, 5 and 7 broken: a
missing class file, an empty class, atria cut by the scan), prepares it and prints, over
the kept subjects,
  * chamber volume error (prepared vs the scanner-space map), min and max in %,
  * the LV→LA centroid axis angle to +z after preparation, max in degrees,
  * per-tissue Dice of the inverse map (prepared → scan grid) against the scanner-space
    map, min,
  * whether exactly the broken subjects were excluded,
  * wall time per step, and time and peak resident memory of one subject prepared in a
    fresh process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from siblings import anatomy
from siblings.data import geometry as g
from siblings.data import totalseg as ts
from siblings.data.phantom_scans import EXPECTED_REASON, make_totalseg_dataset
from siblings.io import read_label_map

try:  # the run that writes the folder; an older checkout had it in siblings.data.totalseg
    from siblings.pipelines.prepare import prepare_totalsegmentator
except ImportError:
    prepare_totalsegmentator = ts.prepare_totalsegmentator

L = anatomy.LABELS
FAULTS = {2: "missing_class", 5: "empty_class", 7: "truncated"}


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def one_subject(src: str, name: str, reference: str, size: int) -> dict[str, float]:
    def rss_mb() -> float:
        # VmHWM belongs to this address space; ru_maxrss would carry the parent's peak
        # across fork + exec on Linux.
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    subject = next(s for s in ts.find_subjects(src) if s.name == name)
    ref = read_label_map(reference)
    before = rss_mb()
    t0 = time.perf_counter()
    lm, _ = ts.load_subject(subject)
    t1 = time.perf_counter()
    prepared, transform = g.prepare_label_map(lm, reference=ref, size=size)
    t2 = time.perf_counter()
    g.unprepare(prepared, transform)
    t3 = time.perf_counter()
    return {
        "load": t1 - t0,
        "prepare": t2 - t1,
        "unprepare": t3 - t2,
        "rss_mb": rss_mb(),
        "rss_imports_mb": before,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=9)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--phantom-size", type=int, default=128)
    ap.add_argument("--spacing", type=floats, default=(0.8, 0.8, 1.5))
    ap.add_argument("--fov", type=floats, default=(300.0, 300.0, 250.0))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        t0 = time.perf_counter()
        rows = make_totalseg_dataset(
            root / "src",
            n=args.n,
            phantom_size=args.phantom_size,
            spacing=args.spacing,
            fov_mm=args.fov,
            layouts=("v1", "v2-ml", "v2-files"),
            faults={i: f for i, f in FAULTS.items() if i < args.n},
            seed=args.seed,
        )
        t1 = time.perf_counter()
        summary = prepare_totalsegmentator(
            root / "src", root / "out", size=args.size, workers=args.workers, progress=False
        )
        t2 = time.perf_counter()
        rerun = prepare_totalsegmentator(
            root / "src", root / "out", size=args.size, workers=args.workers, progress=False
        )
        t3 = time.perf_counter()

        exclusions = ts.read_exclusions(root / "out")
        want = {r["subject"]: EXPECTED_REASON[r["fault"]] for r in rows if r["fault"]}
        got = {s: reason.split(":")[0] for s, reason in exclusions.items()}
        vol_err, axis, dice = [], [], []
        for r in rows:
            if r["fault"]:
                continue
            scan = r["label_map"]
            lm = read_label_map(root / "out" / f"{r['subject']}.nii.gz")
            before, after = g.label_volumes_ml(scan), g.label_volumes_ml(lm)
            vol_err += [100.0 * (after[c] / before[c] - 1.0) for c in anatomy.CHAMBERS]
            axis.append(g.angle_to_z_deg(g.long_axis(lm)))
            back = g.unprepare(
                lm, g.PreparedTransform.load(root / "out" / f"{r['subject']}.xfm.json")
            )
            dice += list(g.dice(back.data, scan.data).values())

        # One subject in a fresh process: time per step and peak memory.
        ref = root / "out" / f"{summary['reference']['subject']}.nii.gz"
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            one = pool.submit(
                one_subject, str(root / "src"), rows[0]["subject"], str(ref), args.size
            )
            timing = one.result()

        shape = rows[0]["label_map"].shape
        print(
            f"scanner grid {shape} at {args.spacing} mm, prepared {args.size}³, {args.n} subjects"
        )
        print(f"kept {summary['prepared']}, excluded {summary['excluded']}: {exclusions}")
        print(f"exactly the broken subjects excluded with the right reason: {got == want}")
        print(f"chamber volume error: min {min(vol_err):+.3f} %, max {max(vol_err):+.3f} %")
        print(f"LV→LA axis angle to +z: max {max(axis):.3f}°")
        print(f"inverse-map Dice per tissue: min {min(dice):.4f}")
        print(
            f"time: fixture {t1 - t0:.1f} s, prepare {t2 - t1:.1f} s ({args.workers} workers), "
            f"re-run {t3 - t2:.2f} s (skipped {rerun['skipped']})"
        )
        print(
            "one subject in a fresh process: load {load:.2f} s, prepare {prepare:.2f} s, "
            "unprepare {unprepare:.2f} s; peak RSS {rss_mb:.0f} MB "
            "(after imports: {rss_imports_mb:.0f} MB)".format(**timing)
        )
        checks = {
            "exclusions exact": got == want,
            "volumes within 3%": max(map(abs, vol_err)) < 3.0,
            "axis within 5°": max(axis) < 5.0,
            "Dice >= 0.95": min(dice) >= 0.95,
        }
        print(
            "issue criteria: "
            + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items())
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
