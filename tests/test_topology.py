"""The production topology, for real: PostgreSQL, one Prefect server, three process workers, one jobs limit.

A throw-away PostgreSQL server (tests/postgres.py) backs a `prefect server start`; `kling-prefect setup` creates
the shared jobs-in-flight limit; `prefect deploy` registers the batch deployment of deployments/prefect.yaml on
a process work pool. Three `prefect worker start` processes poll that pool while a big batch is split into
several flow runs of the deployment, each with its own slice of the prompts and its own run key, against the
ShortAPI emulator over HTTP. The checks: every run completes, more than one worker ran them, the vendor never
saw more jobs in flight than the limit although the runs together wanted more, no prompt was created twice,
and the server's state (deployment, limit, flow runs) really is rows in PostgreSQL.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun

from kling_prefect import media
from kling_prefect.concurrency import DEFAULT_JOBS_LIMIT
from kling_prefect.emulator import Emulator
from kling_prefect.emulator.jobs import JobStats, peak_overlap
from tests.deploy_helpers import (
    KLING_PREFECT,
    PREFECT,
    PrefectServer,
    free_port,
    run_command,
    start_worker,
    stop_worker,
    tail,
)
from tests.postgres import PostgresServer, PostgresUnavailable, postgres_database

TEST_KEY = "sk-test-topology"
POOL = "kling-process"
DEPLOYMENT = "kling-batch/batch-every-6h"
JOBS_LIMIT = 3
WORKERS = 3
FLOW_RUNS = 4
PROMPTS = 12
#: Emulated job time: 72 s for a 3 s kling-o3 clip, times this (~1.4 s): runs started seconds apart still meet.
TIME_SCALE = 0.02
#: Generous: three flow-run processes start at once on two shared cores.
RUNS_DEADLINE_SECONDS = 150.0

T = TypeVar("T")


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
    """A Prefect server on PostgreSQL with the process pool, the jobs limit and the batch deployment."""
    home = tmp_path_factory.mktemp("topology-server")
    server = PrefectServer(home=home, port=free_port(), database_url=postgres.url).start()
    try:
        env = server.env()
        run_command([PREFECT, "work-pool", "create", POOL, "--type", "process"], env)
        setup = run_command([KLING_PREFECT, "setup", "--jobs-limit", str(JOBS_LIMIT)], env)
        assert f"{DEFAULT_JOBS_LIMIT!r} created: {JOBS_LIMIT} jobs in flight" in setup.stdout
        deploy = [PREFECT, "--no-prompt", "deploy", "--name", "batch-every-6h"]
        run_command([*deploy, "--prefect-file", "deployments/prefect.yaml"], env)
        with SyncPrefectClient(server.api_url) as client:
            deployment_id = client.read_deployment_by_name(DEPLOYMENT).id
        print(
            f"\npostgres up in {postgres.startup_seconds:.1f} s; "
            f"prefect server on postgres up in {server.startup_seconds:.1f} s"
        )
        yield Topology(postgres=postgres, server=server, deployment_id=deployment_id)
    finally:
        server.stop()


def split(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` in ``parts`` contiguous slices of nearly equal size, in order (the first ones one longer)."""
    size, longer = divmod(len(items), parts)
    slices, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < longer else 0)
        slices.append(list(items[start:end]))
        start = end
    return slices


