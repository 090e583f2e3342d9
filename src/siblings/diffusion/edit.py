"""Digital siblings: perturbational (SDEdit) and localized (inpainting) editing (SPEC §4).

Both methods start from the seed twin's latent ``z`` (the encoder's posterior mean,
scaled) and run the same Heun sampler as unconditional generation:

- :func:`perturb` (paper §3.3): for sampling ratio ψ ∈ (0, 1], recompute the last
  ``k = max(1, round(ψ·N))`` of N steps, starting at ``σ_s = σ_{N−k}`` from
  ``z + σ_s·ε``. ψ = 1 starts at σmax (siblings approach unconditional samples); a
  tiny ψ returns (nearly) the VAE reconstruction of the twin.
- :func:`inpaint` (paper §3.4, eq. 5): the tissues to keep are pasted back at the
  current noise level before every denoiser call, ``z_σ ← (z + σ·ε)·m + (1 − m)·z_σ``,
  with a keep mask ``m`` on the latent grid (a latent voxel is kept if any of its voxels
  is kept, then dilated with 6-connectivity). At σ = 0 the kept region equals ``z``.
  With ``keep="exact"`` (the default; "Beyond the paper") each decoded sibling is then
  composed in label space with the twin (:func:`siblings.diffusion.keep.compose_exact`),
  so its kept tissues are the twin's voxels exactly; ``keep="latent"`` is eq. 5 alone.

Sibling ``i`` depends only on (twin, method parameters, seed, i): batch size does not
change it. ψ = 1 uses the same starting noise as unconditional sample ``i``.

Example
-------
>>> from siblings.models.ldm import LatentDiffusionModel
>>> from siblings.io import read_label_map
>>> from siblings.diffusion.edit import perturb, inpaint
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
import torch.nn.functional as F

from .. import anatomy
from ..io import LabelMap
from ..models.ldm import LatentDiffusionModel, noise_for
from .edm import heun_sample
from .keep import KEEP_MODES, KeepMode, compose_exact

# Noise streams: 0 = starting noise (shared with unconditional sampling), 1 = the
# fixed ε of the pasted seed latent (inpainting), 2+ = fresh ε per paste.
_START, _PASTE = 0, 1


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


def start_step(psi: float, steps: int) -> int:
    """Index i of the schedule where perturbational editing starts: N − max(1, round(ψN))."""
    if not 0.0 < psi <= 1.0:
        raise ValueError(f"sampling ratio psi must be in (0, 1], got {psi}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    k = max(1, round(psi * steps))
    return steps - k


def _twin_array(model: LatentDiffusionModel, twin: LabelMap | np.ndarray) -> np.ndarray:
    arr = twin.data if isinstance(twin, LabelMap) else np.asarray(twin)
    want = (model.preset.size,) * 3
    if arr.shape != want:
        where = f"{twin.path}: " if isinstance(twin, LabelMap) and twin.path else ""
        raise ValueError(
            f"{where}twin grid is {'x'.join(map(str, arr.shape))} but the {model.preset.name!r} "
            f"model works on {'x'.join(map(str, want))}; prepare the twin first"
        )
    missing = [t for t in anatomy.TISSUES if not (arr == anatomy.LABELS[t]).any()]
    if missing:
        warnings.warn(
            f"twin has no {', '.join(missing)}: siblings will be edited around missing tissue",
            stacklevel=3,
        )
    return arr.astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    inter = np.logical_and(a, b).sum()
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * inter / total)


def kept_tissue_dice(
    twin: np.ndarray, sibling: np.ndarray, tissues: Iterable[str]
) -> dict[str, float]:
    """Dice of each kept tissue, twin vs sibling (how well localized editing preserved it)."""
    return {t: dice(twin == anatomy.LABELS[t], sibling == anatomy.LABELS[t]) for t in tissues}


def _batches(n: int, batch: int) -> list[list[int]]:
    if n < 1:
        raise ValueError(f"number of siblings must be at least 1, got {n}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
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
) -> EditResult:
    """``n`` perturbational siblings of ``twin`` at sampling ratio ``psi`` (SPEC §4)."""
    i0 = start_step(psi, steps)
    arr = _twin_array(model, twin)
    z = model.encode(arr[None]).to(torch.float64)
    sig = model.sigmas(steps)[i0:]
    out = []
    from tqdm.auto import tqdm

    with tqdm(total=n, desc=f"perturb ψ={psi:g}", unit="map", disable=not progress) as bar:
        for idx in _batches(n, batch):
            eps = noise_for(seed, idx, model.latent_shape, _START).to(torch.float64)
            zs = (z + float(sig[0]) * eps).to(model.device)
            out.append(model.decode(heun_sample(model.denoise, zs, sig)))
            bar.update(len(idx))
    return EditResult(
        labels=np.concatenate(out),
        method="perturbational",
        params={
            "psi": psi,
            "steps": steps,
            "start_step": i0,
            "recomputed_steps": steps - i0,
            "sigma_start": float(sig[0]),
            "seed": seed,
        },
        indices=list(range(n)),
    )


def regenerated_tissues(
    regenerate: Iterable[str] | str, with_myocardium: bool = True
) -> frozenset[str]:
    """The tissues regenerated by localized editing.

    Following the paper's LV/RV experiments, regenerating a ventricle also regenerates
    the myocardium (``with_myocardium``), so the wall can follow the chamber.
    """
    regen = set(anatomy.tissue_set(regenerate))
    regen.discard("background")
    if not regen:
        raise ValueError("name at least one tissue to regenerate (e.g. LV)")
    if with_myocardium and regen & {"LV", "RV"}:
        regen.add("Myo")
    if regen >= set(anatomy.TISSUES):
        raise ValueError(
            "regenerating every tissue keeps nothing of the twin: that is unconditional sampling "
            "(use `siblings sample`, or perturbational editing with psi=1)"
        )
    return frozenset(regen)


def latent_keep_mask(
    twin: np.ndarray, kept_labels: Iterable[int], latent_size: int, dilations: int
) -> np.ndarray:
    """Keep mask on the latent grid: any kept voxel marks its latent voxel, then dilate.

    Dilation is 6-connected, ``dilations`` times (SPEC §4: about 11 mm).
    """
    m = np.isin(twin, list(kept_labels)).astype(np.float32)
    f = twin.shape[0] // latent_size
    t = torch.from_numpy(m)[None, None]
    t = F.max_pool3d(t, kernel_size=f, stride=f)
    cross = torch.zeros(1, 1, 3, 3, 3)
    cross[0, 0, 1, 1, :] = cross[0, 0, 1, :, 1] = cross[0, 0, :, 1, 1] = 1
    for _ in range(dilations):
        t = (F.conv3d(t, cross, padding=1) > 0).float()
    return t[0, 0].numpy().astype(bool)


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
) -> EditResult:
    """``n`` localized siblings of ``twin`` with the ``regenerate`` tissues made anew (eq. 5).

    ``dilate`` defaults to the preset's number of latent dilations (≈ 11 mm).
    ``fresh_noise`` draws a new ε at every paste instead of one fixed ε per sibling.
    ``keep``: ``"exact"`` composes each decoded sibling with the twin in label space
    (:func:`~siblings.diffusion.keep.compose_exact`: kept-tissue Dice 1.0);
    ``"latent"`` returns the decoded maps as they are (the paper's method).
    """
    if keep not in KEEP_MODES:
        raise ValueError(f"unknown keep mode {keep!r}; use 'exact' or 'latent'")
    regen = regenerated_tissues(regenerate, with_myocardium)
    kept = tuple(t for t in anatomy.TISSUES if t not in regen)
    kept_labels = [anatomy.LABELS[t] for t in kept] + ([0] if keep_background else [])
    dilate = model.preset.inpaint_dilations if dilate is None else int(dilate)
    if dilate < 0:
        raise ValueError(f"dilate must be >= 0, got {dilate}")
    arr = _twin_array(model, twin)
    mask = latent_keep_mask(arr, kept_labels, model.preset.latent_size, dilate)
    z = model.encode(arr[None]).to(torch.float64).to(model.device)
    m = torch.from_numpy(mask).to(model.device, torch.float64)[None, None]
    sig = model.sigmas(steps)
    out = []
    from tqdm.auto import tqdm

    with tqdm(
        total=n, desc=f"inpaint {','.join(sorted(regen))}", unit="map", disable=not progress
    ) as bar:
        for idx in _batches(n, batch):
            eps = noise_for(seed, idx, model.latent_shape, _PASTE).to(model.device, torch.float64)
            calls = [0]

            def paste(x: torch.Tensor, sigma: float, eps=eps, idx=idx, calls=calls) -> torch.Tensor:
                e = eps
                if fresh_noise and sigma > 0:
                    calls[0] += 1
                    e = noise_for(seed, idx, model.latent_shape, 2 + calls[0]).to(
                        x.device, torch.float64
                    )
                return (z + sigma * e) * m + (1 - m) * x

            start = noise_for(seed, idx, model.latent_shape, _START).to(
                model.device, torch.float64
            ) * float(sig[0])
            out.append(model.decode(heun_sample(model.denoise, start, sig, paste=paste)))
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
    )
