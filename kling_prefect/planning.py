"""Everything a run checks and works out before it spends anything: parameters, requests, the budget.

The flows and the CLI call the same functions, so a bad argument fails the same way, with one line naming the
parameter (or flag), the value and the rule, before Prefect starts or any job is created.

Examples:
    ```python
    from kling_prefect.planning import check_budget, plan_storyboard

    plan = plan_storyboard(["dawn.png", "noon.png", "dusk.png"], ["The sun climbs", "The sun sets"], duration=5)
    check_budget(plan.requests, 2.0)  # Decimal('1.0'): 2 clips x 5 s x $0.10 (pro)
    plan_storyboard(["dawn.png"], [])  # InvalidInput: keyframes: give at least 2 (each clip goes from ...), got 1
    ```
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from kling_prefect.exceptions import BudgetExceeded, InvalidInput
from kling_prefect.models import (
    DEFAULT_TEXT_TO_VIDEO_MODEL,
    Element,
    KlingO1ImageToVideo,
    KlingRequest,
    request_model_for,
)
from kling_prefect.models.kling import MAX_REFERENCES
from kling_prefect.pricing import estimate_cost, format_usd
from kling_prefect.storage import MAX_DATA_URI_BYTES, safe_name

__all__ = [
    "ASPECT_TOLERANCE",
    "DEFAULT_MODEL",
    "MAX_CONCURRENCY",
    "MAX_POLL_INTERVAL",
    "MIN_POLL_INTERVAL",
    "PLACEHOLDER_FRAME",
    "PLACEHOLDER_IMAGE",
    "RUN_KEY_MAX",
    "Cast",
    "CastInput",
    "CastMember",
    "PlannedImage",
    "StoryboardPlan",
    "build_request",
    "check_budget",
    "check_cast_fits",
    "check_element_mentions",
    "check_estimate",
    "check_inline_images",
    "check_number",
    "check_run_key",
    "check_run_options",
    "check_same_aspect_ratio",
    "describe_validation_error",
    "model_class_for",
    "plan_cast",
    "plan_chain",
    "plan_image",
    "plan_storyboard",
    "shown",
    "shown_url",
]

DEFAULT_MODEL = DEFAULT_TEXT_TO_VIDEO_MODEL
#: Stands in for an image that exists only once an earlier clip does (validation and cost are the same).
PLACEHOLDER_FRAME = "https://placeholder.invalid/previous-clip-last-frame.png"
#: Stands in for a local image (keyframe, cast) until the run has published it where the vendor can fetch it.
PLACEHOLDER_IMAGE = "https://placeholder.invalid/local-image-published-when-the-run-starts.png"
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
    cast: CastInput | Cast | None = None,
) -> list[KlingRequest]:
    """The validated requests of a chain: a text-to-video clip, then one ``frame`` continuation per prompt.

    Continuations carry a placeholder image until the previous clip's last frame exists; validation and cost
    are the same either way. Errors name the parameter (``prompts[2]``, counted from 1, ``continuation_duration``);
    an invalid first request raises pydantic's ``ValidationError`` naming the field.

    ``cast`` (see :func:`plan_cast`; a :class:`Cast` already checked is taken as is) goes into every
    continuation as ``elements``, at most 6 members (1 frame + elements <= 7). The first clip is text-to-video,
    which takes no elements: it is made without the cast, and its prompt may not name ``[@elementN]``.
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
    check_cast_fits(_cast_size(cast), 1, "each continuation takes 1 frame")
    check_element_mentions(prompts, _cast_size(cast), first_takes_cast=False)
    first = build_request(model, prompts[0], duration=duration, aspect_ratio=aspect_ratio, mode=mode, options=options)
    checked_cast = plan_cast(cast)
    elements = {"elements": checked_cast.elements()} if checked_cast.members else {}
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
                        **elements,
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
    check_estimate(total, len(listed), max_cost_usd, name=name)
    return total


def check_estimate(
    total: Decimal, jobs: int, max_cost_usd: float | Decimal | None, *, name: str = "max_cost_usd"
) -> None:
    """:func:`check_budget` for an estimate already summed (``jobs`` jobs costing ``total``)."""
    if max_cost_usd is None:
        return
    check_number(name, max_cost_usd, minimum=0)
    budget = Decimal(str(max_cost_usd))
    if total > budget:
        raise BudgetExceeded(
            f"estimated {format_usd(total)} for {jobs} job(s) exceeds {name} {format_usd(budget)} by "
            f"{format_usd(total - budget)}; nothing was created. Raise {name} or make fewer/shorter clips"
        )


