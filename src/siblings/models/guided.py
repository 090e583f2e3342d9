"""Guided sampling with the loaded model: a morphology target, a scale, the regressor.

:class:`Guidance` ties a target written in the condition language
(:func:`siblings.metrics.condition.parse_condition`: ``"RV_volume_ml = 130 ± 5"``,
``"LV_volume_ml > 1.2*twin"``) to the morphology regressor
(:mod:`siblings.models.regressor`) and gives the ``guide`` hook of the Heun sampler
(:func:`siblings.diffusion.guidance.classifier_guide`) for unconditional sampling,
perturbational and localized editing alike. Targets relative to the twin are resolved
against the twin's own morphology (:meth:`Guidance.resolve`). :func:`target_report`
says what share of the siblings made lands within the target, so a target the model
cannot reach is reported, not hidden.

Example
-------
>>> from siblings.models.ldm import LatentDiffusionModel
>>> from siblings.models.guided import load_guidance
>>> model = LatentDiffusionModel.load()                                      # doctest: +SKIP
>>> guidance = load_guidance(model, "RV_volume_ml = 130 ± 5", scale=2.0)     # doctest: +SKIP
>>> z = model.sample_latents(range(4), guide=guidance.guide())               # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import anatomy
from ..checkpoint import CheckpointError, file_hash
from ..diffusion.guidance import Term, classifier_guide
from ..errors import InputError
from ..metrics.condition import Condition, parse_condition
from .regressor import MorphologyRegressor, load_regressor, regressor_path

DEFAULT_GUIDANCE_SCALE = 1.0
"""γ of :func:`~siblings.diffusion.guidance.classifier_guide` unless asked otherwise."""

_KIND = {"=": "equal", ">": "above", ">=": "above", "<": "below", "<=": "below"}


@dataclass
class Guidance:
    """A morphology target, its guidance scale and the regressor that reads latents.

    ``target`` may be relative to the twin (``…*twin``); :meth:`resolve` settles it.
    """

    target: Condition
    scale: float
    regressor: MorphologyRegressor
    regressor_path: Path | None = None
    regressor_sha256: str = ""
    hold: tuple[str, ...] = ()

    def resolve(self, twin: Mapping[str, float] | None) -> Guidance:
        """This guidance with a relative target resolved against ``twin``'s morphology."""
        if not self.target.relative:
            return self
        if twin is None:
            raise InputError(
                f"target {self.target} is relative to a twin; only an edit has one "
                "(sampling needs absolute numbers, e.g. 'LV_volume_ml > 150')"
            )
        return replace(self, target=self.target.resolve(twin))

    def terms(self) -> list[Term]:
        """The target's clauses as :class:`~siblings.diffusion.guidance.Term` s in the
        regressor's standardised units."""
        if self.target.relative:
            raise InputError(f"target {self.target} must be resolved against the twin first")
        mean = self.regressor.feature_mean.double()
        std = self.regressor.feature_std.double()
        out = []
        for c in self.target.clauses:
            j = anatomy.MORPHOLOGY_COLUMNS.index(c.column)
            value = (c.value - float(mean[j])) / float(std[j])
            out.append(Term(j, _KIND[c.op], value, c.tol / float(std[j])))
        return out

    def guide(self, device: torch.device | str = "cpu"):
        """The ``guide(z, σ)`` hook of :func:`~siblings.diffusion.edm.heun_sample`."""
        net = self.regressor.to(device)

        def predict(z: torch.Tensor, sigma: float) -> torch.Tensor:
            return net(z.to(device), torch.full((len(z),), sigma, device=device))

        hold = [anatomy.MORPHOLOGY_COLUMNS.index(c) for c in self.hold]
        return classifier_guide(predict, self.terms(), self.scale, net.residual_var, hold)

    def record(self) -> dict[str, Any]:
        """What a manifest and run.json record of the guidance."""
        return {
            "target": str(self.target),
            "scale": self.scale,
            "regressor": str(self.regressor_path) if self.regressor_path else None,
            "regressor_sha256": self.regressor_sha256,
            "likelihood": "Gaussian (=) / probit soft threshold (<, >), variance tol² + the "
            "regressor's residual variance at σ",
            **({"hold": list(self.hold)} if self.hold else {}),
        }


