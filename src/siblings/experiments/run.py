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
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

from .. import __version__
from ..errors import InputError
from ..io import read_json, write_bytes, write_json, write_text
from . import augmentation, editing, findings, sensitivity, unconditional
from .cohorts import DECODE_COST, CohortSpec
from .context import DEFAULT_WHERE, ExperimentContext, Maker, Section
from .counts import PAPER, Counts
from .makers import MAKERS

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

# ---------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------
TABLE: dict[str, ModuleType | object] = {
    "sensitivity": sensitivity,
    "unconditional": unconditional,
    "perturb": editing.perturbational,
    "local": editing.localized,
    "augment": augmentation,
}
"""The table of experiments: name -> an object with ``plan(ctx)`` and ``run(ctx)``."""

COHORT_MAKERS: dict[str, Maker] = {**MAKERS, "augment": augmentation.make_augmented}
"""Cohort kind -> maker, passed to every :class:`ExperimentContext` the runner builds."""


def resolve(names: str | Sequence[str]) -> list[str]:
    """``"all"`` or experiment names → the experiments to run, in run order."""
    items = [names] if isinstance(names, str) else list(names)
    if "all" in items:
        return list(EXPERIMENTS)
    bad = [n for n in items if n not in EXPERIMENTS]
    if bad:
        raise InputError(
            f"unknown experiment {bad[0]!r}; choose one of {', '.join(EXPERIMENTS)} or all"
        )
    return [n for n in EXPERIMENTS if n in items]


def plan(
    ctx: ExperimentContext, names: Sequence[str], table: Mapping[str, object] = TABLE
) -> list[CohortSpec]:
    """Every cohort the experiments need, each once, in the order they will be made."""
    specs: dict[str, CohortSpec] = {}
    for name in names:
        for spec in table[name].plan(ctx):
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
    table: Mapping[str, object] = TABLE,
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
    table : the experiments by name, each with ``plan(ctx)`` and ``run(ctx)`` (default
        :data:`TABLE`, the paper's).

    Returns
    -------
    dict
        The content of ``OUT/results.json``.
    """
    todo = resolve(names)
    if not scale > 0:
        raise InputError(f"{{scale}} must be greater than 0, got {scale}", arguments=("scale",))
    if jobs < 1:
        raise InputError(f"{{jobs}} must be at least 1, got {jobs}", arguments=("jobs",))
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if model is None:
        from ..models.ldm import LatentDiffusionModel

        model = LatentDiffusionModel.load(checkpoint, device=device, preset=preset, amp=bf16)
    elif preset is not None and preset != model.preset.name:
        raise InputError(
            f"the model is for {{preset}} {model.preset.name!r}, not {preset!r}",
            arguments=("preset",),
        )
    ctx = ExperimentContext(
        model, data, out, counts=counts, scale=scale, seed=seed, batch=batch, n_boot=n_boot,
        workers=workers, where=where, progress=progress, makers=COHORT_MAKERS,
    )  # fmt: skip
    specs = plan(ctx, todo, table)
    if dry_run:
        return {"plan": plan_cost(ctx, todo, table)}
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
            section = table[name].run(ctx)
            _write_section(ctx, section, time.perf_counter() - t0)
        ctx.bar = None
    t0 = time.perf_counter()
    found = findings.section(ctx)
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
    ctx = ExperimentContext(model, progress=False, workers=1, makers=COHORT_MAKERS, **options)
    ctx.bar = _QueueBar(queue)
    _WORKER["ctx"] = ctx


def _worker_make(spec: CohortSpec) -> float:
    return _WORKER["ctx"].cohort(spec).seconds


def schedule_order(pending: list[CohortSpec]) -> list[CohortSpec]:
    """The order cohorts start in: those another cohort reuses (``after``) first, then
    the costliest first (LPT)."""
    needed = {k for s in pending for k in s.after}
    return sorted(pending, key=lambda s: (s.key not in needed, -s.n * s.cost))


def _make_in_parallel(ctx: ExperimentContext, pending: list[CohortSpec], jobs: int) -> None:
    """Make ``pending`` cohorts in ``jobs`` processes (order: :func:`schedule_order`).

    A cohort starts only once the planned cohorts it reuses (``spec.after``) are done, as
    soon as a process is free and before any cheaper ready cohort. Each process loads the
    model again and makes whole cohorts (written to disk with their done-markers); the
    experiments then reload them as finished cohorts.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from queue import Empty

    m = ctx.model
    if m.checkpoint is None:
        raise InputError(
            "{jobs} > 1 needs a model loaded from a checkpoint folder", arguments=("jobs",)
        )
    options = {
        "checkpoint": str(m.checkpoint), "device": str(m.device), "amp": bool(m.amp),
        "threads": 1, "data": ctx.data, "out": ctx.out, "counts": ctx.counts, "scale": 1.0,
        "seed": ctx.seed, "batch": ctx.batch, "n_boot": ctx.n_boot, "k": ctx.k,
        "where": ctx.where,
    }  # fmt: skip
    waiting = schedule_order(pending)
    planned = {s.key for s in pending}
    finished: set[str] = set()
    mp = multiprocessing.get_context("spawn")
    queue = mp.Queue()  # progress units from the workers (each cohort sends n × cost)

    def drain() -> None:
        while True:
            try:
                ctx.tick(queue.get_nowait())
            except Empty:
                return

    def ready(spec: CohortSpec) -> bool:
        return all(k not in planned or k in finished for k in spec.after)

    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=mp, initializer=_worker_init, initargs=(options, queue),
    ) as pool:  # fmt: skip
        running: dict = {}
        try:
            while waiting or running:
                while len(running) < jobs:
                    nxt = next((s for s in waiting if ready(s)), None)
                    if nxt is None:
                        break
                    waiting.remove(nxt)
                    running[pool.submit(_worker_make, nxt)] = nxt
                if not running:
                    raise RuntimeError(f"cohorts wait on each other: {[s.key for s in waiting]}")
                done, _ = wait(set(running), timeout=1.0, return_when=FIRST_COMPLETED)
                drain()
                for fut in done:
                    fut.result()
                    spec = running.pop(fut)
                    finished.add(spec.key)
                    if ctx.bar is not None:
                        ctx.bar.set_postfix_str(f"{spec.key} done")
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
    drain()


def plan_cost(
    ctx: ExperimentContext, names: Sequence[str], table: Mapping[str, object] = TABLE
) -> list[dict]:
    """The planned cohorts with their maps and cost units (for estimates and dry runs)."""
    return [
        {"cohort": s.key, "kind": s.kind, "n": s.n, "cost_per_map": s.cost,
         "cost": s.n * s.cost, "done": ctx.is_done(s)}
        for s in plan(ctx, names, table)
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
