"""Cost of `siblings experiment all` at the paper's counts, from timed pieces.

    python benchmarks/bench_experiments.py [--threads 1] [--bf16] [--batch 8] [--acceptance 0.05]

Times, with the tiny preset (random weights: the cost of a call does not depend on
them), one denoiser call on a batch, decoding and encoding a map, writing a map with its
manifest, summarising a map and one bootstrap comparison (1000 resamples, 60 and 360
maps against 512), then multiplies by the planned work of every experiment at the
paper's counts (siblings.experiments.PAPER). The unconditional augmentation strategy
draws samples until 140 meet the condition: its cost is 140 / ``--acceptance`` samples
(capped at the paper's 3600). Prints seconds per piece and minutes per experiment.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import describe_machine, random_model, setup_threads

from siblings.diffusion.edit import start_step
from siblings.experiments.counts import PAPER
from siblings.io import LabelMap, write_json, write_label_map
from siblings.manifest import provenance
from siblings.metrics.cohort import CohortSummary, compare, summarise_maps
from siblings.metrics.heatmaps import Occupancy
from siblings.runtime import autocast


def timed(fn, repeats: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--acceptance",
        type=float,
        default=0.017,
        help="uncond augmentation acceptance (shipped weights, phantom cohort: 3 of 180)",
    )
    ap.add_argument("--n-real", type=int, default=512)
    args = ap.parse_args()
    setup_threads(args.threads)
    print(describe_machine(), "| bf16" if args.bf16 else "| fp32", f"| batch {args.batch}")
    m = random_model("tiny", amp=args.bf16)
    b = args.batch
    z = torch.randn(b, *m.latent_shape, dtype=torch.float64)

    def calls():
        with autocast(m.device, m.amp):
            for _ in range(5):
                m.denoise(z, 1.0)

    call = timed(calls) / 5 / b  # one denoiser call, per map
    labels = m.decode(z.float())
    decode = timed(lambda: m.decode(z.float())) / b

    def enc():
        with autocast(m.device, m.amp):
            m.encode(labels)

    encode = timed(enc) / b
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 7, (64, 64, 64), dtype=np.uint8) for _ in range(4)]
    from siblings.data.phantom import make_phantom

    maps = [make_phantom(i, size=64)[0].data for i in range(4)]
    with tempfile.TemporaryDirectory() as tmp:

        def write():
            for i, lab in enumerate(maps):
                write_label_map(Path(tmp) / f"m{i}.nii.gz", LabelMap(lab, m.affine))
                write_json(Path(tmp) / f"m{i}.json", provenance(m, "unconditional", index=i))

        write_s = timed(write) / len(maps)
    summ = timed(lambda: summarise_maps(maps, spacing_mm=2.8)) / len(maps)

    def fake(n: int) -> CohortSummary:
        occ = Occupancy((64, 64, 64))
        return CohortSummary(
            [f"m{i}" for i in range(n)],
            rng.normal(size=(n, 12)) + 5,
            rng.random((n, 12)) < 0.1,
            occ,
        )

    real = fake(args.n_real)
    boot = {n: timed(lambda n=n: compare(fake(n), real, n_boot=1000), 1) for n in (60, 360)}
    print(
        f"per map: denoiser call {call * 1e3:.1f} ms, decode {decode:.3f} s, encode {encode:.3f} s, "
        f"write {write_s * 1e3:.0f} ms, summarise {summ * 1e3:.0f} ms; "
        f"bootstrap compare (1000): {boot[60]:.2f} s at 60 maps, {boot[360]:.2f} s at 360"
    )

    c = PAPER

    def sample_cost(n: int, steps_calls: int, enc: bool = False) -> float:
        per = steps_calls * call + decode + write_s + summ + (encode if enc else 0.0)
        return n * per

    heun = lambda s: 2 * s - 1  # noqa: E731
    stages: dict[str, float] = {}
    stages["unconditional: 360 samples"] = sample_cost(c.unconditional, heun(c.steps))
    stages["unconditional: 512 real through the VAE"] = args.n_real * (
        encode + decode + write_s + summ
    )
    stages["unconditional: evaluation"] = 3 * boot[360]
    for s in c.sweep_steps:
        if s != c.steps:
            stages[f"sensitivity: {s} steps x {c.steps_cohort}"] = sample_cost(
                c.steps_cohort, heun(s)
            )
    stages["sensitivity: evaluation"] = (len(c.sweep_steps) + len(c.sweep_sizes)) * boot[60] * 1.5
    for psi in c.psis:
        k = c.steps - start_step(psi, c.steps)
        stages[f"perturb: psi {psi} (k = {k}) x 4 x 60"] = sample_cost(4 * c.siblings, heun(k))
    stages["perturb: evaluation"] = 20 * boot[60]
    stages["local: 4 x 2 x 60"] = sample_cost(8 * c.siblings, heun(c.steps))
    stages["local: evaluation"] = 8 * boot[60]
    pool = min(c.augment_pool, int(np.ceil(c.augment / args.acceptance)))
    stages[f"augment uncond: {pool} attempts"] = pool * (
        heun(c.steps) * call + decode
    ) + c.augment * (write_s + 2 * summ)
    for strat in ("perturb", "local"):
        calls_per = (heun(10) + heun(7)) / 2 if strat == "perturb" else heun(c.steps)
        # Edits of rare twins meet an RV threshold more often; assume 70% acceptance.
        attempts = int(np.ceil(c.augment / 0.7))
        stages[f"augment {strat}: {attempts} attempts"] = attempts * (
            calls_per * call + decode + encode / 4
        ) + c.augment * (write_s + 2 * summ)
    total = 0.0
    by_exp: dict[str, float] = {}
    for name, sec in stages.items():
        print(f"  {name:48s} {sec / 60:7.1f} min")
        total += sec
        exp = name.split(":")[0].split(" ")[0]
        by_exp[exp] = by_exp.get(exp, 0.0) + sec
    print("per experiment:", ", ".join(f"{k} {v / 60:.1f} min" for k, v in by_exp.items()))
    print(f"total: {total / 60:.1f} min (one process)")
    largest = max(stages.values())
    print(
        f"--jobs 2, one thread each: at least max(largest cohort, total / 2) = "
        f"{max(largest, total / 2) / 60:.1f} min, if each process runs at this speed"
    )


if __name__ == "__main__":
    main()