def parse_hold(hold: str | Sequence[str] | None, target: Condition) -> tuple[str, ...]:
    """The morphology columns ``hold`` names, in :data:`MORPHOLOGY_COLUMNS` order.

    ``hold``: comma-separated (or a sequence of) column names and chambers (``LV``,
    ``RV``, ``LA``, ``RA``: their volume and both axes), or ``others`` (every column the
    target does not name). A column the target names cannot be held.
    """
    if hold is None or hold == "" or hold == ():
        return ()
    items = [h.strip() for h in (hold.split(",") if isinstance(hold, str) else hold)]
    named = {c.column for c in target.clauses}
    cols: set[str] = set()
    for item in items:
        if item == "others":
            cols |= set(anatomy.MORPHOLOGY_COLUMNS) - named
        elif item in anatomy.MORPHOLOGY_COLUMNS:
            cols.add(item)
        elif item in ("LV", "RV", "LA", "RA"):
            cols |= {c for c in anatomy.MORPHOLOGY_COLUMNS if c.startswith(item + "_")}
        else:
            raise InputError(
                f"{{hold}}: unknown feature {item!r}; use LV, RV, LA, RA, others or one of "
                + ", ".join(anatomy.MORPHOLOGY_COLUMNS),
                arguments=("hold",),
            )
    clash = sorted(cols & named)
    if clash:
        raise InputError(
            f"{{hold}}: {', '.join(clash)} is in the target {target}; a feature cannot be "
            "both steered and held",
            arguments=("hold",),
        )
    return tuple(c for c in anatomy.MORPHOLOGY_COLUMNS if c in cols)


def load_guidance(
    model: Any,
    target: str | Condition,
    scale: float = DEFAULT_GUIDANCE_SCALE,
    regressor: str | os.PathLike | None = None,
    hold: str | Sequence[str] | None = None,
) -> Guidance:
    """A :class:`Guidance` for ``model`` (a loaded :class:`LatentDiffusionModel`).

    ``regressor``: a ``regressor.safetensors`` file or a folder holding one; default the
    model's checkpoint folder (the shipped weights carry one). A regressor trained on
    another VAE's latents is refused. ``hold``: features the guidance must not move
    (:func:`parse_hold`; the gradient is projected off theirs,
    :func:`siblings.diffusion.guidance.hold_projection`).
    """
    cond = parse_condition(target)
    held = parse_hold(hold, cond)
    if not np.isfinite(scale) or scale < 0:
        raise InputError(
            f"{{guidance_scale}} must be 0 or more, got {scale}", arguments=("guidance_scale",)
        )
    path = regressor_path(regressor if regressor is not None else model.checkpoint)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no morphology regressor for this checkpoint; train one with "
            "`siblings train regressor --checkpoint DIR --data DIR --out DIR` and pass "
            "{regressor}",
            arguments={"regressor": "regressor"},
        )
    vae = Path(model.checkpoint) / "vae.safetensors" if model.checkpoint else None
    expect = file_hash(vae) if vae is not None and vae.exists() else None
    net, _, sha = load_regressor(path, expect_vae_sha256=expect)
    return Guidance(cond, float(scale), net, path, sha, held)


def target_report(target: Condition, features: np.ndarray) -> dict[str, Any]:
    """Share of maps within the target ``(n, 12)`` features (per clause and all), with
    a note when none or few reach it."""
    share = target.share(features)
    n = len(np.asarray(features).reshape(-1, len(anatomy.MORPHOLOGY_COLUMNS)))
    within = round(share["all"] * n)
    report: dict[str, Any] = {
        "target": str(target),
        "n": n,
        "within": within,
        "share_within": round(share["all"], 4),
        "share_per_clause": {k: round(v, 4) for k, v in share.items() if k != "all"},
    }
    if within == 0:
        report["note"] = (
            f"no map reached the target {target}: it may lie outside what the model can "
            "make; raise the guidance scale, widen the tolerance or choose a nearer target"
        )
    elif share["all"] < 0.5:
        report["note"] = f"only {within} of {n} maps reached the target {target}"
    return report


__all__ = ["DEFAULT_GUIDANCE_SCALE", "Guidance", "load_guidance", "parse_hold", "target_report"]
