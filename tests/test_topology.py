"""The topology users grow into, for real: PostgreSQL, one Prefect server, Redis, S3, three workers sharing no disk.

A throw-away PostgreSQL server (tests/postgres.py) backs a `prefect server start`; `kling-prefect setup` creates
the shared jobs-in-flight limit and the shared query rate; `deployments/shared_batch.py` registers the batch
deployment for workers that share no disk (the installed module as entrypoint, no pull step, Prefect result
storage on S3, clips on S3, items named by content) on a process work pool. Three `prefect worker start`
processes poll that pool, each with a working folder, a PREFECT_HOME, a local storage path and a temporary folder
of its own (the process worker runs each flow run in a temporary folder: nothing a flow run writes is on another
worker's disk), a real `redis-server` for the step leases (SHORTAPI_LEASE_URL), and moto's S3 server holding the
result storage (the steps' ledgers, the cached submissions) and the clips, in a versioned bucket.

A batch is split into flow runs with overlapping items and one run key, against the ShortAPI emulator over HTTP
with the account's concurrency rule on; the first creates answer slowly, so runs start an item while another
run's create for it is out. The checks: every run completes, more than one worker ran them, and they ran at the
same time; one create per distinct item, and a run did wait on another's lease; each clip downloaded once and
stored once (one object per item, one version of each); the jobs limit held at the vendor, the account refused
nothing, the shared query rate held; and the server's state (deployment, limit, flow runs) is rows in PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import prefect.logging
import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun

from kling_prefect import media
from kling_prefect.batchfile import load_batch_items
from kling_prefect.concurrency import DEFAULT_JOBS_LIMIT
from kling_prefect.emulator import Emulator
from kling_prefect.planning import DEFAULT_MODEL
from kling_prefect.waiting import DEFAULT_QUERY_RATE_LIMIT, shared_burst
from tests.deploy_helpers import (
    KLING_PREFECT,
    PREFECT,
    REPO,
    PrefectServer,
    free_port,
    redis_server,
    run_command,
    start_worker,
    stop_worker,
    tail,
)
from tests.helpers import max_in_window
from tests.postgres import PostgresServer, PostgresUnavailable, postgres_database

TEST_KEY = "sk-test-topology"
POOL = "kling-process"
DEPLOYMENT = "kling-batch/shared-batch"
VIDEOS_BLOCK = "topology-videos"
RESULTS_BLOCK = "topology-results"
JOBS_LIMIT = 3
#: One query rate for every flow run process (kling-prefect setup --max-queries-per-second).
QUERIES_PER_SECOND = 10
WORKERS = 3
#: Emulated job time: 75 s (a 3 s kling-o3 clip takes about 72 s), times this: 1.5 s.
TIME_SCALE = 0.02
#: The first two creates answer this slowly: a run starting an item another run is creating meets its lease.
SLOW_CREATE_SECONDS = 4.0
#: A batch split into flow runs with overlapping items: two in every run (first), two more in two runs each.
SLICES = [
    ["pier", "kite", "fox", "heron"],
    ["kite", "pier", "owl", "tram"],
    ["pier", "kite", "heron", "tram"],
]
#: Generous: three flow-run processes start at once on two shared cores.
RUNS_DEADLINE_SECONDS = 150.0


@dataclass
class Topology:
    """The running pieces the tests share: PostgreSQL, the Prefect server on it, the batch deployment's id."""

    postgres: PostgresServer
    server: PrefectServer
    deployment_id: UUID


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    try:
        with postgres_database() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL for the topology tests: {exc}")


