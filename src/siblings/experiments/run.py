"""Run the paper's experiments end to end: plan, make cohorts, evaluate, report.

:func:`run_experiments` is what ``siblings experiment`` calls. Each experiment module
(:mod:`.sensitivity`, :mod:`.unconditional`, :mod:`.editing`, :mod:`.augmentation`)
provides ``plan(ctx)`` (the cohorts it needs) and ``run(ctx)`` (tables, figures and
numbers). All cohorts of the run are planned first, so one progress bar covers the whole
run, in cost units of denoiser calls (decoding a map counts as 20 calls).

Outputs in ``OUT``:

- ``OUT/<experiment>/<cohort>/``: maps, ``summary.npz``, ``done.json`` (:mod:`.cohorts`);
- ``OUT/<experiment>/tables/<table>.{csv,md}``, ``OUT/<experiment>/figures/<fig>.png``,
  ``OUT/<experiment>/results.json`` and ``section.json``;
- ``OUT/results.json`` (every experiment found in ``OUT``, with wall times) and
  ``OUT/report.html`` (every table and figure, images embedded).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..io import (
    LabelMap,
    list_label_maps,
    read_json,
    read_label_map,
    sha256_file,
    stem,
    write_bytes,
    write_json,
    write_label_map,
    write_text,
)
from ..manifest import provenance
from ..metrics.cohort import CohortSummary, compare, summarise_folder, summarise_maps
from ..metrics.frechet import normalisation
from .cohorts import (
    DECODE_COST,
    CohortResult,
    CohortSpec,
    check_identity,
    is_done,
    load_summary,
    read_done,
    save_summary,
    write_done,
)
from .counts import MIN_COHORT, PAPER, Counts
from .seeds import Seed, pick_seeds
from .tables import Table

PathLike = str | os.PathLike

# ``all`` runs them in this order: unconditional first, as the sensitivity analysis
# reuses its synthetic cohort; augmentation last.
EXPERIMENTS: tuple[str, ...] = ("unconditional", "sensitivity", "perturb", "local", "augment")
TITLES = {
    "sensitivity": "Sensitivity to sampling steps and cohort size (appendix C, Figs. 11–12)",
    "unconditional": "Unconditional sampling (§4.1, Table 1, Figs. 4–5)",
    "perturb": "Perturbational editing (§4.2, Table 2, Figs. 6–7)",
    "local": "Localized editing (§4.3, Table 3, Figs. 8–9)",
    "augment": "Cohort augmentation (§4.4, Table 4, Fig. 10)",
    "findings": "The paper's findings, claim by claim",
}
DEFAULT_WHERE = "RV_volume_ml > 115"


@dataclass
class Section:
    """What one experiment produced: tables, figures (file → (PNG, caption)), numbers."""

    name: str
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    text: list[str] = field(default_factory=list)


class ExperimentContext:
    """Everything the experiments share: model, real cohort, counts, store, progress."""

    def __init__(
        self,
        model,
        data: PathLike,
        out: PathLike,
        *,
        counts: Counts = PAPER,
        scale: float = 1.0,
        seed: int = 0,
        batch: int = 8,
        n_boot: int = 1000,
        k: int = 3,
        workers: int | None = None,
        where: str = DEFAULT_WHERE,
        progress: bool = True,
    ):
        if not scale > 0:
            raise ValueError(f"--scale must be greater than 0, got {scale}")
        if batch < 1:
            raise ValueError(f"--batch must be at least 1, got {batch}")
        if n_boot < 0:
            raise ValueError(f"--n-boot must be 0 or more, got {n_boot}")
        self.model = model
        self.data = Path(data)
        self.out = Path(out)
        self.scale = float(scale)
        self.counts = counts.scaled(scale) if scale != 1.0 else counts
        self.seed = int(seed)
        self.batch = int(batch)
        self.n_boot = int(n_boot)
        self.k = int(k)
        self.workers = workers
        self.where = where
        self.progress = progress
        self.bar = None
        self.real_files = list_label_maps(self.data, min_count=0)
        if not self.real_files:
            raise ValueError(
                f"{self.data}: holds no label maps (*.nii.gz); the real cohort is empty"
            )
        if len(self.real_files) < MIN_COHORT:
            raise ValueError(
                f"{self.data}: holds {len(self.real_files)} label map(s); the experiments "
                f"need at least {MIN_COHORT} real maps"
            )
        first = read_label_map(self.real_files[0])
        size, voxel = model.preset.size, model.preset.voxel_mm
        if first.shape != (size,) * 3 or not np.allclose(first.spacing, voxel, atol=1e-3):
            raise ValueError(
                f"{self.real_files[0]}: grid {'x'.join(map(str, first.shape))} at "
                f"{first.spacing[0]:.3g} mm, but the {model.preset.name!r} model works on "
                f"{size}³ at {voxel:.3g} mm; prepare the data for this preset"
            )
        self.real: CohortSummary = summarise_folder(
            self.data, workers=workers, progress=progress and len(self.real_files) > 32
        )
        self._seeds: list[Seed] | None = None
        self._seed_maps: dict[str, np.ndarray] = {}
        self._seed_vae: dict[str, np.ndarray] = {}

    # -- identities and cohorts ----------------------------------------------------
    def identity(self, spec: CohortSpec) -> dict:
        return {
            "cohort": spec.key,
            "kind": spec.kind,
            "n": spec.n,
            "params": spec.params,
            "checkpoint_sha256": self.model.checkpoint_sha256,
            "preset": self.model.preset.name,
            "bf16": bool(self.model.amp),
            "data": str(self.data.resolve()),
            "software": f"digital-siblings {__version__}",
        }

    def folder(self, spec: CohortSpec) -> Path:
        return self.out / spec.experiment / spec.name

    def is_done(self, spec: CohortSpec) -> bool:
        return is_done(self.folder(spec), self.identity(spec))

    def tick(self, units: float, what: str | None = None) -> None:
        if self.bar is not None:
            if what:
                self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(units)

    def cohort(self, spec: CohortSpec) -> CohortResult:
        """The cohort of ``spec``: reloaded when done, made (and stored) otherwise."""
        folder, ident = self.folder(spec), self.identity(spec)
        if is_done(folder, ident):
            done = read_done(folder)
            return CohortResult(
                spec, folder, load_summary(folder), done.get("extra", {}), done["seconds"], False
            )
        check_identity(folder, ident)
        t0 = time.perf_counter()
        maker = _MAKERS[spec.kind]
        if spec.kind != "augment":
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "cohort.json", ident)
        summary, extra = maker(self, spec, folder)
        seconds = time.perf_counter() - t0
        save_summary(folder, summary)
        if spec.kind == "augment":
            write_json(folder / "cohort.json", ident)
        write_done(folder, ident, seconds, extra)
        summary.source = folder
        return CohortResult(spec, folder, summary, extra, seconds, True)

    # -- evaluation ----------------------------------------------------------------
    def compare(self, cohort: CohortSummary, reference: CohortSummary | None = None) -> dict:
        """FD, precision, recall, TV% (with bootstrap intervals) against the real cohort."""
        return compare(
            cohort, reference if reference is not None else self.real, k=self.k,
            n_boot=self.n_boot, seed=self.seed,
        )  # fmt: skip

    def normalised(
        self, features: np.ndarray, reference: CohortSummary | None = None
    ) -> np.ndarray:
        mean, std = normalisation((reference or self.real).features)
        return (np.asarray(features, dtype=np.float64) - mean) / std

    # -- real maps and seeds -------------------------------------------------------
    def read_real(self, indices: Iterable[int]) -> list[LabelMap]:
        return [read_label_map(self.real_files[i]) for i in indices]

    def seeds(self) -> list[Seed]:
        """The four seed twins (SPEC §6), picked once from the real cohort's volumes."""
        if self._seeds is None:
            self._seeds = pick_seeds(
                self.real.feature("LV_volume_ml"),
                self.real.feature("RV_volume_ml"),
                [stem(p) for p in self.real_files],
            )
        return self._seeds

    def seed_map(self, seed: Seed) -> np.ndarray:
        if seed.key not in self._seed_maps:
            self._seed_maps[seed.key] = read_label_map(self.real_files[seed.index]).data
        return self._seed_maps[seed.key]

    def seed_through_vae(self, seed: Seed) -> np.ndarray:
        """The seed encoded and decoded ("Original-VAE" of Tables 2 and 3)."""
        if seed.key not in self._seed_vae:
            m = self.model
            self._seed_vae[seed.key] = m.decode(m.encode(self.seed_map(seed)[None]))[0]
        return self._seed_vae[seed.key]

    def summarise(
        self, labels: Sequence[np.ndarray] | np.ndarray, names: list[str]
    ) -> CohortSummary:
        return summarise_maps(labels, spacing_mm=self.model.preset.voxel_mm, names=names)


