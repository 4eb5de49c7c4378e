"""Typed request models, one per Kling model, and lookups by model id or short name."""

from __future__ import annotations

from kling_prefect.models.base import KlingRequest, Shot
from kling_prefect.models.facts import JobTime, ModelFacts
from kling_prefect.models.kling import (
    Element,
    Kling26TextToVideo,
    Kling30TextToVideo,
    KlingO1ImageToVideo,
    KlingO1TextToVideo,
    KlingO3TextToVideo,
)

REQUEST_MODELS: tuple[type[KlingRequest], ...] = (
    KlingO1TextToVideo,
    KlingO3TextToVideo,
    KlingO1ImageToVideo,
    Kling30TextToVideo,
    Kling26TextToVideo,
)
MODEL_IDS: tuple[str, ...] = tuple(model.model_id for model in REQUEST_MODELS)
TEXT_TO_VIDEO_MODELS: tuple[type[KlingRequest], ...] = tuple(
    model for model in REQUEST_MODELS if model.model_id.endswith("/text-to-video")
)
DEFAULT_TEXT_TO_VIDEO_MODEL = "kling-o3"

_BY_NAME: dict[str, type[KlingRequest]] = {
    **{model.model_id: model for model in REQUEST_MODELS},
    **{model.short_name: model for model in REQUEST_MODELS},
}


def facts_for(model_id: str) -> ModelFacts | None:
    """The :class:`ModelFacts` of a full model id or short name, or ``None`` for a model this package lacks."""
    found = _BY_NAME.get(model_id.strip())
    return found.facts if found is not None else None


def describe_models(models: tuple[type[KlingRequest], ...] = REQUEST_MODELS) -> str:
    """``kling-o1, kling-o3 (default), ...``: the short names, for help texts and error messages."""
    names = [m.short_name + (" (default)" if m.short_name == DEFAULT_TEXT_TO_VIDEO_MODEL else "") for m in models]
    return ", ".join(names)


def request_model_for(model: str) -> type[KlingRequest]:
    """The request model for a full model id (``kwaivgi/kling-o3/text-to-video``) or a short name.

    Short names are ``kling-o1``, ``kling-o3``, ``kling-3.0``, ``kling-2.6`` (text-to-video) and
    ``kling-o1-i2v`` (image-to-video). Raises ``KeyError`` naming the known models otherwise.
    """
    try:
        return _BY_NAME[model.strip()]
    except (KeyError, AttributeError):
        raise KeyError(f"unknown model {model!r}; use one of {describe_models()} or a full model id") from None


__all__ = [
    "DEFAULT_TEXT_TO_VIDEO_MODEL",
    "MODEL_IDS",
    "REQUEST_MODELS",
    "TEXT_TO_VIDEO_MODELS",
    "Element",
    "JobTime",
    "Kling26TextToVideo",
    "Kling30TextToVideo",
    "KlingO1ImageToVideo",
    "KlingO1TextToVideo",
    "KlingO3TextToVideo",
    "KlingRequest",
    "ModelFacts",
    "Shot",
    "describe_models",
    "facts_for",
    "request_model_for",
]
