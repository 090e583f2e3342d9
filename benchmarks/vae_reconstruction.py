"""VAE reconstruction Dice per tissue on held-out phantoms (issue 5: target ≥ 0.90).

The shipped weights were trained on ``siblings phantom --seed 0``; the held-out twins
come from another seed (default 1), without defects, on the checkpoint's grid. Each
twin goes through the autoencoder (posterior mean → decoder → argmax) and is compared
with itself tissue by tissue. Prints the mean Dice per tissue, its minimum over twins,
and whether each tissue meets the target.

    python benchmarks/vae_reconstruction.py                 # 32 twins, shipped weights
    python benchmarks/vae_reconstruction.py --n 8 --checkpoint runs/tiny
    python benchmarks/vae_reconstruction.py --vae runs/tiny/vae.safetensors   # before the LDM exists
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
from siblings.io import from_one_hot
from siblings.models.ldm import LatentDiffusionModel
from siblings.train import encode_labels, load_vae

TARGET = 0.90


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="held-out twins (default 32)")
    ap.add_argument("--seed", type=int, default=1, help="phantom seed of the twins (default 1)")
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: shipped)")
    ap.add_argument("--vae", default=None, help="a VAE file alone (vae.safetensors)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.vae:
        vae, preset, _ = load_vae(args.vae)
        size, what = preset.size, args.vae

        def roundtrip(labels: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                mu = encode_labels(vae, torch.as_tensor(labels), "cpu")
                return np.concatenate(
                    [from_one_hot(vae.decode(mu[i : i + 4])).numpy() for i in range(0, len(mu), 4)]
                )
    else:
        model = LatentDiffusionModel.load(args.checkpoint)
        size = model.preset.size
        what = args.checkpoint or f"shipped {model.preset.name}"

        def roundtrip(labels: np.ndarray) -> np.ndarray:
            return model.decode(model.encode(labels))

    t0 = time.perf_counter()
    twins = np.stack(
        [make_phantom(i, size=size, seed=args.seed, defect_rate=0.0)[0].data for i in range(args.n)]
    )
    recon = roundtrip(twins)
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
        f"{size}³), checkpoint {what}, "
        f"{args.threads} thread(s), {wall:.1f} s"
    )
    print(f"{'tissue':8s} {'mean':>6s} {'min':>6s}  target {TARGET:.2f}")
    for t, s in scores.items():
        print(f"{t:8s} {s.mean():6.3f} {s.min():6.3f}  {'met' if s.mean() >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
