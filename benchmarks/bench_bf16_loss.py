"""Does bf16 autocast hurt training? The same run in fp32 and in bf16, side by side.

    python benchmarks/bench_bf16_loss.py [--steps 150] [--out DIR] [--threads 1]

Trains the VAE and then the EDM denoiser of a micro preset (the tiny preset on a 32³
grid with narrow networks, as in tests/conftest.py) on 32 phantoms, once with
``amp=False`` and once with ``amp=True``, same seed, so both see the same batches,
augmentations, noise levels and noise. Both denoisers train on the latents of the
fp32 VAE. Prints the mean loss over the last 30 logged steps of each run and their
ratio (bf16 / fp32), and the mean over all steps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import describe_machine, setup_threads

from siblings.models.presets import get_preset
from siblings.pipelines.phantom import generate_cohort
from siblings.train import train_ldm, train_vae

MICRO = dict(
    size=32,
    vae_channels=(8, 16, 32),
    vae_norm_groups=8,
    unet_channels=(16, 32, 32),
    unet_norm_groups=8,
    unet_head_channels=8,
    unet_attention=(False, False, True),
)


def losses(log: Path, key: str = "loss") -> np.ndarray:
    return np.array([json.loads(line)[key] for line in log.read_text().splitlines() if line])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--tail", type=int, default=30, help="steps averaged at the end")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    setup_threads(args.threads)
    print(describe_machine())
    out = args.out or Path(tempfile.mkdtemp(prefix="bf16_loss_"))
    data = out / "data"
    if not (data / "parameters.csv").exists():
        generate_cohort(data, n=32, size=32, seed=0, defect_rate=0.25, workers=1, progress=False)
    preset = get_preset("tiny", **MICRO)
    common = dict(seed=0, device="cpu", log_every=1, progress=False, ckpt_every=10**9)
    runs = {}
    for amp in (False, True):
        tag = "bf16" if amp else "fp32"
        t0 = time.time()
        train_vae(data, out / tag, preset, steps=args.steps, batch=2, amp=amp, **common)
        t_vae = time.time() - t0
        t0 = time.time()
        train_ldm(
            data,
            out / tag,
            out / "fp32" / "vae.safetensors",
            preset=preset,
            steps=args.steps,
            batch=16,
            amp=amp,
            **common,
        )
        runs[tag] = (t_vae, time.time() - t0)
    print(f"{args.steps} steps each; outputs in {out}")
    for kind, key in (("vae", "loss"), ("vae", "loss_mse"), ("ldm", "loss")):
        a = losses(out / "fp32" / f"{kind}_log.jsonl", key)
        b = losses(out / "bf16" / f"{kind}_log.jsonl", key)
        ta, tb = a[-args.tail :].mean(), b[-args.tail :].mean()
        print(
            f"{kind} {key:8s}: last-{args.tail} mean fp32 {ta:.5f}  bf16 {tb:.5f}  "
            f"ratio {tb / ta:.3f};  all-steps mean fp32 {a.mean():.5f}  bf16 {b.mean():.5f}"
        )
    for tag, (t_vae, t_ldm) in runs.items():
        print(f"{tag}: VAE {t_vae:.0f} s, denoiser {t_ldm:.0f} s")


if __name__ == "__main__":
    main()
