"""VAE quality on held-out phantoms: Dice, volume bias and spread, topology, confusion, latent.

The shipped weights were trained on ``siblings phantom --seed 0``; the held-out twins
come from another seed (default 1), without defects, on the checkpoint's grid. Each
twin goes through the autoencoder (posterior mean → decoder → argmax, as editing and
the experiments use it) and is compared with itself. Printed (issue 14, item 1):

- Dice per tissue (mean and minimum over twins; target ≥ 0.95);
- volume change per tissue in mL (mean, 95% bootstrap interval over twins, and as % of
  the tissue's mean volume; target ±2%) and the least-squares slope of reconstructed
  against true volume (1 = the cohort's spread kept; < 1 = shrunk towards the mean);
- TV% (the 12 topology checks, SPEC §5) of the twins and of their reconstructions, and
  with ``--tv-data`` the same on a cohort folder with defects (the training cohort);
- the 7×7 confusion matrix in mL per map (rows: true label, columns: reconstructed);
- per latent channel: KL to N(0, 1) per element in nats, the standard deviation of μ
  over maps and voxels, and the mean σ (a collapsed channel has μ std ≈ 0, σ ≈ 1).

    python benchmarks/vae_reconstruction.py                  # 64 twins, shipped weights
    python benchmarks/vae_reconstruction.py --n 8 --checkpoint runs/tiny
    python benchmarks/vae_reconstruction.py --vae runs/tiny/vae.safetensors   # before the LDM exists
    python benchmarks/vae_reconstruction.py --tv-data data/phantom64 --json vae.json --bf16
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from siblings import anatomy
from siblings.data.dataset import LabelMapDataset
from siblings.data.phantom import make_phantom
from siblings.io import from_one_hot, one_hot
from siblings.metrics.bootstrap import bootstrap_indices, percentile_interval
from siblings.metrics.overlap import dice
from siblings.metrics.topology import checks_array, topology_checks, tv_percent, violation_rates
from siblings.models.ldm import LatentDiffusionModel
from siblings.runtime import autocast
from siblings.train import load_vae

DICE_TARGET = 0.95
VOLUME_TARGET_PERCENT = 2.0
# The chambers of the morphology vector first, then the other tissues.
TISSUES = ("LV", "RV", "LA", "RA", "Myo", "Ao")


@torch.no_grad()
def roundtrip(vae, labels: np.ndarray, bf16: bool, batch: int = 4):
    """Reconstructions (uint8 label maps), posterior μ and σ (float32) of ``labels``."""
    dev = next(vae.parameters()).device
    recon, mus, sigmas = [], [], []
    for i in range(0, len(labels), batch):
        x = one_hot(torch.as_tensor(labels[i : i + batch]).to(dev))
        with autocast(dev, bf16):
            mu, sigma = vae.encode(x)
            logits = vae.decode(mu)
        recon.append(from_one_hot(logits.float()).cpu().numpy())
        mus.append(mu.float().cpu().numpy())
        sigmas.append(sigma.float().cpu().numpy())
    return np.concatenate(recon), np.concatenate(mus), np.concatenate(sigmas)


def confusion_ml(true: np.ndarray, recon: np.ndarray, voxel_ml: float) -> np.ndarray:
    """7×7 mean volume per map (mL) of voxels with true label i reconstructed as j."""
    k = anatomy.NUM_LABELS
    counts = np.bincount(true.astype(np.int64).ravel() * k + recon.ravel(), minlength=k * k)
    return counts.reshape(k, k) * voxel_ml / len(true)


def volumes_ml(maps: np.ndarray, voxel_ml: float) -> np.ndarray:
    """(n, 7) volume of every label per map in mL."""
    k = anatomy.NUM_LABELS
    return np.stack([np.bincount(m.ravel(), minlength=k) for m in maps]) * voxel_ml


def tissue_table(true, recon, voxel_ml: float, n_boot: int = 1000) -> dict[str, dict]:
    """Per tissue: Dice (mean, min), volumes, change with its interval, slope."""
    v_true, v_rec = volumes_ml(true, voxel_ml), volumes_ml(recon, voxel_ml)
    draws = bootstrap_indices(len(true), n_boot, seed=0)
    rows = {}
    for t in TISSUES:
        lab = anatomy.LABELS[t]
        d = np.array(
            [dice(a == lab, b == lab, empty=1.0) for a, b in zip(true, recon, strict=True)]
        )
        change = v_rec[:, lab] - v_true[:, lab]
        slope = np.polyfit(v_true[:, lab], v_rec[:, lab], 1)[0] if len(true) > 1 else np.nan
        rows[t] = {
            "dice_mean": float(d.mean()),
            "dice_min": float(d.min()),
            "true_ml": float(v_true[:, lab].mean()),
            "change_ml": float(change.mean()),
            "change_ml_ci95": percentile_interval(change[draws].mean(axis=1)),
            "change_percent": float(100 * change.mean() / v_true[:, lab].mean()),
            "slope": float(slope),
        }
    return rows


def topology(maps: np.ndarray) -> dict:
    checks = checks_array([topology_checks(m) for m in maps])
    return {"tv_percent": tv_percent(checks), "violation_rates": violation_rates(checks)}


def latent_stats(mu: np.ndarray, sigma: np.ndarray) -> dict:
    """Per channel: KL(N(μ, σ²) ‖ N(0, 1)) per element (nats), std of μ over maps and
    voxels, mean σ; and the KL summed over the latent, per map (what ``vae_loss`` with
    ``kl_norm="sum"`` weighs)."""
    kl = 0.5 * (mu**2 + sigma**2 - np.log(sigma**2 + 1e-12) - 1)
    channels = [
        {
            "channel": c,
            "kl_per_element": float(kl[:, c].mean()),
            "mu_std": float(mu[:, c].std()),
            "sigma_mean": float(sigma[:, c].mean()),
        }
        for c in range(mu.shape[1])
    ]
    return {"channels": channels, "kl_per_map": float(kl.reshape(len(kl), -1).sum(1).mean())}


def print_report(r: dict) -> None:
    print(
        f"VAE quality: {r['n']} held-out phantoms (seed {r['seed']}, defect rate 0, "
        f"{r['size']}³), {r['checkpoint']}, {r['precision']}, {r['threads']} thread(s) "
        f"on {r['cpu']}"
    )
    print(
        f"round trip {r['roundtrip_seconds']:.1f} s ({r['roundtrip_seconds'] / r['n']:.2f} s/map)"
    )
    print(
        f"\n{'tissue':6s} {'Dice':>6s} {'min':>6s}  {'true mL':>7s} {'change mL [95% CI]':>24s}"
        f" {'%':>6s} {'slope':>6s}"
    )
    for t, row in r["tissues"].items():
        lo, hi = row["change_ml_ci95"]
        flag = "" if row["dice_mean"] >= DICE_TARGET else "  Dice < target"
        if abs(row["change_percent"]) > VOLUME_TARGET_PERCENT:
            flag += "  |change| > target"
        print(
            f"{t:6s} {row['dice_mean']:6.3f} {row['dice_min']:6.3f}  {row['true_ml']:7.1f} "
            f"{row['change_ml']:+7.2f} [{lo:+6.2f}, {hi:+6.2f}] {row['change_percent']:+6.1f} "
            f"{row['slope']:6.2f}{flag}"
        )
    print(f"targets: Dice ≥ {DICE_TARGET}, |change| ≤ {VOLUME_TARGET_PERCENT}% of the mean volume")
    for name, tv in r["tv"].items():
        before, after = tv["inputs"]["violation_rates"], tv["reconstructions"]["violation_rates"]
        rose = sorted(
            (c for c in before if after[c] > before[c]), key=lambda c: before[c] - after[c]
        )
        moved = ", ".join(f"{c} {100 * before[c]:.0f}→{100 * after[c]:.0f}%" for c in rose[:3])
        print(
            f"TV% {name} ({tv['n']} maps): inputs {tv['inputs']['tv_percent']:.2f}, "
            f"reconstructions {tv['reconstructions']['tv_percent']:.2f} "
            f"(checks that rose most: {moved or 'none'})"
        )
    print("\nconfusion, mL per map (rows: true label, columns: reconstructed)")
    names = anatomy.LABEL_NAMES
    print(f"{'':10s}" + "".join(f"{n[:8]:>9s}" for n in names))
    for name, row in zip(names, r["confusion_ml"], strict=True):
        print(f"{name[:10]:10s}" + "".join(f"{v:9.2f}" for v in row))
    print("\nlatent channel  KL/element (nats)  std of mu  mean sigma")
    for c in r["latent"]["channels"]:
        print(
            f"{c['channel']:14d}  {c['kl_per_element']:17.4f}  {c['mu_std']:9.3f}  "
            f"{c['sigma_mean']:10.3f}"
        )
    print(f"KL per map (summed over the latent): {r['latent']['kl_per_map']:.1f} nats")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="held-out twins (default 64)")
    ap.add_argument("--seed", type=int, default=1, help="phantom seed of the twins (default 1)")
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: shipped)")
    ap.add_argument("--vae", default=None, help="a VAE file alone (vae.safetensors)")
    ap.add_argument(
        "--tv-data", default=None, metavar="DIR", help="also TV%% before/after on this cohort"
    )
    ap.add_argument("--bf16", action="store_true", help="run the VAE under bf16 autocast")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.vae:
        vae, preset, _ = load_vae(args.vae)
        what = args.vae
    else:
        model = LatentDiffusionModel.load(args.checkpoint, device="cpu")
        vae, preset = model.vae, model.preset
        what = args.checkpoint or f"shipped {preset.name}"
    voxel_ml = preset.voxel_mm**3 / 1000.0

    twins = np.stack(
        [
            make_phantom(i, size=preset.size, seed=args.seed, defect_rate=0.0)[0].data
            for i in range(args.n)
        ]
    )
    t0 = time.perf_counter()
    recon, mu, sigma = roundtrip(vae, twins, args.bf16)
    seconds = time.perf_counter() - t0
    report = {
        "n": args.n,
        "seed": args.seed,
        "size": preset.size,
        "checkpoint": what,
        "precision": "bf16" if args.bf16 else "fp32",
        "threads": args.threads,
        "cpu": cpu_model(),
        "roundtrip_seconds": seconds,
        "tissues": tissue_table(twins, recon, voxel_ml, args.n_boot),
        "tv": {
            "held-out": {
                "n": args.n,
                "inputs": topology(twins),
                "reconstructions": topology(recon),
            }
        },
        "confusion_ml": confusion_ml(twins, recon, voxel_ml).tolist(),
        "latent": latent_stats(mu, sigma),
    }
    if args.tv_data:
        ds = LabelMapDataset(args.tv_data, size=preset.size)
        real = np.stack([ds.labels(i).numpy() for i in range(len(ds))])
        report["tv"][args.tv_data] = {
            "n": len(real),
            "inputs": topology(real),
            "reconstructions": topology(roundtrip(vae, real, args.bf16)[0]),
        }
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
