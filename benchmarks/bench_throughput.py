"""Batched sampling throughput: label maps per second, decoding included.

    python benchmarks/bench_throughput.py [--batch 1 2 4 8 16] [--steps 20] [--threads 1]

For each batch size B, times ``LatentDiffusionModel.sample(B, steps, batch=B)`` (the
20-step Heun sampler, 39 denoiser calls, then the VAE decoder and argmax) of the tiny
preset with random weights, and prints samples per second, then batch 1 against the
best batch.
"""

from __future__ import annotations

import argparse

from timing import best_of, describe_machine, random_model, setup_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", action="store_true", help="networks under bf16 autocast")
    args = ap.parse_args()
    setup_threads(args.threads)
    print(describe_machine())
    model = random_model(args.preset, amp=args.bf16)
    rates = {}
    for b in args.batch:
        model.sample(b, steps=1, seed=0, batch=b)  # warm-up: kernels for this shape
        t = best_of(
            lambda b=b: model.sample(b, steps=args.steps, seed=0, batch=b),
            repeats=args.repeats,
            warmup=0,
        )
        rates[b] = b / t
        print(f"batch {b:3d}: {t:7.2f} s per batch, {rates[b]:.3f} samples/s")
    best = max(rates, key=rates.get)
    one = rates.get(1)
    line = f"best batch {best}: {rates[best]:.3f} samples/s"
    if one:
        line += f"; batch 1: {one:.3f} samples/s; speed-up {rates[best] / one:.2f}x"
    print(line)


if __name__ == "__main__":
    main()
