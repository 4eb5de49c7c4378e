#!/usr/bin/env python
"""Callbacks for a pool: two worker processes, one callback relay, one Prefect server, the emulator's callbacks.

Starts ``prefect server start`` (its own SQLite home), the bundled emulator in this process (every job
``--job-seconds`` +- ``--jitter``, uniformly), ``kling-prefect callbacks serve`` publishing to that server, and
``--workers`` processes configured only by the environment (``SHORTAPI_CALLBACK_URL`` = the relay,
``SHORTAPI_CALLBACK_MODE=relay``), each creating its share of ``--jobs`` and waiting for them with the default
poll policy (callbacks trusted: a fallback query every 60 s). ``--kill-relay-after S`` terminates the relay S
seconds after the jobs were created: the rest are found by polling.

Each worker then downloads its clips (``clips-<n>/`` in the benchmark's folder). Prints one row: queries per
job, the delay from a job's end to the first query that saw it (p50/p95), jobs that succeeded and were
stored, and the relay's peak RSS.

Examples:
    ```bash
    ./dev python benchmarks/bench_relay.py                          # 2 workers, 40 jobs of 20 s +- 30%
    ./dev python benchmarks/bench_relay.py --kill-relay-after 10    # the relay dies halfway
    ./dev python benchmarks/bench_relay.py --jobs 200               # 200 jobs through one relay
    ./dev python benchmarks/bench_relay.py --via webhook            # a Prefect Cloud webhook's stand-in instead
    ```
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_waiting import PrefectServer, free_port, percentile

API_KEY = "bench-key-0123456789"
RESULT_PREFIX = "BENCH-RESULT "

WORKER = """
import asyncio, json, sys, time
from kling_prefect.callback_stream import StreamCallbacks, wait_until_live
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.models import KlingO3TextToVideo

async def store(client, job, folder):
    path = await client.download(job.video_url, f"{folder}/{job.job_id}.mp4", job_id=job.job_id)
    return path.stat().st_size > 0

async def main(count, start_at, folder):
    credentials = ShortAPICredentials.from_env()
    callbacks = credentials.callback_receiver()
    assert isinstance(callbacks, StreamCallbacks), callbacks
    assert await asyncio.to_thread(wait_until_live, callbacks, 60), "the stream never came live"
    await asyncio.sleep(max(0.0, start_at - time.time()))  # both workers create at once
    request = KlingO3TextToVideo(prompt="A lantern on a jetty", duration=3, mode="std")
    async with credentials.get_client() as client:
        created = await asyncio.gather(*(client.create_job(request) for _ in range(count)))
        jobs = await asyncio.gather(*(client.wait_for_job(c, timeout=600) for c in created), return_exceptions=True)
        done = [job for job in jobs if not isinstance(job, BaseException)]
        stored = await asyncio.gather(*(store(client, job, folder) for job in done), return_exceptions=True)
    result = {"jobs": [job.job_id for job in done], "stored": sum(s is True for s in stored)}
    result["stats"] = callbacks.stats()
    print("BENCH-RESULT " + json.dumps(result), flush=True)

asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]))
"""


#: The tests' stand-in for a Prefect Cloud webhook (tests/test_callback_webhook.py), serving until killed.
STAND_IN = """
import sys, time
from tests.test_callback_webhook import webhook_stand_in

with webhook_stand_in(int(sys.argv[1])):
    print("ready", flush=True)
    time.sleep(10**6)
