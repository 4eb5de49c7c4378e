"""Shared pieces of the request models: the base class, wire types and rule helpers.

Every model is built from keyword arguments named exactly as the vendor's wire fields, validates every
documented option, range and cross-field rule locally (so bad input costs nothing), and turns itself back
into the ``args`` object sent to ``job/create`` with :meth:`KlingRequest.to_args`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from kling_prefect.models.facts import ModelFacts

AspectRatio = Literal["16:9", "9:16", "1:1"]
Mode = Literal["std", "pro"]

# The vendor accepts image references as URLs it can fetch; inline data URIs are what we use when there is
# no object store to publish a frame to. Anything else (file paths, ftp://, javascript:) is rejected here.
_DATA_URI = re.compile(r"^data:image/[a-z0-9.+-]+;base64,[A-Za-z0-9+/=\s]+$", re.IGNORECASE)
_HTTP_URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$", re.IGNORECASE)


def rule_error(field: str | tuple[str | int, ...], value: Any, rule: str, message: str) -> ValidationError:
    """A ``ValidationError`` located at ``field``, for cross-field rules checked after field validation.

    ``message`` may use ``{value}``; the error's ``type`` is ``rule`` so callers can match on it.
    """
    loc = (field,) if isinstance(field, str) else field
    return ValidationError.from_exception_data(
        "KlingRequest",
        [
            InitErrorDetails(
                type=PydanticCustomError(rule, message, {"value": _shown(value)}),
                loc=loc,
                input=value,
            )
        ],
    )


def _shown(value: Any) -> str:
    """A value as error messages show it: repr, except placeholders like ``<12 shots>``."""
    if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
        return value
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _reject_bool(value: Any) -> Any:
    # pydantic's lax mode reads True as 1; a boolean where a number belongs is always a caller's mistake.
    if isinstance(value, bool):
        raise PydanticCustomError(
            "bool_not_number", "expected a number, got a boolean {value}", {"value": _shown(value)}
        )
    return value


def _int_to_str(value: Any) -> Any:
    # Several models take the duration as a *string* on the wire; accept the natural int too.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _bool_to_on_off(value: Any) -> Any:
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def _check_image_ref(value: str) -> str:
    if _HTTP_URL.match(value) or _DATA_URI.match(value):
        return value
    raise PydanticCustomError(
        "image_reference",
        "must be an http(s) URL or a data:image/...;base64 URI, got {value}",
        {"value": _shown(value)},
    )


def string_seconds(low: int, high: int) -> Any:
    """A duration sent as a string of whole seconds in ``[low, high]`` (ints are accepted and converted)."""

    def check(value: str) -> str:
        if not value.isdecimal() or not low <= int(value) <= high:
            raise PydanticCustomError(
                "duration_range",
                "must be a whole number of seconds from {low} to {high}, got {value}",
                {"low": low, "high": high, "value": _shown(value)},
            )
        return str(int(value))

    return Annotated[str, BeforeValidator(_int_to_str), AfterValidator(check)]


StrictNumber = BeforeValidator(_reject_bool)
ImageRef = Annotated[str, AfterValidator(_check_image_ref)]
OnOff = Annotated[Literal["on", "off"], BeforeValidator(_bool_to_on_off)]
FiveOrTen = Annotated[Literal["5", "10"], BeforeValidator(_int_to_str)]


class KlingRequest(BaseModel):
    """Base of the per-model request models.

    Subclasses declare their wire fields and their :class:`~kling_prefect.models.facts.ModelFacts` (``facts``:
    model id, short name, rates, audio field, durations, typical job time); ``model_id`` and ``short_name``
    are read from it. ``wire_required`` lists the fields the vendor documents as required, which
    :meth:`to_args` always sends (with their documented default when the caller gave none). Optional fields
    are sent only when the caller set them, so the vendor applies its own defaults exactly as documented.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    facts: ClassVar[ModelFacts]
    model_id: ClassVar[str]
    short_name: ClassVar[str]
    wire_required: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        facts = cls.__dict__.get("facts")
        if isinstance(facts, ModelFacts):  # one place for the model's facts: the names are read from it
            cls.model_id = facts.model_id
            cls.short_name = facts.short_name

    def to_args(self) -> dict[str, Any]:
        """The ``args`` object for ``job/create``, with the wire types of the vendor documents."""
        sent = set(self.model_fields_set) | self.wire_required
        return {name: value for name, value in self.model_dump(mode="json", exclude_none=True).items() if name in sent}

    @property
    def video_seconds(self) -> int:
        """Seconds of video this request produces (what the vendor bills)."""
        return int(getattr(self, "duration"))  # noqa: B009 - every model has a duration; mypy can't see it

    @property
    def has_audio(self) -> bool:
        """Whether the vendor generates an audio track (billed at the audio rate)."""
        field = self.facts.audio_field
        if field is None:
            return False
        value = getattr(self, field)
        return value is True or value == "on"

    @property
    def mode_name(self) -> str:
        """The request's mode (``std``/``pro``), or the model's only mode."""
        return str(getattr(self, "mode", None) or self.facts.modes[0])


