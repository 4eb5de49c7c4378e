"""The ShortAPI emulator over real HTTP (httpx on 127.0.0.1, no mocks).

One emulator serves the module (``time_scale=0.01``; ``job_time`` makes std-mode jobs take 1 s and pro-mode
jobs 0.2 s), with counters and faults reset per test. Tests that need other settings start their own,
sharing the module's workdir so a rendered clip is reused instead of rendered again.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import queue
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from kling_prefect.emulator import JOB_TIME_TABLE, Emulator, base_job_seconds
from kling_prefect.emulator.jobs import RANDOM_FAILURE_MESSAGE
from kling_prefect.emulator.video import free_box_header
from kling_prefect.models import MODEL_IDS, request_model_for
from kling_prefect.pricing import estimate_cost

from .helpers import LoopbackServer, answer, read_body

API_KEY = "sk-emulator-test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
T2V = "kwaivgi/kling-o1/text-to-video"
O3 = "kwaivgi/kling-o3/text-to-video"
I2V = "kwaivgi/kling-o1/image-to-video"
TIME_SCALE = 0.01
#: Pro-mode jobs finish fast; every download test uses these args, so one clip is rendered for all.
FAST = {"prompt": "a red kite over a grey sea", "duration": "5", "mode": "pro", "aspect_ratio": "9:16"}
#: Std-mode jobs take 1 s: long enough to watch them queue and overlap.
SLOW = {"prompt": "a slow tide", "duration": "5", "mode": "std"}


def job_time(model: str, args: Mapping[str, Any]) -> float:
    """Unscaled seconds: std jobs 100 (1 s at TIME_SCALE), others 20 (0.2 s)."""
    return 100.0 if args.get("mode") == "std" else 20.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator")


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[Emulator]:
    with Emulator(time_scale=TIME_SCALE, api_key=API_KEY, seed=11, job_time=job_time, workdir=workdir) as emu:
        yield emu


@pytest.fixture
def emu(server: Emulator) -> Iterator[Emulator]:
    server.reset_stats()
    server.clear_faults()
    yield server
    server.clear_faults()


@pytest.fixture
def api(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.base_url, headers=AUTH, timeout=10) as client:
        yield client


# --------------------------------------------------------------------------------------------- helpers


def create(api: httpx.Client, args: Mapping[str, Any] = FAST, model: str = T2V, **extra: Any) -> str:
    response = api.post("/api/v1/job/create", json={"model": model, "args": dict(args), **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 0
    return str(body["data"]["job_id"])


def query(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get("/api/v1/job/query", params={"id": job_id})
    assert response.status_code == 200, response.text
    return dict(response.json()["data"])


def wait_terminal(api: httpx.Client, job_id: str, timeout: float = 10.0) -> tuple[dict[str, Any], list[int]]:
    """Poll every 10 ms until status 2 or 3; returns the last data and the distinct statuses seen in order."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = query(api, job_id)
        if not seen or seen[-1] != data["status"]:
            seen.append(data["status"])
        if data["status"] in (2, 3):
            return data, seen
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} did not finish; statuses {seen}")


def result_url(api: httpx.Client, args: Mapping[str, Any] = FAST, model: str = T2V) -> str:
    data, _ = wait_terminal(api, create(api, args, model))
    assert data["status"] == 2, data
    return str(data["result"]["videos"][0]["url"])