# --------------------------------------------------------------------------------------------- images and storyboards

#: Seconds to fetch one image given as a URL (checked before any spend, as the vendor would fetch it).
IMAGE_FETCH_TIMEOUT = 15.0
#: Largest image fetched for a check: ours, to bound memory (the vendor documents no limit).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Relative difference of width/height within which two images count as the same aspect ratio (1280x718 is 16:9).
ASPECT_TOLERANCE = 0.02
#: ``images + elements`` of one ``kling-o1/image-to-video`` request, at most (the vendor page's rule).
MAX_IMAGE_REFERENCES = MAX_REFERENCES
_ELEMENT_MENTION = re.compile(r"\[@element(\d+)\]", re.IGNORECASE)
_CAST_KEYS = ("frontal_image", "reference_images")

CastInput = list[str | dict[str, Any]]


@dataclass(frozen=True)
class PlannedImage:
    """An image a run hands to the vendor (a keyframe or a cast image), read and checked before any spend.

    Attributes:
        field: the parameter it came from: ``keyframes[2]``, ``cast[1].reference_images[1]`` (counted from 1).
        source: as given: a local file or an http(s) URL.
        name: the stem of the run's copy of it (``keyframe-02``).
        data: its bytes (read from the file, or fetched from the URL).
        format: ``png``, ``jpeg`` or ``webp``.
        width: pixels.
        height: pixels.
    """

    field: str
    source: str
    name: str
    data: bytes = dataclasses.field(repr=False)
    format: str
    width: int
    height: int

    @property
    def is_url(self) -> bool:
        """Given as a URL: the vendor gets that URL as it is."""
        return self.source.startswith(("http://", "https://"))

    @property
    def file_name(self) -> str:
        """The run's copy of it: ``keyframe-02-<digest>.png``; a changed image gets a new name (and a new job)."""
        digest = hashlib.sha256(self.data).hexdigest()[:12]
        return f"{self.name}-{digest}.{'jpg' if self.format == 'jpeg' else self.format}"

    @property
    def shown(self) -> str:
        """``dawn.png`` or a URL without its query (which may hold a signature), for messages."""
        if self.is_url:
            return shown_url(self.source)
        return self.source

    @property
    def label(self) -> str:
        """Short, for pictures and tables: a file's name, or the URL as :attr:`shown`."""
        return self.shown if self.is_url else Path(self.source).name

    @property
    def shape(self) -> str:
        """``1280x720 (16:9)``."""
        from kling_prefect.media import aspect_ratio_name

        return f"{self.width}x{self.height} ({aspect_ratio_name(self.width, self.height)})"


@dataclass(frozen=True)
class CastMember:
    """One subject that stays the same: a frontal image and optional reference images from other angles."""

    frontal: PlannedImage
    references: tuple[PlannedImage, ...] = ()

    @property
    def images(self) -> tuple[PlannedImage, ...]:
        return (self.frontal, *self.references)


