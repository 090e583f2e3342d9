"""Memory and time of one training step of the ``paper`` preset's networks on the CPU.

    python benchmarks/bench_paper_step.py [--vae-grids 32 48 64] [--unet-batch 1 2]

Each configuration runs in its own process (so peak RSS is its own) and reports:
time of one step (forward, backward, Adam; the second of two steps), the process's
peak resident memory, and the bytes of tensors autograd saves for the backward pass
(the activation memory, counted with ``torch.autograd.graph.saved_tensors_hooks``;
tensors sharing storage are counted once). The VAE runs at reduced grids (the paper's
128³ needs more memory than this machine has to spare); activation memory scales with
the number of voxels, so the 128³ figure is extrapolated by (128/g)³ from the largest
grid g measured. The denoiser runs at the paper's own 32³ latent.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def measure(kind: str, grid: int, batch: int, amp: bool) -> dict:
    from siblings.diffusion.edm import EDMPrecond, edm_loss
    from siblings.models.networks import build_denoiser_net, build_vae, count_parameters
    from siblings.models.presets import get_preset
    from siblings.train import vae_loss

    p = get_preset("paper")
    torch.manual_seed(0)
    if kind == "vae":
        net = build_vae(p)
        labels = torch.randint(0, 7, (batch, grid, grid, grid))
        x = torch.nn.functional.one_hot(labels, 7).permute(0, 4, 1, 2, 3).float()

        def loss_fn():
            return vae_loss(net, x, p.kl_weight)[0]
    else:
        net = EDMPrecond(build_denoiser_net(p), sigma_data=p.sigma_data)
        z = torch.randn(batch, p.latent_channels, grid, grid, grid) * 0.5
        sigma = torch.full((batch,), 2.0)
        noise = torch.randn_like(z)

        def loss_fn():
            return edm_loss(net, z, sigma, noise).mean()

    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    times = []
    for i in range(2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            if i == 1:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss = loss_fn()
            else:
                loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {
        "kind": kind,
        "grid": grid,
        "batch": batch,
        "bf16": amp,
        "params": count_parameters(net),
        "step_s": times[-1],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "saved_activations_gb": sum(saved.values()) / 2**30,
        "threads": torch.get_num_threads(),
    }


def run_child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae-grids", type=int, nargs="*", default=[32, 48, 64])
    ap.add_argument("--unet-batch", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--fp32", action="store_true", help="also measure without bf16 autocast")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=4, metavar=("KIND", "GRID", "BATCH", "AMP"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        kind, grid, batch, amp = args.child
        print(json.dumps(measure(kind, int(grid), int(batch), amp == "1")))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s); paper preset, batch as shown")
    amps = ["1", "0"] if args.fp32 else ["1"]
    rows = []
    for amp in amps:
        for g in args.vae_grids:
            rows.append(run_child(["vae", str(g), "1", amp]))
        for b in args.unet_batch:
            rows.append(run_child(["unet", "32", str(b), amp]))
    for r in rows:
        if "error" in r:
            print("failed:", r["error"])
            continue
        print(
            f"{r['kind']:4s} {r['grid']:3d}^3 batch {r['batch']} {'bf16' if r['bf16'] else 'fp32'}: "
            f"{r['step_s']:6.1f} s/step, peak RSS {r['peak_rss_gb']:5.2f} GB, "
            f"saved activations {r['saved_activations_gb']:5.2f} GB ({r['params']:,} parameters)"
        )
    for amp in (True, False):
        vae = [r for r in rows if r.get("kind") == "vae" and r["bf16"] == amp]
        if vae:
            big = max(vae, key=lambda r: r["grid"])
            f = (128 / big["grid"]) ** 3
            print(
                f"VAE 128^3 batch 1 {'bf16' if amp else 'fp32'} (extrapolated x{f:.0f} from "
                f"{big['grid']}^3): saved activations ~{big['saved_activations_gb'] * f:.1f} GB, "
                f"~{big['step_s'] * f:.0f} s/step on this CPU"
            )


if __name__ == "__main__":
    main()
