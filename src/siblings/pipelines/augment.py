"""The ``augment`` pipeline: a rare subgroup of a cohort grown with generated maps.

Steps: parse the condition (:func:`siblings.metrics.condition.parse_condition`) and check
the counts before the model loads, load it, then :func:`siblings.augment.augment`
(read the rare twins, generate attempts batch by batch, keep the maps meeting the
condition, write each accepted map and its manifest atomically, write ``augment.json``
and evaluate the accepted cohort against the rare twins).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..augment import DEFAULT_PSIS, DEFAULT_REGIONS, AugmentResult, augment
from ..diffusion.inversion import DEFAULT_INVERT_STEPS
from ..errors import InputError
from ..metrics.condition import parse_condition
from .inputs import ModelSource, resolve_model

PathLike = str | os.PathLike


def check_counts(
    n: int, steps: int, batch: int, max_attempts: int | None, k: int, n_boot: int, invert_steps: int
) -> None:
    """Refuse counts out of range (:class:`InputError` naming the argument)."""
    for name, value in (("n", n), ("steps", steps), ("batch", batch), ("k", k)):
        if value < 1:
            raise InputError(f"{{{name}}} must be at least 1, got {value}", arguments=(name,))
    if max_attempts is not None and max_attempts < n:
        raise InputError(
            f"{{max_attempts}} ({max_attempts}) must be at least {{n}} ({n})",
            arguments=("max_attempts", "n"),
        )
    for name, value in (("n_boot", n_boot), ("invert_steps", invert_steps)):
        if value < 0:
            raise InputError(f"{{{name}}} must be 0 or more, got {value}", arguments=(name,))


def augment_cohort(
    model: ModelSource,
    data: PathLike,
    where: str,
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
    keep: str = "exact",
    invert_steps: int = DEFAULT_INVERT_STEPS,
    resume: bool = False,
    evaluate: bool = True,
    k: int = 3,
    n_boot: int = 1000,
    figures: bool = True,
    progress: bool = False,
) -> AugmentResult:
    """``siblings augment``: grow the rare cohort of ``data`` by ``n`` maps into ``out``.

    ``model`` is a loaded model or a function loading it, called once the condition and
    the counts have been checked. The parameters are those of
    :func:`siblings.augment.augment`; :class:`siblings.augment.AugmentStopped` is raised
    when ``max_attempts`` runs out (what was accepted is kept).
    """
    parse_condition(where)
    check_counts(n, steps, batch, max_attempts, k, n_boot, invert_steps)
    return augment(
        resolve_model(model),
        data,
        where,
        strategy,
        n,
        seed,
        out,
        steps=steps,
        batch=batch,
        max_attempts=max_attempts,
        psis=psis,
        regions=regions,
        dilate=dilate,
        keep=keep,
        invert_steps=invert_steps,
        resume=resume,
        evaluate=evaluate,
        k=k,
        n_boot=n_boot,
        figures=figures,
        progress=progress,
    )
