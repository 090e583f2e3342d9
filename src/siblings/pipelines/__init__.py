"""Files in, files out: the runners behind each command (``sample``, ``edit``, ``augment``,
``evaluate``, ``prepare``).

A pipeline is a short function that composes the layers below it: it resolves its inputs
(checks arguments, reads files, loads the model), computes on arrays, writes its outputs
atomically (through :mod:`siblings.io`) and returns what it made for the caller to report.
The command line (:mod:`siblings.cli`) parses arguments and calls exactly one pipeline; a
Python user can call the same function.

The package exports the entries of the commands whose name differs from their module's;
the others are imported from their modules (``siblings.pipelines.augment.augment``), so
that ``import siblings.pipelines.augment`` stays the module.
"""

from .edit import run_edit
from .evaluate import evaluate_cohort
from .prepare import prepare_totalsegmentator
from .sample import sample_cohort

__all__ = [
    "evaluate_cohort",
    "prepare_totalsegmentator",
    "run_edit",
    "sample_cohort",
]
