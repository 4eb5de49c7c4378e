"""One typed helper per Kling model: its request fields as keyword parameters, then :func:`generate_video`.

Each helper is :func:`~kling_prefect.tasks.clip.generate_video` with the model's request built from its
arguments (validated at the call, before anything is created). Parameters are named exactly as the wire fields,
with the model's types and defaults; a test checks each signature against its request model. Arguments left at
their defaults are not sent, so the vendor applies its own documented defaults.

Examples:
    ```python
    from prefect import flow
    from kling_prefect.tasks import kling_o3_text_to_video

    @flow
    async def daily():
        clip = await kling_o3_text_to_video(prompt="A lighthouse at dawn", sound="on", run_key="daily-1")
        return clip.video.uri
    ```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from typing_extensions import Unpack

from kling_prefect.dispatch import dispatching
from kling_prefect.models import (
    Element,
    Kling26TextToVideo,
    Kling30TextToVideo,
    KlingO1ImageToVideo,
    KlingO1TextToVideo,
    KlingO3TextToVideo,
    KlingRequest,
    Shot,
)
from kling_prefect.models.base import AspectRatio, Mode
from kling_prefect.records import StoredVideo
from kling_prefect.tasks.clip import ClipOptions, generate_video

__all__ = [
    "kling_26_text_to_video",
    "kling_30_text_to_video",
    "kling_o1_image_to_video",
    "kling_o1_text_to_video",
    "kling_o3_text_to_video",
]

ShotType = Literal["intelligence", "customize"]


def _request(model: type[KlingRequest], arguments: Mapping[str, Any]) -> KlingRequest:
    """``model`` from the helper's arguments: its fields, those left at the model's defaults omitted."""
    fields = {}
    for name, info in model.model_fields.items():
        if name in arguments and (info.is_required() or arguments[name] != info.default):
            fields[name] = arguments[name]
    return model.model_validate(fields)


@dispatching
async def kling_o1_text_to_video(
    *,
    run_key: str,
    step: str = "clip",
    prompt: str,
    mode: Mode = "pro",
    duration: int | str = "5",
    aspect_ratio: AspectRatio = "16:9",
    **options: Unpack[ClipOptions],
) -> StoredVideo:
    """Make one ``kwaivgi/kling-o1/text-to-video`` clip (see :class:`~kling_prefect.models.KlingO1TextToVideo`)."""
    request = _request(KlingO1TextToVideo, locals())
    return await generate_video.aio(request, run_key=run_key, step=step, **options)


@dispatching
async def kling_o3_text_to_video(
    *,
    run_key: str,
    step: str = "clip",
    prompt: str = "",
    mode: Mode = "pro",
    duration: int = 5,
    aspect_ratio: AspectRatio = "16:9",
    sound: Literal["on", "off"] | bool = "off",
    multi_shot: bool = False,
    shot_type: ShotType = "intelligence",
    multi_prompt: list[Shot] | list[dict[str, Any]] | None = None,
    **options: Unpack[ClipOptions],
) -> StoredVideo:
    """Make one ``kwaivgi/kling-o3/text-to-video`` clip (see :class:`~kling_prefect.models.KlingO3TextToVideo`)."""
    request = _request(KlingO3TextToVideo, locals())
    return await generate_video.aio(request, run_key=run_key, step=step, **options)


@dispatching
async def kling_o1_image_to_video(
    *,
    run_key: str,
    step: str = "clip",
    prompt: str,
    images: list[str],
    mode: Mode = "pro",
    action: Literal["frame", "refer"] = "frame",
    duration: int | str = "5",
    elements: list[Element] | list[dict[str, Any]] | None = None,
    aspect_ratio: AspectRatio | None = None,
    **options: Unpack[ClipOptions],
) -> StoredVideo:
    """Make one ``kwaivgi/kling-o1/image-to-video`` clip (see :class:`~kling_prefect.models.KlingO1ImageToVideo`)."""
    request = _request(KlingO1ImageToVideo, locals())
    return await generate_video.aio(request, run_key=run_key, step=step, **options)


@dispatching
async def kling_30_text_to_video(
    *,
    run_key: str,
    step: str = "clip",
    prompt: str | None = None,
    negative_prompt: str | None = None,
    mode: Mode = "pro",
    duration: int | str = "5",
    multi_shot: bool = False,
    shot_type: ShotType = "intelligence",
    multi_prompt: list[Shot] | list[dict[str, Any]] | None = None,
    aspect_ratio: AspectRatio = "16:9",
    generate_audio: bool = False,
    **options: Unpack[ClipOptions],
) -> StoredVideo:
    """Make one ``kwaivgi/kling-3.0/text-to-video`` clip (see :class:`~kling_prefect.models.Kling30TextToVideo`)."""
    request = _request(Kling30TextToVideo, locals())
    return await generate_video.aio(request, run_key=run_key, step=step, **options)


@dispatching
async def kling_26_text_to_video(
    *,
    run_key: str,
    step: str = "clip",
    prompt: str,
    negative_prompt: str | None = None,
    mode: Literal["pro"] = "pro",
    duration: int | str = "5",
    aspect_ratio: AspectRatio = "16:9",
    cfg_scale: float | None = None,
    generate_audio: bool = False,
    **options: Unpack[ClipOptions],
) -> StoredVideo:
    """Make one ``kwaivgi/kling-2.6/text-to-video`` clip (see :class:`~kling_prefect.models.Kling26TextToVideo`)."""
    request = _request(Kling26TextToVideo, locals())
    return await generate_video.aio(request, run_key=run_key, step=step, **options)
