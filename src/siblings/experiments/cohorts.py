"""Generated cohorts on disk: one folder per cohort, a done-marker, a stored summary.

``OUT/<experiment>/<cohort>/`` holds the maps (``*.nii.gz`` with a provenance ``*.json``
each), ``cohort.json`` (what the cohort is: kind, parameters, seed, checkpoint hash,
written before the first map), ``summary.npz`` (features, checks and occupancy counts of
its maps, so evaluation never re-reads them) and ``done.json`` (written last). A cohort
whose ``done.json`` matches the requested identity is not made again; a folder made with
other settings is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import anatomy
from ..errors import InputError
from ..io import read_json, write_bytes, write_json
from ..metrics.cohort import CohortSummary
from ..metrics.heatmaps import Occupancy, OccupancyPartial

# Cost units of the progress bar: one denoiser call on one map. Decoding (and encoding)
# one map costs about as much as 20 calls with the tiny model (measured on this CPU).
DECODE_COST = 20
ENCODE_COST = 20


@dataclass(frozen=True)
class CohortSpec:
    """A cohort to make: where it lives, how it is made and what it costs per map."""

    experiment: str
    name: str
    kind: str  # sample | vae | perturb | inpaint | augment
    n: int
    params: dict = field(default_factory=dict, hash=False, compare=False)
    cost: float = 0.0  # progress units per map (denoiser calls + decoding)
    # Cohorts whose maps this one may reuse (keys): made first when they are planned too.
    # Not part of the identity: reusing them does not change a byte of this cohort.
    after: tuple[str, ...] = field(default=(), hash=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.name}"


def derived_seed(seed: int, key: str) -> int:
    """A 31-bit RNG seed for one cohort: independent cohorts from one ``--seed``."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def heun_calls(steps: int) -> int:
    """Denoiser calls of an N-step Heun run (2N − 1, SPEC §3)."""
    return 2 * steps - 1


@dataclass
class CohortResult:
    """A made (or reloaded) cohort: its summary plus what else its maker recorded."""

    spec: CohortSpec
    folder: Path
    summary: CohortSummary
    extra: dict
    seconds: float
    made_now: bool


def save_summary(folder: Path, summary: CohortSummary) -> Path:
    """Write ``summary.npz``: names, features, checks, tissue occupancy counts."""
    occ = summary.occupancy
    counts = occ.counts()[1:] if occ.n else np.zeros((6, 0, 0, 0), np.int64)
    dtype = np.uint16 if occ.n < 1 << 16 else np.uint32
    import io

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        names=np.array(summary.names, dtype=str),
        features=summary.features,
        violated=summary.violated,
        occupancy=np.moveaxis(counts, 0, -1).astype(dtype),
        occupancy_n=np.array(occ.n),
        shape=np.array(occ.shape if occ.shape is not None else (0, 0, 0)),
        spacing=np.array(summary.spacing_mm or (np.nan,) * 3, dtype=np.float64),
    )
    return write_bytes(folder / "summary.npz", buf.getvalue())


def load_summary(folder: Path) -> CohortSummary:
    """Read ``summary.npz`` back into a :class:`CohortSummary` (with its occupancy)."""
    with np.load(folder / "summary.npz") as z:
        shape = tuple(int(s) for s in z["shape"])
        occ = Occupancy(shape)
        n = int(z["occupancy_n"])
        if n:
            full = tuple(slice(0, s) for s in shape)
            occ.merge(OccupancyPartial(shape, n, full, z["occupancy"]))  # type: ignore[arg-type]
        spacing = tuple(float(s) for s in z["spacing"])
        return CohortSummary(
            names=[str(s) for s in z["names"]],
            features=z["features"].reshape(-1, len(anatomy.MORPHOLOGY_COLUMNS)),
            violated=z["violated"].reshape(-1, len(anatomy.TOPOLOGY_COLUMNS)).astype(bool),
            occupancy=occ,
            source=folder,
            spacing_mm=None if np.isnan(spacing[0]) else spacing,  # type: ignore[arg-type]
        )


def prefix(summary: CohortSummary, n: int) -> CohortSummary:
    """The first ``n`` maps of a cohort (features and checks; occupancy left empty).

    Valid because map ``i`` of a sampled cohort depends only on (seed, i): the first n
    maps of a large cohort are exactly the cohort of size n.
    """
    if n > len(summary):
        raise ValueError(f"prefix of {n} maps from a cohort of {len(summary)}")
    return CohortSummary(
        names=summary.names[:n],
        features=summary.features[:n],
        violated=summary.violated[:n],
        occupancy=Occupancy(summary.occupancy.shape),
        source=summary.source,
        spacing_mm=summary.spacing_mm,
        settings=dict(summary.settings),
    )


def read_identity(folder: Path) -> dict | None:
    path = folder / "cohort.json"
    return read_json(path) if path.exists() else None


def is_done(folder: Path, identity: dict) -> bool:
    """True when ``done.json`` exists and the cohort was made with ``identity``."""
    done = folder / "done.json"
    if not done.exists() or not (folder / "summary.npz").exists():
        return False
    return read_json(done).get("identity") == identity


def check_identity(folder: Path, identity: dict) -> None:
    """Refuse a folder made with other settings (ValueError naming what differs)."""
    old = read_identity(folder)
    if old is None or old == identity:
        return
    diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
    shown = ", ".join(f"{k}: {old.get(k)!r} → {identity.get(k)!r}" for k in diff[:4])
    raise InputError(
        f"{folder}: this cohort was made with other settings ({shown}); "
        "use another {out}, or delete the folder to make it again",
        arguments=("out",),
    )


def write_done(folder: Path, identity: dict, seconds: float, extra: dict) -> Path:
    return write_json(
        folder / "done.json", {"identity": identity, "seconds": round(seconds, 3), "extra": extra}
    )


def read_done(folder: Path) -> dict:
    return read_json(folder / "done.json")
