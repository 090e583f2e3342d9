"""The loaded model's edits of a twin: encode it, SDEdit and inpainting (SPEC §4).

This module owns what ties the tensor methods of :mod:`siblings.diffusion.edit` to a
:class:`~siblings.models.ldm.LatentDiffusionModel`: the twin on the model grid, its
latent ``z`` (:func:`encode_twin`: the encoder's posterior mean, scaled, refined by
``invert_steps`` gradient steps that make its decoding reconstruct the twin;
:mod:`siblings.diffusion.inversion`; "Beyond the paper", the product's default;
``invert_steps=0`` is the paper), the noise from the model's seed streams
(:meth:`~siblings.models.ldm.LatentDiffusionModel.perturb_latents`,
:meth:`~siblings.models.ldm.LatentDiffusionModel.inpaint_latents`), decoding, and what
each edit measured (:class:`EditResult`). :class:`TwinEncoding` holds the twin's
round-trip Dice before and after inversion, and :func:`ood_warning` says when a twin is
out of the model's distribution (Dice below :data:`OOD_DICE_THRESHOLD`).

- :func:`perturb` (paper §3.3): siblings at sampling ratio ψ ∈ (0, 1]; ψ = 1 uses the
  same starting noise as unconditional sample ``i``.
- :func:`inpaint` (paper §3.4, eq. 5): the ``regenerate`` tissues made anew, the others
  kept through the latent keep mask. With ``keep="exact"`` (the default; "Beyond the
  paper") each decoded sibling is then composed in label space with the twin
  (:func:`siblings.diffusion.keep.compose_exact`), so its kept tissues are the twin's
  voxels exactly; ``keep="latent"`` is eq. 5 alone.

Sibling ``i`` depends only on (twin, method parameters, seed, i): batch size does not
change it.

Example
-------
>>> from siblings.models.ldm import LatentDiffusionModel
>>> from siblings.io import read_label_map
>>> from siblings.models.edits import perturb, inpaint
>>> model = LatentDiffusionModel.load()                                  # doctest: +SKIP
>>> twin = read_label_map("twin.nii.gz")                                 # doctest: +SKIP
>>> sibs = perturb(model, twin, psi=0.5, n=8, seed=0)                    # doctest: +SKIP
>>> local = inpaint(model, twin, regenerate={"LV"}, n=8, seed=0)         # doctest: +SKIP
>>> local.labels.shape, local.kept                                       # doctest: +SKIP
((8, 64, 64, 64), ('Ao', 'RV', 'RA', 'LA'))
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import anatomy
from ..diffusion.edit import latent_keep_mask, regenerated_tissues, start_step
from ..diffusion.inversion import DEFAULT_INVERT_LR, DEFAULT_INVERT_STEPS, InversionRecord
from ..diffusion.keep import KEEP_MODES, KeepMode, compose_exact
from ..errors import InputError, MissingTissueWarning
from ..io import LabelMap
from ..metrics.morphology import morphology
from ..metrics.overlap import kept_tissue_dice
from .guided import Guidance, target_report
from .ldm import LatentDiffusionModel
from .regressor import feature_array

OOD_DICE_THRESHOLD = 0.85
"""A twin whose round-trip Dice (after inversion) is below this for any tissue is out of
the model's distribution (SPEC §4, "Beyond the paper"): say so wherever it is edited."""

FINE_TUNE_HINT = (
    "fine-tune on your cohort: siblings train vae|ldm --init shipped --data PREPARED --out DIR "
    "(vae first, then ldm into the same DIR), then edit with --checkpoint DIR"
)


@dataclass
class EditResult:
    """Siblings of one twin: label maps ``(n, S, S, S)`` plus what made them."""

    labels: np.ndarray
    method: str
    params: dict
    indices: list[int]
    kept: tuple[str, ...] = ()
    keep_mask: np.ndarray | None = None  # latent-grid keep mask (inpainting)
    kept_dice: list[dict[str, float]] = field(default_factory=list)
    # Exact keep (inpainting): the decoded maps before composition, their kept-tissue
    # Dice (what eq. 5 alone kept) and what the seam rule changed, per sibling.
    decoded: np.ndarray | None = None
    decoded_kept_dice: list[dict[str, float]] = field(default_factory=list)
    seams: list[dict[str, int]] = field(default_factory=list)
    # The twin's latent the edit started from, and its round-trip Dice.
    encoding: TwinEncoding | None = None
    # Guided edits: the share of siblings within the target (models.guided.target_report).
    target: dict | None = None


