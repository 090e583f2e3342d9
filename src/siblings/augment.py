"""Targeted cohort augmentation: grow a rare subgroup with generated maps (paper §4.5).

The rare cohort is every map of a data folder that meets a morphology condition such as
``"RV_volume_ml > 115"`` (the paper's 47 twins with a large right ventricle). New maps are
made with one of three strategies and kept only if they meet the same condition:

``uncond``
    unconditional samples, filtered (the paper drew 3600 to keep 140);
``perturb``
    perturbational siblings of the rare twins (SDEdit, SPEC §4), half the attempts at
    ψ = 0.5 and half at ψ = 0.35 by default, filtered;
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
>>> from siblings.augment import augment, parse_condition
>>> parse_condition("RV_volume_ml > 115 and LV_volume_ml <= 200").columns
('RV_volume_ml', 'LV_volume_ml')
>>> model = LatentDiffusionModel.load()                                 # doctest: +SKIP
>>> res = augment(model, "data/phantom64", "RV_volume_ml > 115",
...               strategy="perturb", n=140, seed=0, out="aug/perturb")  # doctest: +SKIP
>>> res.accepted == 140 and res.attempted >= 140                        # doctest: +SKIP
True
>>> res.summary["acceptance_rate"] == res.accepted / res.attempted      # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import anatomy
from .data.twin import Twin, read_rare_twins
from .diffusion.edit import latent_keep_mask, regenerated_tissues, start_step
from .diffusion.inversion import DEFAULT_INVERT_STEPS
from .diffusion.keep import KEEP_MODES, KeepMode, compose_exact
from .errors import InputError, OutputExistsError, SiblingsError
from .io import (
    LabelMap,
    read_json,
    read_label_map,
    stem,
    write_json,
    write_label_map,
)
from .manifest import provenance
from .metrics.bootstrap import acceptance_rate, wilson_interval
from .metrics.cohort import HEADLINE_KEYS, evaluate_maps, measure_map, summarise_maps
from .metrics.condition import Condition, parse_condition
from .models.edits import TwinEncoding, encode_twin, ood_warning
from .models.ldm import LatentDiffusionModel
from .report.evaluation import write_evaluation

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
class _Attempt:
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


def _generate(
    model: LatentDiffusionModel,
    strategy: str,
    attempts: list[_Attempt],
    latents: dict[int, torch.Tensor],
    masks: dict[int, np.ndarray],
    seed: int,
    steps: int,
) -> dict[int, np.ndarray]:
    """Decoded label maps of a batch of attempts, by attempt index.

    Attempt ``a`` is sibling ``a`` of :func:`siblings.models.edits.perturb` or
    :func:`~siblings.models.edits.inpaint` (the same model methods and noise streams).
    """
    out: dict[int, np.ndarray] = {}
    if strategy == "uncond":
        idx = [a.index for a in attempts]
        labels = model.decode(model.sample_latents(idx, steps, seed))
        return dict(zip(idx, labels, strict=True))
    # Attempts sharing ψ (perturb) or region (local) share one noise schedule: one run each.
    groups: dict[Any, list[_Attempt]] = {}
    for a in attempts:
        groups.setdefault(a.param, []).append(a)
    for param, group in groups.items():
        idx = [a.index for a in group]
        z = torch.cat([latents[a.twin] for a in group])  # type: ignore[index]
        if strategy == "perturb":
            lat = model.perturb_latents(z, idx, float(param), steps, seed)  # type: ignore[arg-type]
        else:
            keep = np.stack([masks[a.twin] for a in group])  # type: ignore[index]
            lat = model.inpaint_latents(z, keep, idx, steps, seed)
        out.update(zip(idx, model.decode(lat), strict=True))
    return out


# ---------------------------------------------------------------------------------
# Inputs.
# ---------------------------------------------------------------------------------
def _morphology(lm: LabelMap) -> dict[str, float]:
    """A map's SPEC §7 morphology by column, as ``siblings evaluate`` measures it."""
    feats, _ = measure_map(lm)
    return dict(zip(anatomy.MORPHOLOGY_COLUMNS, feats.tolist(), strict=True))