# ---------------------------------------------------------------------------------
# Cohort makers: (ctx, spec, folder) → (summary, extra).
# ---------------------------------------------------------------------------------
def _write_maps(
    ctx: ExperimentContext,
    folder: Path,
    names: Sequence[str],
    labels: Sequence[np.ndarray],
    manifests: Sequence[dict],
) -> None:
    for name, lab, man in zip(names, labels, manifests, strict=True):
        write_label_map(folder / f"{name}.nii.gz", LabelMap(lab, ctx.model.affine))
        write_json(folder / f"{name}.json", man)


def _make_sample(ctx: ExperimentContext, spec: CohortSpec, folder: Path):
    """Unconditional samples 0…n−1 (batches already on disk are read back, not redone)."""
    from ..train import autocast

    m, steps, seed = ctx.model, spec.params["steps"], spec.params["seed"]
    names = [f"sample_{i:05d}" for i in range(spec.n)]
    labels: list[np.ndarray] = []
    for b0 in range(0, spec.n, ctx.batch):
        idx = list(range(b0, min(b0 + ctx.batch, spec.n)))
        files = [folder / f"{names[i]}.nii.gz" for i in idx]
        if all(
            f.exists() and f.with_name(f"{names[i]}.json").exists()
            for f, i in zip(files, idx, strict=True)
        ):
            labels += [read_label_map(f).data for f in files]
        else:
            # One autocast context around the whole run keeps the bf16 weight cache
            # (docs/model.md: same results, less overhead); a no-op in fp32.
            with autocast(m.device, m.amp):
                z = m.sample_latents(idx, steps, seed)
            batch_labels = m.decode(z)
            _write_maps(
                ctx,
                folder,
                [names[i] for i in idx],
                batch_labels,
                [provenance(m, "unconditional", seed=seed, index=i, steps=steps) for i in idx],
            )
            labels += list(batch_labels)
        ctx.tick(len(idx) * spec.cost, spec.key)
    return ctx.summarise(labels, [f"{n}.nii.gz" for n in names]), {}


