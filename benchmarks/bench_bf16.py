"""bf16 autocast against fp32 on the CPU: training steps and sampling, tiny preset.

    python benchmarks/bench_bf16.py [--threads 1] [--repeats 3]

Prints time per call in fp32 and in bf16 and the speed-up (fp32 time / bf16 time) for
  * one VAE training step (batch 2, 64³ one-hot, forward + backward + Adam),
  * one denoiser training step (batch 16, 3×16³ latents, EDM loss, + Adam),
  * one denoiser call without autograd (batch 1 and 8),
  * one 20-step sample with decoding (batch 4).
Random weights: the cost of a call does not depend on them.
"""

from __future__ import annotations

import argparse

import torch
from timing import best_of, describe_machine, random_model, setup_threads

from siblings.diffusion.edm import EDMPrecond, edm_loss
from siblings.models.networks import build_denoiser_net, build_vae
from siblings.models.presets import get_preset
from siblings.train import vae_loss


def autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def vae_step(preset, amp: bool):
    torch.manual_seed(0)
    vae = build_vae(preset)
    opt = torch.optim.Adam(vae.parameters(), lr=preset.vae_lr)
    labels = torch.randint(0, 7, (2, preset.size, preset.size, preset.size))
    x = torch.nn.functional.one_hot(labels, 7).permute(0, 4, 1, 2, 3).float()

    def step():
        with autocast(amp):
            loss = vae_loss(vae, x, preset.kl_weight)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def ldm_step(preset, amp: bool, batch: int = 16):
    torch.manual_seed(0)
    den = EDMPrecond(build_denoiser_net(preset), sigma_data=preset.sigma_data)
    opt = torch.optim.Adam(den.parameters(), lr=preset.ldm_lr)
    n = preset.latent_size
    z = torch.randn(batch, preset.latent_channels, n, n, n) * 0.5
    sigma = (torch.randn(batch) * preset.p_std + preset.p_mean).exp()
    noise = torch.randn_like(z)

    def step():
        with autocast(amp):
            loss = edm_loss(den, z, sigma, noise, preset.sigma_data).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def denoiser_call(model, amp: bool, batch: int):
    z = torch.randn(batch, *model.latent_shape)

    def call():
        model.amp = amp
        model.denoise(z, 1.0)

    return call


def sample(model, amp: bool, batch: int = 4):
    def run():
        model.amp = amp
        model.sample(batch, steps=20, seed=0, batch=batch)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    setup_threads(args.threads)
    print(describe_machine())
    preset = get_preset(args.preset)
    model = random_model(args.preset)
    cases = [
        ("VAE training step, batch 2", lambda amp: vae_step(preset, amp), args.repeats),
        ("denoiser training step, batch 16", lambda amp: ldm_step(preset, amp), args.repeats),
        ("denoiser call, no grad, batch 1", lambda amp: denoiser_call(model, amp, 1), 5),
        ("denoiser call, no grad, batch 8", lambda amp: denoiser_call(model, amp, 8), 5),
        ("20-step sample + decode, batch 4", lambda amp: sample(model, amp), 1),
    ]
    for name, make, repeats in cases:
        # Interleave fp32 and bf16 so that background load hits both alike.
        fns = {amp: make(amp) for amp in (False, True)}
        t = {amp: float("inf") for amp in fns}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(repeats):
            for amp, fn in fns.items():
                t[amp] = min(t[amp], best_of(fn, repeats=1, warmup=0))
        print(
            f"{name:34s} fp32 {t[False]:7.3f} s  bf16 {t[True]:7.3f} s  "
            f"speed-up {t[False] / t[True]:.2f}x"
        )


if __name__ == "__main__":
    main()
