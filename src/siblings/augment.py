"""Targeted cohort augmentation: the strategies, the attempt plan, the checks and records.

``siblings augment`` grows a rare subgroup with generated maps (paper §4.5); the run
that reads and writes files is :func:`siblings.pipelines.augment.augment`. This module
owns what it computes: the settings and their checks (:func:`check_settings`,
:func:`check_output`, which only looks at the folder), the attempt plan
(:func:`plan_attempt`), the rare twins' latents and keep masks (:func:`encode_twins`),
a batch of attempts' maps (:func:`generate`, :func:`attempt_map`), and the records as
dicts (:func:`accepted_manifest`, :func:`run_summary`); it writes no file.

The rare cohort is every map of a data folder that meets a morphology condition such as
``"RV_volume_ml > 115"`` (the paper's 47 twins with a large right ventricle). New maps are
made with one of three strategies and kept only if they meet the same condition:

``uncond``
    unconditional samples, filtered (the paper drew 3600 to keep 140);
``perturb``
    perturbational siblings of the rare twins (SDEdit, SPEC §4), half the attempts at
    ψ = 0.5 and half at ψ = 0.35 by default, filtered;
``guided``
    any of the three above (``sampler``, default ``uncond``) with classifier guidance
    towards the condition itself (or another ``target``) by the morphology regressor
    (:mod:`siblings.models.guided`, issue 17), still judged and filtered on the written
    map; the guidance (target, scale, regressor hash) is in every manifest;
``local``
    localized siblings (inpainting, SPEC §4): the LV is regenerated for half the twins
    and the RV for the other half, filtered. With ``keep="exact"`` (the default) each
    decoded map is composed with its twin in label space
    (:func:`siblings.diffusion.keep.compose_exact`) before it is judged, so the twin's
    kept tissues are in it exactly; ``keep="latent"`` is eq. 5 alone (the paper's
    augmentation experiment uses it).

``perturb`` and ``local`` start from each rare twin's latent encoded once by inversion
(``invert_steps``, :func:`siblings.models.edits.encode_twin`; 0 = the paper's
posterior mean); twins out of the model's distribution are named in one warning.

Attempts go round-robin over the rare twins in batches until ``n`` maps are accepted
(or ``max_attempts`` is reached). Attempt ``a`` is fully determined by ``(seed, a)``:

- ``uncond``: unconditional sample ``a`` (the same as ``LatentDiffusionModel.sample``
  with ``start=a``);
- ``perturb``: twin ``j = a mod T`` in round ``r = a div T`` at ψ ``psis[(r + j) mod P]``
  (with two ψ, half the twins of every round get each, and each twin alternates from
  round to round, so the split stays even wherever the run stops); its noise is that of
  sibling ``a`` of :func:`siblings.models.edits.perturb` with the same seed;
- ``local``: twin ``j = a mod T`` regenerating ``regions[j mod R]``; its noise is that of
  sibling ``a`` of :func:`siblings.models.edits.inpaint` with the same seed;

so the cohort does not depend on the batch size, and the same seed gives the same files.
"Attempted" counts the attempts up to the one that gave the ``n``-th accepted map, so the
acceptance rate does not depend on the batch size either.

Every accepted map is judged on the written file itself: it is written, read back with
:func:`siblings.io.read_label_map` and measured with
:func:`siblings.metrics.cohort.measure_map`, the code ``siblings evaluate`` runs, so every
file of the output meets the condition.

Output folder
-------------
``OUT/<strategy>_XXXXX.nii.gz`` and ``OUT/<strategy>_XXXXX.json`` (provenance) per
accepted map, ``OUT/augment.json`` (counts, acceptance rate, condition, strategy, seed,
the rare twins) written last, and ``OUT/report/`` (``siblings evaluate`` outputs: the
accepted cohort against the rare cohort). ``OUT`` must be empty or absent.

Example
-------
>>> from siblings.models.ldm import LatentDiffusionModel
>>> from siblings.augment import check_settings, parse_condition
>>> from siblings.pipelines.augment import augment
>>> parse_condition("RV_volume_ml > 115 and LV_volume_ml <= 200").columns
('RV_volume_ml', 'LV_volume_ml')
>>> settings = check_settings("RV_volume_ml > 115", "perturb", n=140, seed=0)
>>> model = LatentDiffusionModel.load()                                 # doctest: +SKIP
>>> res = augment(model, "data/phantom64", settings, "aug/perturb")     # doctest: +SKIP
>>> res.accepted == 140 and res.attempted >= 140                        # doctest: +SKIP
True
>>> res.summary["acceptance_rate"] == res.accepted / res.attempted      # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import anatomy
from .data.twin import Twin
from .diffusion.edit import latent_keep_mask, regenerated_tissues, start_step
from .diffusion.inversion import DEFAULT_INVERT_STEPS
from .diffusion.keep import KEEP_MODES, KeepMode, compose_exact
from .errors import InputError, OutputExistsError, SiblingsError
from .io import (
    LabelMap,
    stem,
)
from .manifest import provenance
from .metrics.bootstrap import acceptance_rate, wilson_interval
from .metrics.cohort import measure_map
from .metrics.condition import Condition, parse_condition
from .models.edits import TwinEncoding, encode_twin
from .models.ldm import LatentDiffusionModel

PathLike = str | os.PathLike

STRATEGIES: tuple[str, ...] = ("uncond", "perturb", "local")
DEFAULT_PSIS: tuple[float, ...] = (0.5, 0.35)
DEFAULT_REGIONS: tuple[str, ...] = ("LV", "RV")

_METHOD = {"uncond": "unconditional", "perturb": "perturbational", "local": "localized"}


# ---------------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------------
class AugmentStopped(SiblingsError, RuntimeError):
    """``max_attempts`` was reached before ``n`` maps were accepted.

    The maps accepted so far are written (each meets the condition) and ``augment.json``
    says ``"complete": false``; ``result`` holds the counts.
    """

    def __init__(self, message: str, result: AugmentResult, arguments: tuple[str, ...] = ()):
        super().__init__(message, arguments=arguments)
        self.result = result


@dataclass
class AugmentResult:
    """What :func:`augment` did.

    Attributes
    ----------
    files : the accepted maps, in acceptance order.
    attempts : the attempt index of each accepted map (same order as ``files``).
    attempted : attempts judged, up to the one that gave the last accepted map (or all
        ``max_attempts`` when stopped early).
    rare_twins : the data maps meeting the condition (the reference cohort).
    metrics : ``siblings evaluate`` metrics of the accepted cohort against the rare
        cohort (None when skipped).
    """

    out: Path
    strategy: str
    condition: Condition
    seed: int
    n: int
    files: list[Path]
    attempts: list[int]
    attempted: int
    rare_twins: list[Path]
    complete: bool
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict | None = None

    @property
    def accepted(self) -> int:
        return len(self.files)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / attempted (NaN before the first attempt)."""
        return acceptance_rate(self.accepted, self.attempted)


