"""Provenance manifests for generated and edited maps (SPEC §4).

Each map ``NAME.nii.gz`` gets ``NAME.json`` beside it with what is needed to make it
again: method and its parameters, RNG seed and sample index, steps, the model
checkpoint's hash, the seed twin's file hash (for edits) and the software versions.
No timestamps: the same inputs and seed give byte-identical manifests.
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from . import __version__


def software_versions() -> dict[str, str]:
    import monai
    import nibabel
    import torch

    return {
        "digital_siblings": __version__,
        "torch": torch.__version__.split("+")[0],
        "monai": monai.__version__,
        "nibabel": nibabel.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


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
