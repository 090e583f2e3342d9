"""Encoding by inversion: the latent that reconstructs a label map as well as the decoder can.

The paper starts every edit from the encoder's posterior mean (SPEC §4). The decoder
of that mean reconstructs the twin only as well as the encoder generalises; for a twin
unlike the training cohort it can lose whole tissues. Inversion ("Beyond the paper")
refines the posterior mean by gradient steps on ``z`` alone (the networks stay fixed)
so that ``decode(z)``, read as logits, matches the twin's one-hot map, with a fixed
step budget and an early stop:

    z* = argmin_z  loss(decode(z) / T, x),   z_0 = μ(x),   Adam, at most ``steps`` steps.

Two losses: ``"dice"`` (the default), one minus the soft Dice of softmax(decode(z) / T)
against the one-hot map, averaged over the labels the map holds; and
``"cross_entropy"``, the mean cross-entropy over voxels. The shipped decoders were
trained with an MSE on one-hot maps, so their outputs lie near [0, 1]: read as logits
at T = 1 they give a flat softmax, and the mean cross-entropy is lowered mostly by
making the 90% background more confident. Measured on held-out phantoms during
development (not among docs/editing.md's tables), cross-entropy at T = 1 lowered its loss while the LV's round-trip
Dice fell from 0.96 to 0.29 in 50 steps; the soft Dice at T = 0.1 weighs each tissue
equally, as the Dice reported does, and raised every tissue's.

The latent returned is the best one seen: by ``score`` when given (higher is better;
:meth:`siblings.models.ldm.LatentDiffusionModel.invert` scores the round-trip Dice, so
the Dice after is never below the Dice before), else by the loss. 0 steps returns
``z_0`` itself (the paper). Nothing here is random: the same inputs give the same
latent (torch's deterministic algorithms are switched on for the run).

This module works on tensors only: the caller passes a ``decode`` function (the model
method handles the latent scale factor and autocast).

Example
-------
>>> import torch
>>> from siblings.diffusion.inversion import invert_latent
>>> w = torch.randn(4, 3)                        # a linear "decoder": 3 latents -> 4 logits
>>> decode = lambda z: torch.einsum("cl,bl...->bc...", w, z)
>>> target = torch.tensor([[[2, 0], [1, 3]]])    # (B, H, W) labels
>>> z0 = torch.zeros(1, 3, 2, 2)
>>> z, record = invert_latent(decode, z0, target, steps=50, lr=0.1)
>>> record.loss_after < record.loss_before
True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import InputError

InversionLoss = Literal["dice", "cross_entropy"]
LOSSES: tuple[str, ...] = ("dice", "cross_entropy")

DEFAULT_INVERT_STEPS = 50
"""The product's step budget (``--invert-steps``); 0 is the paper's posterior mean.
Measured with benchmarks/bench_inversion.py (docs/editing.md, "Encoding by inversion"):
every twin there used all 50 steps, so a larger budget is still to be measured."""
DEFAULT_INVERT_LR = 0.02
"""Adam's learning rate, in units of the scaled latent (standard deviation 0.5). Adam's
first steps move every element by about this much: 0.05 lowered the round trip of
twins the VAE reconstructs well, 0.01 gained half as much as 0.02 on twins it does not
(measured during development; not re-measured with the current weights)."""
DEFAULT_LOSS: InversionLoss = "dice"
DEFAULT_TEMPERATURE = 0.1
"""Decoder outputs are divided by this before the softmax (see the module docstring)."""
DEFAULT_PATIENCE = 5
DEFAULT_MIN_IMPROVEMENT = 0.01
"""Early stop: the last ``patience`` steps lowered the loss by less than this fraction
of the decrease since the start."""


@dataclass(frozen=True)
class InversionRecord:
    """What one inversion did.

    Attributes
    ----------
    budget : the step budget asked for.
    steps : gradient steps taken (≤ budget; fewer when it stopped early).
    best_step : after how many steps the returned latent was reached (0: the start).
    loss_before, loss_after : the loss of the starting and of the returned latent.
    score_before, score_after : the score of both (None without a score).
    stopped_early : the last ``patience`` steps lowered the loss by less than
        ``min_improvement`` times what the steps before had.
    loss, temperature, lr, patience, min_improvement : the settings.
    """

    budget: int
    steps: int
    best_step: int
    loss_before: float
    loss_after: float
    score_before: float | None
    score_after: float | None
    stopped_early: bool
    loss: str
    temperature: float
    lr: float
    patience: int
    min_improvement: float

    def to_dict(self) -> dict:
        """The record as JSON-ready numbers."""
        return asdict(self)


def _probabilities(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``target`` (labels ``(B, …)`` or one-hot ``(B, C, …)``) as ``like``'s one-hot."""
    if target.dtype.is_floating_point:
        return target.to(like.dtype)
    oh = F.one_hot(target.long(), like.shape[1]).to(like.dtype)
    return oh.movedim(-1, 1)


