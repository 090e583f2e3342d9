"""Kept-tissue Dice of localized editing with a checkpoint (default: the shipped weights).

    siblings phantom --n 4 --size 64 --seed 1 --defect-rate 0 --out /tmp/held
    siblings edit local /tmp/held/phantom_0000.nii.gz --regenerate LV --n 60 --seed 0 --out /tmp/lv
    python benchmarks/bench_edit.py /tmp/lv [/tmp/rv ...]

Reads finished `siblings edit local` runs and prints, per kept tissue over the siblings,
the Dice against the twin (mean and minimum), the Dice of the twin's own VAE
reconstruction against the twin (the autoencoder's limit), and the Dice of the siblings
against that reconstruction (what the edit itself changed), plus the run's time per
sibling. Only files are read: the figures are those the run wrote.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from siblings import anatomy
from siblings.io import read_label_map


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def summarise(run_dir: Path) -> None:
    run = json.loads((run_dir / "run.json").read_text())
    if run["method"] != "localized":
        raise SystemExit(f"{run_dir}: not a localized editing run")
    twin = read_label_map(run_dir / "twin" / "twin.nii.gz").data
    recon = read_label_map(run_dir / "twin" / "twin_vae_reconstruction.nii.gz").data
    sibs = [read_label_map(p).data for p in sorted(run_dir.glob("sibling_*.nii.gz"))]
    kept = run["parameters"]["kept"]
    print(
        f"{run_dir}: regenerate {', '.join(run['parameters']['regenerate'])}, "
        f"{len(sibs)} siblings, {run['parameters']['steps']} steps, dilate "
        f"{run['parameters']['dilate']}, checkpoint {run['model']['checkpoint_sha256'][:12]}"
    )
    print(f"{'kept':>5} {'vs twin mean':>13} {'min':>6} {'VAE recon':>10} {'vs recon mean':>14}")
    for t in kept:
        lab = anatomy.LABELS[t]
        d = [dice(twin == lab, s == lab) for s in sibs]
        r = [dice(recon == lab, s == lab) for s in sibs]
        print(
            f"{t:>5} {np.mean(d):13.3f} {np.min(d):6.3f} {dice(twin == lab, recon == lab):10.3f}"
            f" {np.mean(r):14.3f}"
        )
    print(f"run time {run['seconds']:.0f} s, {run['seconds'] / len(sibs):.1f} s per sibling")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", type=Path, help="output folders of `siblings edit local`")
    for run_dir in ap.parse_args().runs:
        summarise(run_dir)


if __name__ == "__main__":
    main()
