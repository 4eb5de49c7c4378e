"""What a job's duration is learned by: its :class:`JobKind` (model, mode, seconds of video, audio)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kling_prefect.models import facts_for, request_model_for

if TYPE_CHECKING:
    from kling_prefect.models import KlingRequest

__all__ = ["JobKind"]


@dataclass(frozen=True)
class JobKind:
    """What a job's duration is learned by: model id, mode, seconds of video, whether audio is generated."""

    model: str
    mode: str
    seconds: int
    audio: bool = False

    @classmethod
    def of(cls, request: KlingRequest) -> JobKind:
        """The kind of a :class:`~kling_prefect.models.KlingRequest`."""
        return cls(
            model=request.model_id, mode=request.mode_name, seconds=request.video_seconds, audio=request.has_audio
        )

    @classmethod
    def from_args(cls, model: str, args: Mapping[str, Any], video_seconds: int | None = None) -> JobKind:
        """The kind of a job from its model id and wire ``args`` (defaults filled in by the request model)."""
        try:
            return cls.of(request_model_for(model).model_validate(dict(args)))
        except Exception:  # an unknown model or args we cannot validate: read what is there
            raw = video_seconds if video_seconds is not None else args.get("duration", 0)
            try:
                seconds = int(raw)
            except (TypeError, ValueError):
                seconds = 0
            audio = args.get("sound") == "on" or args.get("generate_audio") is True
            return cls(model=model, mode=str(args.get("mode") or "default"), seconds=seconds, audio=audio)

    def typical_seconds(self) -> float | None:
        """The model's typical job time for this kind (:meth:`ModelFacts.typical_job_seconds`), if the model is
        known: the centre of the wide prior a wait starts from before any job of the kind was seen."""
        facts = facts_for(self.model)
        if facts is None:
            return None
        return facts.typical_job_seconds(self.mode, self.seconds, self.audio)
