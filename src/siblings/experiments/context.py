"""What the paper's experiments share: the run's context and the section an experiment returns.

:class:`ExperimentContext` holds the model, the real cohort and its summary, the counts,
the cohort store (``OUT/<experiment>/<cohort>/``), the four seed twins and the progress bar;
:class:`Section` is what an experiment's ``run(ctx)`` gives back (tables, figures, numbers).
Every experiment module imports this module and nothing of the runner
(:mod:`.run`), which passes the table of cohort makers in (``makers``: cohort kind ->
``(ctx, spec, folder) -> (summary, extra)``, see :mod:`.makers`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..errors import InputError
from ..io import LabelMap, list_label_maps, read_label_map, stem, write_json
from ..metrics.cohort import CohortSummary, compare, summarise_folder, summarise_maps
from ..metrics.frechet import normalisation
from .cohorts import (
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

if TYPE_CHECKING:
    from ..models.edits import TwinEncoding

PathLike = str | os.PathLike
Maker = Callable[..., tuple[CohortSummary, dict]]
"""A cohort maker: ``(ctx, spec, folder) -> (summary, extra)``; it writes the maps."""

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
        makers: Mapping[str, Maker] | None = None,
    ):
        if not scale > 0:
            raise InputError(f"{{scale}} must be greater than 0, got {scale}", arguments=("scale",))
        if batch < 1:
            raise InputError(f"{{batch}} must be at least 1, got {batch}", arguments=("batch",))
        if n_boot < 0:
            raise InputError(f"{{n_boot}} must be 0 or more, got {n_boot}", arguments=("n_boot",))
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
        self.makers: dict[str, Maker] = dict(makers or {})
        self.bar = None
        self.real_files = list_label_maps(self.data, min_count=0)
        if not self.real_files:
            raise InputError(
                f"{self.data}: holds no label maps (*.nii.gz); the real cohort is empty"
            )
        if len(self.real_files) < MIN_COHORT:
            raise InputError(
                f"{self.data}: holds {len(self.real_files)} label map(s); the experiments "
                f"need at least {MIN_COHORT} real maps"
            )
        first = read_label_map(self.real_files[0])
        size, voxel = model.preset.size, model.preset.voxel_mm
        if first.shape != (size,) * 3 or not np.allclose(first.spacing, voxel, atol=1e-3):
            raise InputError(
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
        self._seed_encodings: dict[str, TwinEncoding] = {}

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
        maker = self.makers.get(spec.kind)
        if maker is None:
            raise KeyError(f"no cohort maker for kind {spec.kind!r}; pass makers=")
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

    def seed_encoding(self, seed: Seed) -> TwinEncoding:
        """The seed's posterior-mean encoding (the paper's, ``invert_steps=0``), made once
        and shared by all its perturbational and localized cohorts."""
        if seed.key not in self._seed_encodings:
            from ..models.edits import encode_twin

            self._seed_encodings[seed.key] = encode_twin(
                self.model, self.seed_map(seed), invert_steps=0
            )
        return self._seed_encodings[seed.key]

    def summarise(
        self, labels: Sequence[np.ndarray] | np.ndarray, names: list[str]
    ) -> CohortSummary:
        return summarise_maps(labels, spacing_mm=self.model.preset.voxel_mm, names=names)