def _make_vae(ctx: ExperimentContext, spec: CohortSpec, folder: Path):
    """The first n real maps, encoded (posterior mean) and decoded."""
    from ..train import autocast

    m = ctx.model
    labels, names = [], []
    for b0 in range(0, spec.n, ctx.batch):
        idx = list(range(b0, min(b0 + ctx.batch, spec.n)))
        real = ctx.read_real(idx)
        with autocast(m.device, m.amp):
            z = m.encode(np.stack([r.data for r in real]))
        rec = m.decode(z)
        bnames = [stem(ctx.real_files[i]) for i in idx]
        _write_maps(
            ctx,
            folder,
            bnames,
            rec,
            [
                provenance(m, "vae_reconstruction", twin=str(ctx.real_files[i]),
                           twin_sha256=sha256_file(ctx.real_files[i]))
                for i in idx
            ],
        )  # fmt: skip
        labels += list(rec)
        names += [f"{n}.nii.gz" for n in bnames]
        ctx.tick(len(idx) * spec.cost, spec.key)
    return ctx.summarise(labels, names), {}


def _seed_of(ctx: ExperimentContext, spec: CohortSpec) -> Seed:
    return next(s for s in ctx.seeds() if s.key == spec.params["seed_kind"])


def _edit_manifests(ctx, spec, seed: Seed, method: str, n: int, **fields) -> list[dict]:
    path = ctx.real_files[seed.index]
    sha = sha256_file(path)
    return [
        provenance(ctx.model, method, twin=str(path), twin_sha256=sha, index=i,
                   seed=spec.params["seed"], steps=spec.params["steps"], **fields)
        for i in range(n)
    ]  # fmt: skip


