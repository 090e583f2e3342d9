"""Provenance manifests for generated and edited maps (SPEC §4).

Each map ``NAME.nii.gz`` gets ``NAME.json`` beside it with what is needed to make it
again: method and its parameters, RNG seed and sample index, steps, the model
checkpoint's hash, the seed twin's file hash (for edits) and the software versions.
No timestamps: the same inputs and seed give byte-identical manifests.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable
from typing import Any

import numpy as np

from . import __version__


def _torch() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _module(name: str) -> Callable[[], str]:
    def version() -> str:
        return importlib.import_module(name).__version__

    return version


def _simpleitk() -> str:
    import SimpleITK as sitk

    return sitk.Version_VersionString()


_VERSION_OF: dict[str, Callable[[], str]] = {
    "digital_siblings": lambda: __version__,
    "torch": _torch,
    "monai": _module("monai"),
    "nibabel": _module("nibabel"),
    "numpy": lambda: np.__version__,
    "scipy": _module("scipy"),
    "SimpleITK": _simpleitk,
    "python": platform.python_version,
}

SOFTWARE: dict[str, tuple[str, ...]] = {
    "model": ("digital_siblings", "torch", "monai", "nibabel", "numpy", "python"),
    "prepare": ("digital_siblings", "numpy", "scipy", "nibabel", "SimpleITK", "python"),
    "repair": ("digital_siblings", "numpy", "scipy", "nibabel", "python"),
}
"""The packages each kind of manifest records, in the order it records them: ``model``
for maps made with the model (sample, edit, augment, experiments), ``prepare`` for the
TotalSegmentator preparation (which needs no torch), ``repair`` for ``siblings repair``."""


def software_versions(stack: str = "model") -> dict[str, str]:
    """Versions of the software behind a manifest: package → version string.

    Parameters
    ----------
    stack : ``"model"`` (the default) or ``"prepare"``, a key of :data:`SOFTWARE`.
    """
    if stack not in SOFTWARE:
        raise ValueError(f"unknown software stack {stack!r}; use one of {', '.join(SOFTWARE)}")
    return {name: _VERSION_OF[name]() for name in SOFTWARE[stack]}


def provenance(model: Any, method: str, **fields: Any) -> dict[str, Any]:
    """A manifest dict for one map made by ``model`` with ``method`` and ``fields``."""
    p = model.preset
    return {
        "method": method,
        **fields,
        "model": {
            "checkpoint": str(model.checkpoint) if model.checkpoint else None,
            "checkpoint_sha256": model.checkpoint_sha256,
            "preset": p.name,
            "grid": p.size,
            "voxel_mm": p.voxel_mm,
            "sigma_min": p.sigma_min,
            "sigma_max": p.sigma_max,
            "rho": p.rho,
            "bf16": bool(model.amp),
            "precision": "bf16" if model.amp else "fp32",
        },
        "software": software_versions(),
    }