def _twin_array(model: LatentDiffusionModel, twin: LabelMap | np.ndarray) -> np.ndarray:
    arr = twin.data if isinstance(twin, LabelMap) else np.asarray(twin)
    want = (model.preset.size,) * 3
    if arr.shape != want:
        where = f"{twin.path}: " if isinstance(twin, LabelMap) and twin.path else ""
        raise InputError(
            f"{where}twin grid is {'x'.join(map(str, arr.shape))} but the {model.preset.name!r} "
            f"model works on {'x'.join(map(str, want))}; prepare the twin first"
        )
    missing = [t for t in anatomy.TISSUES if not (arr == anatomy.LABELS[t]).any()]
    if missing:
        warnings.warn(
            f"twin has no {', '.join(missing)}: siblings will be edited around missing tissue",
            MissingTissueWarning,
            stacklevel=3,
        )
    return arr.astype(np.uint8)


@dataclass
class TwinEncoding:
    """The latent an edit starts from, and how well it reconstructs the twin.

    Attributes
    ----------
    latent : scaled latent ``(1, C, n, n, n)``, float32 on the CPU.
    invert_steps : the inversion's step budget (0: the posterior mean, the paper).
    record : what the inversion did (None for 0 steps).
    reconstruction : ``decode(latent)``, the twin's round trip ``(S, S, S)`` uint8.
    dice_posterior_mean : round-trip Dice per tissue of the posterior mean.
    dice : round-trip Dice per tissue of ``latent`` (after inversion).

    Dice is :func:`dice` per tissue: 1.0 when the twin and its round trip both lack the
    tissue, 0.0 when only one has it.
    """

    latent: torch.Tensor
    invert_steps: int
    record: InversionRecord | None
    reconstruction: np.ndarray
    dice_posterior_mean: dict[str, float]
    dice: dict[str, float]

    def out_of_distribution(self, threshold: float | None = None) -> dict[str, float]:
        """The tissues whose round-trip Dice (after inversion) is below ``threshold``
        (default :data:`OOD_DICE_THRESHOLD`)."""
        limit = OOD_DICE_THRESHOLD if threshold is None else threshold
        return {t: d for t, d in self.dice.items() if d < limit}

    def to_dict(self) -> dict:
        """The encoding's entry in run.json and manifests (no arrays)."""
        return {
            "method": "inversion" if self.invert_steps else "posterior mean",
            "invert_steps": self.invert_steps,
            "inversion": None if self.record is None else self.record.to_dict(),
            "roundtrip_dice_posterior_mean": {
                t: round(d, 4) for t, d in self.dice_posterior_mean.items()
            },
            "roundtrip_dice": {t: round(d, 4) for t, d in self.dice.items()},
            "ood_threshold": OOD_DICE_THRESHOLD,
            "out_of_distribution": {t: round(d, 4) for t, d in self.out_of_distribution().items()},
        }


def encode_twin(
    model: LatentDiffusionModel,
    twin: LabelMap | np.ndarray,
    invert_steps: int = DEFAULT_INVERT_STEPS,
    invert_lr: float = DEFAULT_INVERT_LR,
) -> TwinEncoding:
    """Encode a twin on the model grid: the posterior mean, refined by ``invert_steps``
    of inversion (:meth:`LatentDiffusionModel.invert`: soft Dice loss, the step with the
    best mean round-trip Dice kept), with its round-trip Dice per tissue before and
    after (:func:`kept_tissue_dice`)."""
    if int(invert_steps) < 0:
        raise InputError(f"invert steps must be 0 or more, got {invert_steps}")
    arr = _twin_array(model, twin)
    mu = model.encode(arr[None])
    recon_mu = model.decode(mu)[0]
    dice_mu = kept_tissue_dice(arr, recon_mu, anatomy.TISSUES)
    if not invert_steps:
        return TwinEncoding(mu, 0, None, recon_mu, dice_mu, dict(dice_mu))
    z, (record,) = model.invert(arr[None], int(invert_steps), invert_lr)
    recon = model.decode(z)[0]
    dice_z = kept_tissue_dice(arr, recon, anatomy.TISSUES)
    return TwinEncoding(z, int(invert_steps), record, recon, dice_mu, dice_z)