def intervals_overlap(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


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


def cross_run_peak(jobs: list[JobStats], part_of: dict[str, int]) -> int:
    """The most flow runs that had a job in flight at the vendor at one instant."""
    peak = 0
    for job in jobs:  # the peak is reached at some job's creation
        at = job.created_at
        running = {part_of[j.args["prompt"]] for j in jobs if j.created_at <= at < j.done_at}
        peak = max(peak, len(running))
    return peak


@pytest.mark.slow
def test_the_server_keeps_its_state_in_postgres(topology: Topology) -> None:
    pg = topology.postgres
    assert pg.query("SELECT name FROM work_pool WHERE name = 'kling-process'") == [[POOL]]
    assert pg.query("SELECT id::text FROM deployment WHERE name = 'batch-every-6h'") == [[str(topology.deployment_id)]]
    assert pg.query(
        f"SELECT \"limit\", active::text FROM concurrency_limit_v2 WHERE name = '{DEFAULT_JOBS_LIMIT}'"
    ) == [[str(JOBS_LIMIT), "true"]]
    # and not in a SQLite file next to it (the server's PREFECT_HOME, where the default database would be)
    assert not list((topology.server.home / "server").rglob("*.db")), "the server created a SQLite database"


@pytest.mark.slow
def test_three_workers_split_one_batch_within_one_jobs_limit(topology: Topology, tmp_path: Path) -> None:
    began = time.monotonic()
    server = topology.server
    batch_key = f"topology-{uuid.uuid4().hex[:8]}"
    prompts = [f"A lighthouse at dawn, shot {n:02d}" for n in range(1, PROMPTS + 1)]
    slices = split(prompts, FLOW_RUNS)
    assert sorted(p for part in slices for p in part) == sorted(prompts) and all(slices)
    part_of = {prompt: index for index, part in enumerate(slices) for prompt in part}

    # Jobs of one run end 1 s apart (1.5, 2.5, 3.5 s): its slots come free one at a time, so the runs waiting for
    # slots take them while it still holds the others, whatever order the workers picked the runs up in.
    staggered = {prompt: 75.0 + 50.0 * (index % 3) for index, prompt in enumerate(prompts)}
    with Emulator(
        time_scale=TIME_SCALE, seed=23, timing_jitter=0.0, job_time=lambda model, args: staggered[args["prompt"]]
    ) as emulator:
        vendor = {
            "SHORTAPI_KEY": TEST_KEY,
            "SHORTAPI_BASE_URL": emulator.base_url,
            "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick up new runs within a second (default 10 s)
        }
        names = [f"topology-worker-{i}" for i in range(1, WORKERS + 1)]
        logs = {name: tmp_path / f"{name}.log" for name in names}
        # --limit 1: each worker runs one flow run at a time, as a machine sized for one would.
        workers = {
            name: start_worker(POOL, server.env(vendor), logs[name], run_once=False, name=name, limit=1)
            for name in names
        }
        try:
            wait_for_workers(server, set(names), workers, logs)
            workers_up = time.monotonic()
            run_ids = []
            with SyncPrefectClient(server.api_url) as client:
                for index, part in enumerate(slices, start=1):
                    params = {
                        "prompts": [{"prompt": prompt, "duration": 3} for prompt in part],
                        "run_key": f"{batch_key}-part-{index}-of-{FLOW_RUNS}",
                        "max_concurrency": len(part),  # each run alone wants a job per prompt in flight
                        "poll_interval": 0.1,
                        "output_dir": str(tmp_path / f"part-{index}"),
                    }
                    run = client.create_flow_run_from_deployment(topology.deployment_id, parameters=params)
                    run_ids.append(run.id)
            runs = wait_for_runs(server, run_ids, logs)
            runs_done = time.monotonic()
        finally:
            for worker in workers.values():
                stop_worker(worker)
        stats = emulator.stats()

    for run in runs:
        assert run.state is not None and run.state.is_completed(), f"{run.name}: {run.state}\n" + "\n".join(
            tail(log, 30) for log in logs.values()
        )

    # Spread over the workers: each run carries the name of the worker that took it.
    taken = Counter(run.labels.get("prefect.worker.name") for run in runs)
    assert set(taken) <= set(names), f"runs taken by unknown workers: {taken}"
    assert len(taken) > 1, f"one worker ran every flow run: {taken}"

    # The runs together wanted more than the limit: at least two ran at the same time, each wanting 3 jobs.
    spans = [(run.start_time, run.end_time) for run in runs]
    concurrent = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if intervals_overlap(a, b)]
    assert concurrent, "no two flow runs ran at the same time: nothing was shared"

    # Nothing created twice, nothing lost: one create per prompt, each prompt's request exactly once.
    jobs = list(stats.jobs.values())
    assert stats.create_requests == PROMPTS and stats.creates == PROMPTS
    assert Counter(job.args["prompt"] for job in jobs) == Counter(prompts)
    assert all(job.args["duration"] == 3 for job in jobs)

    # The shared limit held at the vendor: at no instant more jobs created-and-unfinished than the limit.
    peak = peak_overlap((job.created_at, job.done_at) for job in jobs)
    assert peak <= JOBS_LIMIT, f"the vendor saw {peak} jobs in flight at once (limit {JOBS_LIMIT})"
    assert peak == JOBS_LIMIT, "the limit's slots were never all used at once"
    # ... and it was shared: jobs of different flow runs were in flight together.
    assert cross_run_peak(jobs, part_of) >= 2, "the flow runs never had jobs in flight at the same time"
    with SyncPrefectClient(server.api_url) as client:
        assert client.read_global_concurrency_limit_by_name(DEFAULT_JOBS_LIMIT).active_slots == 0

    # Each run stored exactly its own slice.
    for index, part in enumerate(slices, start=1):
        stored = sorted((tmp_path / f"part-{index}").glob("item-*.mp4"))
        assert len(stored) == len(part), f"part {index}: {[p.name for p in stored]}"
        assert all(media.is_decodable_mp4(path) for path in stored)

    # The flow runs are rows in PostgreSQL: the server really runs on it.
    rows = topology.postgres.query(
        f"SELECT id::text, state_type FROM flow_run WHERE deployment_id = '{topology.deployment_id}'"
    )
    assert sorted(rows) == sorted([str(run_id), "COMPLETED"] for run_id in run_ids)

    print(
        f"\ntopology: workers up in {workers_up - began:.1f} s, runs done {runs_done - workers_up:.1f} s later, "
        f"test {time.monotonic() - began:.1f} s; peak in flight {peak} (limit {JOBS_LIMIT}); "
        f"runs per worker {dict(sorted(taken.items()))}; concurrent run pairs {len(concurrent)}"
    )
