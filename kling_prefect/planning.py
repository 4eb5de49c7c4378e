"""Everything a run checks and works out before it spends anything: parameters, requests, the budget.

The flows and the CLI call the same functions, so a bad argument fails the same way, with one line naming the
parameter (or flag), the value and the rule, before Prefect starts or any job is created.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kling_prefect.exceptions import BudgetExceeded, InvalidInput
from kling_prefect.models import DEFAULT_TEXT_TO_VIDEO_MODEL, KlingO1ImageToVideo, KlingRequest, request_model_for
from kling_prefect.pricing import estimate_cost, format_usd
from kling_prefect.storage import safe_name

__all__ = [
    "DEFAULT_MODEL",
    "MAX_CONCURRENCY",
    "MAX_POLL_INTERVAL",
    "MIN_POLL_INTERVAL",
    "PLACEHOLDER_FRAME",
    "RUN_KEY_MAX",
    "build_request",
    "check_budget",
    "check_number",
    "check_run_key",
    "check_run_options",
    "describe_validation_error",
    "model_class_for",
    "plan_chain",
    "shown",
]

DEFAULT_MODEL = DEFAULT_TEXT_TO_VIDEO_MODEL
#: Stands in for an image that exists only once an earlier clip does (validation and cost are the same).
PLACEHOLDER_FRAME = "https://placeholder.invalid/previous-clip-last-frame.png"
RUN_KEY_MAX = 64
MIN_POLL_INTERVAL = 0.01  # seconds; anything shorter is a hot loop against the vendor
MAX_POLL_INTERVAL = 3600.0
MAX_CONCURRENCY = 1000


def shown(value: Any, limit: int = 60) -> str:
    """A value as messages show it: its repr, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(error: ValidationError, rename: Callable[[str], str] | None = None) -> str:
    """``field: message (got value)`` for each pydantic error, joined by ``; ``.

    The value is not repeated when the message already shows it. ``rename`` maps a field's dotted location
    (``duration``, ``multi_prompt.0.duration``) to the name the caller knows it by (``--duration``).
    """
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "request"
        if rename is not None:
            where = rename(where)
        message = str(item["msg"])
        value = item.get("input")
        if isinstance(value, dict):
            got = "{...}"
        else:
            got = shown(value)
        parts.append(f"{where}: {message}" if re.search(r"\bgot\b", message) else f"{where}: {message} (got {got})")
    return "; ".join(parts)