def _make_perturb(ctx: ExperimentContext, spec: CohortSpec, folder: Path):
    from ..diffusion.edit import perturb

    seed = _seed_of(ctx, spec)
    p = spec.params
    # The paper's encoding: the posterior mean (invert_steps=0), not the product's inversion.
    res = perturb(
        ctx.model, ctx.seed_map(seed), psi=p["psi"], n=spec.n, steps=p["steps"],
        seed=p["seed"], batch=ctx.batch, invert_steps=0,
    )  # fmt: skip
    names = [f"sibling_{i:05d}" for i in range(spec.n)]
    _write_maps(ctx, folder, names, res.labels,
                _edit_manifests(ctx, spec, seed, "perturbational", spec.n, psi=p["psi"],
                                invert_steps=0))  # fmt: skip
    ctx.tick(spec.n * spec.cost, spec.key)
    return ctx.summarise(res.labels, [f"{n}.nii.gz" for n in names]), {"params": res.params}


def _make_inpaint(ctx: ExperimentContext, spec: CohortSpec, folder: Path):
    from ..diffusion.edit import inpaint

    seed = _seed_of(ctx, spec)
    p = spec.params
    # The paper's method as published: the posterior mean (invert_steps=0) and eq. 5
    # alone (keep="latent"), not the product's inversion and exact keep, so Table 3 and
    # Figs. 8-9 measure what the paper measured.
    res = inpaint(
        ctx.model, ctx.seed_map(seed), regenerate=p["regenerate"], n=spec.n, steps=p["steps"],
        seed=p["seed"], batch=ctx.batch, keep="latent", invert_steps=0,
    )  # fmt: skip
    names = [f"sibling_{i:05d}" for i in range(spec.n)]
    _write_maps(ctx, folder, names, res.labels,
                _edit_manifests(ctx, spec, seed, "localized", spec.n,
                                regenerate=res.params["regenerate"], kept=list(res.kept),
                                keep="latent", invert_steps=0))  # fmt: skip
    ctx.tick(spec.n * spec.cost, spec.key)
    dice = {t: float(np.mean([d[t] for d in res.kept_dice])) for t in res.kept}
    return ctx.summarise(res.labels, [f"{n}.nii.gz" for n in names]), {
        "params": res.params,
        "kept": list(res.kept),
        "kept_dice_mean": dice,
    }


def _make_augment(ctx: ExperimentContext, spec: CohortSpec, folder: Path):
    from .augmentation import make_augmented

    return make_augmented(ctx, spec, folder)


_MAKERS: dict[str, Callable] = {
    "sample": _make_sample,
    "vae": _make_vae,
    "perturb": _make_perturb,
    "inpaint": _make_inpaint,
    "augment": _make_augment,
}


# ---------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------
def _module(name: str):
    from . import augmentation, editing, sensitivity, unconditional

    return {
        "sensitivity": sensitivity,
        "unconditional": unconditional,
        "perturb": editing.perturbational,
        "local": editing.localized,
        "augment": augmentation,
    }[name]


def resolve(names: str | Sequence[str]) -> list[str]:
    """``"all"`` or experiment names → the experiments to run, in run order."""
    items = [names] if isinstance(names, str) else list(names)
    if "all" in items:
        return list(EXPERIMENTS)
    bad = [n for n in items if n not in EXPERIMENTS]
    if bad:
        raise ValueError(
            f"unknown experiment {bad[0]!r}; choose one of {', '.join(EXPERIMENTS)} or all"
        )
    return [n for n in EXPERIMENTS if n in items]


def plan(ctx: ExperimentContext, names: Sequence[str]) -> list[CohortSpec]:
    """Every cohort the experiments need, each once, in the order they will be made."""
    specs: dict[str, CohortSpec] = {}
    for name in names:
        for spec in _module(name).plan(ctx):
            specs.setdefault(spec.key, spec)
    return list(specs.values())


