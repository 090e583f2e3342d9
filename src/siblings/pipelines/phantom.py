"""The ``phantom`` pipeline: a procedural phantom cohort written to a folder.

:func:`generate_cohort` makes each subject with :func:`siblings.data.phantom.make_phantom`
in worker processes and writes ``phantom_XXXX.nii.gz`` (each subject depends only on
``(seed, index)``, so the files are the same bytes whatever the number of workers), then
``parameters.csv`` (:func:`siblings.data.phantom.parameters_csv`);
:func:`read_parameters` reads that table back.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..data.phantom import make_phantom, parameters_csv
from ..errors import InputError
from ..io import write_label_map, write_text


def _write_one(args: tuple[int, int, int, float, str]) -> dict:
    index, size, seed, defect_rate, out = args
    lm, row = make_phantom(index, size=size, seed=seed, defect_rate=defect_rate)
    write_label_map(Path(out) / f"{row['subject']}.nii.gz", lm)
    return row


def generate_cohort(
    out: str | os.PathLike,
    n: int = 512,
    size: int = 128,
    seed: int = 0,
    defect_rate: float = 0.25,
    workers: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Write ``n`` phantoms as ``phantom_XXXX.nii.gz`` plus ``parameters.csv`` into ``out``.

    Subjects run in a process pool (``workers``, default: all cores). Same arguments,
    same bytes. Returns the ground-truth rows written to ``parameters.csv``.
    """
    if n < 1:
        raise InputError(f"{{n}} must be at least 1, got {n}", arguments=("n",))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(i, size, seed, defect_rate, str(out)) for i in range(n)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc="phantom", unit="subject", disable=not progress)
    rows: list[dict] = []
    if workers <= 1:
        for job in jobs:
            rows.append(_write_one(job))
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for row in pool.map(_write_one, jobs, chunksize=4):
                rows.append(row)
                bar.update()
    bar.close()
    write_text(out / "parameters.csv", parameters_csv(rows))
    return rows


def read_parameters(folder: str | os.PathLike) -> list[dict]:
    """Rows of a phantom cohort's ``parameters.csv`` (numbers parsed as float)."""
    path = Path(folder) / "parameters.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for k, v in row.items():
            try:
                row[k] = float(v)
            except ValueError:
                pass
    return rows
