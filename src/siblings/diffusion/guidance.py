"""Classifier guidance for the Heun sampler: steer samples towards a target morphology.

Tensors only (no model class, no file): a differentiable ``predict(z, σ)`` of the
features of a noisy latent (the morphology regressor of
:mod:`siblings.models.regressor`, in its standardised units), the target as
:class:`Term` s on those features, and a guidance scale γ give the ``guide`` hook of
:func:`siblings.diffusion.edm.heun_sample`:

    D'(z; σ) = D(z; σ) + γ·σ²·∇_z log p(target | z_σ)

Since the score of the noisy marginal is ``(D − z)/σ²``, this adds ``γ·∇ log p(y | z_σ)``
to it (Dhariwal & Nichol 2021, in EDM's parametrisation). With γ = 1 and an exact
likelihood the sampler draws from ``p(z | y)``; tests/test_guidance.py checks this in
closed form on Gaussian data with a linear regressor.

The likelihood of each term is read with the regressor's own error at σ added to the
target's tolerance (``var = tol² + v_j(σ)``, ``v`` from :meth:`MorphologyRegressor.residual_var`):

- ``equal``: Gaussian, ``log N(value; f_j, var)``, the tolerance its standard deviation;
- ``above`` / ``below``: soft threshold, ``log Φ(±(f_j − value)/sqrt(var))``.

Terms add up (a conjunction of independent clauses). ``value`` may hold one number per
batch row (targets relative to each sibling's own twin).

Example
-------
>>> import torch
>>> from siblings.diffusion.guidance import Term, classifier_guide
>>> predict = lambda z, sigma: z.flatten(1)[:, :1]         # feature 0 = first element
>>> guide = classifier_guide(predict, [Term(0, "equal", 2.0, 0.5)], scale=1.0)
>>> guide(torch.zeros(1, 1, 2, 2, 2), 1.0).flatten()[:2]   # σ²·(2 − 0)/0.5² on element 0
tensor([8., 0.], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError

Predictor = Callable[[torch.Tensor, float], torch.Tensor]
"""``predict(z, σ) -> (B, F)``: features of noisy latents, differentiable in ``z``."""

KINDS = ("equal", "above", "below")


@dataclass(frozen=True)
class Term:
    """One clause of a target on feature ``index``, in the predictor's units.

    ``kind``: ``"equal"`` (Gaussian of standard deviation ``tol`` around ``value``),
    ``"above"`` or ``"below"`` (soft threshold at ``value``, softened by ``tol``).
    ``value``: a number, or a tensor with one value per batch row.
    """

    index: int
    kind: str
    value: float | torch.Tensor
    tol: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown target kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.tol < 0:
            raise InputError(f"target tolerance must be 0 or more, got {self.tol}")


def log_likelihood(
    pred: torch.Tensor,
    terms: Sequence[Term],
    residual_var: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(target | prediction) per batch row ``(B,)``.

    ``pred``: ``(B, F)`` predictions; ``residual_var``: ``(F,)`` the predictor's error
    variance at this σ (None: 0, then an ``equal`` term needs ``tol`` > 0).
    """
    total = torch.zeros(pred.shape[0], dtype=pred.dtype, device=pred.device)
    for t in terms:
        var = torch.as_tensor(t.tol**2, dtype=pred.dtype, device=pred.device)
        if residual_var is not None:
            var = var + residual_var[t.index].to(pred.dtype)
        var = var.clamp_min(1e-12)
        value = torch.as_tensor(t.value, dtype=pred.dtype, device=pred.device)
        f = pred[:, t.index]
        if t.kind == "equal":
            total = total - 0.5 * (f - value) ** 2 / var
        else:
            u = (f - value) / var.sqrt()
            total = total + torch.special.log_ndtr(u if t.kind == "above" else -u)
    return total


def hold_projection(grad: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """``grad`` ``(B, N)`` without its part in the span of ``held`` ``(B, H, N)``, row by
    row: the step then leaves the held predictions unchanged to first order."""
    g, j = grad.to(torch.float64), held.to(torch.float64)
    gram = j @ j.transpose(1, 2)  # (B, H, H)
    ridge = 1e-10 * gram.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30)
    gram = gram + ridge[:, None, None] * torch.eye(j.shape[1], dtype=j.dtype, device=j.device)
    coef = torch.linalg.solve(gram, (j @ g[:, :, None]))  # (B, H, 1)
    return g - (j.transpose(1, 2) @ coef)[:, :, 0]


def classifier_guide(
    predict: Predictor,
    terms: Sequence[Term],
    scale: float = 1.0,
    residual_var: Callable[[float], torch.Tensor] | None = None,
    hold: Sequence[int] = (),
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The ``guide(z, σ)`` hook of :func:`~siblings.diffusion.edm.heun_sample`:
    ``scale·σ²·∇_z log p(target | z_σ)`` (float64, like the state).

    ``residual_var(σ)``: the predictor's error variance ``(F,)`` at σ, added to each
    term's tolerance² (None: the tolerance alone). The gradient of each row depends on
    that row only (the likelihood is a sum over rows and the predictor acts per row).
    ``hold``: indices of features the guidance must not move: the gradient is projected
    off the span of their gradients (:func:`hold_projection`), so the step changes the
    target's features and, to first order, none of these; what the denoiser does to
    them is left to it.
    """
    if scale < 0:
        raise InputError(f"guidance scale must be 0 or more, got {scale}")
    if not terms:
        raise InputError("a guidance target needs at least one clause")
    hold = tuple(int(j) for j in hold)
    if set(hold) & {t.index for t in terms}:
        raise InputError("a held feature cannot also be a target")

    def guide(z: torch.Tensor, sigma: float) -> torch.Tensor:
        if scale == 0 or sigma == 0:
            return torch.zeros_like(z, dtype=torch.float64)
        with torch.enable_grad():
            x = z.detach().to(torch.float32).requires_grad_(True)
            pred = predict(x, float(sigma))
            v = residual_var(float(sigma)) if residual_var is not None else None
            logp = log_likelihood(pred.to(torch.float64), terms, v).sum()
            (grad,) = torch.autograd.grad(logp, x, retain_graph=bool(hold))
            if hold:
                held = [
                    torch.autograd.grad(pred[:, j].sum(), x, retain_graph=k + 1 < len(hold))[0]
                    for k, j in enumerate(hold)
                ]
                flat = hold_projection(
                    grad.flatten(1), torch.stack([h.flatten(1) for h in held], 1)
                )
                grad = flat.reshape(grad.shape)
        return float(scale) * float(sigma) ** 2 * grad.to(torch.float64)

    return guide


__all__ = ["KINDS", "Predictor", "Term", "classifier_guide", "hold_projection", "log_likelihood"]
