"""A pipeline's model input: a loaded model, or a function that loads it.

Pipelines check every argument before they load the model (seconds, and a warning line
about precision), so a caller may pass a loader; :func:`resolve_model` calls it then.
"""

from __future__ import annotations

from collections.abc import Callable

from ..models.ldm import LatentDiffusionModel

ModelSource = LatentDiffusionModel | Callable[[], LatentDiffusionModel]


def resolve_model(model: ModelSource) -> LatentDiffusionModel:
    """``model`` itself, or what the loader ``model()`` returns."""
    return model if isinstance(model, LatentDiffusionModel) else model()
