"""The API key never leaks: flows run with a canary key (from a saved block in-process, and from the environment
through the real console script), with a failing job, then everything Prefect stored, every output and all
process output is searched for it. Vendors echoing the key back are redacted too. The lease URL is a secret
too (a Redis URL may carry a password): the same runs take their step leases from a real ``redis-server`` whose
password is a second canary, searched for the same way."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter
from pydantic import SecretStr

from kling_prefect import (
    AuthenticationFailed,
    JobFailed,
    KlingO3TextToVideo,
    ShortAPIClient,
    ShortAPICredentials,
    ShortAPIError,
    SyncShortAPIClient,
)
from kling_prefect.client import RetryPolicy
from kling_prefect.emulator import Emulator
from kling_prefect.flows import batch

from .deploy_helpers import redis_server
from .helpers import LoopbackServer, answer, read_body

CANARY = f"sk-canary-{secrets.token_hex(12)}"
LEASE_CANARY = f"lease-canary-{secrets.token_hex(12)}"
CLI = str(Path(sys.executable).with_name("kling-prefect"))
FAST = {"poll_interval": 0.05, "timeout_seconds": 120}


@pytest.fixture(scope="module")
def canary_emulator() -> Iterator[Emulator]:
    """An emulator that accepts only the canary key: the flows really send it."""
    with Emulator(time_scale=0.005, seed=11, api_key=CANARY) as emu:
        yield emu


@pytest.fixture(scope="module")
def canary_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """A real redis-server whose password is the lease canary; yields its URL (password inside), or ``None``
    when redis-server is not installed (the key's checks still run; the lease URL's are then not exercised)."""
    if shutil.which("redis-server") is None:
        yield None
        return
    with redis_server(tmp_path_factory.mktemp("redis"), password=LEASE_CANARY) as url:
        yield url


def leases_taken(url: str) -> int:
    """How many step leases the Redis server granted (``SET NX`` calls): the runs really used the URL."""
    import redis

    with redis.Redis.from_url(url) as client:
        return int(client.info("commandstats").get("cmdstat_set", {}).get("calls", 0))


def views_of(data: bytes) -> Iterator[bytes]:
    """The bytes, and every base64 string inside them when they are JSON (Prefect's result records keep the
    pickled result base64-encoded: a raw search alone would miss a key inside it)."""
    yield data
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and len(item) >= 16:
            try:
                yield base64.b64decode("".join(item.split()), validate=True)
            except ValueError:
                pass


def files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(needle in view for view in views_of(data)):
                found.append(path)
    return found


def sqlite_directory() -> Path:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = str(PREFECT_API_DATABASE_CONNECTION_URL.value())
    assert url.startswith("sqlite"), url
    return Path(url.split("///", 1)[1]).parent


async def everything_the_api_holds() -> str:
    """Artifacts, logs (all pages), flow runs with parameters, task runs and block documents, as JSON text."""
    parts: list[str] = []
    async with get_client() as client:
        parts += [a.model_dump_json() for a in await client.read_artifacts()]
        offset = 0
        while True:
            page = await client.read_logs(log_filter=LogFilter(), limit=200, offset=offset)
            parts += [log.model_dump_json() for log in page]
            if len(page) < 200:
                break
            offset += 200
        parts += [run.model_dump_json() for run in await client.read_flow_runs()]
        parts += [run.model_dump_json() for run in await client.read_task_runs()]
        parts += [doc.model_dump_json() for doc in await client.read_block_documents(include_secrets=False)]
    text = "\n".join(parts)
    assert "generation failed: moderation" in text  # the search really covers the failed runs' records
    return text


async def test_canary_key_appears_nowhere_prefect_or_the_outputs_keep(
    prefect_server, canary_emulator, canary_redis, tmp_path, capfd
) -> None:
    from prefect.settings import PREFECT_API_URL

    emu = canary_emulator
    emu.reset_stats()
    lease_url = canary_redis
    # 1. The console script with the key in its environment, and DEBUG logs of Prefect, httpx and this package.
    emu.inject("job_failure", times=1, message="generation failed: moderation")
    jobs = tmp_path / "prompts.jsonl"
    jobs.write_text('{"prompt": "canary one", "duration": 3, "mode": "std"}\n{"prompt": "canary two", "duration": 3}\n')
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOGGING_LEVEL": "DEBUG",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "httpx,httpcore,kling_prefect",
        "SHORTAPI_KEY": CANARY,
        "SHORTAPI_BASE_URL": emu.base_url,
        **({"SHORTAPI_LEASE_URL": lease_url} if lease_url else {}),
    }
    command = [CLI, "batch", str(jobs), "--run-key", "canary-cli", "--out", str(tmp_path / "out-cli"), "--json"]
    cli = await anyio.run_process([*command, "--poll-interval", "0.05", "--no-progress"], env=env, check=False)
    assert cli.returncode == 1, cli.stderr[-3000:]  # one item failed
    assert json.loads(cli.stdout)["stored"] == 1

    # 2. In this process, with the key in a saved block, and a failing job.
    await ShortAPICredentials(api_key=CANARY, base_url=emu.base_url, lease_url=lease_url).asave(
        "canary-block", overwrite=True
    )
    emu.inject("job_failure", times=1, message="generation failed: moderation")
    result = await batch(
        prompts=[{"prompt": "canary three", "duration": 3, "mode": "std"}, "canary four"],
        credentials_block="canary-block",
        run_key="canary-block",
        output_dir=str(tmp_path / "out-block"),
        fail_on_error=False,
        **FAST,
    )
    assert sorted(r.status for r in result.records) == ["failed", "stored"]
    assert emu.stats().creates == 4 and emu.stats().responses.get("401", 0) == 0  # the key was used, and accepted
    assert emu.stats().downloads == 2 and emu.stats().downloads_with_authorization == 0  # never to the file host
    in_process = capfd.readouterr()

    if lease_url:
        assert leases_taken(lease_url) >= 4  # both runs took their step leases with the password
    canaries = [CANARY] + ([LEASE_CANARY] if lease_url else [])
    assert b"generation failed: moderation" in cli.stdout  # the output searched does hold the failure
    held = await everything_the_api_holds()
    storage = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
    for canary in canaries:
        needle = canary.encode()
        assert needle not in cli.stdout and needle not in cli.stderr
        assert canary not in in_process.out and canary not in in_process.err
        at = held.find(canary)
        assert at < 0, held[max(0, at - 1500) : at + 200]
        assert files_containing(sqlite_directory(), needle) == []  # the block is stored encrypted
        assert files_containing(Path(os.environ["PREFECT_HOME"]), needle) == []  # includes result storage
        assert files_containing(storage, needle) == []
        assert files_containing(tmp_path, needle) == []
    assert files_containing(sqlite_directory(), b"canary-block")  # ... though the search does read the database
    assert files_containing(storage, result.records[0].job_id.encode())  # ... where the cached submissions are
    assert len(list((tmp_path / "out-cli").glob("*.mp4"))) == 1 and len(list((tmp_path / "out-block").glob("*.mp4")))

    loaded = await ShortAPICredentials.aload("canary-block")
    assert loaded.api_key.get_secret_value() == CANARY  # it is there, just never shown
    assert loaded.lease_url_value() == lease_url
    shown = [repr(loaded), str(loaded), str(loaded.model_dump()), json.dumps(loaded.model_dump(mode="json"))]
    shown += [repr(loaded.client_options()), repr(loaded.get_client()), repr(loaded.get_sync_client())]
    for failure in result.failed:
        shown.append(failure.error or "")
    assert all(canary not in text for text in shown for canary in canaries), shown


# --------------------------------------------------------------------------------------------- echoing vendors


class Echo(LoopbackServer):
    """A vendor that echoes the request's Authorization header in every error it returns."""

    def __init__(self) -> None:
        super().__init__(self._handle)

    @staticmethod
    def _handle(method: str, request: BaseHTTPRequestHandler) -> None:
        auth = request.headers.get("Authorization", "")
        path = urlsplit(request.path).path
        if method == "POST":
            read_body(request)
            answer(request, 401, json.dumps({"code": 401, "message": f"invalid key in header {auth!r}"}).encode())
        elif path == "/api/v1/job/query" and "fail" in request.path:
            data = {"job_id": "j", "status": 3, "error": f"rejected for {auth}"}
            answer(request, 200, json.dumps({"code": 0, "data": data}).encode())
        elif path == "/api/v1/job/query":
            answer(request, 502, f"<html><body>502 Bad Gateway for {auth}</body></html>".encode(), "text/html")
        else:
            answer(request, 403, f"<Error>expired; you sent {auth}</Error>".encode(), "application/xml")


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    with Echo() as server:
        yield server