# ---------------------------------------------------------------------------------
# Attempts.
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """One attempt: its index, the twin it edits (if any) and the method parameter."""

    index: int
    twin: int | None
    param: float | str | None  # ψ for perturb, region for local


def plan_attempt(
    index: int,
    strategy: str,
    n_twins: int,
    psis: Sequence[float] = DEFAULT_PSIS,
    regions: Sequence[str] = DEFAULT_REGIONS,
) -> tuple[int | None, float | str | None]:
    """The twin and parameter of attempt ``index`` (see the module docstring).

    Returns ``(twin index, ψ)`` for ``perturb``, ``(twin index, region)`` for ``local``
    and ``(None, None)`` for ``uncond``.
    """
    if strategy == "uncond":
        return None, None
    twin = index % n_twins
    if strategy == "perturb":
        return twin, float(psis[(index // n_twins + twin) % len(psis)])
    if strategy == "local":
        return twin, regions[twin % len(regions)]
    raise InputError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def generate(
    model: LatentDiffusionModel,
    strategy: str,
    attempts: list[Attempt],
    latents: dict[int, torch.Tensor],
    masks: dict[int, np.ndarray],
    seed: int,
    steps: int,
    guide: Any = None,
) -> dict[int, np.ndarray]:
    """Decoded label maps of a batch of attempts, by attempt index.

    Attempt ``a`` is sibling ``a`` of :func:`siblings.models.edits.perturb` or
    :func:`~siblings.models.edits.inpaint` (the same model methods and noise streams).
    ``guide``: classifier guidance (the ``guided`` strategy,
    :meth:`siblings.models.guided.Guidance.guide`) added to every denoiser output.
    """
    out: dict[int, np.ndarray] = {}
    if strategy == "uncond":
        idx = [a.index for a in attempts]
        labels = model.decode(model.sample_latents(idx, steps, seed, guide=guide))
        return dict(zip(idx, labels, strict=True))
    # Attempts sharing ψ (perturb) or region (local) share one noise schedule: one run each.
    groups: dict[Any, list[Attempt]] = {}
    for a in attempts:
        groups.setdefault(a.param, []).append(a)
    for param, group in groups.items():
        idx = [a.index for a in group]
        z = torch.cat([latents[a.twin] for a in group])  # type: ignore[index]
        if strategy == "perturb":
            lat = model.perturb_latents(z, idx, float(param), steps, seed, guide)  # type: ignore[arg-type]
        else:
            keep = np.stack([masks[a.twin] for a in group])  # type: ignore[index]
            lat = model.inpaint_latents(z, keep, idx, steps, seed, guide=guide)
        out.update(zip(idx, model.decode(lat), strict=True))
    return out


# ---------------------------------------------------------------------------------
# Settings and inputs.
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentSettings:
    """Checked parameters of one augment run (see :func:`check_settings`).

    ``dilate`` None stands for the model preset's keep-mask dilation until the pipeline,
    with the model loaded, fills it in (:meth:`with_dilate`).
    """

    condition: Condition
    condition_text: str  # the condition as the caller wrote it
    strategy: str
    n: int
    seed: int
    steps: int
    batch: int
    max_attempts: int
    psis: tuple[float, ...]
    regions: tuple[str, ...]
    regen_sets: dict[str, frozenset[str]]
    dilate: int | None
    keep: KeepMode
    invert_steps: int
    prefix: str
    guided: bool = False  # the guided strategy; ``strategy`` is then its sampler

    def kept_labels(self, region: str) -> list[int]:
        """Labels a localized attempt regenerating ``region`` keeps."""
        regen = self.regen_sets[region]
        return [anatomy.LABELS[x] for x in anatomy.TISSUES if x not in regen]

    def with_dilate(self, default: int) -> AugmentSettings:
        """These settings with ``dilate`` = ``default`` (the preset's) where it was None."""
        return self if self.dilate is not None else replace(self, dilate=int(default))


def check_settings(
    where: str | Condition,
    strategy: str,
    n: int,
    *,
    seed: int = 0,
    steps: int = 20,
    batch: int = 8,
    max_attempts: int | None = None,
    psis: Sequence[float] = DEFAULT_PSIS,
    regions: Sequence[str] = DEFAULT_REGIONS,
    dilate: int | None = None,
    keep: str = "exact",
    invert_steps: int = DEFAULT_INVERT_STEPS,
    prefix: str | None = None,
    sampler: str = "uncond",
) -> AugmentSettings:
    """Validate an augment run's parameters once; :class:`InputError` naming the argument
    otherwise.

    The parameters are described in :func:`siblings.pipelines.augment.augment`.
    ``dilate`` None is the model preset's keep-mask dilation (filled in once the model is
    loaded); ``max_attempts`` defaults to ``max(1000, 50 n)`` and ``prefix`` to the
    strategy. ``strategy="guided"`` is ``sampler`` (``uncond``, ``perturb`` or ``local``)
    with classifier guidance: the settings hold the sampler as ``strategy``, ``guided``
    True and the prefix ``guided``.
    """
    condition = parse_condition(where)
    guided = strategy == "guided"
    if guided:
        if sampler not in STRATEGIES:
            raise InputError(
                f"unknown {{sampler}} {sampler!r}; choose one of {', '.join(STRATEGIES)}",
                arguments=("sampler",),
            )
        strategy, prefix = sampler, prefix or "guided"
    if strategy not in STRATEGIES:
        raise InputError(
            f"unknown {{strategy}} {strategy!r}; choose one of {', '.join(STRATEGIES)}",
            arguments=("strategy",),
        )
    if int(n) != n:
        raise InputError(f"{{n}} must be a whole number, got {n}", arguments=("n",))
    if n < 1:
        raise InputError(f"{{n}} must be at least 1, got {n}", arguments=("n",))
    n = int(n)
    if steps < 1:
        raise InputError(f"{{steps}} must be at least 1, got {steps}", arguments=("steps",))
    if batch < 1:
        raise InputError(f"{{batch}} must be at least 1, got {batch}", arguments=("batch",))
    if max_attempts is None:
        max_attempts = max(1000, 50 * n)
    if max_attempts < n:
        raise InputError(
            f"{{max_attempts}} ({max_attempts}) must be at least {{n}} ({n})",
            arguments=("max_attempts", "n"),
        )
    psis = tuple(float(p) for p in psis)
    regions = tuple(str(r) for r in regions)
    regen_sets: dict[str, frozenset[str]] = {}
    if strategy == "perturb":
        if not psis:
            raise InputError(
                "perturb needs at least one sampling ratio {psis}", arguments=("psis",)
            )
        for p in psis:
            start_step(p, steps)  # raises for psi outside (0, 1]
    if strategy == "local":
        if not regions:
            raise InputError(
                "local needs at least one region to regenerate in {regions} (e.g. LV)",
                arguments=("regions",),
            )
        try:
            regen_sets = {r: regenerated_tissues(r) for r in regions}
        except InputError:
            raise
        except ValueError as exc:  # an unknown tissue name (anatomy's own error)
            raise InputError(str(exc)) from None
    if dilate is not None and int(dilate) < 0:
        raise InputError(f"{{dilate}} must be >= 0, got {dilate}", arguments=("dilate",))
    if keep not in KEEP_MODES:
        raise InputError(
            f"unknown {{keep}} mode {keep!r}; use 'exact' or 'latent'", arguments=("keep",)
        )
    if int(invert_steps) != invert_steps:
        raise InputError(
            f"{{invert_steps}} must be a whole number, got {invert_steps}",
            arguments=("invert_steps",),
        )
    if invert_steps < 0:
        raise InputError(
            f"{{invert_steps}} must be 0 or more, got {invert_steps}", arguments=("invert_steps",)
        )
    prefix = prefix or strategy
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", prefix):
        raise InputError(
            f"{{prefix}} {prefix!r}: use letters, digits, '_', '-' or '.'", arguments=("prefix",)
        )
    return AugmentSettings(
        condition=condition,
        condition_text=where if isinstance(where, str) else str(where),
        strategy=strategy,
        n=n,
        seed=int(seed),
        steps=steps,
        batch=batch,
        max_attempts=max_attempts,
        psis=psis,
        regions=regions,
        regen_sets=regen_sets,
        dilate=None if dilate is None else int(dilate),
        keep=keep,  # type: ignore[arg-type]
        invert_steps=int(invert_steps),
        prefix=prefix,
        guided=guided,
    )


def map_morphology(lm: LabelMap) -> dict[str, float]:
    """A map's SPEC §7 morphology by column, as ``siblings evaluate`` measures it."""
    feats, _ = measure_map(lm)
    return dict(zip(anatomy.MORPHOLOGY_COLUMNS, feats.tolist(), strict=True))


OUR_FILE = re.compile(r"^(?P<prefix>.+)_(?P<k>\d{5})\.(?:nii\.gz|json)$")


def check_output(out: Path, prefix: str, resume: bool) -> list[Path]:
    """Files already in ``out`` (refused unless resuming a folder holding only our files)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    present = sorted(out.iterdir()) if out.exists() else []
    if present and not resume:
        raise OutputExistsError(
            f"{out}: folder is not empty; augment writes into an empty or new folder "
            "(choose another {out}, remove this one, or {resume} an interrupted run)",
            arguments=("out", "resume"),
        )
    for p in present:
        m = OUR_FILE.match(p.name)
        ours = (
            p.name.startswith(".")
            or p.name == "augment.json"
            or (p.name == "report" and p.is_dir())
            or (m is not None and m["prefix"] == prefix)
        )
        if not ours:
            raise OutputExistsError(
                f"{out}: holds {p.name}, which augment did not write with prefix {prefix!r}; "
                "resume only into a folder of a previous augment run"
            )
    return present


def run_signature(
    settings: AugmentSettings, twins: list[Twin], model: LatentDiffusionModel
) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one (in every manifest)."""
    strategy = settings.strategy
    return {
        "strategy": strategy,
        "condition": str(settings.condition),
        "seed": settings.seed,
        "steps": settings.steps,
        "psis": list(settings.psis) if strategy == "perturb" else None,
        "regions": list(settings.regions) if strategy == "local" else None,
        "dilate": settings.dilate if strategy == "local" else None,
        **({"keep": settings.keep} if strategy == "local" else {}),
        **({"invert_steps": settings.invert_steps} if strategy != "uncond" else {}),
        "rare_twins_sha256": [t.sha256 for t in twins],
        "labels": twins[0].labels if twins else None,
        "checkpoint_sha256": model.checkpoint_sha256,
    }


def resume_mismatch(js: Path, run: dict | None, signature: dict) -> OutputExistsError:
    """The error for manifest ``js``, made by a run whose ``run`` differs from ``signature``."""
    diff = sorted(
        key for key in set(signature) | set(run or {}) if (run or {}).get(key) != signature.get(key)
    )
    return OutputExistsError(
        f"{js}: made by an augment run with other settings ({', '.join(diff)} differ); "
        "use another {out}",
        arguments=("out",),
    )


# ---------------------------------------------------------------------------------
# The rare twins' latents and keep masks, and one attempt's map.
# ---------------------------------------------------------------------------------
@dataclass
class EncodedTwins:
    """Each rare twin's encoding, its latent in float64 and (local) its keep mask."""

    encodings: dict[int, TwinEncoding] = field(default_factory=dict)
    latents: dict[int, torch.Tensor] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)


def encode_twins(
    model: LatentDiffusionModel, twins: list[Twin], settings: AugmentSettings, progress: bool
) -> EncodedTwins:
    """Encode every rare twin once (inversion), with its latent keep mask for ``local``."""
    from tqdm.auto import tqdm

    enc = EncodedTwins()
    bar = tqdm(
        twins, desc="encode twins", unit="twin", disable=not progress or not settings.invert_steps
    )
    for j, t in enumerate(bar):
        enc.encodings[j] = encode_twin(model, t.label_map.data, settings.invert_steps)
        enc.latents[j] = enc.encodings[j].latent.to(torch.float64)
        if settings.strategy == "local":
            kept = settings.kept_labels(settings.regions[j % len(settings.regions)])
            enc.masks[j] = latent_keep_mask(
                t.label_map.data, kept, model.preset.latent_size, settings.dilate
            ).astype(np.float64)
    return enc


def attempt_map(
    label: np.ndarray, attempt: Attempt, twins: list[Twin], settings: AugmentSettings
) -> tuple[np.ndarray, dict | None]:
    """An attempt's map as judged, and its seam record (exact keep composes it with its twin)."""
    if settings.strategy == "local" and settings.keep == "exact":
        kept = settings.kept_labels(str(attempt.param))
        composed = compose_exact(twins[attempt.twin].label_map.data, label, kept)  # type: ignore[index]
        return composed.labels, composed.record()
    return label, None


def evaluation_skipped(evaluate: bool, accepted: int, n_twins: int, k: int) -> dict | None:
    """Why the accepted cohort is not evaluated (None when it is)."""
    if not evaluate:
        return {"skipped": "not asked for"}
    if accepted < k + 1 or n_twins < k + 1:
        return {
            "skipped": f"precision/recall with k = {k} need at least {k + 1} maps in each "
            f"cohort (accepted {accepted}, rare twins {n_twins})"
        }
    return None


def stopped(result: AugmentResult, max_attempts: int) -> AugmentStopped:
    """The error of a run that reached ``max_attempts`` before ``n`` accepted maps."""
    return AugmentStopped(
        f"stopped after max_attempts = {max_attempts} attempts with {result.accepted} of "
        f"{result.n} maps accepted (acceptance rate {100 * result.acceptance_rate:.2f}%); the "
        f"accepted maps are in {result.out}. Raise {{max_attempts}} (and {{resume}}), loosen "
        "the condition or try another strategy",
        result,
        arguments=("max_attempts", "resume"),
    )


# ---------------------------------------------------------------------------------
# Records (dicts; the pipeline writes them).
# ---------------------------------------------------------------------------------
def _tallies(
    strategy: str,
    n_twins: int,
    psis: Sequence[float],
    regions: Sequence[str],
    attempted: int,
    attempts: Sequence[int],
) -> tuple[dict[str, list[int]], list[list[int]]]:
    """[accepted, attempted] per ψ/region and per twin, from the attempt plan."""
    accepted = set(attempts)
    by_param: dict[str, list[int]] = {}
    by_twin = [[0, 0] for _ in range(n_twins)]
    for a in range(attempted):
        twin, param = plan_attempt(a, strategy, n_twins, psis, regions)
        key = "all" if param is None else f"{param:g}" if isinstance(param, float) else param
        t = by_param.setdefault(key, [0, 0])
        t[0] += a in accepted
        t[1] += 1
        if twin is not None:
            by_twin[twin][0] += a in accepted
            by_twin[twin][1] += 1
    return by_param, by_twin


def run_summary(
    result: AugmentResult,
    model: LatentDiffusionModel,
    signature: dict,
    twins: list[Twin],
    data: PathLike,
    evaluation: dict,
    settings: AugmentSettings,
    warnings_: list[str],
    encodings: Mapping[int, TwinEncoding],
) -> dict[str, Any]:
    """The contents of ``augment.json`` (no timings: same seed, same bytes)."""
    batch, max_attempts, prefix = settings.batch, settings.max_attempts, settings.prefix
    psis, regions = signature["psis"] or (), signature["regions"] or ()
    by_param, by_twin = _tallies(
        result.strategy, len(twins), psis, regions, result.attempted, result.attempts
    )
    lo, hi = wilson_interval(result.accepted, result.attempted)
    meta = provenance(model, "augment")
    summary = {
        "complete": result.complete,
        "strategy": result.strategy,
        "method": _METHOD[result.strategy],
        "condition": str(result.condition),
        "condition_text": settings.condition_text,
        "seed": result.seed,
        "n": result.n,
        "accepted": result.accepted,
        "attempted": result.attempted,
        "acceptance_rate": result.acceptance_rate,
        "acceptance_rate_ci95_wilson": [lo, hi],
        "acceptance_by_parameter": {
            key: {"accepted": a, "attempted": t, "rate": acceptance_rate(a, t)}
            for key, (a, t) in by_param.items()
        },
        "settings": {
            "steps": signature["steps"],
            "batch": batch,
            "max_attempts": max_attempts,
            "psis": signature["psis"],
            "regions": signature["regions"],
            "dilate": signature["dilate"],
            "invert_steps": signature.get("invert_steps"),
            "prefix": prefix,
        },
        "data": str(data),
        "rare_twins": [
            {
                "file": t.source.name,
                "sha256": t.sha256,
                **{c: t.features[c] for c in result.condition.columns},
                **(
                    {"attempted": by_twin[j][1], "accepted": by_twin[j][0]}
                    if result.strategy != "uncond"
                    else {}
                ),
            }
            for j, t in enumerate(twins)
        ],
        "files": [p.name for p in result.files],
        "attempt_of_file": list(result.attempts),
        "evaluation": evaluation,
        "run": signature,
        "model": meta["model"],
        "software": meta["software"],
    }
    summary["warnings"] = warnings_
    if encodings:
        for j, entry in enumerate(summary["rare_twins"]):
            enc = encodings[j].to_dict()
            entry["roundtrip_dice_posterior_mean"] = enc["roundtrip_dice_posterior_mean"]
            entry["roundtrip_dice"] = enc["roundtrip_dice"]
            entry["out_of_distribution"] = enc["out_of_distribution"]
    return summary


def accepted_manifest(
    model: LatentDiffusionModel,
    signature: dict,
    att: Attempt,
    twins: list[Twin],
    regen_sets: Mapping[str, Iterable[str]],
    masks: Mapping[int, np.ndarray],
    accepted_index: int,
    morph: dict[str, float],
    violated: np.ndarray,
) -> dict[str, Any]:
    """Provenance of one accepted map, with the fields `siblings edit` writes (SPEC §4)."""
    strategy, steps = signature["strategy"], signature["steps"]
    fields: dict[str, Any] = {"seed": signature["seed"], "index": att.index, "steps": steps}
    if att.twin is not None:
        t = twins[att.twin]
        fields["twin"] = {"file": str(t.source), "name": stem(t.source), "sha256": t.sha256}
    if strategy == "perturb":
        i0 = start_step(float(att.param), steps)  # type: ignore[arg-type]
        fields["psi"] = att.param
        fields["start_step"] = i0
        fields["recomputed_steps"] = steps - i0
        fields["sigma_start"] = float(model.sigmas(steps)[i0])
    elif strategy == "local":
        regen = regen_sets[str(att.param)]
        keep = masks[att.twin] > 0  # type: ignore[index]
        fields["region"] = att.param
        fields["regenerate"] = sorted(regen)
        fields["kept"] = [x for x in anatomy.TISSUES if x not in regen]
        fields["keep"] = signature.get("keep", "latent")
        fields["keep_background"] = False
        fields["dilate"] = signature["dilate"]
        fields["fresh_noise"] = False
        fields["keep_mask"] = {
            "grid": list(keep.shape),
            "kept_latent_fraction": float(keep.mean()),
            "sha256": hashlib.sha256(np.packbits(keep).tobytes()).hexdigest(),
        }
    fields["augment"] = {
        "strategy": strategy,
        "condition": signature["condition"],
        "attempt": att.index,
        "accepted_index": accepted_index,
        "run": signature,
    }
    fields["morphology"] = morph
    fields["topology"] = dict(zip(anatomy.TOPOLOGY_COLUMNS, violated.tolist(), strict=True))
    fields["topology_violations"] = [
        c for c, v in zip(anatomy.TOPOLOGY_COLUMNS, violated.tolist(), strict=True) if v
    ]
    return provenance(model, _METHOD[strategy], **fields)


__all__ = [
    "DEFAULT_PSIS",
    "DEFAULT_REGIONS",
    "STRATEGIES",
    "Attempt",
    "AugmentResult",
    "AugmentSettings",
    "AugmentStopped",
    "EncodedTwins",
    "accepted_manifest",
    "attempt_map",
    "check_output",
    "check_settings",
    "encode_twins",
    "evaluation_skipped",
    "generate",
    "map_morphology",
    "parse_condition",
    "plan_attempt",
    "resume_mismatch",
    "run_signature",
    "run_summary",
    "stopped",
]