"""
REPO = Path(__file__).resolve().parent.parent


def wait_for_health(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the relay did not start; see {log}") from None
            time.sleep(0.2)


def rss_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--job-seconds", type=float, default=20.0)
    parser.add_argument("--jitter", type=float, default=0.3, help="each job: job-seconds x uniform(1 +- jitter)")
    parser.add_argument("--kill-relay-after", type=float, default=None, metavar="S")
    parser.add_argument(
        "--via",
        choices=["relay", "webhook"],
        default="relay",
        help="relay: kling-prefect callbacks serve; webhook: the tests' stand-in for a Prefect Cloud webhook "
        "(WEBHOOK_TEMPLATE rendered as Prefect Cloud documents it), workers in webhook mode",
    )
    args = parser.parse_args()

    from kling_prefect.emulator import Emulator

    rng = random.Random(11)  # the emulator's job_time override takes no jitter of its own

    def job_time(*_: object) -> float:
        return args.job_seconds * rng.uniform(1 - args.jitter, 1 + args.jitter)

    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    with (
        PrefectServer(workdir / "prefect") as server,
        Emulator(time_scale=1.0, seed=11, job_time=job_time) as emu,
    ):
        port = free_port()
        env = {**os.environ, **server.env(), "PREFECT_API_URL": server.url}
        if args.via == "webhook":
            relay = subprocess.Popen(
                [sys.executable, "-c", STAND_IN, str(port)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=open(workdir / "relay.log", "wb"),
            )
            if relay.stdout is None or relay.stdout.readline() != b"ready\n":
                raise RuntimeError(f"the webhook stand-in did not start; see {workdir / 'relay.log'}")
            callback_url = f"http://127.0.0.1:{port}/hooks/AERylZ_uewzpDx-8fcweHQ"
        else:
            relay_cmd = [sys.executable, "-c", "import sys; from kling_prefect.cli import main; sys.exit(main())"]
            relay_cmd += ["callbacks", "serve", "--listen", f"127.0.0.1:{port}"]
            relay = subprocess.Popen(relay_cmd, env=env, stderr=open(workdir / "relay.log", "wb"))
            wait_for_health(f"http://127.0.0.1:{port}/healthz", relay, workdir / "relay.log")
            callback_url = f"http://127.0.0.1:{port}/hooks/kling"
        worker_env = {
            **env,
            "PREFECT_HOME": str(workdir / "worker-home"),
            "SHORTAPI_KEY": API_KEY,
            "SHORTAPI_BASE_URL": emu.base_url,
            "SHORTAPI_CALLBACK_URL": callback_url,
            "SHORTAPI_CALLBACK_MODE": args.via,
            "KLING_PREFECT_DURATIONS": "off",
        }
        start_at = time.time() + 20  # the workers import Prefect and subscribe first
        shares = [args.jobs // args.workers + (i < args.jobs % args.workers) for i in range(args.workers)]
        for i in range(args.workers):
            (workdir / f"clips-{i}").mkdir()
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(share), str(start_at), str(workdir / f"clips-{i}")],
                env=worker_env,
                stdout=subprocess.PIPE,
                stderr=open(workdir / f"worker-{i}.log", "wb"),
            )
            for i, share in enumerate(shares)
        ]
        relay_rss = float("nan")
        if args.kill_relay_after is not None:
            time.sleep(max(0.0, start_at - time.time()) + args.kill_relay_after)
            relay_rss = rss_mb(relay.pid)
            relay.terminate()
        outputs = [worker.communicate(timeout=900)[0].decode() for worker in workers]
        if relay.poll() is None:
            relay_rss = rss_mb(relay.pid)
            relay.terminate()
        relay.wait(timeout=30)
        stats = emu.stats()
    reports: list[dict[str, Any]] = []
    for output in outputs:
        lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
        reports.append(json.loads(lines[-1][len(RESULT_PREFIX) :]) if lines else {"jobs": [], "stats": {}})
    jobs = list(stats.jobs.values())
    delays = [job.first_terminal_seen_at - job.done_at for job in jobs if job.first_terminal_seen_at is not None]
    succeeded = sum(len(report["jobs"]) for report in reports)
    row = {
        "via": args.via,
        "workers": args.workers,
        "jobs": len(jobs),
        "killed_relay_after_s": args.kill_relay_after,
        "queries_per_job": round(stats.queries / max(1, len(jobs)), 2),
        "detect_p50_s": round(percentile(delays, 0.5), 2),
        "detect_p95_s": round(percentile(delays, 0.95), 2),
        "succeeded": succeeded,
        "stored": sum(report.get("stored", 0) for report in reports),
        "callbacks_sent": stats.callbacks_sent,
        "callbacks_failed": stats.callbacks_failed,
        "relay_peak_rss_mb": round(relay_rss, 1),
        "worker_stats": [report["stats"] for report in reports],
    }
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