def leak_free(error: ShortAPIError) -> None:
    for text in (str(error), repr(error), repr(error.raw), json.dumps(error.raw, default=str), repr(error.__dict__)):
        assert CANARY not in text, text


async def test_errors_from_a_vendor_echoing_the_key_are_redacted(echo, tmp_path) -> None:
    retry = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
    async with ShortAPIClient(CANARY, echo.base_url, read_timeout=2, retry=retry) as client:
        assert CANARY not in repr(client)
        with pytest.raises(AuthenticationFailed) as refused:
            await client.create_job(KlingO3TextToVideo(prompt="echo"))
        with pytest.raises(ShortAPIError) as bad_gateway:
            await client.get_job("job-1")
        with pytest.raises(JobFailed) as failed:
            await client.wait_for_job("job-fail", timeout=5)
        with pytest.raises(ShortAPIError) as expired:
            await client.download(echo.base_url + "/files/x.mp4", tmp_path / "x.mp4", job_id="job-1")
    assert "**********" in str(refused.value) and "**********" in str(failed.value)  # echoed, then redacted
    for error in (refused.value, bad_gateway.value, failed.value, expired.value):
        leak_free(error)
    with SyncShortAPIClient(CANARY, echo.base_url) as sync_client:
        assert CANARY not in repr(sync_client)


