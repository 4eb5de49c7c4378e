"""Storyboards and casts: the storyboard flow on a real Prefect server against the emulator over HTTP (locally,
from URLs, through moto's S3), checked on decoded pixels; the cast on every clip that can take it; bad keyframes
refused before any request; and the checks themselves (no server)."""

from __future__ import annotations

import base64
import itertools
import json
from fractions import Fraction
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from kling_prefect import InvalidInput, RunIncomplete, media
from kling_prefect.flows import RunResult, continuation, storyboard
from kling_prefect.planning import check_budget, plan_chain, plan_storyboard

from .helpers import LoopbackServer, answer, artifacts_of, mean_abs_diff

FAST = {"poll_interval": 0.05, "timeout_seconds": 120}
I2V = "kwaivgi/kling-o1/image-to-video"


# --------------------------------------------------------------------------------------------- pictures


def picture(width: int, height: int, seed: int) -> np.ndarray:
    """A textured picture, different for each seed: a colour gradient, diagonal bands and a disc."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    t = (x / width)[..., None]
    image = a * (1 - t) + b * t
    bands = (np.sin(x * rng.uniform(0.02, 0.06) + y * rng.uniform(0.02, 0.06)) > 0)[..., None]
    image = np.where(bands, image * 0.6 + 60, image)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    disc = ((x - cx) ** 2 + (y - cy) ** 2 < (0.18 * height) ** 2)[..., None]
    image = np.where(disc, rng.uniform(0, 255, 3), image)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> str:
    path.write_bytes(media.encode_png(rgb))
    return str(path)


def write_webp(path: Path, rgb: np.ndarray) -> str:
    """``rgb`` as a WebP file (FFmpeg's libwebp encoder, as bundled with PyAV)."""
    context = av.CodecContext.create("libwebp", "w")
    context.width, context.height = rgb.shape[1], rgb.shape[0]
    context.pix_fmt = "yuv420p"
    context.time_base = Fraction(1, 1)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    frame.pts = 0
    path.write_bytes(b"".join(bytes(p) for p in [*context.encode(frame), *context.encode(None)]))
    return str(path)


@pytest.fixture
def keyframes(tmp_path: Path) -> list[str]:
    """Three 16:9 keyframes (the emulator keeps 320x180 as it is), far apart from each other."""
    folder = tmp_path / "board"
    folder.mkdir()
    return [write_png(folder / f"frame-{i}.png", picture(320, 180, seed=i)) for i in range(1, 4)]


def inline_bytes(uri: str) -> bytes:
    assert uri.startswith("data:image/"), uri[:40]
    return base64.b64decode(uri.split(",", 1)[1])


def i2v_jobs(emulator: Any) -> list[Any]:
    return sorted((j for j in emulator.stats().jobs.values() if j.model == I2V), key=lambda j: j.args["prompt"])


# --------------------------------------------------------------------------------------------- the flow


@pytest.mark.usefixtures("prefect_server", "vendor_env")
async def test_storyboard_passes_through_every_keyframe_and_resumes_without_paying(
    emulator, keyframes, tmp_path
) -> None:
    prompts = ["1: the disc drifts", "2: the bands turn"]
    out = tmp_path / "out"
    state = await storyboard(
        keyframes, prompts, duration=3, run_key="board", output_dir=str(out), return_state=True, **FAST
    )
    assert state.is_completed() and state.message == "2 of 2 clips stored"
    result = await state.aresult()

    # Two creates, each a 'frame' clip from keyframe k to keyframe k+1, the local files sent inline.
    jobs = i2v_jobs(emulator)
    assert emulator.stats().creates == 2 and len(jobs) == 2
    for index, job in enumerate(jobs):
        assert job.args["action"] == "frame" and job.args["duration"] == "3" and len(job.args["images"]) == 2
        sent = [inline_bytes(uri) for uri in job.args["images"]]
        assert sent == [Path(keyframes[index]).read_bytes(), Path(keyframes[index + 1]).read_bytes()]
        assert "elements" not in job.args

    # final.mp4 lasts the sum of the clips and passes through every keyframe.
    clips = [Path(c.video.local_path) for c in result.clips]
    assert [c.name for c in clips] == ["clip-01.mp4", "clip-02.mp4"]
    final = Path(result.final.local_path)
    assert final == out / "final.mp4"
    assert media.probe(final).frame_count == sum(media.probe(c).frame_count for c in clips) == 2 * 3 * 24
    assert media.probe(final).duration_seconds == pytest.approx(6.0, abs=0.05)
    pixels = [media.load_image(k).rgb for k in keyframes]
    apart = [mean_abs_diff(a, b) for a, b in itertools.pairwise(pixels)]
    boundary = media.probe(clips[0]).frame_count
    shown = {
        "first frame": (media.read_frame(final, "first"), pixels[0]),
        "end of clip 1": (media.read_frame(final, boundary - 1), pixels[1]),
        "start of clip 2": (media.read_frame(final, boundary), pixels[1]),
        "last frame": (media.read_frame(final, "last"), pixels[2]),
    }
    differences = {where: mean_abs_diff(frame, keyframe) for where, (frame, keyframe) in shown.items()}
    assert min(apart) > 30, apart  # the keyframes differ a lot, so the check below can fail
    assert max(differences.values()) < min(apart) / 10, (differences, apart)

    # The summary shows each keyframe beside the final video there, with the difference the flow measured.
    artifacts = await artifacts_of(state)
    summary = artifacts["kling-storyboard-summary"].data
    assert "2 of 2 clips stored" in summary and "## Keyframes (keyframe | final video there)" in summary
    for index, name in enumerate(["frame-1.png", "frame-2.png", "frame-3.png"], start=1):
        assert f"**keyframe {index}** `{name}`" in summary
    assert "at 3.00 s (join)" in summary and "at 6.00 s (last frame)" in summary
    measured = [float(line.rsplit("**", 2)[-2]) for line in summary.splitlines() if line.startswith("**keyframe")]
    assert len(measured) == 3 and max(measured) < min(apart) / 10
    assert f"consecutive keyframes differ by {min(apart):.1f} to {max(apart):.1f}" in summary
    assert summary.count("](data:image/jpeg;base64,") == 2 + 2 + 3  # thumbnails, filmstrips, keyframes
    assert "file://" not in summary
    # The run keeps its keyframes with its outputs.
    assert sorted(p.name[: len("keyframe-01")] for p in (out / "inputs").iterdir()) == [
        "keyframe-01",
        "keyframe-02",
        "keyframe-03",
    ]

    # A re-run with the same run key creates nothing and rewrites nothing.
    before = emulator.stats().create_requests
    written = {p: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    again = await storyboard(keyframes, prompts, duration=3, run_key="board", output_dir=str(out), **FAST)
    assert emulator.stats().create_requests == before
    assert again.totals.resumed == 2 and again.totals.created == 0
    assert [r.job_id for r in again.records] == [r.job_id for r in result.records]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == written


@pytest.mark.usefixtures("prefect_server", "vendor_env")
async def test_a_failed_clip_fails_the_run_and_a_rerun_makes_only_that_clip(emulator, keyframes, tmp_path) -> None:
    prompts = ["1: the disc drifts", "2: the bands turn"]
    emulator.inject("job_failure", times=1, message="generation failed: content moderation")
    state = await storyboard(
        keyframes,
        prompts,
        duration=3,
        max_concurrency=1,
        run_key="board-fail",
        output_dir=str(tmp_path),
        return_state=True,
        **FAST,
    )
    assert state.is_failed()
    assert emulator.stats().creates == 2 and emulator.stats().max_in_flight == 1
    assert state.message.startswith("1 of 2 clips stored; clip-0")
    assert state.message.endswith("failed at the vendor: generation failed: content moderation")
    with pytest.raises(RunIncomplete) as caught:
        await state.aresult()
    assert [r.status for r in caught.value.result.records].count("stored") == 1
    assert len(list(tmp_path.glob("clip-0*.mp4"))) == 1  # the other clip was made, stored and kept
    assert not (tmp_path / "final.mp4").exists()
    summary = (await artifacts_of(state))["kling-storyboard-summary"].data
    assert "1 of 2 clips stored" in summary and "failed at the vendor" in summary

    before = emulator.stats().creates
    result = await storyboard(keyframes, prompts, duration=3, run_key="board-fail", output_dir=str(tmp_path), **FAST)
    assert emulator.stats().creates == before + 1  # only the failed clip is made again
    assert isinstance(result, RunResult)
    assert result.totals.resumed == 1 and result.totals.created == 1
    assert media.probe(tmp_path / "final.mp4").frame_count == 2 * 3 * 24


def _keyframe_server(files: dict[str, bytes]) -> LoopbackServer:
    """A file host: GET /<name> answers the file, anything else 404."""

    def handle(method: str, request: BaseHTTPRequestHandler) -> None:
        name = request.path.lstrip("/").split("?", 1)[0]
        if name in files:
            answer(request, 200, files[name], "image/png")
        else:
            answer(request, 404, b"not found", "text/plain")

    return LoopbackServer(handle)


@pytest.mark.usefixtures("prefect_server", "vendor_env")
async def test_keyframes_given_as_urls_are_checked_then_passed_on_as_given(emulator, keyframes, tmp_path) -> None:
    files = {Path(k).name: Path(k).read_bytes() for k in keyframes}
    with _keyframe_server(files) as host:
        urls = [f"{host.base_url}/{name}?token=abc" for name in files]
        # One that is not there is refused before any request.
        with pytest.raises(InvalidInput, match=r"^keyframes\[2\]: .*/missing\.png\?\.\.\. answered HTTP 404") as bad:
            await storyboard([urls[0], f"{host.base_url}/missing.png?token=abc"], ["x"], **FAST)
        assert "token=abc" not in str(bad.value)  # a signature in a query stays out of messages
        assert emulator.stats().requests == 0

        result = await storyboard(
            [urls[0], keyframes[1], urls[2]],
            ["1: the disc drifts", "2: the bands turn"],
            duration=3,
            run_key="board-urls",
            output_dir=str(tmp_path),
            **FAST,
        )
    jobs = i2v_jobs(emulator)
    assert next(j.args["images"][0] for j in jobs) == urls[0] and jobs[1].args["images"][1] == urls[2]
    assert inline_bytes(jobs[0].args["images"][1]) == Path(keyframes[1]).read_bytes()
    final = Path(result.final.local_path)
    assert mean_abs_diff(media.read_frame(final, "last"), media.load_image(keyframes[2]).rgb) < 4


@pytest.mark.usefixtures("vendor_env")
async def test_storyboard_with_a_cast_through_s3(emulator, s3_bucket_block, keyframes, tmp_path) -> None:
    """Keyframes and cast images are uploaded and handed over as presigned URLs, which the emulator fetches (it
    fetches element images too); a re-run gets new signatures for the same images and creates nothing."""
    block, endpoint, bucket = s3_bucket_block
    hero = write_png(tmp_path / "hero.png", picture(200, 200, seed=11))
    side = write_png(tmp_path / "hero-side.png", picture(200, 200, seed=12))
    cast = [{"frontal_image": hero, "reference_images": [side]}]
    prompts = ["[@element1] walks in", "[@element1] waves"]
    options = {"duration": 3, "cast": cast, "run_key": "board-s3", "output_dir": str(tmp_path / "out")}
    result = await storyboard(keyframes, prompts, s3_bucket_block=block, **options, **FAST)

    jobs = i2v_jobs(emulator)
    assert len(jobs) == 2 and all(j.status == 2 for j in jobs)
    for job in jobs:
        (element,) = job.args["elements"]
        refs = [*job.args["images"], element["frontal_image_url"], *element["reference_image_urls"]]
        assert all(ref.startswith(f"{endpoint}/{bucket}/kling/board-s3/inputs/") and "Signature" in ref for ref in refs)
    assert jobs[0].args["elements"][0]["frontal_image_url"].split("?")[0].endswith(".png")
    final = Path(result.final.local_path)
    assert mean_abs_diff(media.read_frame(final, "first"), media.load_image(keyframes[0]).rgb) < 4
    assert result.final.uri == f"s3://{bucket}/kling/board-s3/final.mp4"

    before = emulator.stats().create_requests
    again = await storyboard(keyframes, prompts, s3_bucket_block=block, **options, **FAST)
    assert emulator.stats().create_requests == before and again.totals.resumed == 2


@pytest.mark.usefixtures("prefect_server", "vendor_env")
async def test_the_cast_reaches_every_continuation(emulator, tmp_path) -> None:
    hero = write_webp(tmp_path / "hero.webp", picture(160, 160, seed=21))
    assert media.load_image(hero).format == "webp"
    prompts = ["A fox in a red scarf sits in the snow", "[@element1] runs", "[@element1] jumps"]
    await continuation(prompts, duration=3, cast=[hero], run_key="cast-chain", output_dir=str(tmp_path / "out"), **FAST)
    jobs = {j.args["prompt"]: j for j in emulator.stats().jobs.values()}
    assert len(jobs) == 3
    assert "elements" not in jobs[prompts[0]].args  # text-to-video takes no elements
    for prompt in prompts[1:]:
        (element,) = jobs[prompt].args["elements"]
        assert element == {"frontal_image_url": element["frontal_image_url"]}
        assert element["frontal_image_url"].startswith("data:image/webp;base64,")
        assert inline_bytes(element["frontal_image_url"]) == Path(hero).read_bytes()
        assert jobs[prompt].status == 2  # the emulator fetched and decoded the element's image


# --------------------------------------------------------------------------------------------- refused up front


def bad_inputs(folder: Path, keyframes: list[str]) -> list[tuple[str, dict[str, Any], str]]:
    not_image = folder / "notes.png"
    not_image.write_text("a keyframe? no")
    square = write_png(folder / "square.png", picture(180, 180, seed=5))
    return [
        (
            "missing file",
            {"keyframes": [keyframes[0], str(folder / "nope.png")]},
            r"^keyframes\[2\]: .*nope\.png: no such file",
        ),
        (
            "not an image",
            {"keyframes": [keyframes[0], str(not_image)]},
            r"^keyframes\[2\]: .*notes\.png: not a PNG, JPEG or WebP",
        ),
        (
            "mixed aspect ratios",
            {"keyframes": [keyframes[0], square, keyframes[2]], "prompts": ["a", "b"]},
            r"^keyframes\[2\]: .*square\.png is 180x180 \(1:1\), but keyframes\[1\] .* is 320x180 \(16:9\)",
        ),
        ("one keyframe", {"keyframes": [keyframes[0]], "prompts": []}, r"^keyframes: give at least 2"),
        ("too many prompts", {"prompts": ["a", "b"]}, r"^prompts: give one prompt per clip: 2 keyframes make 1 clip"),
        ("too few prompts", {"keyframes": keyframes, "prompts": ["a"]}, r"^prompts: .* so 2 prompts, got 1"),
        ("duration", {"duration": 12}, r"^duration: must be 3 to 10 seconds"),
        ("cast too big", {"cast": [keyframes[0]] * 6}, r"^cast: 6 members, .* give at most 5"),
        (
            "unknown element",
            {"prompts": ["[@element1] waves"]},
            r"^prompts\[1\]: names \[@element1\], but the cast has 0",
        ),
        ("s3 url", {"keyframes": [keyframes[0], "s3://bucket/a.png"]}, r"^keyframes\[2\]: .*presigned URL"),
        ("max_concurrency", {"max_concurrency": 0}, r"^max_concurrency: must be at least 1"),
    ]


@pytest.mark.usefixtures("prefect_server", "vendor_env")
async def test_bad_keyframes_are_refused_before_any_request(emulator, keyframes, tmp_path) -> None:
    for name, change, message in bad_inputs(tmp_path, keyframes):
        parameters: dict[str, Any] = {
            "keyframes": keyframes[:2],
            "prompts": ["a"],
            "output_dir": str(tmp_path),
            **change,
        }
        with pytest.raises(InvalidInput, match=message):
            await storyboard(**parameters, **FAST)
        assert emulator.stats().requests == 0, name
    assert not list(tmp_path.rglob("*.mp4"))


def test_the_odd_keyframe_is_named_against_what_most_keyframes_share(keyframes, tmp_path) -> None:
    tall = write_png(tmp_path / "tall.png", picture(180, 320, seed=7))
    with pytest.raises(InvalidInput, match=r"^keyframes\[1\]: .*tall\.png is 180x320 \(9:16\), but keyframes\[2\]"):
        plan_storyboard([tall, *keyframes], ["a", "b", "c"])
    # a different size of the same shape is fine (1280x720 and 320x180 are both 16:9)
    large = write_png(tmp_path / "large.png", picture(640, 360, seed=8))
    plan = plan_storyboard([large, *keyframes], ["a", "b", "c"])
    assert [k.shape for k in plan.keyframes] == ["640x360 (16:9)"] + ["320x180 (16:9)"] * 3


def test_a_plan_is_priced_and_bound_to_what_the_vendor_gets(keyframes, tmp_path) -> None:
    hero = write_png(tmp_path / "hero.png", picture(100, 100, seed=3))
    plan = plan_storyboard(keyframes, ["a [@element1]", "b"], duration=10, mode="std", cast=[{"frontal_image": hero}])
    assert check_budget(plan.requests, None) == 2 * 10 * plan.requests[0].facts.rate("std")
    assert [i.field for i in plan.images] == ["keyframes[1]", "keyframes[2]", "keyframes[3]", "cast[1].frontal_image"]
    bound = plan.bind({image.field: f"https://cdn.example/{image.name}.png" for image in plan.images})
    assert [r.to_args()["images"] for r in bound] == [
        ["https://cdn.example/keyframe-01.png", "https://cdn.example/keyframe-02.png"],
        ["https://cdn.example/keyframe-02.png", "https://cdn.example/keyframe-03.png"],
    ]
    assert all(
        r.to_args()["elements"] == [{"frontal_image_url": "https://cdn.example/cast-1-frontal.png"}] for r in bound
    )
    assert {r.to_args()["mode"] for r in bound} == {"std"} and {r.to_args()["duration"] for r in bound} == {"10"}


def test_a_chain_with_a_cast_names_what_the_first_clip_cannot_take(tmp_path) -> None:
    hero = write_png(tmp_path / "hero.png", picture(100, 100, seed=4))
    with pytest.raises(InvalidInput, match=r"^prompts\[1\]: names \[@element1\], but the first clip is text-to-video"):
        plan_chain("kling-o3", ["[@element1] sits", "[@element1] runs"], cast=[hero])
    with pytest.raises(InvalidInput, match=r"^cast: 7 members, but each continuation takes 1 frame"):
        plan_chain("kling-o3", ["a", "b"], cast=[hero] * 7)
    with pytest.raises(InvalidInput, match=r"^cast\[1\]: unknown key 'frontal'"):
        plan_chain("kling-o3", ["a", "b"], cast=[{"frontal": hero}])
    first, second = plan_chain("kling-o3", ["a fox", "[@element1] runs"], cast=[hero] * 6)
    assert "elements" not in first.to_args() and len(second.to_args()["elements"]) == 6


# --------------------------------------------------------------------------------------------- the command line


def test_the_storyboard_command_prices_runs_and_refuses_with_one_line(
    prefect_server, emulator, keyframes, tmp_path
) -> None:
    from prefect.settings import PREFECT_API_URL

    from .conftest import TEST_KEY
    from .helpers import run_cli

    prompts = ["--prompt", "The boat leaves", "--prompt", "It reaches the shore"]
    priced = run_cli("estimate", "--keyframes", *keyframes, *prompts, "--json")
    assert priced.returncode == 0, priced.stderr
    estimate = json.loads(priced.stdout)
    assert estimate["total_usd"] == "1.0" and [r["short_name"] for r in estimate["requests"]] == ["kling-o1-i2v"] * 2

    env = {
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "SHORTAPI_KEY": TEST_KEY,
        "SHORTAPI_BASE_URL": emulator.base_url,
    }
    out = tmp_path / "cli-story"
    args = ["storyboard", *keyframes, *prompts, "--out", str(out), "--run-key", "cli-story", "--poll-interval", "0.05"]
    done = run_cli(*args, "--json", "--no-progress", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["stored"] == 2 and result["final"]["local_path"] == str(out / "final.mp4")
    assert [j.args["action"] for j in i2v_jobs(emulator)] == ["frame", "frame"]

    for bad, needle in (
        ([keyframes[0], "--prompt", "x"], "KEYFRAME"),  # one keyframe
        ([*keyframes, "--prompt", "only one"], "--prompt: give one prompt per clip"),
        ([*keyframes[:2], str(tmp_path / "missing.png"), *prompts], "KEYFRAME 3"),
    ):
        refused = run_cli("storyboard", *bad, "--out", str(out), env=env)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and needle in lines[0], refused.stderr
        assert "Traceback" not in refused.stderr
    assert len(i2v_jobs(emulator)) == 2  # nothing more reached the vendor
