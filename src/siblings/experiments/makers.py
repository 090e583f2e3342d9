"""Cohort makers of the experiments: each ``(ctx, spec, folder) -> (summary, extra)``.

A maker makes one planned cohort (unconditional samples, real maps through the VAE,
perturbational or localized siblings of a seed twin) into ``folder``, maps and manifests,
and returns its summary. :data:`MAKERS` is the table the runner passes to the context;
the augmentation maker lives with its experiment (:func:`.augmentation.make_augmented`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import LabelMap, read_label_map, sha256_file, stem, write_json, write_label_map
from ..manifest import provenance
from .cohorts import CohortSpec
from .context import ExperimentContext, Maker
from .seeds import Seed


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


def make_sample(ctx: ExperimentContext, spec: CohortSpec, folder: Path):
    """Unconditional samples 0…n−1 (batches already on disk are read back, not redone)."""
    from ..runtime import autocast

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


def make_vae(ctx: ExperimentContext, spec: CohortSpec, folder: Path):
    """The first n real maps, encoded (posterior mean) and decoded."""
    from ..runtime import autocast

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


def make_perturb(ctx: ExperimentContext, spec: CohortSpec, folder: Path):
    from ..models.edits import perturb

    seed = _seed_of(ctx, spec)
    p = spec.params
    # The paper's encoding: the posterior mean (invert_steps=0), not the product's inversion.
    res = perturb(
        ctx.model, ctx.seed_map(seed), psi=p["psi"], n=spec.n, steps=p["steps"],
        seed=p["seed"], batch=ctx.batch, invert_steps=0, encoding=ctx.seed_encoding(seed),
    )  # fmt: skip
    names = [f"sibling_{i:05d}" for i in range(spec.n)]
    _write_maps(ctx, folder, names, res.labels,
                _edit_manifests(ctx, spec, seed, "perturbational", spec.n, psi=p["psi"],
                                invert_steps=0))  # fmt: skip
    ctx.tick(spec.n * spec.cost, spec.key)
    return ctx.summarise(res.labels, [f"{n}.nii.gz" for n in names]), {"params": res.params}


def make_inpaint(ctx: ExperimentContext, spec: CohortSpec, folder: Path):
    from ..models.edits import inpaint

    seed = _seed_of(ctx, spec)
    p = spec.params
    # The paper's method as published: the posterior mean (invert_steps=0) and eq. 5
    # alone (keep="latent"), not the product's inversion and exact keep, so Table 3 and
    # Figs. 8-9 measure what the paper measured.
    res = inpaint(
        ctx.model, ctx.seed_map(seed), regenerate=p["regenerate"], n=spec.n, steps=p["steps"],
        seed=p["seed"], batch=ctx.batch, keep="latent", invert_steps=0,
        encoding=ctx.seed_encoding(seed),
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


MAKERS: dict[str, Maker] = {
    "sample": make_sample,
    "vae": make_vae,
    "perturb": make_perturb,
    "inpaint": make_inpaint,
}