@pytest.fixture(scope="module")
def topology(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """A Prefect server on PostgreSQL with the process pool, the limits and the shared batch deployment."""
    home = tmp_path_factory.mktemp("topology-server")
    server = PrefectServer(home=home, port=free_port(), database_url=postgres.url).start()
    try:
        env = server.env()
        run_command([PREFECT, "work-pool", "create", POOL, "--type", "process"], env)
        setup = [KLING_PREFECT, "setup", "--jobs-limit", str(JOBS_LIMIT)]
        done = run_command([*setup, "--max-queries-per-second", str(QUERIES_PER_SECOND)], env)
        assert f"{DEFAULT_JOBS_LIMIT!r} created: {JOBS_LIMIT} jobs in flight" in done.stdout
        assert f"{DEFAULT_QUERY_RATE_LIMIT!r} created: {QUERIES_PER_SECOND} job queries per second" in done.stdout
        register = [sys.executable, "deployments/shared_batch.py", "--videos", VIDEOS_BLOCK]
        run_command([*register, "--results", f"s3-bucket/{RESULTS_BLOCK}"], env)
        with SyncPrefectClient(server.api_url) as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
        assert deployment.entrypoint == "kling_prefect.flows.batch" and not deployment.pull_steps
        print(
            f"\npostgres up in {postgres.startup_seconds:.1f} s; "
            f"prefect server on postgres up in {server.startup_seconds:.1f} s"
        )
        yield Topology(postgres=postgres, server=server, deployment_id=deployment.id)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with redis_server(tmp_path_factory.mktemp("redis")) as url:
            yield url
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def intervals_overlap(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def s3_client(endpoint: str) -> Any:
    import boto3

    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)


def save_s3_blocks(server: PrefectServer, endpoint: str, bucket: str) -> None:
    """The S3 blocks the deployment names, saved on the topology's server: the clips at the bucket's root (under
    ``kling/<run key>/``), the Prefect result storage under ``prefect-results/``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_aws import AwsClientParameters, AwsCredentials
    from prefect_aws.s3 import S3Bucket

    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        credentials = AwsCredentials(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
        )
        credentials.save("topology-aws", overwrite=True)
        S3Bucket(bucket_name=bucket, credentials=credentials).save(VIDEOS_BLOCK, overwrite=True)
        results = S3Bucket(bucket_name=bucket, bucket_folder="prefect-results", credentials=credentials)
        results.save(RESULTS_BLOCK, overwrite=True)


def own_disk(root: Path, name: str, base: dict[str, str]) -> tuple[dict[str, str], Path]:
    """A worker's environment and working folder, sharing nothing on disk with another worker's."""
    folder = root / name
    for sub in ("cwd", "home", "tmp"):
        (folder / sub).mkdir(parents=True)
    # Prefect's logging configuration, and the package's INFO lines (the query cap's mode) in the runs' output.
    logging_yml = Path(prefect.logging.__file__).with_name("logging.yml")
    config = yaml.safe_load(logging_yml.read_text())
    config["loggers"]["kling_prefect"] = {"level": "INFO"}
    (folder / "home" / "logging.yml").write_text(yaml.safe_dump(config))
    env = {
        **base,
        "PREFECT_HOME": str(folder / "home"),
        "PREFECT_LOCAL_STORAGE_PATH": str(folder / "home" / "storage"),
        "PREFECT_LOGGING_SETTINGS_PATH": str(folder / "home" / "logging.yml"),
        "TMPDIR": str(folder / "tmp"),  # the process worker runs each flow run in a temporary folder
    }
    return env, folder / "cwd"


def wait_for_workers(
    server: PrefectServer, names: set[str], processes: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path]
) -> None:
    """Until every named worker has registered with the pool (a worker registers on its first heartbeat)."""
    deadline = time.monotonic() + 90
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for name, process in processes.items():
            assert process.poll() is None, f"worker {name} exited with {process.returncode}:\n{tail(logs[name])}"
        with SyncPrefectClient(server.api_url) as client:
            seen = {worker.name for worker in client.read_workers_for_work_pool(POOL)}
        if names <= seen:
            return
        time.sleep(0.5)
    raise AssertionError(f"workers {sorted(names - seen)} never registered with {POOL}")


def wait_for_runs(server: PrefectServer, run_ids: list[UUID], logs: dict[str, Path]) -> list[FlowRun]:
    """Until every flow run is in a final state; the runs as read then."""
    deadline = time.monotonic() + RUNS_DEADLINE_SECONDS
    runs: list[FlowRun] = []
    while time.monotonic() < deadline:
        with SyncPrefectClient(server.api_url) as client:
            runs = [client.read_flow_run(run_id) for run_id in run_ids]
        if all(run.state is not None and run.state.is_final() for run in runs):
            return runs
        time.sleep(0.5)
    states = {str(run.id): run.state.name if run.state else None for run in runs}
    worker_logs = "\n".join(f"--- {name}\n{tail(log, 30)}" for name, log in logs.items())
    raise AssertionError(f"flow runs not finished within {RUNS_DEADLINE_SECONDS} s: {states}\n{worker_logs}")


@pytest.mark.slow
def test_the_server_keeps_its_state_in_postgres(topology: Topology) -> None:
    pg = topology.postgres
    assert pg.query("SELECT name FROM work_pool WHERE name = 'kling-process'") == [[POOL]]
    assert pg.query("SELECT id::text FROM deployment WHERE name = 'shared-batch'") == [[str(topology.deployment_id)]]
    assert pg.query(
        f"SELECT \"limit\", active::text FROM concurrency_limit_v2 WHERE name = '{DEFAULT_JOBS_LIMIT}'"
    ) == [[str(JOBS_LIMIT), "true"]]
    # and not in a SQLite file next to it (the server's PREFECT_HOME, where the default database would be)
    assert not list((topology.server.home / "server").rglob("*.db")), "the server created a SQLite database"


@pytest.mark.slow
def test_three_workers_sharing_no_disk_make_and_store_each_overlapping_item_once(
    topology: Topology, redis_url: str, moto_s3: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    server = topology.server
    run_key = f"shared-{uuid.uuid4().hex[:8]}"  # one run key for every slice
    prompt = {name: f"A {name} by the sea at dusk, slow pan" for part in SLICES for name in part}
    distinct = sorted(set(prompt.values()))
    slices = [[prompt[name] for name in part] for part in SLICES]
    assert len(distinct) == 6 and sum(map(len, slices)) == 12
    # Where each item goes: named by content, one name whichever slice and place it has.
    step_of = {
        item.request.prompt: item.step
        for item in load_batch_items(
            prompts=[{"prompt": text, "duration": 3} for text in distinct], default_model=DEFAULT_MODEL, names="content"
        )
    }
    rate, burst = QUERIES_PER_SECOND, shared_burst(QUERIES_PER_SECOND)

    with Emulator(
        time_scale=TIME_SCALE,
        seed=29,
        timing_jitter=0.0,
        job_time=lambda model, args: 75.0,
        account_concurrency=JOBS_LIMIT,  # the account's own rule: it runs no more jobs than the jobs limit
    ) as emulator:
        emulator.inject("slow", endpoint="create", times=2, delay=SLOW_CREATE_SECONDS)
        vendor = {
            "SHORTAPI_KEY": TEST_KEY,
            "SHORTAPI_BASE_URL": emulator.base_url,
            "SHORTAPI_LEASE_URL": redis_url,
            "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick up new runs within a second (default 10 s)
        }
        names = [f"topology-worker-{i}" for i in range(1, WORKERS + 1)]
        logs = {name: tmp_path / f"{name}.log" for name in names}
        workers = {}
        for name in names:  # --limit 1: each worker runs one flow run at a time, as a machine sized for one would
            env, cwd = own_disk(tmp_path, name, server.env(vendor))
            workers[name] = start_worker(POOL, env, logs[name], run_once=False, name=name, limit=1, cwd=cwd)
        try:
            bucket = f"topology-{uuid.uuid4().hex[:8]}"  # while the workers start
            s3 = s3_client(moto_s3)
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})  # shows rewrites
            save_s3_blocks(server, moto_s3, bucket)
            wait_for_workers(server, set(names), workers, logs)
            workers_up = time.monotonic()
            with SyncPrefectClient(server.api_url) as client:
                run_ids = [
                    client.create_flow_run_from_deployment(
                        topology.deployment_id,
                        parameters={
                            "prompts": [{"prompt": text, "duration": 3} for text in part],
                            "run_key": run_key,
                            "max_concurrency": 2,  # three runs at once want 6 jobs: the limit is 3
                            "poll_interval": 0.1,
                        },
                    ).id
                    for part in slices
                ]
            runs = wait_for_runs(server, run_ids, logs)
            runs_done = time.monotonic()
        finally:
            for worker in workers.values():
                stop_worker(worker)
        stats = emulator.stats()
    text = {name: log.read_text(errors="replace") for name, log in logs.items()}

    for run in runs:
        assert run.state is not None and run.state.is_completed(), f"{run.name}: {run.state}\n" + "\n".join(
            tail(log, 40) for log in logs.values()
        )
    # Spread over the workers (each run carries the name of the worker that took it), at the same time.
    taken = Counter(run.labels.get("prefect.worker.name") for run in runs)
    assert len(taken) > 1 and set(taken) <= set(names), f"runs per worker: {taken}"
    spans = [(run.start_time, run.end_time) for run in runs]
    concurrent = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if intervals_overlap(a, b)]
    assert concurrent, "no two flow runs ran at the same time: nothing was shared"

    # One create per distinct item, whichever runs held it: the others resumed the job one run made ...
    jobs = list(stats.jobs.values())
    assert Counter(job.args["prompt"] for job in jobs) == Counter(distinct)
    assert stats.creates == len(distinct)
    # ... and a run did start an item while another run's create for it was out: it waited on the Redis lease.
    waiting = "another attempt of this step is creating its job; waiting for its outcome"
    waits = sum(log.count(waiting) for log in text.values())
    assert waits >= 1, "no run ever met another's lease: the overlaps were never at the same time"

    # The limits held: the jobs limit at the vendor, so the account (as strict as the limit) refused nothing ...
    assert stats.max_in_flight <= JOBS_LIMIT, f"{stats.max_in_flight} jobs in flight at once (limit {JOBS_LIMIT})"
    assert stats.account_refusals == 0 and stats.create_requests == stats.creates
    with SyncPrefectClient(server.api_url) as client:
        assert client.read_global_concurrency_limit_by_name(DEFAULT_JOBS_LIMIT).active_slots == 0
    # ... and the shared query rate, which every run kept to: at most 5 s of the rate plus its burst in any 5
    # seconds, all runs together.
    sharing = f"sharing the Prefect rate limit {DEFAULT_QUERY_RATE_LIMIT!r} with every process of this Prefect server"
    assert sum(log.count(sharing) for log in text.values()) == len(runs), "a run did not find the shared rate"
    busiest = max_in_window(stats.query_times, 5.0)
    assert busiest <= 5 * rate + burst, f"{busiest} queries in 5 s (shared rate {rate}/s, burst {burst})"

    # Each clip downloaded once and stored once: one object per item, each written once (one version).
    assert stats.downloads == len(distinct)
    prefix = f"kling/{run_key}/"
    listing = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
    versions = Counter(v["Key"].removeprefix(prefix) for v in listing.get("Versions", []))
    expected = {f"{step}{ext}" for step in step_of.values() for ext in (".mp4", ".json", ".thumb.jpg")}
    assert set(versions) == expected, sorted(versions)
    assert set(versions.values()) == {1}, {key: n for key, n in versions.items() if n > 1}
    job_of = {job.args["prompt"]: job.job_id for job in jobs}
    for item_prompt, step in step_of.items():
        record = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}{step}.json")["Body"].read())
        assert record["job_id"] == job_of[item_prompt]
        clip = tmp_path / f"{step}.mp4"
        s3.download_file(bucket, f"{prefix}{step}.mp4", str(clip))
        assert media.is_decodable_mp4(clip)
    # The steps' ledgers are in the shared result storage; no lease or output on a worker's disk or the checkout.
    ledger = s3.list_objects_v2(Bucket=bucket, Prefix="prefect-results/kling-uncertain-create-")
    assert ledger.get("KeyCount", 0) == len(distinct)
    for name in names:
        leftovers = [p for p in (tmp_path / name).rglob("*") if p.is_file() and p.suffix in (".lock", ".mp4")]
        assert not leftovers, f"{name}: {leftovers}"
    assert not (REPO / "kling-output" / run_key).exists()

    # The flow runs are rows in PostgreSQL: the server really runs on it.
    rows = topology.postgres.query(
        f"SELECT id::text, state_type FROM flow_run WHERE deployment_id = '{topology.deployment_id}'"
    )
    assert sorted(rows) == sorted([str(run_id), "COMPLETED"] for run_id in run_ids)

    print(
        f"\ntopology: workers up in {workers_up - began:.1f} s, runs done {runs_done - workers_up:.1f} s later, "
        f"test {time.monotonic() - began:.1f} s; {len(distinct)} items in {sum(map(len, slices))} places: "
        f"{stats.creates} creates, {stats.downloads} downloads, {len(versions)} objects of one version each; "
        f"peak in flight {stats.max_in_flight} (jobs limit {JOBS_LIMIT}, account {JOBS_LIMIT}, refusals "
        f"{stats.account_refusals}); lease waits {waits}; {stats.queries} queries, busiest 5 s {busiest} "
        f"(bound {5 * rate + burst}); runs per worker {dict(sorted(taken.items()))}; concurrent run pairs "
        f"{len(concurrent)}"
    )
