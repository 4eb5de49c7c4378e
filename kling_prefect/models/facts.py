"""What the rest of the package needs to know about each Kling model, in one table carried by its request class.

Each request model (``KlingO3TextToVideo``, ...) has a ``facts`` class attribute, a :class:`ModelFacts`: the
vendor's model id, the short name the CLI and batch files take, the documented rates, which wire field asks
for audio, how the duration is sent, which durations are allowed, and how long a job typically takes. Pricing,
the CLI's ``--model`` choices, the waiting kinds and their cold-start prior, the emulator's job times and the
per-model task helpers all read it from there.

Examples:
    ```python
    from kling_prefect import KlingO3TextToVideo

    facts = KlingO3TextToVideo.facts
    facts.short_name  # 'kling-o3'
    facts.rate("std", audio=True)  # Decimal('0.095')
    facts.typical_job_seconds("pro", 5, audio=False)  # 135.0
    ```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

__all__ = ["AUDIO_JOB_FACTOR", "JobTime", "ModelFacts"]

#: Jobs that generate audio take this much longer (a typical figure: the vendor documents no times at all).
AUDIO_JOB_FACTOR = 1.2

Category = Literal["text-to-video", "image-to-video"]
AudioField = Literal["sound", "generate_audio"]


@dataclass(frozen=True)
class JobTime:
    """Typical seconds from create to done: ``base + per_second * seconds of video``.

    The vendor publishes no job times. These figures are a starting point only: the waiting schedule treats
    them as a *wide* prior, replaced by what jobs of the kind are seen to take (see :mod:`kling_prefect.waiting`),
    and the bundled emulator uses them as its job times.
    """

    base: float
    per_second: float

    def seconds(self, video_seconds: int) -> float:
        return float(self.base + self.per_second * video_seconds)


@dataclass(frozen=True)
class ModelFacts:
    """One Kling model as the vendor page describes it (``shared/seeds``), plus a typical job time.

    Attributes:
        model_id: the vendor's model id, sent as ``model`` to ``job/create``.
        short_name: what ``--model`` and batch files accept besides the full id.
        category: text-to-video or image-to-video.
        rates: USD per second of video by ``(mode, audio)``; its keys are the modes the model has.
        audio_field: the wire field that asks for audio (``sound`` takes "on"/"off", ``generate_audio`` a
            boolean), or ``None`` when the model makes no audio.
        duration_on_wire: whether ``duration`` is sent as a JSON integer or a string of digits.
        durations: the allowed video lengths in seconds (the model class enforces the same; a test ties them).
        job_times: typical job time by mode.
        helper: the name of the model's task helper in :mod:`kling_prefect.tasks`.
    """

    model_id: str
    short_name: str
    category: Category
    rates: Mapping[tuple[str, bool], Decimal]
    audio_field: AudioField | None
    duration_on_wire: Literal["int", "string"]
    durations: tuple[int, ...]
    job_times: Mapping[str, JobTime]
    helper: str

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes the model takes, as documented (e.g. ``('std', 'pro')``)."""
        return tuple(dict.fromkeys(mode for mode, _ in self.rates))

    @property
    def has_audio_option(self) -> bool:
        return self.audio_field is not None

    def rate(self, mode: str, audio: bool = False) -> Decimal:
        """USD per second of video; ``KeyError`` naming the model for a mode/audio it does not have."""
        try:
            return self.rates[(mode, audio)]
        except KeyError:
            raise KeyError(f"{self.model_id} has no rate for mode {mode!r} with audio={audio}") from None

    def audio_args(self, audio: bool) -> dict[str, object]:
        """The wire field and value that ask for audio (or not); ``{}`` for a model without audio."""
        if self.audio_field == "sound":
            return {"sound": "on" if audio else "off"}
        if self.audio_field == "generate_audio":
            return {"generate_audio": audio}
        return {}

    def typical_job_seconds(self, mode: str, video_seconds: int, audio: bool = False) -> float:
        """Typical seconds from create to done for this mode, length and audio (see :class:`JobTime`)."""
        time = self.job_times.get(mode) or next(iter(self.job_times.values()))
        seconds = time.seconds(video_seconds)
        return seconds * AUDIO_JOB_FACTOR if audio else seconds

    def describe_durations(self) -> str:
        """The allowed durations as help text shows them: ``5 or 10``, ``3-15``."""
        values = self.durations
        if len(values) > 2 and values == tuple(range(values[0], values[-1] + 1)):
            return f"{values[0]}-{values[-1]}"
        return " or ".join(str(v) for v in values) if len(values) <= 2 else ", ".join(str(v) for v in values)