_OURS = re.compile(r"^(?P<prefix>.+)_(?P<k>\d{5})\.(?:nii\.gz|json)$")


def _existing(out: Path, prefix: str, resume: bool) -> list[Path]:
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
        m = _OURS.match(p.name)
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


def _resumed(
    out: Path, prefix: str, signature: dict, condition: Condition
) -> tuple[list[Path], list[int]]:
    """Accepted maps of an interrupted run with the same ``signature``, checked again.

    Returns the files and their attempt indices; a half-written last map (a manifest
    without its map, or the reverse) is removed, to be made again.
    """
    files, attempts = [], []
    k = 0
    while True:
        nii, js = out / f"{prefix}_{k:05d}.nii.gz", out / f"{prefix}_{k:05d}.json"
        if not (nii.exists() and js.exists()):
            break
        meta = read_json(js)
        run = meta.get("augment", {}).get("run")
        if run != signature:
            diff = sorted(
                key
                for key in set(signature) | set(run or {})
                if (run or {}).get(key) != signature.get(key)
            )
            raise OutputExistsError(
                f"{js}: made by an augment run with other settings ({', '.join(diff)} differ); "
                "use another {out}",
                arguments=("out",),
            )
        feats, _ = measure_map(read_label_map(nii))
        if not condition(feats):
            raise OutputExistsError(
                f"{nii}: does not meet {condition}; use another {{out}}", arguments=("out",)
            )
        attempt = int(meta["augment"]["attempt"])
        if attempts and attempt <= attempts[-1]:
            raise OutputExistsError(
                f"{js}: attempt {attempt} is out of order; use another {{out}}",
                arguments=("out",),
            )
        files.append(nii)
        attempts.append(attempt)
        k += 1
    for p in out.iterdir() if out.exists() else []:
        m = _OURS.match(p.name)
        if m is not None and m["prefix"] == prefix and int(m["k"]) >= k:
            p.unlink()  # the half-written map of the interruption
    return files, attempts


