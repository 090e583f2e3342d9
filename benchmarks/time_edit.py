"""Run one `siblings edit ...` command with timers on its expensive steps.

    python benchmarks/time_edit.py edit local TWIN --regenerate LV --n 2 --seed 0 --threads 1 --out OUT

Runs the command in this process and prints, as JSON, wall and CPU seconds (this
process's, which other jobs on a shared machine do not inflate) of: the twin's
preparation (``resolve_twin``, with its round trip), every ``unprepare`` call (the first
is the twin's round trip, then one per sibling), the exact-keep composition on the scan
grid (per sibling) and each scan-grid NIfTI write, and of the whole command.

To time an older checkout, run it with that checkout first on the path
(``PYTHONPATH=/tmp/before/src``); steps the old code does not have are left empty.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import siblings
import siblings.editing as editing
from siblings.data import geometry

try:  # where the run lives now; an older checkout ran it in siblings.editing
    import siblings.pipelines.edit as edit_pipeline
except ImportError:
    edit_pipeline = editing

TIMES: dict[str, list] = {"prepare_twin": [], "unprepare": [], "compose": [], "write_scanner": []}


def _big(shape) -> bool:  # a scan grid, not the model grid
    return int(np.prod(shape)) > 10_000_000


def _timed(key, fn, when=lambda *a, **k: True):
    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        if when(*args, **kwargs):
            TIMES[key].append(
                [round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)]
            )
        return out

    return wrapper


def main() -> None:
    geometry.unprepare = _timed("unprepare", geometry.unprepare)
    run = edit_pipeline if hasattr(edit_pipeline, "resolve_twin") else editing
    run.resolve_twin = _timed("prepare_twin", run.resolve_twin)
    run.write_label_map = _timed(
        "write_scanner", run.write_label_map, lambda path, lm: _big(lm.shape)
    )
    if hasattr(editing, "compose_exact"):
        editing.compose_exact = _timed(
            "compose", editing.compose_exact, lambda twin, *a, **k: _big(np.shape(twin))
        )
    from siblings.cli import main as cli

    wall, cpu = time.perf_counter(), time.process_time()
    try:
        cli(sys.argv[1:])
    finally:
        total = [round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)]
        print(
            json.dumps(
                {
                    "seconds (wall, cpu)": {**TIMES, "total": total},
                    "load_average": round(os.getloadavg()[0], 2),
                    "siblings": siblings.__file__,
                }
            )
        )


if __name__ == "__main__":
    main()
