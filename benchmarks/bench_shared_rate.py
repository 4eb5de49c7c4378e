#!/usr/bin/env python
"""One query rate for the whole account: several worker processes sharing a Prefect rate limit on job queries.

Starts the bundled emulator (jobs of ``--job-seconds`` +- ``--spread``, uniform, whatever the model) and a Prefect
server (``prefect server start``, its own ``PREFECT_HOME``; or the one at ``--api-url``), runs
``setup_limits(max_queries_per_second=--rate)`` on it (``kling-prefect setup --max-queries-per-second``), then
``--processes`` worker processes that each create ``--jobs`` jobs and wait for all of them with
``ShortAPIClient`` (their own cap: ``SHORTAPI_MAX_QUERIES_PER_SECOND``, 10 by default). It prints the most
queries the emulator received in any 5-second (and 1-second) window, the total, the jobs done and the Prefect
API calls the workers' caps made to take tokens. ``--no-shared`` runs the same without the shared limit (each
process keeps to its own cap only), for comparison.

Examples:
    ```bash
    ./dev python benchmarks/bench_shared_rate.py                                  # 3 x 50 jobs at 10 q/s, ~2 min
    ./dev python benchmarks/bench_shared_rate.py --processes 3 --jobs 10 --job-seconds 4
    ./dev python benchmarks/bench_shared_rate.py --no-shared                       # each process's own cap alone
    ```

``worker GO_FILE JOBS`` is the worker process (used by this script and by ``tests/test_query_rate.py``): it
prints ``ready``, waits for ``GO_FILE`` to exist, creates and waits, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: the tests' helpers

from tests.helpers import max_in_window  # the count the query-rate tests assert on

API_KEY = "bench-key-0123456789"
PROMPT = "A paper boat drifts down a rain gutter"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (nearest rank); 0 for none."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


# ----------------------------------------------------------------------------------------------- the worker


async def work(jobs: int, min_interval: float) -> dict[str, Any]:
    """Create ``jobs`` jobs and wait for all of them; what became of them and what the query cap did."""
    from kling_prefect import KlingO3TextToVideo, ShortAPIClient
    from kling_prefect.waiting import DurationModel, PollPolicy

    request = KlingO3TextToVideo(prompt=PROMPT, duration=3, mode="std")
    async with ShortAPIClient(poll=PollPolicy.scaled(min_interval)) as client:
        created = await asyncio.gather(*(client.create_job(request) for _ in range(jobs)))
        durations = DurationModel()  # nothing learned from earlier runs
        ended = await asyncio.gather(
            *(client.wait_for_job(job, timeout=900, durations=durations) for job in created), return_exceptions=True
        )
        cap = client.query_cap.stats() if client.query_cap is not None else {}
    states = Counter(job.state if not isinstance(job, BaseException) else type(job).__name__ for job in ended)
    return {"jobs": jobs, "succeeded": states.get("succeeded", 0), "states": dict(states), "cap": cap}


def worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_shared_rate.py worker")
    parser.add_argument("go", type=Path)
    parser.add_argument("jobs", type=int)
    parser.add_argument("--min-interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kling_prefect").setLevel(logging.INFO)  # the cap says when it shares the rate
    import kling_prefect  # noqa: F401 - imported before "ready", so every worker starts at once

    print("ready", flush=True)
    while not args.go.exists():
        time.sleep(0.01)
    result = asyncio.run(work(args.jobs, args.min_interval))
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------- the benchmark


def start_workers(
    processes: int, jobs: int, env: dict[str, str], workdir: Path, *, min_interval: float
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """``processes`` worker processes (each its own ``PREFECT_HOME``), started, not yet let go."""
    go = workdir / "go"
    workers = []
    for index in range(processes):
        log = workdir / f"worker-{index}.log"
        command = [sys.executable, str(Path(__file__).resolve()), "worker", str(go), str(jobs)]
        command += ["--min-interval", repr(min_interval)]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                env={**env, "PREFECT_HOME": str(workdir / f"home-{index}")},
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        workers.append((process, log))
    return workers


def run_workers(workers: list[tuple[subprocess.Popen[bytes], Path]], go: Path, timeout: float) -> list[dict[str, Any]]:
    """Wait until every worker is ready, let them go at once, and return their JSON lines."""
    deadline = time.monotonic() + 300
    while not all("ready" in log.read_text(errors="replace").splitlines() for _, log in workers):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in workers):
            raise RuntimeError("a worker did not start: " + " | ".join(log.read_text()[-500:] for _, log in workers))
        time.sleep(0.05)
    go.touch()
    results = []
    for process, log in workers:
        code = process.wait(timeout=timeout)
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
        if code != 0 or not lines:
            raise RuntimeError(f"worker exited {code}: {log.read_text(errors='replace')[-2000:]}")
        results.append(json.loads(lines[-1]))
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=50, help="jobs per process. Default: 50")
    parser.add_argument("--rate", type=float, default=10.0, help="the shared queries per second. Default: 10")
    parser.add_argument("--job-seconds", type=float, default=30.0, help="job time at the emulator. Default: 30")
    parser.add_argument("--spread", type=float, default=0.3, help="+- fraction of --job-seconds. Default: 0.3")
    parser.add_argument("--min-interval", type=float, default=2.0, help="the waits' poll interval. Default: 2")
    parser.add_argument("--api-url", help="a running Prefect server's API (default: start one)")
    parser.add_argument("--no-shared", action="store_true", help="no shared limit: each process's own cap only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep the logs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures (and every query time) here")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-shared-rate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_waiting import PrefectServer

    if args.api_url:
        figures = run(args, workdir, args.api_url)
    else:
        with PrefectServer(workdir / "prefect-server") as server:
            figures = run(args, workdir, server.url)
    if args.no_shared:
        shared = "none (each process's own cap only)"
    else:
        shared = f"{args.rate:g} q/s, burst {figures['burst']} (bound: {5 * args.rate + figures['burst']:g} in 5 s)"
    print(
        f"{args.processes} processes x {args.jobs} jobs, shared rate {shared}: "
        f"most queries in any 5 s window {figures['max_5s']}, in any 1 s window {figures['max_1s']}; "
        f"{figures['queries']} queries in all; {figures['succeeded']}/{figures['jobs']} jobs done; detection "
        f"p50 / p95 {figures['detect_p50']:.2f} / {figures['detect_p95']:.2f} s; {figures['prefect_takes']} Prefect "
        f"takes for {figures['shared_tokens']} tokens ({figures['prefect_refusals']} refused); "
        f"{figures['seconds']:.1f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if figures["succeeded"] == figures["jobs"] else 1


def run(args: argparse.Namespace, workdir: Path, api_url: str) -> dict[str, Any]:
    os.environ["PREFECT_API_URL"] = api_url
    from kling_prefect.concurrency import setup_limits
    from kling_prefect.emulator import Emulator
    from kling_prefect.waiting import DEFAULT_QUERY_RATE_LIMIT, shared_burst

    rng = random.Random(args.seed)

    def job_time(model: str, job_args: Any) -> float:
        return float(args.job_seconds * rng.uniform(1 - args.spread, 1 + args.spread))

    name = f"bench-queries-{os.getpid()}"  # never another run's limit
    if not args.no_shared:
        asyncio.run(setup_limits(max_queries_per_second=args.rate, query_limit_name=name))
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "SHORTAPI_KEY": API_KEY,
        "SHORTAPI_QUERY_RATE_LIMIT": name if not args.no_shared else DEFAULT_QUERY_RATE_LIMIT + "-none",
        "KLING_PREFECT_DURATIONS": "off",
    }
    try:
        with Emulator(time_scale=1.0, seed=args.seed, job_time=job_time, workdir=workdir / "renders") as emulator:
            env["SHORTAPI_BASE_URL"] = emulator.base_url
            workers = start_workers(args.processes, args.jobs, env, workdir, min_interval=args.min_interval)
            began = time.monotonic()
            results = run_workers(workers, workdir / "go", timeout=1800)
            seconds = time.monotonic() - began
            stats = emulator.stats()
    finally:
        if not args.no_shared:
            asyncio.run(_delete_limit(name))
    caps = [r["cap"] for r in results]
    delays = sorted(
        job.first_terminal_seen_at - job.done_at for job in stats.jobs.values() if job.first_terminal_seen_at
    )
    return {
        "processes": args.processes,
        "jobs": args.processes * args.jobs,
        "rate": None if args.no_shared else args.rate,
        "burst": 0 if args.no_shared else shared_burst(args.rate),
        "succeeded": sum(r["succeeded"] for r in results),
        "states": [r["states"] for r in results],
        "queries": stats.queries,
        "max_5s": max_in_window(stats.query_times, 5.0),
        "max_1s": max_in_window(stats.query_times, 1.0),
        "creates": stats.creates,
        "detect_p50": percentile(delays, 0.5),
        "detect_p95": percentile(delays, 0.95),
        "prefect_takes": sum(c.get("shared_takes", 0) for c in caps),
        "shared_tokens": sum(c.get("shared_tokens", 0) for c in caps),
        "prefect_refusals": sum(c.get("shared_refusals", 0) for c in caps),
        "seconds": seconds,
        "caps": caps,
        "query_times": stats.query_times,
    }


async def _delete_limit(name: str) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.delete_global_concurrency_limit_by_name(name)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        raise SystemExit(worker(sys.argv[2:]))
    raise SystemExit(main(sys.argv[1:]))
