"""The ``unprepare`` pipeline: prepared-space maps taken back onto a scan's grid, as files.

:func:`unprepare_files` reads a map (or every map of a folder), puts each back on the
grid its transform came from (:func:`siblings.data.geometry.unprepare`, in memory) and
writes it with a provenance JSON beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ..data.geometry import Interpolation, PreparedTransform, unprepare
from ..io import list_label_maps, read_label_map, sha256_file, stem, write_json, write_label_map


def unprepare_files(
    maps: str | os.PathLike,
    transform: str | os.PathLike,
    out: str | os.PathLike,
    interpolation: Interpolation = "linear",
) -> list[Path]:
    """:func:`unprepare` for files: one map, or every map of a folder (e.g. the siblings
    of one twin), written with a provenance JSON beside each.

    ``maps`` is a prepared-space ``.nii.gz`` file (then ``out`` is the output file, or a
    folder to write it into) or a folder of them (then ``out`` is a folder). Errors name
    the offending file.

    Example
    -------
    >>> unprepare_files("siblings/", "prepared/s0001.xfm.json", "on_scan/")  # doctest: +SKIP
    """
    maps, out, transform_path = Path(maps), Path(out), Path(transform)
    t = PreparedTransform.load(transform_path)
    if maps.is_dir():
        sources = list_label_maps(maps)
        targets = [out / s.name for s in sources]
    else:
        if not maps.exists():
            raise FileNotFoundError(f"{maps}: no such file")
        sources = [maps]
        targets = [out / maps.name if out.is_dir() or str(out).endswith(os.sep) else out]
    written = []
    for src, dst in zip(sources, targets, strict=True):
        lm = read_label_map(src, shape=t.target_shape)
        result = unprepare(lm, t, interpolation=interpolation)
        write_label_map(dst, result)
        record: dict[str, Any] = {
            "method": "unprepare",
            "source": {"file": str(src), "sha256": sha256_file(src)},
            "transform": {"file": str(transform_path), "sha256": sha256_file(transform_path)},
            "interpolation": interpolation,
            "grid": {"shape": list(result.shape), "affine": result.affine.tolist()},
        }
        provenance = src.with_name(f"{stem(src)}.json")
        if provenance.is_file():
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                record["source_provenance"] = json.loads(provenance.read_text())
        write_json(dst.with_name(f"{stem(dst)}.json"), record)
        written.append(dst)
    return written