def ood_warning(encodings: dict[str, TwinEncoding], threshold: float | None = None) -> str | None:
    """One line for the twins (by name) out of the model's distribution, or None.

    Names each twin's tissues with round-trip Dice below ``threshold`` (default
    :data:`OOD_DICE_THRESHOLD`) and their figures, says what it means and what to do.
    """
    threshold = OOD_DICE_THRESHOLD if threshold is None else threshold
    bad = {name: e.out_of_distribution(threshold) for name, e in encodings.items()}
    bad = {name: d for name, d in bad.items() if d}
    if not bad:
        return None
    inverted = any(e.invert_steps for e in encodings.values())
    how = "after inversion" if inverted else "of the posterior mean"
    low = {name: ", ".join(f"{t} {v:.2f}" for t, v in d.items()) for name, d in bad.items()}
    if len(encodings) == 1:
        ((name, figures),) = low.items()
        who, these, them = f"twin {name} is", "this one", "its siblings"
    else:
        figures = "; ".join(f"{name}: {f}" for name, f in low.items())
        who, these, them = f"{len(bad)} of {len(encodings)} twins are", "these", "their siblings"
    return (
        f"{who} out of the model's distribution: round-trip Dice {how} below {threshold:g} "
        f"({figures}); the model has not learned hearts like {these} and {them} may not be "
        f"faithful; {FINE_TUNE_HINT}"
    )


def _twin_guidance(
    model: LatentDiffusionModel, twin: np.ndarray, guidance: Guidance | None
) -> tuple[Guidance | None, object]:
    """The guidance resolved against the twin's morphology, and its sampler hook."""
    if guidance is None:
        return None, None
    resolved = guidance.resolve(morphology(twin, spacing_mm=model.preset.voxel_mm))
    return resolved, resolved.guide(model.device)


def _guidance_params(guidance: Guidance | None) -> dict:
    return {} if guidance is None else {"guidance": guidance.record()}


def _target(model: LatentDiffusionModel, guidance: Guidance | None, labels: np.ndarray):
    if guidance is None:
        return None
    feats = [morphology(lab, spacing_mm=model.preset.voxel_mm) for lab in labels]
    return target_report(guidance.target, feature_array(feats))


def _batches(n: int, batch: int) -> list[list[int]]:
    if n < 1:
        raise InputError(f"number of siblings must be at least 1, got {n}")
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    return [list(range(b, min(b + batch, n))) for b in range(0, n, batch)]


def perturb(
    model: LatentDiffusionModel,
    twin: LabelMap | np.ndarray,
    psi: float,
    n: int,
    steps: int = 20,
    seed: int = 0,
    batch: int = 8,
    progress: bool = False,
    invert_steps: int = DEFAULT_INVERT_STEPS,
    encoding: TwinEncoding | None = None,
    guidance: Guidance | None = None,
) -> EditResult:
    """``n`` perturbational siblings of ``twin`` at sampling ratio ``psi`` (SPEC §4).

    The twin's latent ``z`` is its posterior mean refined by ``invert_steps`` steps of
    inversion (:func:`encode_twin`; 0 = the paper's posterior mean), or ``encoding``'s
    latent when one is given (from :func:`encode_twin` of this twin). ``guidance``
    steers the siblings towards a morphology target (:mod:`siblings.models.guided`;
    a target relative to the twin is resolved against the twin's morphology); the
    result's ``target`` then says what share of them reached it.
    """
    i0 = start_step(psi, steps)
    arr = _twin_array(model, twin)
    guidance, guide = _twin_guidance(model, arr, guidance)
    encoding = encoding or encode_twin(model, arr, invert_steps)
    z = encoding.latent.to(torch.float64)
    sig = model.sigmas(steps)[i0:]
    out = []
    from tqdm.auto import tqdm

    with tqdm(total=n, desc=f"perturb ψ={psi:g}", unit="map", disable=not progress) as bar:
        for idx in _batches(n, batch):
            out.append(model.decode(model.perturb_latents(z, idx, psi, steps, seed, guide)))
            bar.update(len(idx))
    labels = np.concatenate(out)
    return EditResult(
        labels=labels,
        method="perturbational",
        params={
            "psi": psi,
            "steps": steps,
            "start_step": i0,
            "recomputed_steps": steps - i0,
            "sigma_start": float(sig[0]),
            "seed": seed,
            "invert_steps": encoding.invert_steps,
            **_guidance_params(guidance),
        },
        indices=list(range(n)),
        encoding=encoding,
        target=_target(model, guidance, labels),
    )


