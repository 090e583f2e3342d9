"""Sampler overhead: a 20-step Heun sample against the 39 bare denoiser calls it makes.

    python benchmarks/bench_sampler.py [--batch 1 4] [--repeats 5] [--threads 1]

Prints, per batch size, the ratio  time(heun_sample, 20 steps) / time(39 × D(z; σ)),
where D is the preconditioned denoiser (EDMPrecond around the U-Net, float32 or with
--bf16 under bf16 autocast, no autograd) of the tiny preset at its latent shape (3×16³). The sampler's own work is
the float64 ODE state, the dtype round trips of LatentDiffusionModel.denoise, and
Python. Target: ≤ 1.05.
"""

from __future__ import annotations

import argparse

import torch
from timing import best_of, describe_machine, random_model, setup_threads

from siblings.diffusion.edm import heun_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", action="store_true", help="networks under bf16 autocast")
    args = ap.parse_args()
    setup_threads(args.threads)
    print(describe_machine())
    model = random_model(args.preset, amp=args.bf16)
    sig = model.sigmas(args.steps)
    calls = 2 * args.steps - 1
    for b in args.batch:
        z64 = torch.randn(b, *model.latent_shape, dtype=torch.float64) * sig[0]
        z32 = z64.float()
        # The σ values the sampler uses for its 2N−1 calls (cost does not depend on σ).
        call_sigmas = [float(s) for s in sig[: args.steps]] + [
            float(s) for s in sig[1 : args.steps]
        ]

        @torch.no_grad()
        def bare(z32=z32, call_sigmas=call_sigmas):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                for s in call_sigmas:
                    model.denoiser(z32, torch.tensor(s))

        def sampler(z64=z64):
            heun_sample(model.denoise, z64, sig)

        # Interleave the two measurements so that background load hits both alike.
        t_bare, t_sampler = float("inf"), float("inf")
        for _ in range(args.repeats):
            t_bare = min(t_bare, best_of(bare, repeats=1, warmup=0))
            t_sampler = min(t_sampler, best_of(sampler, repeats=1, warmup=0))
        print(
            f"batch {b}: {calls} bare denoiser calls {t_bare:.3f} s, "
            f"{args.steps}-step heun_sample {t_sampler:.3f} s, "
            f"overhead ratio {t_sampler / t_bare:.3f} (target <= 1.05)"
        )


if __name__ == "__main__":
    main()