def test_credentials_reprs_dumps_and_errors_hide_the_key_and_the_lease_url() -> None:
    lease_url = f"redis://:{LEASE_CANARY}@127.0.0.1:6379/0"
    credentials = ShortAPICredentials(api_key=SecretStr(CANARY), lease_url=lease_url)
    from_env = ShortAPICredentials.from_env({"SHORTAPI_KEY": CANARY, "SHORTAPI_LEASE_URL": lease_url})
    assert credentials.lease_url_value() == from_env.lease_url_value() == lease_url  # kept, to be used
    texts = [repr(credentials), str(credentials), str(credentials.model_dump()), str(credentials.client_options())]
    texts.append(json.dumps(credentials.model_dump(mode="json")))
    texts += [repr(from_env), str(from_env.model_dump()), json.dumps(from_env.model_dump(mode="json"))]
    for broken in (
        {"SHORTAPI_KEY": CANARY, "SHORTAPI_READ_TIMEOUT": "soon"},
        {"SHORTAPI_KEY": CANARY, "SHORTAPI_BASE_URL": "x"},
        {"SHORTAPI_KEY": CANARY, "SHORTAPI_LEASE_URL": f"http://:{LEASE_CANARY}@127.0.0.1:6379/0"},
    ):
        with pytest.raises(ValueError) as caught:
            ShortAPICredentials.from_env(broken)
        texts.append(str(caught.value))
    with pytest.raises(ValueError) as invalid:
        ShortAPICredentials(api_key=CANARY, base_url="ftp://nowhere")
    texts.append(str(invalid.value))
    with pytest.raises(ValueError) as bad_lease:
        ShortAPICredentials(api_key=CANARY, lease_url=f"memcached://:{LEASE_CANARY}@host")
    texts.append(str(bad_lease.value))
    assert all(CANARY not in text and LEASE_CANARY not in text for text in texts), texts