def inpaint(
    model: LatentDiffusionModel,
    twin: LabelMap | np.ndarray,
    regenerate: Iterable[str] | str = ("LV",),
    n: int = 1,
    dilate: int | None = None,
    keep_background: bool = False,
    with_myocardium: bool = True,
    fresh_noise: bool = False,
    steps: int = 20,
    seed: int = 0,
    batch: int = 8,
    progress: bool = False,
    keep: KeepMode = "exact",
    invert_steps: int = DEFAULT_INVERT_STEPS,
    encoding: TwinEncoding | None = None,
    guidance: Guidance | None = None,
) -> EditResult:
    """``n`` localized siblings of ``twin`` with the ``regenerate`` tissues made anew (eq. 5).

    ``dilate`` defaults to the preset's number of latent dilations (≈ 11 mm).
    ``fresh_noise`` draws a new ε at every paste instead of one fixed ε per sibling.
    ``keep``: ``"exact"`` composes each decoded sibling with the twin in label space
    (:func:`~siblings.diffusion.keep.compose_exact`: kept-tissue Dice 1.0);
    ``"latent"`` returns the decoded maps as they are (the paper's method).
    The seed latent ``z`` is the twin's posterior mean refined by ``invert_steps`` steps
    of inversion (:func:`encode_twin`; 0 = the paper), or ``encoding``'s latent.
    ``guidance`` steers the regenerated tissues towards a morphology target, as in
    :func:`perturb`; the kept region is pasted before every step as without it.
    """
    if keep not in KEEP_MODES:
        raise InputError(f"unknown keep mode {keep!r}; use 'exact' or 'latent'")
    regen = regenerated_tissues(regenerate, with_myocardium)
    kept = tuple(t for t in anatomy.TISSUES if t not in regen)
    kept_labels = [anatomy.LABELS[t] for t in kept] + ([0] if keep_background else [])
    dilate = model.preset.inpaint_dilations if dilate is None else int(dilate)
    if dilate < 0:
        raise InputError(f"dilate must be >= 0, got {dilate}")
    arr = _twin_array(model, twin)
    mask = latent_keep_mask(arr, kept_labels, model.preset.latent_size, dilate)
    guidance, guide = _twin_guidance(model, arr, guidance)
    encoding = encoding or encode_twin(model, arr, invert_steps)
    z = encoding.latent
    out = []
    from tqdm.auto import tqdm

    with tqdm(
        total=n, desc=f"inpaint {','.join(sorted(regen))}", unit="map", disable=not progress
    ) as bar:
        for idx in _batches(n, batch):
            lat = model.inpaint_latents(z, mask, idx, steps, seed, fresh_noise, guide)
            out.append(model.decode(lat))
            bar.update(len(idx))
    decoded = np.concatenate(out)
    labels, seams = decoded, []
    if keep == "exact":
        composed = [compose_exact(arr, lab, kept_labels) for lab in decoded]
        labels = np.stack([c.labels for c in composed])
        seams = [c.record() for c in composed]
    return EditResult(
        labels=labels,
        method="localized",
        params={
            "regenerate": sorted(regen),
            "dilate": dilate,
            "keep_background": keep_background,
            "fresh_noise": fresh_noise,
            "steps": steps,
            "seed": seed,
            "kept_latent_fraction": float(mask.mean()),
            "keep": keep,
            "invert_steps": encoding.invert_steps,
            **_guidance_params(guidance),
        },
        indices=list(range(n)),
        kept=kept,
        keep_mask=mask,
        kept_dice=[kept_tissue_dice(arr, lab, kept) for lab in labels],
        decoded=decoded if keep == "exact" else None,
        decoded_kept_dice=(
            [kept_tissue_dice(arr, lab, kept) for lab in decoded] if keep == "exact" else []
        ),
        seams=seams,
        encoding=encoding,
        target=_target(model, guidance, labels),
    )