def _write_section(ctx: ExperimentContext, section: Section, wall: float) -> None:
    base = ctx.out / section.name
    items = []
    for t in section.tables:
        write_text(base / "tables" / f"{t.name}.csv", t.csv())
        write_text(base / "tables" / f"{t.name}.md", t.markdown())
        items.append({"type": "table", "name": t.name, "title": t.title, "html": t.html()})
    for fname, (png, caption) in section.figures.items():
        write_bytes(base / "figures" / fname, png)
        items.append({"type": "figure", "file": f"figures/{fname}", "caption": caption})
    results = dict(section.results)
    results["wall_seconds"] = round(wall, 2)
    write_json(base / "results.json", results)
    write_json(
        base / "section.json",
        {"title": TITLES[section.name], "text": section.text, "items": items},
    )


def settings(ctx: ExperimentContext, command: str | None) -> dict:
    import torch

    from ..manifest import software_versions

    m = ctx.model
    return {
        "command": command,
        "data": str(ctx.data),
        "n_real": len(ctx.real),
        "out": str(ctx.out),
        "checkpoint": str(m.checkpoint) if m.checkpoint else None,
        "checkpoint_sha256": m.checkpoint_sha256,
        "preset": m.preset.name,
        "grid": m.preset.size,
        "device": str(m.device),
        "bf16": bool(m.amp),
        "scale": ctx.scale,
        "seed": ctx.seed,
        "batch": ctx.batch,
        "n_boot": ctx.n_boot,
        "k": ctx.k,
        "augment_where": ctx.where,
        "counts": ctx.counts.to_dict(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "software": software_versions(),
    }


def assemble(out: PathLike, run_settings: dict | None = None) -> dict:
    """Write ``OUT/results.json`` and ``OUT/report.html`` from every experiment in ``OUT``."""
    from ..report import html as H

    out = Path(out)
    results: dict = {"settings": run_settings or {}, "experiments": {}}
    old = out / "results.json"
    if run_settings is None and old.exists():
        results["settings"] = read_json(old).get("settings", {})
    sections = []
    for name in (*EXPERIMENTS, "findings"):
        base = out / name
        if not (base / "section.json").exists():
            continue
        if name == "findings":
            results["findings"] = read_json(base / "results.json")["findings"]
        else:
            results["experiments"][name] = read_json(base / "results.json")
        sec = read_json(base / "section.json")
        parts = [f"<p>{H.esc(t)}</p>" for t in sec.get("text", [])]
        wall = results["experiments"].get(name, {}).get("wall_seconds")
        gen = results["experiments"].get(name, {}).get("cohort_seconds")
        if wall is not None:
            parts.append(
                f'<p class="meta">wall time of the last run: {wall:.0f} s'
                + (f"; time spent making its cohorts (over all runs): {gen:.0f} s" if gen else "")
                + "</p>"
            )
        for item in sec["items"]:
            if item["type"] == "table":
                parts.append(f"<h3>{H.esc(item['title'])}</h3>\n{item['html']}")
            else:
                png = (base / item["file"]).read_bytes()
                parts.append(H.figure(png, item["caption"]))
        sections.append((sec["title"], "\n".join(parts)))
    write_json(out / "results.json", results)
    s = results["settings"]
    subtitle = H.esc(
        f"digital-siblings {__version__} · preset {s.get('preset')} · checkpoint "
        f"{str(s.get('checkpoint_sha256', ''))[:12]} · data {s.get('data')} "
        f"({s.get('n_real')} maps) · scale {s.get('scale')} · seed {s.get('seed')} · "
        f"bf16 {s.get('bf16')}"
    )
    if s.get("command"):
        subtitle += f"<br><code>{H.esc(s['command'])}</code>"
    write_text(
        out / "report.html", H.page("Digital siblings: the paper's experiments", sections, subtitle)
    )
    return results


def run_experiments(
    names: str | Sequence[str],
    data: PathLike,
    out: PathLike,
    *,
    model=None,
    checkpoint: PathLike | None = None,
    preset: str | None = None,
    device: str | None = None,
    bf16: bool = False,
    scale: float = 1.0,
    seed: int = 0,
    batch: int = 8,
    n_boot: int = 1000,
    workers: int | None = None,
    where: str = DEFAULT_WHERE,
    counts: Counts = PAPER,
    progress: bool = True,
    command: str | None = None,
    jobs: int = 1,
    dry_run: bool = False,
) -> dict:
    """Run experiments (``"all"`` or names of :data:`EXPERIMENTS`) and write the report.

    Parameters
    ----------
    names : ``"all"``, one name or a list of names.
    data : folder of real label maps on the model's grid (the real cohort).
    out : output folder; re-running with the same settings skips finished cohorts.
    model : a loaded :class:`~siblings.models.ldm.LatentDiffusionModel` (default: load
        ``checkpoint``, or the shipped weights, on ``device``, with ``bf16`` autocast).
    preset : refuse a checkpoint of another preset.
    scale : multiply every count of maps by this (at least 4 maps per cohort).
    seed : seed of sampling (cohort seeds are derived from it) and of the bootstrap.
    batch : maps per sampler batch.
    n_boot : bootstrap resamples of the 95% intervals.
    workers : processes evaluating the real cohort (default: all cores).
    where : the rare-cohort condition of the augmentation experiment.
    counts : the counts at scale 1 (default the paper's).
    command : the command line, recorded in results.json.
    jobs : processes making cohorts at once (one torch thread each), largest cohorts
        first; 1 makes them in this process. Needs a model loaded from a checkpoint
        folder (each process loads it again). Results do not depend on ``jobs``.
    dry_run : only plan: return ``{"plan": [...]}`` (every cohort with its maps, cost
        units and whether it is finished) and write nothing.

    Returns
    -------
    dict
        The content of ``OUT/results.json``.
    """
    todo = resolve(names)
    if not scale > 0:
        raise ValueError(f"--scale must be greater than 0, got {scale}")
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if model is None:
        from ..models.ldm import LatentDiffusionModel

        model = LatentDiffusionModel.load(checkpoint, device=device, preset=preset, amp=bf16)
    elif preset is not None and preset != model.preset.name:
        raise ValueError(f"the model is for preset {model.preset.name!r}, not {preset!r}")
    ctx = ExperimentContext(
        model, data, out, counts=counts, scale=scale, seed=seed, batch=batch, n_boot=n_boot,
        workers=workers, where=where, progress=progress,
    )  # fmt: skip
    specs = plan(ctx, todo)
    if dry_run:
        return {"plan": plan_cost(ctx, todo)}
    pending = [s for s in specs if not ctx.is_done(s)]
    total = sum(s.n * s.cost for s in pending)
    from tqdm.auto import tqdm

    run_settings = settings(ctx, command)
    ctx.out.mkdir(parents=True, exist_ok=True)
    with tqdm(
        total=total, desc="experiments", unit="call", disable=not progress, unit_scale=True,
        dynamic_ncols=True,
    ) as bar:  # fmt: skip
        ctx.bar = bar
        if jobs > 1 and len(pending) > 1:
            _make_in_parallel(ctx, pending, jobs)
        for name in todo:
            t0 = time.perf_counter()
            section = _module(name).run(ctx)
            _write_section(ctx, section, time.perf_counter() - t0)
        ctx.bar = None
    from .findings import section as findings_section

    t0 = time.perf_counter()
    found = findings_section(ctx)
    if found is not None:
        _write_section(ctx, found, time.perf_counter() - t0)
    run_settings["jobs"] = jobs
    run_settings["run_wall_seconds"] = round(time.perf_counter() - t_start, 2)
    this_run = {
        "started": started,
        "wall_seconds": run_settings["run_wall_seconds"],
        "cohorts_made": len(pending),
        "cost_units_made": total,
        "jobs": jobs,
    }
    run_settings["runs"] = [*_run_history(ctx.out), this_run]
    run_settings["total_wall_seconds"] = round(
        sum(r["wall_seconds"] for r in run_settings["runs"]), 2
    )
    return assemble(ctx.out, run_settings)


def _run_history(out: Path) -> list[dict]:
    """Earlier runs into ``out`` (from its results.json), so resumed runs add up."""
    path = out / "results.json"
    if not path.exists():
        return []
    old = read_json(path).get("settings", {})
    if "runs" in old:
        return list(old["runs"])
    if "run_wall_seconds" in old:  # written before the history was kept
        return [{"started": None, "wall_seconds": old["run_wall_seconds"],
                 "jobs": old.get("jobs")}]  # fmt: skip
    return []


# ---------------------------------------------------------------------------------
# Cohorts in worker processes.
# ---------------------------------------------------------------------------------
_WORKER: dict = {}


class _QueueBar:
    """Stands in for the progress bar in a worker: sends its updates to the main process."""

    def __init__(self, queue):
        self.queue = queue

    def update(self, units: float) -> None:
        self.queue.put(units)

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        pass


def _worker_init(options: dict, queue) -> None:
    import torch

    from ..models.ldm import LatentDiffusionModel

    torch.set_num_threads(options.pop("threads"))
    model = LatentDiffusionModel.load(
        options.pop("checkpoint"), device=options.pop("device"), amp=options.pop("amp")
    )
    ctx = ExperimentContext(model, progress=False, workers=1, **options)
    ctx.bar = _QueueBar(queue)
    _WORKER["ctx"] = ctx


def _worker_make(spec: CohortSpec) -> float:
    return _WORKER["ctx"].cohort(spec).seconds


def _make_in_parallel(ctx: ExperimentContext, pending: list[CohortSpec], jobs: int) -> None:
    """Make ``pending`` cohorts in ``jobs`` processes, the costliest first (LPT order).

    Each process loads the model again and makes whole cohorts (written to disk with
    their done-markers); the experiments then reload them as finished cohorts.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from queue import Empty

    m = ctx.model
    if m.checkpoint is None:
        raise ValueError("jobs > 1 needs a model loaded from a checkpoint folder")
    options = {
        "checkpoint": str(m.checkpoint), "device": str(m.device), "amp": bool(m.amp),
        "threads": 1, "data": ctx.data, "out": ctx.out, "counts": ctx.counts, "scale": 1.0,
        "seed": ctx.seed, "batch": ctx.batch, "n_boot": ctx.n_boot, "k": ctx.k,
        "where": ctx.where,
    }  # fmt: skip
    order = sorted(pending, key=lambda s: -s.n * s.cost)
    mp = multiprocessing.get_context("spawn")
    queue = mp.Queue()  # progress units from the workers (each cohort sends n × cost)

    def drain() -> None:
        while True:
            try:
                ctx.tick(queue.get_nowait())
            except Empty:
                return

    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=mp, initializer=_worker_init, initargs=(options, queue),
    ) as pool:  # fmt: skip
        futures = {pool.submit(_worker_make, s): s for s in order}
        try:
            todo = set(futures)
            while todo:
                done, todo = wait(todo, timeout=1.0, return_when=FIRST_COMPLETED)
                drain()
                for fut in done:
                    fut.result()
                    if ctx.bar is not None:
                        ctx.bar.set_postfix_str(f"{futures[fut].key} done")
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    drain()


def plan_cost(ctx: ExperimentContext, names: Sequence[str]) -> list[dict]:
    """The planned cohorts with their maps and cost units (for estimates and dry runs)."""
    return [
        {"cohort": s.key, "kind": s.kind, "n": s.n, "cost_per_map": s.cost,
         "cost": s.n * s.cost, "done": ctx.is_done(s)}
        for s in plan(ctx, names)
    ]  # fmt: skip


__all__ = [
    "DECODE_COST",
    "EXPERIMENTS",
    "ExperimentContext",
    "Section",
    "assemble",
    "plan",
    "plan_cost",
    "resolve",
    "run_experiments",
]


def publish(out: PathLike, dest: PathLike) -> list[Path]:
    """Copy a run's report, numbers, tables and figures (not its maps) to ``dest``.

    Copies ``report.html``, ``results.json`` and, per experiment (and the findings),
    ``results.json``, ``tables/*`` and ``figures/*``, keeping the layout; other files in
    ``dest`` (e.g. a hand-written README) are left alone. Returns the files written.
    """
    out, dest = Path(out), Path(dest)
    if not (out / "report.html").exists():
        raise FileNotFoundError(f"{out}: no report.html; run the experiments into it first")
    files = [out / "report.html", out / "results.json"]
    for name in (*EXPERIMENTS, "findings"):
        base = out / name
        if (base / "results.json").exists():
            files.append(base / "results.json")
        for sub in ("tables", "figures"):
            files += sorted(p for p in (base / sub).glob("*") if p.is_file())
    return [write_bytes(dest / f.relative_to(out), f.read_bytes()) for f in files]
