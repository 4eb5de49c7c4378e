"""One request model per Kling model, each enforcing its vendor page (``shared/seeds``) before any request.

Examples:
    ```python
    from kling_prefect import KlingO3TextToVideo

    request = KlingO3TextToVideo(prompt="A lighthouse at dawn", duration=8, sound="on")
    request.to_args()  # {'prompt': 'A lighthouse at dawn', 'duration': 8, 'sound': 'on'}
    ```
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from kling_prefect.models.base import (
    AspectRatio,
    FiveOrTen,
    ImageRef,
    KlingRequest,
    Mode,
    OnOff,
    Shot,
    StrictNumber,
    check_max_length,
    check_multi_shot,
    require_prompt,
    rule_error,
    string_seconds,
)
from kling_prefect.models.facts import JobTime, ModelFacts

O3_PROMPT_LIMIT = 2500
MAX_REFERENCES = 7


class KlingO1TextToVideo(KlingRequest):
    """``kwaivgi/kling-o1/text-to-video``: 5 or 10 s clips in std or pro mode.

    Examples:
        ```python
        KlingO1TextToVideo(prompt="A black lab swimming", duration=10, mode="std").to_args()
        # {'mode': 'std', 'prompt': 'A black lab swimming', 'duration': '10'}
        ```
    """

    facts = ModelFacts(
        model_id="kwaivgi/kling-o1/text-to-video",
        short_name="kling-o1",
        category="text-to-video",
        rates={("std", False): Decimal("0.075"), ("pro", False): Decimal("0.1")},
        audio_field=None,
        duration_on_wire="string",
        durations=(5, 10),
        job_times={"std": JobTime(40, 8), "pro": JobTime(60, 12)},
        helper="kling_o1_text_to_video",
    )
    wire_required = frozenset({"mode", "prompt", "duration"})

    prompt: str
    mode: Mode = "pro"
    duration: FiveOrTen = "5"
    aspect_ratio: AspectRatio = "16:9"

    @model_validator(mode="after")
    def _rules(self) -> KlingO1TextToVideo:
        require_prompt(self.prompt)
        return self


class KlingO3TextToVideo(KlingRequest):
    """``kwaivgi/kling-o3/text-to-video``: 3 to 15 s, optional sound, optional multi-shot.

    ``prompt`` is at most 2,500 characters and must not be empty unless ``multi_shot=True`` with
    ``shot_type='customize'``, where the shots come from ``multi_prompt`` (1 to 6, summing to ``duration``).

    Examples:
        ```python
        KlingO3TextToVideo(
            multi_shot=True,
            shot_type="customize",
            duration=6,
            multi_prompt=[{"prompt": "A door opens", "duration": 2}, {"prompt": "A cat", "duration": 4}],
        ).to_args()["prompt"]
        # ''  (the wire field is required; it may be empty in customize mode)
        ```
    """

    facts = ModelFacts(
        model_id="kwaivgi/kling-o3/text-to-video",
        short_name="kling-o3",
        category="text-to-video",
        rates={
            ("std", False): Decimal("0.071"),
            ("std", True): Decimal("0.095"),
            ("pro", False): Decimal("0.095"),
            ("pro", True): Decimal("0.119"),
        },
        audio_field="sound",
        duration_on_wire="int",
        durations=tuple(range(3, 16)),
        job_times={"std": JobTime(45, 9), "pro": JobTime(70, 13)},
        helper="kling_o3_text_to_video",
    )
    wire_required = frozenset({"prompt"})

    prompt: str = ""
    mode: Mode = "pro"
    duration: Annotated[int, StrictNumber, Field(ge=3, le=15)] = 5
    aspect_ratio: AspectRatio = "16:9"
    sound: OnOff = "off"
    multi_shot: StrictBool = False
    shot_type: Literal["intelligence", "customize"] = "intelligence"
    multi_prompt: list[Shot] | None = None

    @model_validator(mode="after")
    def _rules(self) -> KlingO3TextToVideo:
        check_max_length(self.prompt, O3_PROMPT_LIMIT)
        check_multi_shot(
            duration=self.duration,
            multi_shot=self.multi_shot,
            shot_type=self.shot_type,
            shot_type_set="shot_type" in self.model_fields_set,
            prompt=self.prompt,
            multi_prompt=self.multi_prompt,
            prompt_limit=O3_PROMPT_LIMIT,
        )
        return self


class Kling30TextToVideo(KlingRequest):
    """``kwaivgi/kling-3.0/text-to-video``: 3 to 15 s (sent as a string), audio, negative prompt, multi-shot.

    Examples:
        ```python
        Kling30TextToVideo(prompt="Rain on a tin roof", duration=12, generate_audio=True).to_args()
        # {'mode': 'pro', 'duration': '12', 'multi_shot': False, 'prompt': 'Rain on a tin roof',
        #  'generate_audio': True}
        ```
    """

    facts = ModelFacts(
        model_id="kwaivgi/kling-3.0/text-to-video",
        short_name="kling-3.0",
        category="text-to-video",
        rates={
            ("std", False): Decimal("0.143"),
            ("std", True): Decimal("0.214"),
            ("pro", False): Decimal("0.190"),
            ("pro", True): Decimal("0.286"),
        },
        audio_field="generate_audio",
        duration_on_wire="string",
        durations=tuple(range(3, 16)),
        job_times={"std": JobTime(50, 10), "pro": JobTime(75, 15)},
        helper="kling_30_text_to_video",
    )
    wire_required = frozenset({"mode", "duration", "multi_shot"})

    prompt: str | None = None
    negative_prompt: str | None = None
    mode: Mode = "pro"
    duration: string_seconds(3, 15) = "5"  # type: ignore[valid-type]
    multi_shot: StrictBool = False
    shot_type: Literal["intelligence", "customize"] = "intelligence"
    multi_prompt: list[Shot] | None = None
    aspect_ratio: AspectRatio = "16:9"
    generate_audio: StrictBool = False

    @model_validator(mode="after")
    def _rules(self) -> Kling30TextToVideo:
        check_multi_shot(
            duration=int(self.duration),
            multi_shot=self.multi_shot,
            shot_type=self.shot_type,
            shot_type_set="shot_type" in self.model_fields_set,
            prompt=self.prompt,
            multi_prompt=self.multi_prompt,
        )
        return self


class Kling26TextToVideo(KlingRequest):
    """``kwaivgi/kling-2.6/text-to-video``: pro mode only, 5 or 10 s, ``cfg_scale`` 0 to 1, audio.

    Examples:
        ```python
        Kling26TextToVideo(prompt="A train whistle at dusk", cfg_scale=0.5).to_args()
        # {'mode': 'pro', 'prompt': 'A train whistle at dusk', 'duration': '5', 'aspect_ratio': '16:9',
        #  'cfg_scale': 0.5, 'generate_audio': False}
        ```
    """

    facts = ModelFacts(
        model_id="kwaivgi/kling-2.6/text-to-video",
        short_name="kling-2.6",
        category="text-to-video",
        rates={("pro", False): Decimal("0.06"), ("pro", True): Decimal("0.12")},
        audio_field="generate_audio",
        duration_on_wire="string",
        durations=(5, 10),
        job_times={"pro": JobTime(55, 11)},
        helper="kling_26_text_to_video",
    )
    wire_required = frozenset({"mode", "prompt", "duration", "aspect_ratio", "generate_audio"})

    prompt: str
    negative_prompt: str | None = None
    mode: Literal["pro"] = "pro"
    duration: FiveOrTen = "5"
    aspect_ratio: AspectRatio = "16:9"
    cfg_scale: Annotated[float, StrictNumber, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    generate_audio: StrictBool = False

    @model_validator(mode="after")
    def _rules(self) -> Kling26TextToVideo:
        require_prompt(self.prompt)
        return self


class Element(BaseModel):
    """A subject for ``refer`` generation: a frontal view plus optional views from other angles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frontal_image_url: ImageRef
    reference_image_urls: list[ImageRef] | None = None


