"""A staging folder: a pipeline writes a whole output folder there, then renames it.

A run that fails part way leaves nothing at the output path (the staging folder is
removed), and a finished run replaces a previous output folder in one rename.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


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
