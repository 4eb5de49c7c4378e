"""Request models: every documented option, range and cross-field rule, checked before any request."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from kling_prefect import (
    Kling26TextToVideo,
    Kling30TextToVideo,
    KlingO1ImageToVideo,
    KlingO1TextToVideo,
    KlingO3TextToVideo,
    ShortAPIClient,
    estimate_cost,
    request_model_for,
)
from kling_prefect.models import MODEL_IDS, REQUEST_MODELS

from .helpers import shots

URL = "https://example.com/frame.png"
PNG_DATA_URI = "data:image/png;base64,iVBORw0KGgo="


def element(**overrides: Any) -> dict[str, Any]:
    return {"frontal_image_url": URL, **overrides}


# (model, kwargs, field named by the error)
INVALID: list[tuple[type, dict[str, Any], str]] = [
    # kling-o1 text-to-video
    (KlingO1TextToVideo, {}, "prompt"),
    (KlingO1TextToVideo, {"prompt": ""}, "prompt"),
    (KlingO1TextToVideo, {"prompt": "   \n"}, "prompt"),
    (KlingO1TextToVideo, {"prompt": 123}, "prompt"),
    (KlingO1TextToVideo, {"prompt": "x", "duration": 7}, "duration"),
    (KlingO1TextToVideo, {"prompt": "x", "duration": "15"}, "duration"),
    (KlingO1TextToVideo, {"prompt": "x", "duration": 5.5}, "duration"),
    (KlingO1TextToVideo, {"prompt": "x", "mode": "fast"}, "mode"),
    (KlingO1TextToVideo, {"prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio"),
    (KlingO1TextToVideo, {"prompt": "x", "negative_prompt": "blur"}, "negative_prompt"),
    # kling-o3 text-to-video
    (KlingO3TextToVideo, {"prompt": "x" * 2501}, "prompt"),
    (KlingO3TextToVideo, {"prompt": "x", "duration": 2}, "duration"),
    (KlingO3TextToVideo, {"prompt": "x", "duration": 16}, "duration"),
    (KlingO3TextToVideo, {"prompt": "x", "duration": True}, "duration"),
    (KlingO3TextToVideo, {"prompt": "x", "duration": "abc"}, "duration"),
    (KlingO3TextToVideo, {"prompt": "x", "sound": "loud"}, "sound"),
    (KlingO3TextToVideo, {"prompt": "x", "multi_shot": "yes"}, "multi_shot"),
    (KlingO3TextToVideo, {"prompt": "x", "multi_shot": True, "shot_type": "auto"}, "shot_type"),
    (KlingO3TextToVideo, {"multi_shot": True, "shot_type": "customize"}, "multi_prompt"),
    (
        KlingO3TextToVideo,
        {"multi_shot": True, "shot_type": "customize", "duration": 14, "multi_prompt": shots(2, 2, 2, 2, 2, 2, 2)},
        "multi_prompt",
    ),
    (
        KlingO3TextToVideo,
        {"multi_shot": True, "shot_type": "customize", "duration": 10, "multi_prompt": shots(3, 3)},
        "multi_prompt",
    ),
    (
        KlingO3TextToVideo,
        {"multi_shot": True, "shot_type": "customize", "duration": 5, "multi_prompt": shots(0, 5)},
        "multi_prompt",
    ),
    (
        KlingO3TextToVideo,
        {"multi_shot": True, "shot_type": "customize", "duration": 15, "multi_prompt": shots(16)},
        "multi_prompt",
    ),
    (
        KlingO3TextToVideo,
        {
            "multi_shot": True,
            "shot_type": "customize",
            "duration": 5,
            "multi_prompt": [{"prompt": " ", "duration": 5}],
        },
        "multi_prompt",
    ),
    (KlingO3TextToVideo, {"prompt": "x", "multi_prompt": shots(5)}, "multi_prompt"),
    (KlingO3TextToVideo, {"prompt": "x", "shot_type": "customize"}, "shot_type"),
    (KlingO3TextToVideo, {"prompt": "", "multi_shot": True}, "prompt"),
    (KlingO3TextToVideo, {"prompt": "x", "aspect_ratio": "21:9"}, "aspect_ratio"),
    (KlingO3TextToVideo, {"prompt": "x", "mode": "turbo"}, "mode"),
    # kling-3.0 text-to-video
    (Kling30TextToVideo, {"prompt": "x", "duration": "2"}, "duration"),
    (Kling30TextToVideo, {"prompt": "x", "duration": 16}, "duration"),
    (Kling30TextToVideo, {"prompt": "x", "duration": "5s"}, "duration"),
    (Kling30TextToVideo, {"prompt": "x", "generate_audio": "true"}, "generate_audio"),
    (
        Kling30TextToVideo,
        {"multi_shot": True, "shot_type": "customize", "duration": "8", "multi_prompt": shots(4, 5)},
        "multi_prompt",
    ),
    (Kling30TextToVideo, {"duration": "5", "multi_shot": False}, "prompt"),
    (
        Kling30TextToVideo,
        {"multi_shot": True, "shot_type": "customize", "duration": "5", "multi_prompt": [{"duration": 5}]},
        "multi_prompt",
    ),
    (Kling30TextToVideo, {"prompt": "x", "sound": "on"}, "sound"),
    (Kling30TextToVideo, {"prompt": "x", "mode": "max"}, "mode"),
    # kling-2.6 text-to-video
    (Kling26TextToVideo, {"prompt": "x", "mode": "std"}, "mode"),
    (Kling26TextToVideo, {"prompt": "x", "cfg_scale": 1.5}, "cfg_scale"),
    (Kling26TextToVideo, {"prompt": "x", "cfg_scale": -0.1}, "cfg_scale"),
    (Kling26TextToVideo, {"prompt": "x", "cfg_scale": "high"}, "cfg_scale"),
    (Kling26TextToVideo, {"prompt": "x", "cfg_scale": float("nan")}, "cfg_scale"),
    (Kling26TextToVideo, {"prompt": "x", "duration": "15"}, "duration"),
    (Kling26TextToVideo, {"prompt": "x", "generate_audio": "yes"}, "generate_audio"),
    (Kling26TextToVideo, {"negative_prompt": "blur"}, "prompt"),
    # kling-o1 image-to-video
    (KlingO1ImageToVideo, {"prompt": "x", "images": []}, "images"),
    (KlingO1ImageToVideo, {"prompt": "x"}, "images"),
    (KlingO1ImageToVideo, {"prompt": "x", "images": ["ftp://example.com/a.png"]}, "images"),
    (KlingO1ImageToVideo, {"prompt": "x", "images": ["/home/me/frame.png"]}, "images"),
    (KlingO1ImageToVideo, {"prompt": "x", "images": ["data:text/html;base64,PGI+"]}, "images"),
    (KlingO1ImageToVideo, {"prompt": "x", "action": "refer", "images": [URL] * 8}, "images"),
    (
        KlingO1ImageToVideo,
        {"prompt": "x", "action": "refer", "images": [URL] * 5, "elements": [element()] * 3},
        "images",
    ),
    (KlingO1ImageToVideo, {"prompt": "x", "action": "frame", "images": [URL], "duration": "3"}, "duration"),
    (KlingO1ImageToVideo, {"prompt": "x", "action": "refer", "images": [URL], "duration": "11"}, "duration"),
    (KlingO1ImageToVideo, {"prompt": "x", "action": "refer", "images": [URL], "duration": 2}, "duration"),
    (KlingO1ImageToVideo, {"prompt": "x", "action": "frame", "images": [URL], "aspect_ratio": "1:1"}, "aspect_ratio"),
    (KlingO1ImageToVideo, {"prompt": "x", "action": "animate", "images": [URL]}, "action"),
    (KlingO1ImageToVideo, {"prompt": "x", "action": "refer", "images": [URL], "elements": [{}]}, "elements"),
    (
        KlingO1ImageToVideo,
        {"prompt": "x", "action": "refer", "images": [URL], "elements": [element(reference_image_urls=["file:///x"])]},
        "elements",
    ),
    (KlingO1ImageToVideo, {"prompt": "", "images": [URL]}, "prompt"),
    (KlingO1ImageToVideo, {"prompt": "x", "images": [URL], "mode": "ultra"}, "mode"),
]


def test_table_is_large_and_covers_every_model() -> None:
    assert len(INVALID) >= 40
    assert {case[0] for case in INVALID} == set(REQUEST_MODELS)


@pytest.mark.parametrize(("model", "kwargs", "field"), INVALID, ids=lambda v: getattr(v, "__name__", None))
async def test_invalid_request_is_rejected_locally_naming_field(
    model: type, kwargs: dict[str, Any], field: str, emulator, fast_client_options
) -> None:
    # The same arguments through both public paths: the constructor and the raw-dict lookup used by the CLI.
    with pytest.raises(ValidationError) as by_constructor:
        async with ShortAPIClient(base_url=emulator.base_url, **fast_client_options) as client:
            await client.create_job(model(**kwargs))
    with pytest.raises(ValidationError) as by_lookup:
        request_model_for(model.model_id).model_validate(kwargs)

    for caught in (by_constructor.value, by_lookup.value):
        error = caught.errors()[0]
        assert error["loc"][0] == field, caught
        text = str(caught)
        assert field in text
        assert "input_value=" in text  # pydantic prints the offending value
        assert error["msg"]  # and the rule
    assert emulator.stats().requests == 0


@pytest.mark.parametrize(
    ("model", "seed_args"),
    [
        (
            KlingO1TextToVideo,
            {"mode": "pro", "prompt": "The camera smoothly pans forward.", "duration": "5"},
        ),
        (KlingO3TextToVideo, {"prompt": "A cinematic slow-motion shot of a lone astronaut."}),
        (
            KlingO1ImageToVideo,
            {
                "mode": "pro",
                "action": "refer",
                "prompt": "[@element1] wears the outfit from [@image1] and the hat from [@image2]",
                "images": [
                    "https://file.shortapi.ai/assets/examples/kwaivgi/kling-o1/image-to-video-image_1.webp",
                    "https://file.shortapi.ai/assets/examples/kwaivgi/kling-o1/image-to-video-image_2.webp",
                ],
            },
        ),
        # The 3.0 page's example omits prompt, although the same page says prompt "cannot be empty when
        # multi_shot is false": we follow the rule (see test_kling30_seed_example_without_prompt_is_rejected).
        (Kling30TextToVideo, {"mode": "pro", "duration": "5", "multi_shot": False, "prompt": "A black lab"}),
        (
            Kling26TextToVideo,
            {
                "mode": "pro",
                "prompt": "Old friends reuniting at a train station after 20 years",
                "duration": "5",
                "aspect_ratio": "16:9",
                "generate_audio": True,
            },
        ),
    ],
)
def test_seed_examples_round_trip_with_wire_types(model: type, seed_args: dict[str, Any]) -> None:
    request = model.model_validate(seed_args)
    assert request.to_args() == seed_args
    for name, value in request.to_args().items():
        assert type(value) is type(seed_args[name]), name


def test_kling30_seed_example_without_prompt_is_rejected() -> None:
    with pytest.raises(ValidationError, match="prompt"):
        Kling30TextToVideo.model_validate({"mode": "pro", "duration": "5", "multi_shot": False})


def test_wire_types_follow_each_page() -> None:
    assert KlingO1TextToVideo(prompt="x", duration=10).to_args()["duration"] == "10"
    assert KlingO3TextToVideo(prompt="x", duration=12).to_args()["duration"] == 12
    assert Kling30TextToVideo(prompt="x", duration=12).to_args()["duration"] == "12"
    assert Kling26TextToVideo(prompt="x", duration=10).to_args()["duration"] == "10"
    assert KlingO1ImageToVideo(prompt="x", action="refer", images=[URL], duration=7).to_args()["duration"] == "7"
    assert KlingO3TextToVideo(prompt="x", sound=True).to_args()["sound"] == "on"
    assert KlingO3TextToVideo(prompt="x", multi_shot=True).to_args()["multi_shot"] is True
    assert Kling26TextToVideo(prompt="x").to_args()["generate_audio"] is False


def test_defaults_follow_the_pages() -> None:
    o1 = KlingO1TextToVideo(prompt="x")
    assert (o1.mode, o1.duration, o1.aspect_ratio) == ("pro", "5", "16:9")
    o3 = KlingO3TextToVideo(prompt="x")
    assert (o3.mode, o3.duration, o3.sound, o3.multi_shot, o3.shot_type) == ("pro", 5, "off", False, "intelligence")
    # Required wire fields are always sent; optional ones only when set.
    assert KlingO1TextToVideo(prompt="x").to_args() == {"mode": "pro", "prompt": "x", "duration": "5"}
    assert Kling30TextToVideo(prompt="x").to_args() == {
        "mode": "pro",
        "duration": "5",
        "multi_shot": False,
        "prompt": "x",
    }
    i2v = KlingO1ImageToVideo(prompt="x", images=[PNG_DATA_URI])
    assert i2v.to_args() == {"mode": "pro", "action": "frame", "prompt": "x", "images": [PNG_DATA_URI]}


def test_valid_edge_cases_are_accepted() -> None:
    KlingO3TextToVideo(prompt="x" * 2500, duration=3)
    KlingO3TextToVideo(multi_shot=True, shot_type="customize", duration=15, multi_prompt=shots(5, 5, 1, 1, 1, 2))
    Kling30TextToVideo(multi_shot=True, shot_type="customize", duration="3", multi_prompt=shots(1, 1, 1))
    Kling26TextToVideo(prompt="x", cfg_scale=0)
    Kling26TextToVideo(prompt="x", cfg_scale=1)
    KlingO1ImageToVideo(prompt="x", action="frame", images=[URL, URL], duration="3")  # two frames: 3-10 allowed
    KlingO1ImageToVideo(prompt="x", action="refer", images=[URL] * 4, elements=[element()] * 3, aspect_ratio="9:16")
    # 'frame' uses only the first two images; more are allowed by the page, within the total of 7.
    KlingO1ImageToVideo(prompt="x", action="frame", images=[URL] * 7, duration=10)


def test_model_lookup_by_short_name_and_id() -> None:
    assert request_model_for("kling-o3") is KlingO3TextToVideo
    assert request_model_for("kwaivgi/kling-2.6/text-to-video") is Kling26TextToVideo
    assert set(MODEL_IDS) == {m.model_id for m in REQUEST_MODELS}
    with pytest.raises(KeyError, match="kling-o3"):
        request_model_for("kling-9")


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (KlingO1TextToVideo(prompt="x", mode="std", duration=5), "0.375"),
        (KlingO1TextToVideo(prompt="x", mode="pro", duration=10), "1.0"),
        (KlingO3TextToVideo(prompt="x", mode="std", duration=4), "0.284"),
        (KlingO3TextToVideo(prompt="x", mode="std", duration=4, sound="on"), "0.380"),
        (KlingO3TextToVideo(prompt="x", duration=10), "0.950"),
        (KlingO3TextToVideo(prompt="x", duration=10, sound="on"), "1.190"),
        (Kling30TextToVideo(prompt="x", mode="std", duration=3), "0.429"),
        (Kling30TextToVideo(prompt="x", mode="std", duration=3, generate_audio=True), "0.642"),
        (Kling30TextToVideo(prompt="x", duration=15), "2.850"),
        (Kling30TextToVideo(prompt="x", duration=15, generate_audio=True), "4.290"),
        (Kling26TextToVideo(prompt="x", duration=10), "0.60"),
        (Kling26TextToVideo(prompt="x", duration=10, generate_audio=True), "1.20"),
        (KlingO1ImageToVideo(prompt="x", images=[URL], mode="std", duration=10), "0.750"),
        # The page says pro is "$0.1 per request"; we estimate per second (the safe, higher reading).
        (KlingO1ImageToVideo(prompt="x", images=[URL], mode="pro", duration=5), "0.5"),
    ],
)
def test_estimate_cost_from_documented_rates(request_: Any, expected: str) -> None:
    assert estimate_cost(request_) == Decimal(expected)