class KlingO1ImageToVideo(KlingRequest):
    """``kwaivgi/kling-o1/image-to-video``: animate first/last frames (``frame``) or references (``refer``).

    Rules from the vendor page (its duration sentence is garbled; see ``shared/seeds/README.md``):

    - ``images`` holds 1 or more http(s) URLs or ``data:image/...;base64`` URIs; with ``frame`` only the first
      two take effect (first and last frame).
    - ``len(images) + len(elements)`` is at most 7 (each element counts once, as in Kling's own API).
    - ``duration`` is 3 to 10 s, sent as a string; with ``frame`` and a single image it must be 5 or 10.
    - ``aspect_ratio`` is only valid with ``refer``.

    Examples:
        ```python
        KlingO1ImageToVideo(action="frame", prompt="The kite rises", images=["https://example.com/a.png"])
        ```
    """

    # The page prices pro at "$0.1 per request" and std at $0.075 per *second*; we read "per request" as a slip
    # for "per second" (the sibling text-to-video page says $0.1 per second for pro). That reading is also the
    # higher estimate (0.50 vs 0.10 for 5 s), so a budget errs on the safe side.
    facts = ModelFacts(
        model_id="kwaivgi/kling-o1/image-to-video",
        short_name="kling-o1-i2v",
        category="image-to-video",
        rates={("std", False): Decimal("0.075"), ("pro", False): Decimal("0.1")},
        audio_field=None,
        duration_on_wire="string",
        durations=tuple(range(3, 11)),
        job_times={"std": JobTime(45, 8), "pro": JobTime(65, 12)},
        helper="kling_o1_image_to_video",
    )
    wire_required = frozenset({"mode", "action", "prompt", "images"})

    prompt: str
    images: list[ImageRef] = Field(min_length=1)
    mode: Mode = "pro"
    action: Literal["frame", "refer"] = "frame"
    duration: string_seconds(3, 10) = "5"  # type: ignore[valid-type]
    elements: list[Element] | None = None
    aspect_ratio: AspectRatio | None = None

    @model_validator(mode="after")
    def _rules(self) -> KlingO1ImageToVideo:
        require_prompt(self.prompt)
        references = len(self.images) + len(self.elements or ())
        if references > MAX_REFERENCES:
            raise rule_error(
                "images",
                f"<{len(self.images)} images + {len(self.elements or ())} elements>",
                "too_many_references",
                f"images + elements must be at most {MAX_REFERENCES}, got {references}",
            )
        if self.action == "frame" and self.aspect_ratio is not None:
            raise rule_error(
                "aspect_ratio",
                self.aspect_ratio,
                "aspect_ratio_frame",
                "is only valid with action 'refer' (a 'frame' video takes the image's shape)",
            )
        if self.action == "frame" and len(self.images) == 1 and self.duration not in ("5", "10"):
            raise rule_error(
                "duration",
                self.duration,
                "frame_single_image_duration",
                "must be '5' or '10' with action 'frame' and a single image, got {value}",
            )
        return self