def _logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if logits.dtype in (torch.float16, torch.bfloat16):  # autocast outputs
        logits = logits.float()
    return logits / temperature


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean cross-entropy of ``logits / temperature`` ``(B, C, …)`` against ``target``.

    ``target`` holds integer labels ``(B, …)`` or class probabilities ``(B, C, …)`` (a
    one-hot map). The mean is taken over the voxels of each map and summed over the
    batch, so each map's latent gets the gradient of its own loss alone.
    """
    x = _logits(logits, temperature)
    if target.dtype.is_floating_point:
        per_voxel = F.cross_entropy(x, target.to(x.dtype), reduction="none")
    else:
        per_voxel = F.cross_entropy(x, target.long(), reduction="none")
    return per_voxel.flatten(1).mean(dim=1).sum()


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """One minus the soft Dice of softmax(``logits / temperature``) against ``target``.

    Per map, the soft Dice ``2 Σ p·t / (Σ p + Σ t)`` of every label the target holds,
    averaged over those labels (each tissue weighs the same, however small), summed
    over the batch. ``target`` as for :func:`cross_entropy`.
    """
    x = _logits(logits, temperature)
    p = torch.softmax(x, dim=1).flatten(2)
    t = _probabilities(target, x).flatten(2)
    inter, total = (p * t).sum(-1), p.sum(-1) + t.sum(-1)
    present = t.sum(-1) > 0
    dice = 2 * inter / total.clamp_min(1e-12)
    per_map = ((1 - dice) * present).sum(-1) / present.sum(-1).clamp_min(1)
    return per_map.sum()


_LOSS_FUNCTIONS = {"dice": soft_dice_loss, "cross_entropy": cross_entropy}


def _set_deterministic(mode: bool, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms`` without importing torch's compiler.

    The public function also sets ``torch._inductor.config.deterministic``, and its first
    call imports ``torch._inductor`` and ``torch._dynamo`` for that: 1.8 s of CPU on the
    2-core AMD EPYC, once per process (5% of ``siblings demo``). Nothing here is
    compiled, so where that module is not loaded yet only the eager flag is set (the same
    call the public function makes); once loaded, the public function is used.
    """
    import sys

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor.config" in sys.modules or setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """torch's deterministic algorithms for the block, then the previous setting."""
    was, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    _set_deterministic(True, warn_only=True)
    try:
        yield
    finally:
        _set_deterministic(was, warn_only=warn_only)


