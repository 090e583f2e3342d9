"""VAE reconstruction Dice per tissue on held-out phantoms (issue 5: target ≥ 0.90).

The shipped weights were trained on ``siblings phantom --seed 0``; the held-out twins
come from another seed (default 1), without defects, on the checkpoint's grid. Each
twin goes through the autoencoder (posterior mean → decoder → argmax) and is compared
with itself tissue by tissue. Prints the mean Dice per tissue, its minimum over twins,
and whether each tissue meets the target.

    python benchmarks/vae_reconstruction.py                 # 32 twins, shipped weights
    python benchmarks/vae_reconstruction.py --n 8 --checkpoint runs/tiny
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from siblings import anatomy
from siblings.data.phantom import make_phantom
from siblings.diffusion.edit import dice
from siblings.models.ldm import LatentDiffusionModel

TARGET = 0.90


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="held-out twins (default 32)")
    ap.add_argument("--seed", type=int, default=1, help="phantom seed of the twins (default 1)")
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: shipped)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = LatentDiffusionModel.load(args.checkpoint)
    size = model.preset.size
    t0 = time.perf_counter()
    twins = np.stack(
        [make_phantom(i, size=size, seed=args.seed, defect_rate=0.0)[0].data for i in range(args.n)]
    )
    recon = model.decode(model.encode(twins))
    scores = {
        t: np.array(
            [
                dice(a == anatomy.LABELS[t], b == anatomy.LABELS[t])
                for a, b in zip(twins, recon, strict=True)
            ]
        )
        for t in anatomy.TISSUES
    }
    wall = time.perf_counter() - t0
    print(
        f"VAE reconstruction Dice, {args.n} held-out phantoms (seed {args.seed}, defect rate 0, "
        f"{size}³), checkpoint {args.checkpoint or 'shipped ' + model.preset.name}, "
        f"{args.threads} thread(s), {wall:.1f} s"
    )
    print(f"{'tissue':8s} {'mean':>6s} {'min':>6s}  target {TARGET:.2f}")
    for t, s in scores.items():
        print(f"{t:8s} {s.mean():6.3f} {s.min():6.3f}  {'met' if s.mean() >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
