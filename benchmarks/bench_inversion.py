"""Encoding by inversion: the twin's round-trip Dice before and after, and its cost.

For N held-out phantoms (``make_phantom(i, size, seed=1, defect_rate=0)``, the shipped
weights were trained on seed 0) and for the stress set of :mod:`siblings.data.stress`
(hearts the VAE never saw: volumes past the cohort's bounds, a dilated RV with a small
LV, thin and thick walls, strong elastic deformations, a straight ascending aorta,
mirrored hearts), each twin is encoded as ``siblings edit`` encodes it
(:func:`siblings.models.edits.encode_twin`): the posterior mean (the paper), then
refined by ``--steps`` of inversion. Printed per group: the mean and minimum round-trip
Dice per tissue before → after, the number of twins out of the model's distribution
(a tissue below ``OOD_DICE_THRESHOLD``) before → after, the inversion steps taken and
the seconds per twin (wall and CPU; the CPU time is what counts on a shared machine).
Precision as the CLI chooses it (bf16 where the CPU runs it natively) unless
``--bf16``/``--fp32``.

    python benchmarks/bench_inversion.py --threads 1                 # shipped weights
    python benchmarks/bench_inversion.py --n 4 --stress-per-kind 1   # quick
    python benchmarks/bench_inversion.py --vae runs/v2/vae.safetensors --json inv.json
    python benchmarks/bench_inversion.py --checkpoint runs/tiny --steps 100 --lr 0.02

``--vae FILE`` swaps a VAE into the checkpoint (e.g. before its denoiser is trained);
the latent scale factor is then ``σ_data / std`` of the held-out twins' posterior means,
as training computes it on its cohort.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

import numpy as np
import torch

from siblings import anatomy
from siblings.data.phantom import make_phantom
from siblings.data.stress import STRESS_KINDS, stress_set
from siblings.diffusion.inversion import DEFAULT_INVERT_LR, DEFAULT_INVERT_STEPS
from siblings.models import edits as edit
from siblings.models.edits import encode_twin
from siblings.models.ldm import LatentDiffusionModel
from siblings.runtime import choose_bf16
from siblings.train import load_vae


def cpu_model() -> str:
    """``lscpu``'s model name (or the platform's processor string)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def load_model(checkpoint: str | None, vae: str | None, amp: bool, twins: list[np.ndarray]):
    """The checkpoint's model, with ``vae`` swapped in (and its scale factor) if given."""
    model = LatentDiffusionModel.load(checkpoint, device="cpu", amp=amp)
    if vae is None:
        return model, f"checkpoint {model.checkpoint} (sha256 {model.checkpoint_sha256[:12]})"
    net, preset, _ = load_vae(vae)
    if preset.size != model.preset.size:
        raise SystemExit(f"{vae}: a {preset.size}³ VAE does not fit the {model.preset.size}³ model")
    model.vae = net
    model.scale_factor = 1.0
    mu = torch.cat([model.encode(t[None]) for t in twins])
    model.scale_factor = float(model.preset.sigma_data / mu.std())
    return model, f"VAE {vae} (scale factor {model.scale_factor:.4f} from the held-out twins)"


def measure(model, name: str, labels: np.ndarray, steps: int, lr: float) -> dict:
    """One twin's encoding: Dice before/after, steps taken, seconds (wall, CPU)."""
    t0, c0 = time.perf_counter(), time.process_time()
    enc = encode_twin(model, labels, invert_steps=steps, invert_lr=lr)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rec = enc.record.to_dict() if enc.record else None
    return {
        "name": name,
        "dice_before": enc.dice_posterior_mean,
        "dice_after": enc.dice,
        "ood_before": sorted(t for t, d in enc.dice_posterior_mean.items() if d < threshold()),
        "ood_after": sorted(enc.out_of_distribution()),
        "inversion": rec,
        "seconds": wall,
        "cpu_seconds": cpu,
    }


def threshold() -> float:
    return edit.OOD_DICE_THRESHOLD


def summarise(rows: list[dict]) -> dict:
    out: dict = {"n": len(rows), "tissues": {}}
    for t in anatomy.TISSUES:
        b = np.array([r["dice_before"][t] for r in rows])
        a = np.array([r["dice_after"][t] for r in rows])
        out["tissues"][t] = {
            "before_mean": float(b.mean()),
            "before_min": float(b.min()),
            "after_mean": float(a.mean()),
            "after_min": float(a.min()),
            "worse": int((a < b - 1e-9).sum()),
        }
    out["ood_before"] = sum(bool(r["ood_before"]) for r in rows)
    out["ood_after"] = sum(bool(r["ood_after"]) for r in rows)
    steps = [r["inversion"]["steps"] for r in rows if r["inversion"]]
    out["steps_mean"] = float(np.mean(steps)) if steps else 0.0
    out["stopped_early"] = sum(
        bool(r["inversion"] and r["inversion"]["stopped_early"]) for r in rows
    )
    out["seconds_per_twin"] = float(np.mean([r["seconds"] for r in rows]))
    out["cpu_seconds_per_twin"] = float(np.mean([r["cpu_seconds"] for r in rows]))
    return out


