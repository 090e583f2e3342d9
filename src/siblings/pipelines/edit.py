"""The ``edit`` pipeline: digital siblings of one twin, written with a report (SPEC §4).

Steps, in order, nothing written before the last: check the settings
(:func:`siblings.editing.check_settings`) and the output folder
(:func:`siblings.editing.check_output`), load the model, then
:func:`siblings.editing.run_edit` (resolve the twin onto the model grid, encode it, make
the siblings, measure them and write everything through a staging folder renamed onto
``out``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..diffusion.inversion import DEFAULT_INVERT_STEPS
from ..editing import EditRun, check_output, check_settings, run_edit
from ..errors import InputError
from .inputs import ModelSource, resolve_model

PathLike = str | os.PathLike


def edit_twin(
    model: ModelSource,
    twin: PathLike,
    out: PathLike,
    method: str,
    *,
    n: int = 60,
    steps: int = 20,
    seed: int = 0,
    batch: int = 8,
    psi: float | None = None,
    regenerate: Iterable[str] | str | None = None,
    dilate: int | None = None,
    keep_background: bool = False,
    with_myocardium: bool = True,
    fresh_noise: bool = False,
    keep: str = "exact",
    invert_steps: int = DEFAULT_INVERT_STEPS,
    register_to: PathLike | str | None = "phantom",
    reference: PathLike | None = None,
    n_boot: int = 1000,
    figure_siblings: int = 5,
    overwrite: bool = False,
    progress: bool = True,
) -> EditRun:
    """``siblings edit perturb|local``: siblings of ``twin`` into ``out``.

    ``model`` is a loaded model or a function loading it, called once every argument and
    the output folder have been checked. The other parameters are those of
    :func:`siblings.editing.run_edit`. Returns the run (what :func:`format_run` prints).
    """
    local = method == "local"
    check_settings(
        method,
        n=n,
        steps=steps,
        seed=seed,
        batch=batch,
        psi=None if local else psi,
        regenerate=regenerate if local else None,
        dilate=dilate if local else None,
        with_myocardium=with_myocardium if local else True,
        keep=keep if local else "exact",
        invert_steps=invert_steps,
    )
    if n_boot < 0:
        raise InputError(f"{{n_boot}} must be 0 or more, got {n_boot}", arguments=("n_boot",))
    if figure_siblings < 1:
        raise InputError(
            f"{{figure_siblings}} must be at least 1, got {figure_siblings}",
            arguments=("figure_siblings",),
        )
    check_output(out, overwrite)
    return run_edit(
        resolve_model(model),
        twin,
        out,
        method,
        n=n,
        steps=steps,
        seed=seed,
        batch=batch,
        psi=None if local else psi,
        regenerate=regenerate if local else None,
        dilate=dilate if local else None,
        keep_background=keep_background if local else False,
        with_myocardium=with_myocardium if local else True,
        fresh_noise=fresh_noise if local else False,
        keep=keep if local else "exact",
        invert_steps=invert_steps,
        register_to=register_to,
        reference=reference,
        n_boot=n_boot,
        figure_siblings=figure_siblings,
        overwrite=overwrite,
        progress=progress,
    )