def decode(data: bytes) -> tuple[list[np.ndarray], float]:
    """All frames as RGB arrays, and the stream duration in seconds."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        duration = float(stream.duration * stream.time_base) if stream.duration else len(frames) / 24
    return frames, duration


def png_data_uri(rgb: np.ndarray) -> str:
    try:
        from kling_prefect.media import encode_png
    except ImportError:  # pragma: no cover - media lands separately
        ctx = av.CodecContext.create("png", "w")
        ctx.width, ctx.height, ctx.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
        packets = [*ctx.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")), *ctx.encode(None)]
        png = b"".join(bytes(p) for p in packets)
    else:
        png = encode_png(rgb)
    return "data:image/png;base64," + base64.b64encode(png).decode()


def gradient(width: int, height: int, corner: tuple[int, int, int]) -> np.ndarray:
    """A smooth image (survives H.264 nearly unchanged) tinted towards ``corner``."""
    x = np.linspace(0.0, 1.0, width)[None, :, None]
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    base = np.array(corner, dtype=float)[None, None, :]
    return np.clip(40 + base * 0.6 * x + (255 - base) * 0.4 * y, 0, 255).astype(np.uint8)


class CallbackSink(LoopbackServer):
    """Collects the JSON bodies POSTed to it (the vendor's callbacks)."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()

        def handle(method: str, request: BaseHTTPRequestHandler) -> None:
            self.received.put(json.loads(read_body(request)))
            answer(request, 204, b"")

        super().__init__(handle)
        self.url = f"{self.base_url}/hook"


# ------------------------------------------------------------------------------------- jobs & results


def test_job_walks_statuses_and_bills_like_the_pricing_module(emu: Emulator, api: httpx.Client) -> None:
    response = api.post("/api/v1/job/create", json={"model": T2V, "args": SLOW})
    amount = response.json()["data"]["amount"]
    assert amount == str(estimate_cost(request_model_for(T2V).model_validate(SLOW))) == "0.375"
    job_id = response.json()["data"]["job_id"]

    data, seen = wait_terminal(api, job_id)

    assert seen == [0, 1, 2]
    assert data["job_id"] == job_id
    assert data["result"]["videos"][0]["url"].startswith(f"{emu.base_url}/files/{job_id}/")
    job = emu.stats().jobs[job_id]
    assert job.status == 2 and job.model == T2V and job.args == SLOW
    assert job.done_at - job.created_at == pytest.approx(100 * TIME_SCALE)
    assert job.first_terminal_seen_at is not None and job.first_terminal_seen_at >= job.done_at
    assert job.queries == emu.stats().queries


def test_result_is_an_mp4_with_the_requested_duration_and_aspect(api: httpx.Client) -> None:
    response = httpx.get(result_url(api), timeout=30)

    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    frames, duration = decode(response.content)
    assert len(frames) == 5 * 24
    assert duration == pytest.approx(5.0, abs=0.05)
    height, width = frames[0].shape[:2]
    assert width / height == pytest.approx(9 / 16, rel=0.03)


def test_image_to_video_frame_starts_and_ends_on_the_given_images(api: httpx.Client) -> None:
    first, last = gradient(320, 180, (255, 40, 0)), gradient(320, 180, (0, 90, 255))
    args = {"prompt": "the kite rises", "action": "frame", "images": [png_data_uri(first), png_data_uri(last)]}

    frames, _ = decode(httpx.get(result_url(api, args, I2V), timeout=30).content)

    assert len(frames) == 5 * 24
    assert frames[0].shape == first.shape
    assert np.abs(frames[0].astype(int) - first).mean() < 3
    assert np.abs(frames[-1].astype(int) - last).mean() < 3


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference on 0-255 of two same-size RGB images."""
    assert a.shape == b.shape
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def frame_clip(api: httpx.Client, images: list[np.ndarray], duration: str = "5") -> list[np.ndarray]:
    """The decoded frames of an o1 image-to-video ``frame`` clip made over HTTP from ``images``."""
    images_refs = [png_data_uri(image) for image in images]
    args: dict[str, Any] = {"prompt": "the kite rises", "action": "frame", "duration": duration, "images": images_refs}
    frames, _ = decode(httpx.get(result_url(api, args, I2V), timeout=30).content)
    return frames


def test_two_image_frame_clip_cross_fades_from_the_first_image_to_the_second(api: httpx.Client) -> None:
    first, last = gradient(320, 180, (255, 40, 0)), gradient(320, 180, (20, 160, 255))

    frames = frame_clip(api, [first, last])

    assert len(frames) == 5 * 24 and frames[0].shape == first.shape
    assert mad(first, last) > 30, "the two images differ a lot"
    assert mad(frames[0], first) < 3
    assert mad(frames[-1], last) < 3
    middle = frames[len(frames) // 2]
    halfway = ((first.astype(int) + last.astype(int)) // 2).astype(np.uint8)
    assert mad(middle, halfway) < 2, "the middle frame is half one image, half the other"
    assert mad(middle, first) > 10 and mad(middle, last) > 10
    # The fade is monotonic: every frame is at least as far from the first image as the one before it.
    distances = [mad(frame, first) for frame in frames[:: len(frames) // 8]]
    assert distances == sorted(distances)


def test_two_image_frame_clip_takes_the_first_images_shape(api: httpx.Client) -> None:
    first, last = gradient(180, 320, (255, 200, 0)), gradient(240, 240, (0, 60, 200))  # 9:16, then 1:1

    frames = frame_clip(api, [first, last], duration="3")

    assert len(frames) == 3 * 24
    assert frames[0].shape == (320, 180, 3) == frames[-1].shape
    assert mad(frames[0], first) < 3
    stretched = av.VideoFrame.from_ndarray(last, format="rgb24").reformat(width=180, height=320).to_ndarray()
    assert mad(frames[-1], stretched) < 3
    assert mad(first, stretched) > 30


def test_one_image_frame_clip_starts_on_the_image_and_moves_away(api: httpx.Client) -> None:
    image = gradient(320, 180, (90, 255, 60))

    frames = frame_clip(api, [image])

    assert len(frames) == 5 * 24 and frames[0].shape == image.shape
    assert mad(frames[0], image) < 3
    assert mad(frames[-1], image) > 5


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        (["{base}/missing.png"], ["images[0]", "/missing.png", "HTTP 404"]),
        (["data:image/png;base64,aGVsbG8gd29ybGQ="], ["images[0]", "not a PNG"]),
        (["{png}", "http://127.0.0.1:9/unreachable.png"], ["images[1]", "unreachable.png"]),
    ],
)
def test_image_fetch_failure_fails_the_job_naming_the_image(
    emu: Emulator, api: httpx.Client, images: list[str], expected: list[str]
) -> None:
    png = png_data_uri(gradient(64, 64, (10, 200, 10)))
    refs = [ref.format(base=emu.base_url, png=png) for ref in images]
    args = {"prompt": "p", "action": "refer", "duration": "5", "images": refs}

    data, _ = wait_terminal(api, create(api, args, I2V))

    assert data["status"] == 3
    for text in expected:
        assert text in data["error"]


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        ({"frontal_image_url": "{base}/hero.png"}, ["elements[0].frontal_image_url", "/hero.png", "HTTP 404"]),
        (
            {"frontal_image_url": "{png}", "reference_image_urls": ["{png}", "data:image/png;base64,aGVsbG8="]},
            ["elements[0].reference_image_urls[1]", "not a PNG"],
        ),
    ],
)
def test_element_images_are_fetched_like_the_frames(
    emu: Emulator, api: httpx.Client, element: dict[str, Any], expected: list[str]
) -> None:
    png = png_data_uri(gradient(64, 64, (10, 200, 10)))

    def filled(value: Any) -> Any:
        return [filled(v) for v in value] if isinstance(value, list) else value.format(base=emu.base_url, png=png)

    args = {
        "prompt": "[@element1] waves",
        "action": "frame",
        "images": [png, png],
        "elements": [{key: filled(value) for key, value in element.items()}],
    }
    data, _ = wait_terminal(api, create(api, args, I2V))

    assert data["status"] == 3
    for text in expected:
        assert text in data["error"]
    # with readable element images the same clip succeeds, and renders from the frames alone
    args["elements"] = [{"frontal_image_url": png, "reference_image_urls": [png]}]
    data, _ = wait_terminal(api, create(api, args, I2V))
    assert data["status"] == 2


def test_job_time_table_scaled_and_jittered_deterministically(workdir: Path) -> None:
    assert base_job_seconds(T2V, mode="pro", video_seconds=5, has_audio=False) == 60 + 12 * 5
    assert base_job_seconds(O3, mode="std", video_seconds=10, has_audio=True) == pytest.approx((45 + 90) * 1.2)
    assert set(JOB_TIME_TABLE) == set(MODEL_IDS)

    def durations(**options: Any) -> list[float]:
        with Emulator(time_scale=0.001, workdir=workdir, **options) as emu, httpx.Client(headers=AUTH) as client:
            for args in ({"prompt": "a", "duration": "5"}, {"prompt": "b", "duration": "10", "mode": "std"}):
                client.post(f"{emu.base_url}/api/v1/job/create", json={"model": T2V, "args": args})
            return [job.done_at - job.created_at for job in emu.stats().jobs.values()]

    assert durations(timing_jitter=0) == pytest.approx([0.120, 0.120])
    jittered = durations(seed=5)
    assert jittered == pytest.approx(durations(seed=5))
    assert jittered != pytest.approx([0.120, 0.120])
    assert all(0.120 / 3 < seconds < 0.120 * 3 for seconds in jittered)


def test_fail_rate_fails_jobs(workdir: Path) -> None:
    with Emulator(time_scale=TIME_SCALE, fail_rate=1.0, job_time=job_time, workdir=workdir) as emu:
        with httpx.Client(base_url=emu.base_url, headers=AUTH) as client:
            data, _ = wait_terminal(client, create(client))
    assert data["status"] == 3
    assert data["error"] == RANDOM_FAILURE_MESSAGE
    assert data["result"] is None


def test_account_concurrency_refuses_creates_while_the_account_is_full(workdir: Path) -> None:
    """Kling's rule: a job holds a slot from submission until it ends; queries hold none; a create over the
    limit is refused (HTTP 429, code 1303) and makes no job. Off unless asked for."""
    with Emulator(time_scale=TIME_SCALE, job_time=job_time, workdir=workdir, account_concurrency=2) as emu:
        with httpx.Client(base_url=emu.base_url, headers=AUTH) as client:
            running = [create(client, SLOW), create(client, SLOW)]
            for _ in range(3):  # queries of the running jobs take no slot and free none
                assert query(client, running[0])["status"] in (0, 1)
            refused = client.post("/api/v1/job/create", json={"model": T2V, "args": SLOW})
            assert refused.status_code == 429
            assert refused.json() == {"code": 1303, "message": "parallel task over resource pack limit"}
            stats = emu.stats()
            assert (stats.create_requests, stats.creates, stats.account_refusals, stats.in_flight) == (3, 2, 1, 2)
            wait_terminal(client, running[0])  # a job that ended gives its slot back
            create(client, SLOW)
            emu.set_account_concurrency(None)  # off again: any number runs
            for _ in range(3):
                create(client, FAST)
            stats = emu.stats()
    assert (stats.creates, stats.account_refusals) == (6, 1)
    assert stats.max_in_flight >= 4  # the last SLOW job and three FAST ones ran at once, over the old limit
    with pytest.raises(ValueError, match="account_concurrency"):
        Emulator(account_concurrency=0)


def test_account_concurrency_is_off_by_default(emu: Emulator, api: httpx.Client) -> None:
    for _ in range(6):
        create(api, SLOW)
    stats = emu.stats()
    assert (stats.creates, stats.account_refusals, stats.in_flight) == (6, 0, 6)


# ---------------------------------------------------------------------------------- errors & validation


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer wrong-key", f"Basic {API_KEY}"])
def test_bad_credentials_are_rejected_with_401(emu: Emulator, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path, body in (
        ("POST", "/api/v1/job/create", {"model": T2V, "args": FAST}),
        ("GET", "/api/v1/job/query?id=x", None),
    ):
        response = httpx.request(method, emu.base_url + path, headers=headers, json=body)
        assert response.status_code == 401
        assert response.json()["code"] == 401
    assert emu.stats().creates == 0


def test_any_bearer_key_is_accepted_without_api_key(workdir: Path) -> None:
    with Emulator(time_scale=TIME_SCALE, job_time=job_time, workdir=workdir) as emu:
        with httpx.Client(base_url=emu.base_url, headers={"Authorization": "Bearer anything"}) as client:
            create(client)
            assert client.post("/api/v1/job/create", headers={"Authorization": ""}, json={}).status_code == 401


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"model": T2V, "args": {**FAST, "duration": "7"}}, "duration: Input should be '5' or '10'"),
        ({"model": T2V, "args": {"duration": "5"}}, "prompt"),
        ({"model": T2V, "args": {**FAST, "aspect_ratio": "4:3"}}, "aspect_ratio"),
        ({"model": "kwaivgi/kling-9/text-to-video", "args": FAST}, "unknown model"),
        ({"model": "kling-o1", "args": FAST}, "unknown model"),  # short names are ours, not the vendor's
        ({"model": T2V, "args": "not an object"}, "args"),
        ({"args": FAST}, "model"),
    ],
)
def test_invalid_requests_are_400_and_create_nothing(
    emu: Emulator, api: httpx.Client, payload: dict[str, Any], fragment: str
) -> None:
    response = api.post("/api/v1/job/create", json=payload)

    assert response.status_code == 400
    assert response.json()["code"] == 400
    assert fragment in response.json()["message"]
    stats = emu.stats()
    assert (stats.create_requests, stats.creates, stats.jobs) == (1, 0, {})


def test_invalid_args_message_is_vendor_style(api: httpx.Client) -> None:
    response = api.post("/api/v1/job/create", json={"model": T2V, "args": {**FAST, "duration": "7"}})
    assert response.json()["message"] == "invalid args: duration: Input should be '5' or '10'"


def test_bad_json_body_is_400(api: httpx.Client) -> None:
    response = api.post("/api/v1/job/create", content=b'{"model": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "invalid JSON" in response.json()["message"]


def test_unknown_job_is_404_and_missing_id_400(api: httpx.Client) -> None:
    response = api.get("/api/v1/job/query", params={"id": "no-such-job"})
    assert (response.status_code, response.json()) == (404, {"code": 404, "message": "job not found"})
    assert api.get("/api/v1/job/query").status_code == 400
    assert api.get("/api/v1/nope").status_code == 404
    assert api.get("/api/v1/job/create").status_code == 405


# ------------------------------------------------------------------------------------------- faults


def test_rate_limit_fault(emu: Emulator, api: httpx.Client) -> None:
    emu.inject("rate_limit", endpoint="create", times=2, retry_after=3)
    for _ in range(2):
        response = api.post("/api/v1/job/create", json={"model": T2V, "args": FAST})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert response.json() == {"code": 429, "message": "too many requests"}
    create(api)
    stats = emu.stats()
    assert (stats.create_requests, stats.creates, stats.faults_fired) == (3, 1, {"rate_limit": 2})


@pytest.mark.parametrize("status", [None, 500, 503, 504])
def test_server_error_fault_is_an_html_page(emu: Emulator, api: httpx.Client, status: int | None) -> None:
    emu.inject("server_error", endpoint="query", **({} if status is None else {"status": status}))
    response = api.get("/api/v1/job/query", params={"id": "whatever"})
    assert response.status_code == (status or 502)
    assert response.headers["content-type"].startswith("text/html")
    assert str(status or 502) in response.text and "<html>" in response.text


def test_reset_fault_aborts_without_creating_a_job(emu: Emulator, api: httpx.Client) -> None:
    emu.inject("reset", endpoint="create")
    with pytest.raises(httpx.TransportError):
        api.post("/api/v1/job/create", json={"model": T2V, "args": FAST})
    stats = emu.stats()
    assert (stats.requests, stats.create_requests, stats.creates, stats.responses) == (1, 1, 0, {"reset": 1})
    create(api)  # the client recovers on a new connection


def test_drop_after_create_creates_and_bills_the_job(emu: Emulator, api: httpx.Client) -> None:
    emu.inject("drop_after_create")
    with pytest.raises(httpx.TransportError):
        api.post("/api/v1/job/create", json={"model": T2V, "args": FAST})
    stats = emu.stats()
    assert (stats.create_requests, stats.creates, stats.billed) == (1, 1, "0.5")
    (job_id,) = stats.jobs
    data, _ = wait_terminal(api, job_id)
    assert data["status"] == 2


def test_slow_fault_delays_the_answer(emu: Emulator, api: httpx.Client) -> None:
    emu.inject("slow", endpoint="create", delay=0.3)
    started = time.monotonic()
    create(api)
    assert time.monotonic() - started >= 0.3


def test_slow_fault_outlasting_the_client_timeout(emu: Emulator, api: httpx.Client) -> None:
    emu.inject("slow", endpoint="query", delay=0.5)
    with pytest.raises(httpx.ReadTimeout):
        api.get("/api/v1/job/query", params={"id": "x"}, timeout=0.1)
    time.sleep(0.5)
    assert api.get("/api/v1/job/query", params={"id": "x"}).status_code == 404


def test_malformed_json_fault(emu: Emulator, api: httpx.Client) -> None:
    emu.inject("malformed_json", endpoint="create")
    response = api.post("/api/v1/job/create", json={"model": T2V, "args": FAST})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert emu.stats().creates == 0


def test_error_code_fault(emu: Emulator, api: httpx.Client) -> None:
    emu.inject("error_code", code=1003, message="insufficient balance")
    response = api.post("/api/v1/job/create", json={"model": T2V, "args": FAST})
    assert (response.status_code, response.json()) == (200, {"code": 1003, "message": "insufficient balance"})
    emu.inject("error_code", endpoint="query")
    assert api.get("/api/v1/job/query", params={"id": "x"}).json() == {"code": 500, "message": "internal error"}


def test_unknown_status_fault(emu: Emulator, api: httpx.Client) -> None:
    job_id = create(api)
    emu.inject("unknown_status", status=9)
    assert query(api, job_id)["status"] == 9
    assert query(api, job_id)["status"] in (0, 1, 2)
    emu.inject("unknown_status")
    assert query(api, job_id)["status"] == 7
    assert emu.stats().jobs[job_id].queries == 3


def test_truncate_fault_cuts_the_download_short(emu: Emulator, api: httpx.Client) -> None:
    url = result_url(api)
    size = int(httpx.head(url).headers["content-length"])
    emu.inject("truncate")
    received = 0
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url, timeout=30) as response:
        assert int(response.headers["content-length"]) == size
        for chunk in response.iter_bytes():
            received += len(chunk)
    assert received == size // 2
    assert len(httpx.get(url, timeout=30).content) == size


def test_job_failure_fault_fails_the_next_created_jobs(emu: Emulator, api: httpx.Client) -> None:
    emu.inject("job_failure", times=2)
    failed = [wait_terminal(api, create(api))[0] for _ in range(2)]
    assert [d["status"] for d in failed] == [3, 3]
    assert failed[0]["error"] == "video generation failed: content moderation"
    emu.inject("job_failure", message="quota: gpu unavailable")
    assert wait_terminal(api, create(api))[0]["error"] == "quota: gpu unavailable"
    assert wait_terminal(api, create(api))[0]["status"] == 2


def test_fault_counts_probability_and_endpoints(emu: Emulator, api: httpx.Client) -> None:
    emu.inject("server_error", endpoint="query", times=None, probability=1.0)
    job_id = create(api)  # create is not targeted
    assert [api.get("/api/v1/job/query", params={"id": job_id}).status_code for _ in range(3)] == [502] * 3
    emu.clear_faults()
    assert query(api, job_id)["job_id"] == job_id
    emu.inject("rate_limit", times=None, probability=0.0)
    assert query(api, job_id)["job_id"] == job_id
    emu.clear_faults()
    emu.inject("rate_limit", times=None, probability=0.5)
    codes = [api.get("/api/v1/job/query", params={"id": job_id}).status_code for _ in range(60)]
    assert 10 < codes.count(429) < 50 and codes.count(200) == 60 - codes.count(429)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("no_such_fault", {}),
        ("truncate", {"endpoint": "create"}),
        ("unknown_status", {"endpoint": "download"}),
        ("rate_limit", {"retry": 3}),
        ("server_error", {"status": 200}),
        ("slow", {"times": 0}),
        ("reset", {"probability": 2}),
    ],
)
def test_invalid_faults_are_refused(emu: Emulator, kind: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        emu.inject(kind, **options)


# --------------------------------------------------------------------------------------- result files


def test_range_head_and_signature_checks(emu: Emulator, api: httpx.Client) -> None:
    url = result_url(api)
    full = httpx.get(url, timeout=30).content
    size = len(full)

    tail = httpx.get(url, headers={"Range": "bytes=100-"})
    assert tail.status_code == 206
    assert tail.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
    assert tail.content == full[100:]
    assert httpx.get(url, headers={"Range": "bytes=0-9"}).content == full[:10]
    assert httpx.get(url, headers={"Range": "bytes=-16"}).content == full[-16:]
    unsatisfiable = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert (unsatisfiable.status_code, unsatisfiable.headers["content-range"]) == (416, f"bytes */{size}")
    assert httpx.get(url, headers={"Range": "bytes=5-", "If-Range": '"stale"'}).status_code == 200

    head = httpx.head(url)
    assert (head.status_code, head.headers["content-length"], head.content) == (200, str(size), b"")
    assert head.headers["accept-ranges"] == "bytes"

    bad_token = re.sub(r"/[0-9a-f]{32}\.mp4", "/" + "0" * 32 + ".mp4", url)
    assert httpx.get(bad_token).status_code == 403
    assert httpx.get(url.replace("expires=", "expires=1")).status_code == 403
    assert emu.stats().downloads == 8


async def test_concurrent_first_downloads_render_once(emu: Emulator, api: httpx.Client) -> None:
    url = result_url(api, {"prompt": f"render once {time.time()}", "duration": 3}, O3)
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(*(client.get(url) for _ in range(5)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert (emu.stats().renders, emu.stats().downloads) == (1, 5)


def test_result_urls_expire_with_an_s3_style_error(workdir: Path) -> None:
    ttl = 50  # 0.5 s at TIME_SCALE
    with Emulator(time_scale=TIME_SCALE, result_ttl=ttl, job_time=job_time, workdir=workdir) as emu:
        with httpx.Client(base_url=emu.base_url, headers=AUTH) as client:
            url = result_url(client)
            assert httpx.get(url, timeout=30).status_code == 200
            expires = int(url.rsplit("expires=", 1)[1])
            assert math.isclose(expires, time.time() + ttl * TIME_SCALE, abs_tol=2)
            time.sleep(ttl * TIME_SCALE)
            response = httpx.get(url)
            assert response.status_code == 403
            assert "<Code>AccessDenied</Code><Message>Request has expired</Message>" in response.text
            job_id = next(iter(emu.stats().jobs))
            assert query(client, job_id)["result"]["videos"][0]["url"] == url


def test_padding_is_a_valid_free_box_streamed_after_the_mp4(workdir: Path) -> None:
    padding = 3 * 1024 * 1024 + 5
    with (
        Emulator(time_scale=TIME_SCALE, result_padding_bytes=padding, job_time=job_time, workdir=workdir) as emu,
        httpx.Client(base_url=emu.base_url, headers=AUTH) as client,
    ):
        url = result_url(client)
        content = httpx.get(url, timeout=30).content
        tail = httpx.get(url, headers={"Range": f"bytes=-{padding + 10}"}).content
    movie = len(content) - padding
    assert content[movie : movie + 8] == free_box_header(padding)
    assert not any(content[movie + 8 :])
    assert tail == content[-(padding + 10) :]
    frames, _ = decode(content)
    assert len(frames) == 5 * 24


# ---------------------------------------------------------------------------------- callbacks & stats


def test_callback_posted_once_on_terminal_status(emu: Emulator, api: httpx.Client) -> None:
    sink = CallbackSink()
    try:
        succeeded = create(api, callback_url=sink.url)
        emu.inject("job_failure")
        failed = create(api, callback_url=sink.url)
        got = [sink.received.get(timeout=5), sink.received.get(timeout=5)]
        time.sleep(0.3)
        assert sink.received.empty()
    finally:
        sink.close()
    assert sorted(got, key=lambda p: p["status"]) == [
        {"job_id": succeeded, "status": 2},
        {"job_id": failed, "status": 3},
    ]
    stats = emu.stats()
    assert (stats.callbacks_sent, stats.jobs[succeeded].callback_url) == (2, sink.url)


def test_stats_count_requests_models_and_peak_in_flight(emu: Emulator, api: httpx.Client) -> None:
    jobs = [create(api, SLOW) for _ in range(4)]
    jobs.append(create(api, {"prompt": "o3", "duration": 3, "mode": "std"}, O3))
    assert emu.stats().in_flight == 5
    for job_id in jobs:
        wait_terminal(api, job_id)
    create(api)  # after the others finished: the peak stays at 5
    stats = emu.stats()
    assert stats.max_in_flight == 5
    assert stats.by_model == {T2V: 5, O3: 1}
    assert (stats.creates, stats.create_requests) == (6, 6)
    assert stats.requests == 6 + stats.queries
    assert stats.queries == sum(job.queries for job in stats.jobs.values())
    assert all(job.first_terminal_seen_at is not None for job_id, job in stats.jobs.items() if job_id in jobs)


@pytest.mark.slow  # subprocesses / seconds of work: outside the fast selection
async def test_hundreds_of_concurrent_jobs(workdir: Path) -> None:
    clients, per_client = 10, 30  # several small pools: one httpx pool of 300 connections is CPU-bound itself

    async def one_client(base_url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
            created = await asyncio.gather(
                *(client.post("/api/v1/job/create", json={"model": T2V, "args": SLOW}) for _ in range(per_client))
            )
            ids = [r.json()["data"]["job_id"] for r in created]
            polled = await asyncio.gather(*(client.get("/api/v1/job/query", params={"id": i}) for i in ids))
            return [r.json()["data"]["status"] for r in polled]

    with Emulator(job_time=lambda model, args: 60.0, workdir=workdir) as emu:
        statuses = await asyncio.gather(*(one_client(emu.base_url) for _ in range(clients)))
        stats = emu.stats()
    count = clients * per_client
    assert {status for batch in statuses for status in batch} == {0}
    assert (stats.creates, stats.queries, stats.max_in_flight, stats.in_flight, len(stats.jobs)) == (count,) * 5
    assert stats.connections >= 100


def test_keep_alive_and_connection_close(emu: Emulator, api: httpx.Client) -> None:
    for _ in range(3):
        api.get("/api/v1/job/query", params={"id": "x"})
    assert emu.stats().connections == 1
    response = api.get("/api/v1/job/query", params={"id": "x"}, headers={"Connection": "close"})
    assert response.headers["connection"] == "close"
    api.get("/api/v1/job/query", params={"id": "x"})
    assert emu.stats().connections == 2


def raw_exchange(emu: Emulator, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_raw_http_chunked_body_and_malformed_request(emu: Emulator) -> None:
    body = json.dumps({"model": T2V, "args": FAST}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    answer = raw_exchange(
        emu,
        b"POST /api/v1/job/create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked,
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b'"job_id"' in answer
    assert raw_exchange(emu, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")


# ------------------------------------------------------------------------------------ control plane


def test_control_endpoints(emu: Emulator, api: httpx.Client) -> None:
    control = httpx.Client(base_url=f"{emu.base_url}/_emulator")  # no credentials needed
    fault = {"fault": "rate_limit", "endpoint": "create", "times": 1, "params": {"retry_after": 2}}
    assert control.post("/faults", json=fault).status_code == 200
    assert control.post("/faults", json={"fault": "bogus"}).status_code == 400
    assert api.post("/api/v1/job/create", json={"model": T2V, "args": FAST}).headers["retry-after"] == "2"
    job_id = create(api)

    stats = control.get("/stats").json()
    assert (stats["requests"], stats["creates"], stats["faults_fired"]) == (2, 1, {"rate_limit": 1})
    assert stats["jobs"][job_id]["model"] == T2V

    control.post("/faults", json={"fault": "server_error", "times": None, "probability": 1.0})
    assert api.get("/api/v1/job/query", params={"id": job_id}).status_code == 502
    assert control.delete("/faults").status_code == 200
    assert query(api, job_id)["job_id"] == job_id

    assert control.post("/reset").status_code == 200
    stats = control.get("/stats").json()
    assert (stats["requests"], stats["jobs"], stats["pending_faults"]) == (0, {}, [])
    assert control.get("/health").json()["ok"] is True
    control.close()


@pytest.mark.slow  # subprocesses / seconds of work: outside the fast selection
def test_run_prints_one_ready_line_and_stops_on_sigterm() -> None:
    code = "from kling_prefect.emulator import run; run('127.0.0.1', 0, time_scale=0.01)"
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            match = re.fullmatch(r"ShortAPI emulator listening on (http://127\.0\.0\.1:\d+)", line)
            assert match, line
            assert httpx.get(f"{match.group(1)}/_emulator/health").json()["ok"] is True
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert process.stdout.read() == ""
        finally:
            process.kill()