# ---------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------
def augment(
    model: LatentDiffusionModel,
    data: PathLike,
    where: str | Condition,
    strategy: str,
    n: int,
    seed: int = 0,
    out: PathLike = "augmented",
    *,
    steps: int = 20,
    batch: int = 8,
    max_attempts: int | None = None,
    psis: Sequence[float] = DEFAULT_PSIS,
    regions: Sequence[str] = DEFAULT_REGIONS,
    dilate: int | None = None,
    prefix: str | None = None,
    resume: bool = False,
    evaluate: bool = True,
    k: int = 3,
    n_boot: int = 1000,
    figures: bool = True,
    progress: bool = False,
    keep: KeepMode = "exact",
    invert_steps: int = DEFAULT_INVERT_STEPS,
) -> AugmentResult:
    """Grow the rare cohort of ``data`` (maps meeting ``where``) by ``n`` accepted maps.

    Parameters
    ----------
    model : the latent diffusion model (:meth:`LatentDiffusionModel.load`).
    data : folder of real label maps on the model's grid; the rare twins are those
        meeting ``where``.
    where : condition on the SPEC §7 morphology columns (:func:`parse_condition`).
    strategy : ``uncond``, ``perturb`` or ``local`` (module docstring).
    n : number of maps to accept (≥ 1).
    seed : RNG seed; attempt ``a`` depends only on ``(seed, a)``.
    out : output folder, new or empty (or, with ``resume``, a previous run's).
    steps : sampler steps N (default 20).
    batch : attempts generated together (does not change the output).
    max_attempts : stop after this many attempts (default ``max(1000, 50 n)``).
    psis : perturb's sampling ratios, cycled over twins and rounds (default 0.5, 0.35).
    regions : local's regenerated tissues, one per twin in turn (default LV, RV; a region
        may name several tissues, ``"LV,RV"``); a ventricle also regenerates the
        myocardium (SPEC §4).
    dilate : local's latent keep-mask dilations (default: the preset's).
    keep : local's keep mode: ``"exact"`` (default) composes each decoded map with its
        twin in label space before judging it; ``"latent"``: eq. 5 alone (the paper).
    invert_steps : perturb and local: each rare twin's latent is its posterior mean
        refined by this many steps of inversion
        (:func:`siblings.models.edits.encode_twin`; 0 = the paper's posterior mean).
        Its round-trip Dice before and after is in ``augment.json`` and every manifest;
        twins below :data:`~siblings.models.edits.OOD_DICE_THRESHOLD` for a tissue get
        one ``UserWarning`` line (also in ``augment.json``'s ``warnings``).
    prefix : file name prefix (default: the strategy).
    resume : continue an interrupted run in ``out`` (same data, condition, strategy,
        seed, steps and model; ``n`` and ``max_attempts`` may grow). The result is the
        same, byte for byte, as an uninterrupted run. A finished run with the same
        ``n`` is returned as it is, without new work.
    evaluate : evaluate the accepted cohort against the rare cohort into ``out/report``
        (skipped, with the reason in ``augment.json``, when either has fewer than k + 1 maps).
    k, n_boot : precision/recall neighbour rank and bootstrap resamples of the evaluation.
    figures : PNG figures in the report.
    progress : show progress bars.

    Returns
    -------
    AugmentResult

    Raises
    ------
    ValueError (ConditionError, LabelMapError)
        bad condition, strategy or options; an empty data folder, a bad map in it, a map
        off the model's grid; no map meeting the condition. Nothing is written.
    FileExistsError
        ``out`` is not empty (or, with ``resume``, holds another run). Nothing is written.
    AugmentStopped
        ``max_attempts`` reached before ``n`` accepted maps (what was accepted is kept).
    """
    from tqdm.auto import tqdm

    # -- Check everything before writing anything. ---------------------------------
    condition = parse_condition(where)
    if strategy not in STRATEGIES:
        raise InputError(
            f"unknown {{strategy}} {strategy!r}; choose one of {', '.join(STRATEGIES)}",
            arguments=("strategy",),
        )
    if int(n) != n or n < 1:
        raise InputError(f"{{n}} must be a whole number of at least 1, got {n}", arguments=("n",))
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
    dilate_n = model.preset.inpaint_dilations if dilate is None else int(dilate)
    if dilate_n < 0:
        raise InputError(f"{{dilate}} must be >= 0, got {dilate_n}", arguments=("dilate",))
    if keep not in KEEP_MODES:
        raise InputError(
            f"unknown {{keep}} mode {keep!r}; use 'exact' or 'latent'", arguments=("keep",)
        )
    if int(invert_steps) != invert_steps or invert_steps < 0:
        raise InputError(
            f"{{invert_steps}} must be a whole number, 0 or more, got {invert_steps}",
            arguments=("invert_steps",),
        )
    invert_steps = int(invert_steps)
    prefix = prefix or strategy
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", prefix):
        raise InputError(
            f"{{prefix}} {prefix!r}: use letters, digits, '_', '-' or '.'", arguments=("prefix",)
        )
    out = Path(out)
    present = _existing(out, prefix, resume)
    size, voxel = model.preset.size, model.preset.voxel_mm
    twins = read_rare_twins(
        data, size, voxel, condition, _morphology, grid_name=model.preset.name, progress=progress
    )

    signature = {
        "strategy": strategy,
        "condition": str(condition),
        "seed": seed,
        "steps": steps,
        "psis": list(psis) if strategy == "perturb" else None,
        "regions": list(regions) if strategy == "local" else None,
        "dilate": dilate_n if strategy == "local" else None,
        **({"keep": keep} if strategy == "local" else {}),
        **({"invert_steps": invert_steps} if strategy != "uncond" else {}),
        "rare_twins_sha256": [t.sha256 for t in twins],
        "checkpoint_sha256": model.checkpoint_sha256,
    }
    files: list[Path] = []
    attempts: list[int] = []
    if present:
        files, attempts = _resumed(out, prefix, signature, condition)
        if len(files) > n:
            raise OutputExistsError(
                f"{out}: holds {len(files)} accepted maps, more than {{n}} = {n}; "
                "use another {out}",
                arguments=("n", "out"),
            )
        done = out / "augment.json"
        if len(files) == n and done.exists():
            summary = read_json(done)
            if summary.get("complete") and summary.get("run") == signature:
                return _result_from(out, summary, condition, twins, files, attempts)
    attempted = attempts[-1] + 1 if attempts else 0

    # -- Per-twin latents (posterior means, inverted) and keep masks, once. ----------
    latents: dict[int, torch.Tensor] = {}
    masks: dict[int, np.ndarray] = {}
    encodings: dict[int, TwinEncoding] = {}
    run_warnings: list[str] = []
    if strategy != "uncond" and len(files) < n:
        for j, t in enumerate(
            tqdm(twins, desc="encode twins", unit="twin", disable=not progress or not invert_steps)
        ):
            encodings[j] = encode_twin(model, t.label_map.data, invert_steps)
            latents[j] = encodings[j].latent.to(torch.float64)
            if strategy == "local":
                regen = regen_sets[regions[j % len(regions)]]
                kept = [anatomy.LABELS[x] for x in anatomy.TISSUES if x not in regen]
                masks[j] = latent_keep_mask(
                    t.label_map.data, kept, model.preset.latent_size, dilate_n
                ).astype(np.float64)
        msg = ood_warning({twins[j].source.name: e for j, e in encodings.items()})
        if msg:
            run_warnings.append(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)

    # -- Attempt, judge on the written file, keep or drop. ---------------------------
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".candidate.nii.gz"
    bar = tqdm(
        total=n,
        initial=len(files),
        desc=f"augment {strategy} ({len(twins)} twins)",
        unit="map",
        disable=not progress,
    )
    try:
        a0 = attempted
        while len(files) < n and a0 < max_attempts:
            todo = [
                _Attempt(a, *plan_attempt(a, strategy, len(twins), psis, regions))
                for a in range(a0, min(a0 + batch, max_attempts))
            ]
            a0 += len(todo)
            labels = _generate(model, strategy, todo, latents, masks, seed, steps)
            for att in todo:
                if len(files) >= n:
                    break
                attempted = att.index + 1
                lab, seam = labels[att.index], None
                if strategy == "local" and keep == "exact":
                    regen = regen_sets[str(att.param)]
                    kept = [anatomy.LABELS[x] for x in anatomy.TISSUES if x not in regen]
                    composed = compose_exact(twins[att.twin].label_map.data, lab, kept)  # type: ignore[index]
                    lab, seam = composed.labels, composed.record()
                # Judge the file itself: written, read back, measured as `evaluate` does.
                write_label_map(staging, LabelMap(lab, model.affine))
                feats, violated = measure_map(read_label_map(staging))
                morph = dict(zip(anatomy.MORPHOLOGY_COLUMNS, feats.tolist(), strict=True))
                if not condition(morph):
                    continue
                name = f"{prefix}_{len(files):05d}"
                final = out / f"{name}.nii.gz"
                os.replace(staging, final)
                manifest = _manifest(
                    model, signature, att, twins, regen_sets, masks, len(files), morph, violated
                )
                if seam is not None:
                    manifest["seam"] = seam
                if att.twin is not None:
                    manifest["encoding"] = encodings[att.twin].to_dict()
                write_json(out / f"{name}.json", manifest)  # last: marks the map complete
                files.append(final)
                attempts.append(att.index)
                bar.update(1)
            bar.set_postfix_str(
                f"{len(files)} accepted / {attempted} attempted "
                f"({100 * acceptance_rate(len(files), attempted):.1f}%)"
            )
    finally:
        bar.close()
        if staging.exists():
            staging.unlink()
    if len(files) < n:
        attempted = max(attempted, max_attempts)

    complete = len(files) >= n
    result = AugmentResult(
        out=out,
        strategy=strategy,
        condition=condition,
        seed=seed,
        n=n,
        files=files,
        attempts=attempts,
        attempted=attempted,
        rare_twins=[t.source for t in twins],
        complete=complete,
    )

    # -- Evaluate the accepted cohort against the rare cohort. ------------------------
    evaluation: dict[str, Any]
    if not evaluate:
        evaluation = {"skipped": "not asked for"}
    elif len(files) < k + 1 or len(twins) < k + 1:
        evaluation = {
            "skipped": f"precision/recall with k = {k} need at least {k + 1} maps in each "
            f"cohort (accepted {len(files)}, rare twins {len(twins)})"
        }
    else:
        ref = summarise_maps([t.label_map for t in twins], names=[t.source.name for t in twins])
        coh = summarise_maps((read_label_map(p) for p in files), names=[p.name for p in files])
        ev = evaluate_maps(coh, ref, k=k, n_boot=n_boot, seed=seed)
        ev.metrics["cohort_dir"] = str(out)
        ev.metrics["reference_dir"] = f"{data} where {condition}"
        write_evaluation(
            ev,
            out / "report",
            figures=figures,
            title=f"augment {strategy}: {condition} (accepted vs rare twins)",
        )
        result.metrics = ev.metrics
        evaluation = {key: ev.metrics.get(key) for key in HEADLINE_KEYS}
        evaluation["report"] = "report/report.html"

    summary = _summary(
        result, model, signature, twins, data, where, evaluation, batch, max_attempts, prefix
    )
    summary["warnings"] = run_warnings
    if encodings:
        for j, entry in enumerate(summary["rare_twins"]):
            enc = encodings[j].to_dict()
            entry["roundtrip_dice_posterior_mean"] = enc["roundtrip_dice_posterior_mean"]
            entry["roundtrip_dice"] = enc["roundtrip_dice"]
            entry["out_of_distribution"] = enc["out_of_distribution"]
    result.summary = summary
    write_json(out / "augment.json", summary)
    if not complete:
        raise AugmentStopped(
            f"stopped after max_attempts = {max_attempts} attempts with {len(files)} of {n} "
            f"maps accepted (acceptance rate {100 * result.acceptance_rate:.2f}%); the accepted "
            f"maps are in {out}. Raise {{max_attempts}} (and {{resume}}), loosen the condition "
            "or try another strategy",
            result,
            arguments=("max_attempts", "resume"),
        )
    return result


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