def invert_latent(
    decode: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    target: torch.Tensor,
    steps: int = DEFAULT_INVERT_STEPS,
    lr: float = DEFAULT_INVERT_LR,
    *,
    loss: InversionLoss = DEFAULT_LOSS,
    temperature: float = DEFAULT_TEMPERATURE,
    score: Callable[[torch.Tensor], float] | None = None,
    patience: int = DEFAULT_PATIENCE,
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
) -> tuple[torch.Tensor, InversionRecord]:
    """Refine ``z0`` so that ``decode(z)`` reconstructs ``target`` (module docstring).

    Parameters
    ----------
    decode : latent ``(B, …)`` → logits ``(B, C, …)``, differentiable in the latent.
    z0 : the starting latent (the posterior mean); not modified.
    target : labels ``(B, …)`` (integer) or a one-hot map ``(B, C, …)`` (float).
    steps : the step budget; 0 returns ``z0`` unchanged.
    lr : Adam's learning rate (in the latent's units).
    loss : ``"dice"`` (:func:`soft_dice_loss`) or ``"cross_entropy"``
        (:func:`cross_entropy`), of the decoder outputs divided by ``temperature``.
    score : logits → a number to maximise (e.g. the round-trip Dice of their argmax);
        the latent returned is the best scored one (ties go to the lower loss, then to
        the earlier step, so ``z0`` unless a step beats it). Without it, the lowest loss.
    patience, min_improvement : stop when the last ``patience`` steps lowered the best
        loss by less than ``min_improvement`` times the decrease since the start (0: only
        when they did not lower it at all). The tolerance is relative to the progress,
        not to the loss, whose floor depends on the decoder.

    Returns
    -------
    (latent, record)
        The chosen latent (``z0``'s dtype and device, detached) and an
        :class:`InversionRecord`. A batch is optimised together (one early stop for all);
        invert one map at a time for latents that depend on their map alone.
    """
    if steps < 0:
        raise InputError(f"invert steps must be 0 or more, got {steps}")
    if not lr > 0:
        raise InputError(f"invert learning rate must be positive, got {lr}")
    if loss not in _LOSS_FUNCTIONS:
        raise InputError(f"unknown inversion loss {loss!r}; use {' or '.join(LOSSES)}")
    if not temperature > 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    if patience < 1:
        raise InputError(f"patience must be at least 1, got {patience}")
    loss_fn = _LOSS_FUNCTIONS[loss]
    with _deterministic():
        z = z0.detach().clone().requires_grad_(steps > 0)
        opt = torch.optim.Adam([z], lr=lr)
        best_z, best_t = z0.detach().clone(), 0
        best_key = (-math.inf, 0.0)  # (score or -loss, -loss): larger is better
        chosen_loss, chosen_score = math.nan, None
        before, score_before = math.nan, None
        lowest, history = math.inf, []  # the lowest loss after t steps
        stopped, t = False, 0
        for t in range(steps + 1):
            with torch.set_grad_enabled(t < steps):
                logits = decode(z)
                value_t = loss_fn(logits, target, temperature)
            value = float(value_t.detach())
            s = None if score is None else float(score(logits.detach()))
            if t == 0:
                before, score_before = value, s
            key = (-value if s is None else s, -value)
            if key > best_key:
                best_key, best_t, chosen_loss, chosen_score = key, t, value, s
                if t > 0:
                    best_z = z.detach().clone()
            lowest = min(lowest, value)
            history.append(lowest)
            if t == steps or not math.isfinite(value):
                break
            if t >= patience and history[t - patience] - lowest <= min_improvement * (
                before - lowest
            ):
                stopped = True
                break
            (z.grad,) = torch.autograd.grad(value_t, z)
            opt.step()
    record = InversionRecord(
        budget=int(steps),
        steps=int(t),
        best_step=int(best_t),
        loss_before=before,
        loss_after=chosen_loss if math.isfinite(chosen_loss) else before,
        score_before=score_before,
        score_after=chosen_score if chosen_score is not None else score_before,
        stopped_early=stopped,
        loss=loss,
        temperature=float(temperature),
        lr=float(lr),
        patience=int(patience),
        min_improvement=float(min_improvement),
    )
    return best_z.to(z0.dtype), record


__all__ = [
    "DEFAULT_INVERT_LR",
    "DEFAULT_INVERT_STEPS",
    "DEFAULT_LOSS",
    "DEFAULT_MIN_IMPROVEMENT",
    "DEFAULT_PATIENCE",
    "DEFAULT_TEMPERATURE",
    "LOSSES",
    "InversionRecord",
    "cross_entropy",
    "invert_latent",
    "soft_dice_loss",
]