@dataclass(frozen=True)
class Cast:
    """The checked cast of a run: ``[@element1]`` in a prompt names ``members[0]``, and so on."""

    members: tuple[CastMember, ...] = ()

    @property
    def images(self) -> tuple[PlannedImage, ...]:
        return tuple(image for member in self.members for image in member.images)

    def elements(self, references: Mapping[str, str] | None = None) -> list[Element]:
        """The request's ``elements``: each image as the vendor gets it (``references[field]``), or a placeholder."""

        def ref(image: PlannedImage) -> str:
            return (references or {}).get(image.field) or (image.source if image.is_url else PLACEHOLDER_IMAGE)

        return [
            Element(
                frontal_image_url=ref(member.frontal),
                reference_image_urls=[ref(r) for r in member.references] or None,
            )
            for member in self.members
        ]

    def __len__(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class StoryboardPlan:
    """What a storyboard run makes, checked: the keyframes, the cast and one request per clip.

    ``requests`` carry a placeholder for each local image until the run has published it; validation and
    cost are the same either way. :meth:`bind` gives the requests that are sent.
    """

    keyframes: tuple[PlannedImage, ...]
    cast: Cast
    requests: tuple[KlingO1ImageToVideo, ...]

    @property
    def images(self) -> tuple[PlannedImage, ...]:
        """Every image the run hands to the vendor: the keyframes, then the cast's."""
        return (*self.keyframes, *self.cast.images)

    def bind(self, references: Mapping[str, str]) -> list[KlingO1ImageToVideo]:
        """The requests to send, given how the vendor gets each image (``references[image.field]``)."""
        bound = []
        for index, planned in enumerate(self.requests):
            first, last = self.keyframes[index], self.keyframes[index + 1]
            fields: dict[str, Any] = {**planned.to_args(), "images": [references[first.field], references[last.field]]}
            if self.cast.members:
                fields["elements"] = self.cast.elements(references)
            bound.append(KlingO1ImageToVideo.model_validate(fields))
        return bound


def shown_url(url: str) -> str:
    """A URL as messages show it: without its query or fragment (a presigned URL's signature stays out)."""
    parts = urlsplit(url)
    text = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return text + ("?..." if parts.query else "")


def _fetch_image_bytes(url: str, where: str) -> bytes:
    """The bytes at ``url``, fetched as the vendor would; :class:`InvalidInput` naming ``where`` otherwise."""
    import httpx

    data = bytearray()
    try:
        with (
            httpx.Client(timeout=IMAGE_FETCH_TIMEOUT, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise InvalidInput(
                    where,
                    f"{shown_url(url)} answered HTTP {response.status_code}; the vendor could not fetch it either: "
                    "check the URL (or pass a local file)",
                )
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_IMAGE_BYTES:
                    raise InvalidInput(
                        where, f"{shown_url(url)} is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB; use a smaller image"
                    )
    except httpx.HTTPError as exc:
        raise InvalidInput(
            where, f"could not fetch {shown_url(url)} ({type(exc).__name__}); check the URL (or pass a local file)"
        ) from None
    return bytes(data)


def plan_image(source: Any, where: str, name: str) -> PlannedImage:
    """Read (or fetch) and decode one image given as a local file or an http(s) URL, before any spend.

    The vendor pages name no image size or file size limit; the formats checked are those its examples use and
    FFmpeg decodes: PNG, JPEG and WebP. Raises :class:`InvalidInput` naming ``where`` (``keyframes[2]``) with
    the file or URL and what is wrong: missing, unreadable, not an image, cut short, unreachable.
    """
    from kling_prefect import media

    if not isinstance(source, str) or not source.strip():
        raise InvalidInput(where, f"must be the path of an image file or an http(s) URL, got {shown(source)}")
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        data = _fetch_image_bytes(source, where)
        label = shown_url(source)
    elif (len(scheme) > 1 and "://" in source) or scheme == "data":
        raise InvalidInput(
            where, f"{shown(source)}: give a local image file or an http(s) URL (for an S3 object, a presigned URL)"
        )
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            raise InvalidInput(where, f"{source}: is a directory; name an image file (PNG, JPEG or WebP)")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidInput(where, f"{source}: no such file") from None
        except OSError as exc:
            raise InvalidInput(where, f"{source}: cannot read it ({exc.strerror or exc})") from None
        label = source
    try:
        info = media.load_image(data)
    except ValueError as exc:
        raise InvalidInput(where, f"{label}: {str(exc).removeprefix('image bytes: ')}") from None
    return PlannedImage(
        field=where, source=source, name=name, data=data, format=info.format, width=info.width, height=info.height
    )


def check_same_aspect_ratio(images: Sequence[PlannedImage]) -> None:
    """All ``images`` have the same width/height (within :data:`ASPECT_TOLERANCE`), or :class:`InvalidInput`
    naming the odd one (measured against the ratio most of them share)."""
    if len(images) < 2:
        return
    ratios = [image.width / image.height for image in images]

    def same(a: float, b: float) -> bool:
        return abs(a / b - 1) <= ASPECT_TOLERANCE

    agreeing = [sum(same(r, other) for other in ratios) for r in ratios]
    reference = images[max(range(len(images)), key=lambda i: (agreeing[i], -i))]
    for image in images:
        if not same(image.width / image.height, reference.width / reference.height):
            raise InvalidInput(
                image.field,
                f"{image.shown} is {image.shape}, but {reference.field} {reference.shown} is {reference.shape}: "
                "every keyframe must have the same aspect ratio; crop or pad it to match",
            )


def plan_cast(cast: CastInput | Cast | None, *, name: str = "cast") -> Cast:
    """The checked cast: each member a frontal image plus optional reference images (files or URLs).

    A member is ``{"frontal_image": "hero.png", "reference_images": ["hero-left.png", ...]}`` or just the
    frontal image's path or URL. ``[@element1]`` in a prompt then names the first member. The vendor pages
    give no number of reference images per element (only ``images + elements <= 7``, each element counting
    once): none is imposed here. Raises :class:`InvalidInput` naming ``cast[i]...``.
    """
    if cast is None:
        return Cast()
    if isinstance(cast, Cast):
        return cast
    if not isinstance(cast, list):
        raise InvalidInput(name, f"must be a list of cast members, got {shown(cast)}")
    members = []
    for index, entry in enumerate(cast, start=1):
        where = f"{name}[{index}]"
        if isinstance(entry, str):
            entry = {"frontal_image": entry}
        if not isinstance(entry, dict):
            raise InvalidInput(where, f"must be an image path or URL, or {{'frontal_image': ...}}, got {shown(entry)}")
        unknown = sorted(set(entry) - set(_CAST_KEYS))
        if unknown:
            raise InvalidInput(where, f"unknown key {unknown[0]!r}; use 'frontal_image' and 'reference_images'")
        if "frontal_image" not in entry:
            raise InvalidInput(where, "needs 'frontal_image' (the subject seen from the front)")
        references = entry.get("reference_images") or []
        if not isinstance(references, list):
            raise InvalidInput(f"{where}.reference_images", f"must be a list of images, got {shown(references)}")
        members.append(
            CastMember(
                frontal=plan_image(entry["frontal_image"], f"{where}.frontal_image", f"cast-{index}-frontal"),
                references=tuple(
                    plan_image(ref, f"{where}.reference_images[{r}]", f"cast-{index}-reference-{r}")
                    for r, ref in enumerate(references, start=1)
                ),
            )
        )
    return Cast(tuple(members))


def _cast_size(cast: CastInput | Cast | None) -> int:
    """Members in a cast as given (0 when it is not a list: :func:`plan_cast` says what is wrong with it)."""
    return len(cast) if isinstance(cast, (list, Cast)) else 0


def check_cast_fits(members: int, images_per_clip: int, why: str, name: str = "cast") -> None:
    """``images + elements <= 7``: a clip with ``images_per_clip`` images takes at most ``7 - images_per_clip``
    members (each element counts once, as the request model counts them)."""
    room = MAX_IMAGE_REFERENCES - images_per_clip
    if members > room:
        raise InvalidInput(
            name,
            f"{members} members, but {why}, and images + elements must be at most {MAX_IMAGE_REFERENCES}: "
            f"give at most {room}",
        )


def check_element_mentions(prompts: Sequence[str], members: int, *, first_takes_cast: bool = True) -> None:
    """A prompt naming ``[@elementN]`` needs a cast of at least N ``members`` (and a clip that takes one)."""
    for index, text in enumerate(prompts, start=1):
        mentioned = [int(n) for n in _ELEMENT_MENTION.findall(text)]
        if not mentioned:
            continue
        if index == 1 and not first_takes_cast:
            raise InvalidInput(
                "prompts[1]",
                f"names [@element{mentioned[0]}], but the first clip is text-to-video, which takes no elements: "
                "describe the subject in words there (the cast joins from the second clip on)",
            )
        if max(mentioned) > members or min(mentioned) < 1:
            bad = max(mentioned) if max(mentioned) > members else min(mentioned)
            raise InvalidInput(
                f"prompts[{index}]",
                f"names [@element{bad}], but the cast has {members} member(s): add it to cast or fix the prompt",
            )


def check_inline_images(images: Iterable[PlannedImage], s3_bucket_block: str | None) -> None:
    """Without S3, local images travel inline as data URIs, at most 10 MB each: refuse a larger one up front."""
    if s3_bucket_block:
        return
    for image in images:
        if not image.is_url and len(image.data) > MAX_DATA_URI_BYTES:
            raise InvalidInput(
                image.field,
                f"{image.shown} is {len(image.data) / 1e6:.1f} MB; without s3_bucket_block local images are sent "
                f"inline, at most {MAX_DATA_URI_BYTES // (1024 * 1024)} MB: configure S3 or use a smaller file",
            )


def plan_storyboard(
    keyframes: list[str],
    prompts: list[str],
    *,
    duration: int | str = 5,
    mode: str = "pro",
    cast: CastInput | Cast | None = None,
) -> StoryboardPlan:
    """Check a storyboard and plan its clips: clip k goes from keyframe k to keyframe k+1.

    ``keyframes`` are N >= 2 local image files or http(s) URLs (PNG, JPEG or WebP, fetched and decoded here:
    what the vendor cannot read is refused before any spend), all of one aspect ratio; ``prompts`` are the
    N - 1 clips' prompts. Each clip is a ``kling-o1/image-to-video`` request with ``action: "frame"`` and
    ``images`` = [keyframe k, keyframe k+1], ``duration`` 3 to 10 s, ``mode`` std or pro, and the ``cast`` as
    ``elements`` (at most 5: 2 images + elements <= 7).

    Raises :class:`InvalidInput` naming the parameter (``keyframes[3]``, ``prompts``, ``duration``, ``cast[1]``,
    counted from 1) with the value, the rule and the fix.

    Examples:
        ```python
        plan = plan_storyboard(["a.png", "b.png", "c.png"], ["The sun rises", "Clouds roll in"])
        [r.to_args()["images"] for r in plan.requests]  # two images each (placeholders until published)
        check_budget(plan.requests, 2.0)  # Decimal('1.0')
        ```
    """
    if not isinstance(keyframes, list) or not all(isinstance(k, str) for k in keyframes):
        raise InvalidInput("keyframes", f"must be a list of image files or URLs, got {shown(keyframes)}")
    if len(keyframes) < 2:
        raise InvalidInput(
            "keyframes",
            f"give at least 2 (each clip goes from one keyframe to the next), got {len(keyframes)}",
        )
    if not isinstance(prompts, list):
        raise InvalidInput("prompts", f"must be a list of prompts, got {shown(prompts)}")
    if len(prompts) != len(keyframes) - 1:
        clips = len(keyframes) - 1
        raise InvalidInput(
            "prompts",
            f"give one prompt per clip: {len(keyframes)} keyframes make {clips} clip{'s' if clips > 1 else ''}, "
            f"so {clips} prompt{'s' if clips > 1 else ''}, got {len(prompts)}",
        )
    for index, text in enumerate(prompts, start=1):
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"prompts[{index}]", f"must be a non-empty text, got {shown(text)}")
    if isinstance(duration, bool) or str(duration) not in {str(s) for s in KlingO1ImageToVideo.facts.durations}:
        low, high = KlingO1ImageToVideo.facts.durations[0], KlingO1ImageToVideo.facts.durations[-1]
        raise InvalidInput("duration", f"must be {low} to {high} seconds per clip, got {shown(duration)}")
    if mode not in KlingO1ImageToVideo.facts.modes:
        raise InvalidInput("mode", f"must be 'std' or 'pro', got {shown(mode)}")
    check_cast_fits(_cast_size(cast), 2, "each clip takes 2 keyframes")
    check_element_mentions(prompts, _cast_size(cast))
    frames = tuple(plan_image(k, f"keyframes[{i}]", f"keyframe-{i:02d}") for i, k in enumerate(keyframes, start=1))
    check_same_aspect_ratio(frames)
    checked_cast = plan_cast(cast)
    requests = []
    for index, text in enumerate(prompts, start=1):
        first, last = frames[index - 1], frames[index]
        fields: dict[str, Any] = {
            "action": "frame",
            "prompt": text,
            "images": [k.source if k.is_url else PLACEHOLDER_IMAGE for k in (first, last)],
            "duration": duration,
            "mode": mode,
        }
        if checked_cast.members:
            fields["elements"] = checked_cast.elements()
        try:
            requests.append(KlingO1ImageToVideo.model_validate(fields))
        except ValidationError as exc:
            raise InvalidInput(f"prompts[{index}]", describe_validation_error(exc)) from None
    return StoryboardPlan(keyframes=frames, cast=checked_cast, requests=tuple(requests))