def _summary(
    result: AugmentResult,
    model: LatentDiffusionModel,
    signature: dict,
    twins: list[Twin],
    data: PathLike,
    where: str | Condition,
    evaluation: dict,
    batch: int,
    max_attempts: int,
    prefix: str,
) -> dict[str, Any]:
    """The contents of ``augment.json`` (no timings: same seed, same bytes)."""
    psis, regions = signature["psis"] or (), signature["regions"] or ()
    by_param, by_twin = _tallies(
        result.strategy, len(twins), psis, regions, result.attempted, result.attempts
    )
    lo, hi = wilson_interval(result.accepted, result.attempted)
    meta = provenance(model, "augment")
    return {
        "complete": result.complete,
        "strategy": result.strategy,
        "method": _METHOD[result.strategy],
        "condition": str(result.condition),
        "condition_text": where if isinstance(where, str) else str(where),
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


def _result_from(
    out: Path,
    summary: dict,
    condition: Condition,
    twins: list[Twin],
    files: list[Path],
    attempts: list[int],
) -> AugmentResult:
    """The result of a finished run, from its ``augment.json`` (resume with nothing to do)."""
    metrics_path = out / "report" / "metrics.json"
    return AugmentResult(
        out=out,
        strategy=summary["strategy"],
        condition=condition,
        seed=summary["seed"],
        n=summary["n"],
        files=files,
        attempts=attempts,
        attempted=summary["attempted"],
        rare_twins=[t.source for t in twins],
        complete=True,
        summary=summary,
        metrics=read_json(metrics_path) if metrics_path.exists() else None,
    )


def _manifest(
    model: LatentDiffusionModel,
    signature: dict,
    att: _Attempt,
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
    "AugmentResult",
    "AugmentStopped",
    "augment",
    "plan_attempt",
]
