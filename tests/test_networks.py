"""The networks' gradients under CPU bf16 autocast agree with fp32 (the oneDNN guard)."""

from __future__ import annotations

import pytest
import torch

from conftest import micro_preset
from siblings.models.networks import _Conv3dBf16Guard, build_denoiser_net, build_vae


def _grads(net: torch.nn.Module, inputs: tuple, amp: bool) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = net(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    out.float().square().mean().backward()
    return {n: q.grad.detach().clone() for n, q in net.named_parameters() if q.grad is not None}


def _relative_errors(net: torch.nn.Module, inputs: tuple) -> dict[str, float]:
    bf16, fp32 = _grads(net, inputs, True), _grads(net, inputs, False)
    return {
        # A key bias has no gradient in exact arithmetic (softmax ignores it): skip.
        n: float((bf16[n] - fp32[n]).norm() / fp32[n].norm())
        for n in fp32
        if not n.endswith("to_k.bias")
    }


def test_every_conv3d_of_both_networks_is_guarded():
    p = micro_preset()
    for net in (build_vae(p), build_denoiser_net(p)):
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
        assert convs and all(type(m) is _Conv3dBf16Guard for m in convs)


def test_guarded_conv_keeps_nn_conv3d_state_dict_and_result():
    torch.manual_seed(0)
    plain = torch.nn.Conv3d(4, 5, 3, padding=1)
    guarded = torch.nn.Conv3d(4, 5, 3, padding=1)
    guarded.load_state_dict(plain.state_dict())
    guarded.__class__ = _Conv3dBf16Guard
    assert guarded.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 4, 6, 6, 6)
    assert torch.equal(guarded(x), plain(x))


@pytest.mark.parametrize("depth", [2, 4])
def test_bf16_conv_weight_gradient_matches_fp32(depth):
    """The weight gradient of a 3×3×3 convolution whose input has depth 2 was wrong
    (relative error ≈ 1 or not finite) under bf16 autocast on an AVX512-BF16 CPU."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(32, 32, 3, padding=1)
    conv.__class__ = _Conv3dBf16Guard
    x = torch.randn(2, 32, depth, 4, 4)
    errors = _relative_errors(conv, (x,))
    assert max(errors.values()) < 0.05, errors


def test_micro_denoiser_bf16_gradients_match_fp32():
    """Its U-Net reaches a 2³ bottom level (latent 8³), where the bug struck."""
    torch.manual_seed(0)
    net = build_denoiser_net(micro_preset())
    with torch.no_grad():  # MONAI zero-initialises output layers: give every layer a gradient
        for q in net.parameters():
            q.add_(torch.randn_like(q) * 0.05)
    x, c_noise = torch.randn(2, 3, 8, 8, 8), torch.tensor([0.3])
    errors = _relative_errors(net, (x, c_noise))
    worst = max(errors, key=errors.get)
    # bf16 keeps 8 bits of mantissa (0.4%); through the network this grows to a few %.
    assert errors[worst] < 0.2, (worst, errors[worst])