def check_run_key(run_key: str | None) -> str | None:
    """``run_key`` itself when it is usable as a key and a folder name; :class:`InvalidInput` otherwise.

    Keys are not silently rewritten: two different keys must never name the same jobs.
    """
    if run_key is None:
        return None
    if not isinstance(run_key, str) or not run_key or safe_name(run_key, max_length=RUN_KEY_MAX) != run_key:
        raise InvalidInput(
            "run_key",
            f"use 1 to {RUN_KEY_MAX} letters, digits, '.', '_' or '-', starting and ending with a letter or digit "
            f"(no '..'), got {shown(run_key)}",
        )
    return run_key


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    optional: bool = False,
) -> None:
    """Raise :class:`InvalidInput` naming ``name`` unless ``value`` is a finite number within the bounds."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise InvalidInput(name, f"must be a number, got {shown(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(name, f"must be a finite number, got {shown(value)}")
    if minimum is not None and (number <= minimum if exclusive_minimum else number < minimum):
        raise InvalidInput(
            name, f"must be {'greater than' if exclusive_minimum else 'at least'} {minimum:g}, got {value}"
        )
    if maximum is not None and number > maximum:
        raise InvalidInput(name, f"must be at most {maximum:g}, got {value}")


def check_run_options(
    *,
    run_key: str | None,
    max_cost_usd: Any,
    poll_interval: Any,
    timeout_seconds: Any,
    output_dir: str | None,
) -> None:
    """The checks every flow makes on its common parameters, before anything else."""
    check_run_key(run_key)
    check_number("max_cost_usd", max_cost_usd, minimum=0, optional=True)
    check_number("poll_interval", poll_interval, minimum=MIN_POLL_INTERVAL, maximum=MAX_POLL_INTERVAL)
    check_number("timeout_seconds", timeout_seconds, minimum=0, exclusive_minimum=True)
    check_output_dir(output_dir)


def check_output_dir(output_dir: str | None, name: str = "output_dir") -> None:
    """An output directory must be a directory (or not exist yet)."""
    if output_dir is None:
        return
    if not str(output_dir).strip():
        raise InvalidInput(name, "must not be empty")
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise InvalidInput(name, f"{output_dir} exists and is not a directory; name a directory")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidInput(name, f"{parent} is a file, so {output_dir} cannot be created; name a directory")
            break


def model_class_for(model: str, name: str = "model") -> type[KlingRequest]:
    """The request model for a short name or full id; :class:`InvalidInput` naming ``model`` otherwise."""
    if not isinstance(model, str):
        raise InvalidInput(name, f"must be a model name, got {shown(model)}")
    try:
        return request_model_for(model)
    except KeyError as exc:
        raise InvalidInput(name, str(exc.args[0])) from None


def build_request(
    model: str,
    prompt: str,
    *,
    duration: int | str | None = None,
    aspect_ratio: str | None = None,
    mode: str | None = None,
    options: dict[str, Any] | None = None,
) -> KlingRequest:
    """A validated request for ``model`` (short name or full id); unset arguments keep the model's defaults.

    Raises :class:`InvalidInput` for an unknown model or when ``options`` repeats an argument, and pydantic's
    ``ValidationError`` (naming the field) for an invalid request.
    """
    model_class = model_class_for(model)
    explicit: dict[str, Any] = {"prompt": prompt, "duration": duration, "aspect_ratio": aspect_ratio, "mode": mode}
    if options is not None and not isinstance(options, dict):
        raise InvalidInput("options", f"must be an object of request fields, got {shown(options)}")
    for name in options or {}:
        if name == "model" or (name in explicit and (name == "prompt" or explicit[name] is not None)):
            raise InvalidInput("options", f"{name!r} is a parameter of its own; do not repeat it in options")
    fields: dict[str, Any] = {"prompt": prompt, **(options or {})}
    for name in ("duration", "aspect_ratio", "mode"):
        if explicit[name] is not None:
            fields[name] = explicit[name]
    return model_class.model_validate(fields)


def plan_chain(
    model: str,
    prompts: list[str],
    *,
    duration: int | str | None = None,
    aspect_ratio: str | None = "16:9",
    mode: str | None = None,
    continuation_duration: int = 5,
    continuation_mode: str = "pro",
    options: dict[str, Any] | None = None,
) -> list[KlingRequest]:
    """The validated requests of a chain: a text-to-video clip, then one ``frame`` continuation per prompt.

    Continuations carry a placeholder image until the previous clip's last frame exists; validation and cost
    are the same either way. Errors name the parameter (``prompts[2]``, counted from 1, ``continuation_duration``);
    an invalid first request raises pydantic's ``ValidationError`` naming the field.
    """
    if not isinstance(prompts, list) or not prompts:
        raise InvalidInput("prompts", "give at least one prompt")
    for index, text in enumerate(prompts, start=1):
        if not isinstance(text, str):
            raise InvalidInput(f"prompts[{index}]", f"must be text, got {shown(text)}")
    if continuation_duration not in (5, 10) or isinstance(continuation_duration, bool):
        raise InvalidInput(
            "continuation_duration",
            f"must be 5 or 10 (a continuation starts from one frame), got {continuation_duration!r}",
        )
    if continuation_mode not in ("std", "pro"):
        raise InvalidInput("continuation_mode", f"must be 'std' or 'pro', got {shown(continuation_mode)}")
    if model_class_for(model) is KlingO1ImageToVideo:
        raise InvalidInput(
            "model", f"{model!r} is image-to-video; a chain starts with a text-to-video model (kling-o3, ...)"
        )
    first = build_request(model, prompts[0], duration=duration, aspect_ratio=aspect_ratio, mode=mode, options=options)
    chain: list[KlingRequest] = [first]
    for index, text in enumerate(prompts[1:], start=2):
        try:
            chain.append(
                KlingO1ImageToVideo.model_validate(
                    {
                        "action": "frame",
                        "prompt": text,
                        "images": [PLACEHOLDER_FRAME],
                        "duration": continuation_duration,
                        "mode": continuation_mode,
                    }
                )
            )
        except ValidationError as exc:
            # The field is the prompt itself (the other fields were checked above): name the prompt alone.
            reason = describe_validation_error(exc)
            raise InvalidInput(f"prompts[{index}]", reason.removeprefix("prompt: ")) from None
    return chain


def check_budget(
    requests: Iterable[KlingRequest], max_cost_usd: float | Decimal | None, *, name: str = "max_cost_usd"
) -> Decimal:
    """Raise :class:`BudgetExceeded` (creating nothing) when the estimate is over the budget; return the estimate.

    The estimate covers every request of the run (a whole batch or chain), from the documented rates. ``name``
    is how the budget is called where it was given (``--max-cost`` on the command line).
    """
    listed = list(requests)
    total = sum((estimate_cost(r) for r in listed), Decimal(0))
    if max_cost_usd is not None:
        check_number(name, max_cost_usd, minimum=0)
        budget = Decimal(str(max_cost_usd))
        if total > budget:
            raise BudgetExceeded(
                f"estimated {format_usd(total)} for {len(listed)} job(s) exceeds {name} {format_usd(budget)} by "
                f"{format_usd(total - budget)}; nothing was created. Raise {name} or make fewer/shorter clips"
            )
    return total
