"""The ``sample`` pipeline: unconditional cohorts to NIfTI with provenance (SPEC §3, §7).

Under ``torchrun`` each process takes the sample indices ``rank, rank + world, …``; as
every sample's noise depends only on ``(seed, index)``, a sharded cohort is identical to
one written by a single process, with no duplicate seeds.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..io import LabelMap, write_json, write_label_map
from ..manifest import provenance
from ..mesh.volume import DEFAULT_EDGE_MM, check_edge
from ..metrics.condition import parse_condition
from ..metrics.morphology import morphology
from ..metrics.topology import topology_checks
from ..models.guided import (
    DEFAULT_GUIDANCE_SCALE,
    Guidance,
    load_guidance,
    parse_hold,
    target_report,
)
from ..models.ldm import LatentDiffusionModel
from ..models.regressor import feature_array
from ..repair import DEFAULT_MAX_GAP, check_max_gap, repair_topology
from .export import check_format, export_into
from .inputs import ModelSource, resolve_model

PathLike = str | os.PathLike


def check_counts(n: int, steps: int, batch: int) -> None:
    """Refuse ``n``, ``steps`` or ``batch`` below 1 (:class:`InputError` naming it)."""
    for name, value in (("n", n), ("steps", steps), ("batch", batch)):
        if value < 1:
            raise InputError(f"{{{name}}} must be at least 1, got {value}", arguments=(name,))


def _write_sample(
    model: LatentDiffusionModel,
    out: Path,
    name: str,
    labels,
    max_gap: int | None = None,
    guidance: Guidance | None = None,
    **fields,
) -> tuple[Path, dict | None]:
    """One sample: the map, then its manifest (provenance and topology violations; for
    guided sampling the guidance, the morphology and whether it met the target).

    With ``max_gap`` the sample is first repaired (:func:`siblings.repair.repair_topology`)
    and the manifest records the repair under ``repair``. Returns the path and, when
    guided, the morphology of the written map.
    """
    extra = {}
    if max_gap is not None:
        rep = repair_topology(labels, max_gap=max_gap)
        labels, extra = rep.labels, {"repair": {"max_gap": max_gap, **rep.record()}}
    path = write_label_map(out / f"{name}.nii.gz", LabelMap(labels, model.affine))
    checks = topology_checks(labels)
    violations = [k for k, v in checks.items() if v]
    guided: dict = {}
    feats = None
    if guidance is not None:
        feats = morphology(labels, spacing_mm=model.preset.voxel_mm)
        guided = {
            "guidance": guidance.record(),
            "morphology": feats,
            "within_target": bool(guidance.target(feats)),
        }
    write_json(
        out / f"{name}.json",
        provenance(
            model,
            "guided" if guidance is not None else "unconditional",
            **fields,
            **guided,
            topology_violations=violations,
            **extra,
        ),
    )
    return path, feats


def sample_cohort(
    model: ModelSource,
    out: PathLike,
    n: int,
    steps: int = 20,
    seed: int = 0,
    batch: int = 8,
    prefix: str = "sample",
    progress: bool = True,
    device: str | None = None,
    repair: bool = False,
    max_gap: int = DEFAULT_MAX_GAP,
    export: str | None = None,
    export_edge_mm: float = DEFAULT_EDGE_MM,
    target: str | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    regressor: PathLike | None = None,
    hold: str | None = None,
) -> list[Path]:
    """``siblings sample``: write ``n`` samples as ``out/{prefix}_{index:05d}.nii.gz`` plus a
    JSON manifest each; torchrun-aware.

    Parameters
    ----------
    model : the loaded latent diffusion model, or a function loading it (called once the
        settings are checked and the process group is joined).
    out : output folder (made if missing).
    n, steps, seed, batch : cohort size, Heun steps, seed, samples per batch.
    prefix : file-name prefix.
    progress : a progress bar (under torchrun, on the first process only).
    device : under ``torchrun``, this process's device for the process group (default:
        cuda when available); outside torchrun the process works alone.
    repair, max_gap : repair each sample's topology before writing it
        (:func:`siblings.repair.repair_topology`); its manifest records the checks before
        and after and the voxels changed per label.
    export, export_edge_mm : also export each batch's maps in this format
        (:func:`siblings.pipelines.export.export_into`), volume meshes at this edge length.
    target, guidance_scale, regressor, hold : guided sampling towards ``target`` (an
        absolute condition, :func:`siblings.metrics.condition.parse_condition`) with the
        morphology regressor, holding the features ``hold`` names
        (:func:`siblings.models.guided.load_guidance`); each manifest records
        the guidance, the map's morphology and whether it met the target, and
        ``guidance.json`` (``guidance_rank{r}.json`` under torchrun) the share within it.

    Returns
    -------
    list of Path
        The maps this process wrote (under torchrun: indices ``rank, rank + world, …``).
    """
    from tqdm.auto import tqdm

    from ..runtime import pick_device
    from ..train import init_distributed

    check_counts(n, steps, batch)
    check_max_gap(max_gap)
    if export is not None:
        check_edge(export_edge_mm, "export_edge_mm")
        export = check_format(export, "export")
    if target is not None:  # a bad or relative target is refused before the model loads
        cond = parse_condition(target)
        if cond.relative:
            raise InputError(
                f"{{target}} {cond} is relative to a twin; sampling has none (use "
                "`siblings edit ... --target`, or absolute numbers)",
                arguments=("target",),
            )
        parse_hold(hold, cond)
    elif hold:
        raise InputError("{hold} needs a {target}", arguments=("hold", "target"))
    dist = init_distributed(pick_device(device))
    model = resolve_model(model)
    guidance = guide = None
    if target is not None:
        guidance = load_guidance(model, target, guidance_scale, regressor, hold).resolve(None)
        guide = guidance.guide(model.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mine = list(range(dist.rank, n, dist.world))
    written: list[Path] = []
    feats: list[dict] = []
    with tqdm(
        total=len(mine), desc="sample", unit="map", disable=not (progress and dist.main)
    ) as bar:
        for b0 in range(0, len(mine), batch):
            idx = mine[b0 : b0 + batch]
            first = len(written)
            labels = model.decode(model.sample_latents(idx, steps, seed, guide=guide))
            for i, lab in zip(idx, labels, strict=True):
                path, f = _write_sample(
                    model,
                    out,
                    f"{prefix}_{i:05d}",
                    lab,
                    max_gap if repair else None,
                    guidance,
                    seed=seed,
                    index=i,
                    steps=steps,
                )
                written.append(path)
                if f is not None:
                    feats.append(f)
            if export is not None:
                export_into(out, written[first:], export, edge_mm=export_edge_mm)
            bar.update(len(idx))
    if guidance is not None and feats:
        report = {**guidance.record(), **target_report(guidance.target, feature_array(feats))}
        name = "guidance.json" if dist.world == 1 else f"guidance_rank{dist.rank}.json"
        write_json(out / name, report)
    return written
