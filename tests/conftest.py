"""Shared fixtures: an isolated Prefect home, one ShortAPI emulator per session, one Prefect server per session.

Environment first: Prefect reads its settings at import, and each test session gets its own PREFECT_HOME so
cached results never leak between runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="kling-prefect-tests-"))
os.environ.update(
    {
        "PREFECT_HOME": str(_SESSION_HOME / "prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(_SESSION_HOME / "prefect" / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        # Waits must not learn job durations from earlier tests (or runs) through a file; tests of that set paths.
        "KLING_PREFECT_DURATIONS": "off",
        # The emulator runs jobs ~200x faster than real time, so the default cap (10 queries a second) would be
        # the bottleneck of every test; tests of the cap set their own.
        "SHORTAPI_MAX_QUERIES_PER_SECOND": "2000",
    }
)
os.environ.pop("SHORTAPI_KEY", None)
os.environ.pop("SHORTAPI_BASE_URL", None)
# pytest-xdist's test processes get COLUMNS=80 and LINES=24, which every console script run here would take for
# its terminal's size: the pseudo terminals the tests open say their size themselves.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

import pytest  # noqa: E402

from kling_prefect.emulator import Emulator  # noqa: E402

TEST_KEY = "sk-test-0123456789"


@pytest.fixture(scope="session")
def emulator_server():
    """One emulator for the session; jobs take ~0.2-0.5 s (time_scale 0.005)."""
    with Emulator(time_scale=0.005, seed=7, timing_jitter=0.1) as emu:
        yield emu


@pytest.fixture
def emulator(emulator_server):
    """The session emulator with clean counters, no faults and no account concurrency rule."""
    emulator_server.clear_faults()
    emulator_server.set_account_concurrency(None)
    emulator_server.reset_stats()
    yield emulator_server
    emulator_server.clear_faults()
    emulator_server.set_account_concurrency(None)


@pytest.fixture
def fast_client_options():
    """Client settings for tests: small poll and retry intervals (the emulator runs ~200x fast)."""
    from kling_prefect.client import PollPolicy, RetryPolicy

    return {
        "api_key": TEST_KEY,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "retry": RetryPolicy(max_attempts=6, base_delay=0.02, max_delay=0.2, max_retry_after=1.0),
        "poll": PollPolicy.scaled(0.02, 0.2),
    }


@pytest.fixture
async def client(emulator, fast_client_options):
    from kling_prefect.client import ShortAPIClient

    async with ShortAPIClient(base_url=emulator.base_url, **fast_client_options) as c:
        yield c


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API server (temporary SQLite database) for the whole session: started once."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def vendor_env(emulator, monkeypatch):
    """Flows read SHORTAPI_KEY / SHORTAPI_BASE_URL when no credentials block is named."""
    monkeypatch.setenv("SHORTAPI_KEY", TEST_KEY)
    monkeypatch.setenv("SHORTAPI_BASE_URL", emulator.base_url)
    return emulator


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server on loopback: a real HTTP S3 endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket_block(prefect_server, moto_s3, monkeypatch):
    """A fresh bucket and saved prefect-aws blocks pointing at it; yields (block name, endpoint, bucket)."""
    import uuid

    import boto3
    from prefect_aws import AwsClientParameters, AwsCredentials
    from prefect_aws.s3 import S3Bucket

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"videos-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1").create_bucket(Bucket=bucket)
    credentials = AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=moto_s3),
    )
    S3Bucket(bucket_name=bucket, credentials=credentials).save(bucket, overwrite=True)
    return bucket, moto_s3, bucket


#: Modules whose every test starts servers or subprocesses.
END_TO_END_MODULES = {
    "test_cli", "test_first_run", "test_deployments", "test_topology", "test_browser", "test_reliability",
}  # fmt: skip


#: Modules of minutes, longest first.
LONGEST_FIRST = {"test_first_run": 0, "test_topology": 1, "test_deployments": 2, "test_browser": 3, "test_cli": 4}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the end-to-end tests ``slow`` (a Prefect server, subprocesses, a browser), so that
    ``./dev test -m "not slow"`` runs the fast ones alone; ``./dev test`` runs everything."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in END_TO_END_MODULES or "prefect_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    # The longest modules first (a stable sort: the rest keep their order), so that the two test processes
    # (pytest-xdist hands out whole modules in this order) do not end with one of them alone on a long module.
    items.sort(key=lambda item: LONGEST_FIRST.get(item.module.__name__.rsplit(".", 1)[-1] if item.module else "", 99))