def print_markdown(groups: dict[str, dict], steps: int) -> None:
    tissues = anatomy.TISSUES
    print(
        "| twins | n | "
        + " | ".join(f"{t} mean (min)" for t in tissues)
        + " | out of distribution | steps | s/twin wall (CPU) |"
    )
    print("|---|---|" + "---|" * len(tissues) + "---|---|---|")
    for name, s in groups.items():
        cells = []
        for t in tissues:
            d = s["tissues"][t]
            cells.append(
                f"{d['before_mean']:.3f} ({d['before_min']:.2f}) → "
                f"**{d['after_mean']:.3f}** ({d['after_min']:.2f})"
            )
        print(
            f"| {name} | {s['n']} | "
            + " | ".join(cells)
            + f" | {s['ood_before']} → {s['ood_after']} | {s['steps_mean']:.0f} of {steps}"
            f" | {s['seconds_per_twin']:.0f} ({s['cpu_seconds_per_twin']:.0f}) |"
        )
    worse = {
        name: {t: d["worse"] for t, d in s["tissues"].items() if d["worse"]}
        for name, s in groups.items()
    }
    worse = {k: v for k, v in worse.items() if v}
    print(
        "\ntwins whose Dice fell for a tissue: "
        + ("; ".join(f"{k}: {v}" for k, v in worse.items()) or "none")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="held-out phantoms (default 32)")
    ap.add_argument("--size", type=int, default=None, help="grid (default: the model's)")
    ap.add_argument("--seed", type=int, default=1, help="held-out phantom seed (default 1)")
    ap.add_argument(
        "--stress-per-kind", type=int, default=2, help="stress cases per kind (default 2)"
    )
    ap.add_argument("--kinds", default=",".join(STRESS_KINDS), help="stress kinds")
    ap.add_argument("--steps", type=int, default=DEFAULT_INVERT_STEPS, help="inversion budget")
    ap.add_argument("--lr", type=float, default=DEFAULT_INVERT_LR, help="inversion Adam lr")
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: shipped)")
    ap.add_argument("--vae", default=None, help="a vae.safetensors to swap into the checkpoint")
    prec = ap.add_mutually_exclusive_group()
    prec.add_argument("--bf16", action="store_true", help="bf16 autocast")
    prec.add_argument("--fp32", action="store_true", help="fp32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", default=None, help="write every twin's figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    size = args.size or LatentDiffusionModel.load(args.checkpoint, device="cpu").preset.size
    held = [
        (f"phantom_{i:04d}", make_phantom(i, size=size, seed=args.seed)[0].data)
        for i in range(args.n)
    ]
    kinds = tuple(k for k in args.kinds.split(",") if k)
    stress = [(k, lm.data) for k, lm in stress_set(args.stress_per_kind, size, args.seed, kinds)]
    # Precision as the CLI chooses it: bf16 where the CPU runs it natively, else fp32.
    amp, _ = choose_bf16("cpu", True if args.bf16 else False if args.fp32 else None)
    model, what = load_model(args.checkpoint, args.vae, amp, [t for _, t in held])
    precision = "bf16" if model.amp else "fp32"
    print(
        f"inversion: {args.steps} steps, lr {args.lr:g}; {what}; {size}³; {precision}; "
        f"{args.threads} thread(s) on {cpu_model()} ({os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f})"
    )
    rows: dict[str, list[dict]] = {"held-out phantoms": [], **{k: [] for k in kinds}}
    for name, lab in held:
        rows["held-out phantoms"].append(measure(model, name, lab, args.steps, args.lr))
        print(f"  {name}: {rows['held-out phantoms'][-1]['seconds']:.0f} s", flush=True)
    for name, lab in stress:
        kind = name.rsplit("_", 1)[0]
        rows[kind].append(measure(model, name, lab, args.steps, args.lr))
        print(f"  {name}: {rows[kind][-1]['seconds']:.0f} s", flush=True)
    groups = {k: summarise(v) for k, v in rows.items() if v}
    all_stress = [r for k, v in rows.items() if k != "held-out phantoms" for r in v]
    if all_stress:
        groups["stress set, all"] = summarise(all_stress)
    print()
    print_markdown(groups, args.steps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "settings": vars(args) | {"model": what, "precision": precision},
                    "cpu": cpu_model(),
                    "groups": groups,
                    "twins": rows,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