def require_prompt(value: str | None, field: str | tuple[str | int, ...] = "prompt", why: str = "") -> None:
    """Reject a missing or blank prompt, saying which rule needs it."""
    if value is None or not value.strip():
        raise rule_error(field, value, "prompt_required", "must not be empty" + (f" {why}" if why else ""))


def check_max_length(value: str | None, limit: int, field: str | tuple[str | int, ...] = "prompt") -> None:
    if value is not None and len(value) > limit:
        raise rule_error(
            field,
            f"<{len(value)} characters>",
            "prompt_too_long",
            f"must be at most {limit:,} characters, got {len(value):,}",
        )


class Shot(BaseModel):
    """One shot of a customised multi-shot video."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    duration: Annotated[int, StrictNumber, Field(ge=1, le=15)]


def check_multi_shot(
    *,
    duration: int,
    multi_shot: bool,
    shot_type: str,
    shot_type_set: bool,
    prompt: str | None,
    multi_prompt: list[Shot] | None,
    prompt_limit: int | None = None,
) -> None:
    """The multi-shot rules shared by Kling O3 and Kling 3.0.

    - ``multi_prompt`` is used only with ``multi_shot`` and ``shot_type='customize'``, and is then required:
      1 to 6 shots, each 1 s to the total duration, summing exactly to ``duration``.
    - ``prompt`` must not be empty unless the shots come from ``multi_prompt``.
    """
    customize = multi_shot and shot_type == "customize"
    if shot_type_set and shot_type == "customize" and not multi_shot:
        raise rule_error("shot_type", shot_type, "shot_type_needs_multi_shot", "'customize' requires multi_shot=true")
    if not customize:
        if multi_prompt is not None:
            raise rule_error(
                "multi_prompt",
                "<list>",
                "multi_prompt_unused",
                "is only used with multi_shot=true and shot_type='customize'",
            )
        why = "when multi_shot is false" if not multi_shot else "when shot_type is 'intelligence'"
        require_prompt(prompt, why=why)
        return
    if not multi_prompt:
        raise rule_error(
            "multi_prompt",
            multi_prompt,
            "multi_prompt_required",
            "is required (1 to 6 shots) when multi_shot=true and shot_type='customize'",
        )
    if len(multi_prompt) > 6:
        raise rule_error(
            "multi_prompt",
            f"<{len(multi_prompt)} shots>",
            "too_many_shots",
            "must have 1 to 6 shots, got {value}",
        )
    for index, shot in enumerate(multi_prompt):
        require_prompt(shot.prompt, field=("multi_prompt", index, "prompt"))
        if prompt_limit is not None:
            check_max_length(shot.prompt, prompt_limit, field=("multi_prompt", index, "prompt"))
        if shot.duration > duration:
            raise rule_error(
                ("multi_prompt", index, "duration"),
                shot.duration,
                "shot_longer_than_video",
                f"shot duration {{value}} s exceeds the total duration {duration} s",
            )
    total = sum(shot.duration for shot in multi_prompt)
    if total != duration:
        raise rule_error(
            "multi_prompt",
            [shot.duration for shot in multi_prompt],
            "shot_sum_mismatch",
            f"shot durations sum to {total} s but duration is {duration} s; they must be equal",
        )
