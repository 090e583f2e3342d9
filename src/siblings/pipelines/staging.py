"""A pipeline's output folder: checked before the run, written through a staging folder.

:func:`check_output` refuses an output path in the way before anything is computed;
:func:`staging` gives the folder to write the whole output into, renamed onto the output
path at the end. A run that fails part way leaves nothing at the output path (the
staging folder is removed), and a finished run replaces a previous output folder in one
rename.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputExistsError


def check_output(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output path that is a file, or a non-empty folder unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out}: folder exists and is not empty; choose a new folder or set {{overwrite}}",
            arguments=("overwrite",),
        )
    return out


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out``; renamed onto ``out`` on success, removed on error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.part-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        yield stage
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            os.replace(out, old)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
