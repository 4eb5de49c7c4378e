"""What a command will make, worked out from its arguments before anything starts: one row per clip.

The clip options (``--model``, ``--duration``, ``--mode``, ``--audio``, ``--multi-prompt``, ...) mean the same
in ``chain`` and ``estimate``: both plan through :func:`chain_plan`, which builds the flow's own requests with
:func:`kling_prefect.planning.plan_chain`. Errors name the flag or argument the user typed (``--duration``,
``PROMPT 2``), never a parameter of the flow.

Examples:
    ```python
    from kling_prefect.cli.plans import clip_duration_for_continuations

    clip_duration_for_continuations(8)  # 10: a continuation from one frame is 5 or 10 s, the nearer
    ```
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kling_prefect.exceptions import InvalidInput
from kling_prefect.models import KlingO1ImageToVideo, KlingRequest
from kling_prefect.pricing import estimate_cost

__all__ = [
    "FLAG_NAMES",
    "Plan",
    "PlannedClip",
    "chain_plan",
    "clip_duration_for_continuations",
    "flag_namer",
    "image_to_video_plan",
    "read_multi_prompt",
]

#: Flow parameters and request fields, as the command line calls them.
FLAG_NAMES = {
    "model": "--model",
    "duration": "--duration",
    "mode": "--mode",
    "aspect_ratio": "--aspect-ratio",
    "sound": "--audio",
    "generate_audio": "--audio",
    "multi_shot": "--multi-prompt",
    "shot_type": "--multi-prompt",
    "multi_prompt": "--multi-prompt",
    "continuation_duration": "--continuation-duration",
    "continuation_mode": "--mode",
    "max_cost_usd": "--max-cost",
    "output_dir": "--out",
    "run_key": "--run-key",
    "poll_interval": "--poll-interval",
    "max_concurrency": "--max-concurrency",
    "prompts": "PROMPT",
}


@dataclass(frozen=True)
class PlannedClip:
    """One clip the run will make: its step name, its prompt and its validated request."""

    step: str
    prompt: str
    request: KlingRequest


@dataclass(frozen=True)
class Plan:
    """The clips of a run, in step order. ``concurrency`` is how many run at once (1: one after another)."""

    clips: tuple[PlannedClip, ...]
    concurrency: int = 1
    flow_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> list[KlingRequest]:
        return [clip.request for clip in self.clips]

    @property
    def video_seconds(self) -> int:
        return sum(clip.request.video_seconds for clip in self.clips)

    @property
    def estimated_cost(self) -> Decimal:
        return sum((estimate_cost(clip.request) for clip in self.clips), Decimal(0))


def flag_namer(first_prompt: int = 1) -> Callable[[str], str]:
    """Name a flow parameter or request field as the command line does.

    ``prompts[N]`` (the flow's, counted from 1) becomes ``PROMPT N``; with ``--multi-prompt`` the first clip
    has no PROMPT, so the flow's ``prompts[2]`` is ``PROMPT 1`` (``first_prompt=0``). ``multi_prompt.0.duration``
    becomes ``--multi-prompt shot 1 duration``.
    """

    def name(where: str) -> str:
        found = re.fullmatch(r"prompts\[(\d+)\]", where)
        if found:
            number = int(found[1]) - 1 + first_prompt
            return f"PROMPT {number}" if number >= 1 else "--multi-prompt"
        if where == "prompt":
            return "PROMPT 1" if first_prompt == 1 else "--multi-prompt"
        shot = re.fullmatch(r"multi_prompt\.(\d+)\.(\w+)", where)
        if shot:
            return f"--multi-prompt shot {int(shot[1]) + 1} {shot[2]}"
        return FLAG_NAMES.get(where, where)

    return name


def read_multi_prompt(text: str) -> list[dict[str, Any]]:
    """The shots of ``--multi-prompt``: a JSON list, or ``@FILE`` holding one."""
    source = "--multi-prompt"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(source, f"cannot read {path}: {exc.strerror or exc}") from None
        source = f"--multi-prompt {path}"
    try:
        shots = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            source,
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); give a list such as "
            '\'[{"prompt": "A door opens", "duration": 2}, {"prompt": "A cat walks in", "duration": 3}]\'',
        ) from None
    if not isinstance(shots, list) or not all(isinstance(shot, dict) for shot in shots):
        raise InvalidInput(source, 'must be a JSON list of {"prompt": ..., "duration": ...} objects')
    return shots


def clip_duration_for_continuations(duration: int | None) -> int:
    """A continuation starts from one frame, so it is 5 or 10 s: the nearer to ``duration`` (5 for up to 7)."""
    if duration is None:
        return 5
    return 5 if duration <= 7 else 10


def _clip_options(args: argparse.Namespace, model_class: type[KlingRequest]) -> dict[str, Any]:
    """Request fields from ``--audio`` and ``--multi-prompt``, checked against what the model has."""
    options: dict[str, Any] = {}
    facts = model_class.facts
    if args.audio:
        if not facts.has_audio_option:
            raise InvalidInput(
                "--audio", f"{facts.short_name} makes no audio; use kling-o3, kling-3.0 or kling-2.6 for sound"
            )
        options.update(facts.audio_args(True))
    if args.multi_prompt is not None:
        if "multi_prompt" not in model_class.model_fields:
            raise InvalidInput("--multi-prompt", f"{facts.short_name} has no multi-shot; use kling-o3 or kling-3.0")
        options.update(multi_shot=True, shot_type="customize", multi_prompt=read_multi_prompt(args.multi_prompt))
    return options


def chain_plan(args: argparse.Namespace) -> Plan:
    """The clips of ``chain`` (and of ``estimate`` with a text-to-video model), from the clip options.

    The first clip is PROMPT 1 with ``--model`` (or the shots of ``--multi-prompt``); each further PROMPT is a
    kling-o1 image-to-video continuation from the previous clip's last frame.
    """
    from kling_prefect.planning import model_class_for, plan_chain

    model_class = model_class_for(args.model, "--model")
    if model_class.facts.category != "text-to-video":
        raise InvalidInput(
            "--model",
            f"{args.model} is image-to-video; a chain starts with a text-to-video model "
            "(kling-o3, kling-o1, kling-3.0, kling-2.6); `estimate --model kling-o1-i2v` prices image-to-video",
        )
    options = _clip_options(args, model_class)
    prompts = list(args.prompts)
    if args.multi_prompt is not None:
        prompts = ["", *prompts]  # the first clip's shots carry its prompts
    elif not prompts:
        raise InvalidInput("PROMPT", "give at least one prompt (or the first clip's shots with --multi-prompt)")
    duration = args.duration
    if duration is None and args.multi_prompt is not None:
        duration = sum(int(shot.get("duration", 0)) for shot in options["multi_prompt"] if _is_int(shot))
    continuation_duration = args.continuation_duration or clip_duration_for_continuations(args.duration)
    parameters: dict[str, Any] = {
        "prompts": prompts,
        "model": args.model,
        "duration": duration,
        "aspect_ratio": args.aspect_ratio,
        "mode": args.mode,
        "continuation_duration": continuation_duration,
        "continuation_mode": args.mode or "pro",
        "options": options or None,
    }
    requests = plan_chain(**parameters)
    clips = tuple(
        PlannedClip(f"clip-{index:02d}", _prompt_of(request), request) for index, request in enumerate(requests, 1)
    )
    return Plan(clips=clips, concurrency=1, flow_parameters=parameters)


def image_to_video_plan(args: argparse.Namespace) -> Plan:
    """``estimate --model kling-o1-i2v``: one image-to-video clip per PROMPT (from one frame, or two for
    lengths other than 5 and 10 s), priced like any other."""
    from kling_prefect.planning import PLACEHOLDER_FRAME, build_request

    if not args.prompts:
        raise InvalidInput("PROMPT", "give at least one prompt")
    if args.audio:
        raise InvalidInput("--audio", "kling-o1-i2v makes no audio")
    frames = 1 if args.duration in (None, 5, 10) else 2
    clips = []
    for index, prompt in enumerate(args.prompts, 1):
        request = build_request(
            "kling-o1-i2v",
            prompt,
            duration=args.duration,
            mode=args.mode,
            options={"action": "frame", "images": [PLACEHOLDER_FRAME] * frames},
        )
        clips.append(PlannedClip(f"clip-{index:02d}", prompt, request))
    return Plan(clips=tuple(clips))


def _is_int(shot: dict[str, Any]) -> bool:
    value = shot.get("duration")
    return isinstance(value, int) and not isinstance(value, bool)


def _prompt_of(request: KlingRequest) -> str:
    prompt = str(getattr(request, "prompt", "") or "")
    if not prompt and getattr(request, "multi_prompt", None):
        prompt = " / ".join(shot.prompt for shot in getattr(request, "multi_prompt", ()))
    return prompt


def is_image_to_video(model: str) -> bool:
    from kling_prefect.planning import model_class_for

    return model_class_for(model, "--model") is KlingO1ImageToVideo
