"""N processes starting one step at once: how many creates the vendor saw, and whether all returned one clip.

Each process is a user's own flow (``tests/lease_run_flow.py``: ``generate_video(KlingO3TextToVideo(...),
run_key="same-key-1")``) with a working folder and a ``PREFECT_HOME`` of its own, one Prefect server, one result
storage, the emulator answering every create after ``--create-delay`` seconds. All start the step within
milliseconds of each other (they wait for a file). With ``--redis``, the leases are Redis's (a redis-server
started here) instead of file locks beside the result storage.

Usage:
    ./dev python benchmarks/bench_one_step.py --processes 3 10 --create-delay 1.5 6 [--redis]

Prints one row per (processes, create delay, lease backend): creates, distinct jobs, processes that returned the
clip, processes that resumed the first one's job, failures, wall seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "tests" / "lease_run_flow.py"
KEY = "sk-bench-one-step"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def one_round(
    processes: int, delay: float, lease_url: str | None, api_url: str, folder: Path, index: int
) -> dict[str, Any]:
    from kling_prefect.emulator import Emulator

    work = folder / f"round-{index}"
    work.mkdir()
    go = work / "go"
    with Emulator(time_scale=0.005, seed=11, timing_jitter=0.0, api_key=KEY) as emulator:
        emulator.inject("slow", endpoint="create", delay=delay)
        started = []
        for n in range(processes):
            cwd = work / f"worker-{n}"
            cwd.mkdir()
            env = {
                **os.environ,
                "PREFECT_API_URL": api_url,
                "PREFECT_LOCAL_STORAGE_PATH": str(work / "results"),
                "PREFECT_HOME": str(work / f"home-{n}"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "SHORTAPI_KEY": KEY,
                "SHORTAPI_BASE_URL": emulator.base_url,
                "SHORTAPI_READ_TIMEOUT": str(delay + 30),
                "SHORTAPI_LEASE_SECONDS": "2",
            }
            env.pop("SHORTAPI_LEASE_URL", None)
            if lease_url:
                env["SHORTAPI_LEASE_URL"] = lease_url
            log = work / f"worker-{n}.log"
            with log.open("wb") as sink:
                args = [sys.executable, str(RUNNER), str(go), "same-key-1", "A heron lifts off the reeds"]
                started.append((subprocess.Popen(args, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + 300
        while not all("ready" in log.read_text(errors="replace").splitlines() for _, log in started):
            if time.monotonic() > deadline:
                raise SystemExit("the processes did not get ready in 300 s")
            time.sleep(0.05)
        began = time.monotonic()
        go.touch()
        outcomes = []
        for process, log in started:
            process.wait(timeout=600)
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
            outcomes.append(json.loads(lines[-1]) if lines else {"error": "no outcome"})
        wall = time.monotonic() - began
        stats = emulator.stats()
    good = [o for o in outcomes if "job_id" in o]
    return {
        "processes": processes,
        "create delay": delay,
        "leases": "redis" if lease_url else "file",
        "creates": stats.creates,
        "create requests": stats.create_requests,
        "jobs": len({o["job_id"] for o in good}),
        "returned the clip": len(good),
        "resumed": sum(1 for o in good if o["resumed"]),
        "failed": [o.get("error") for o in outcomes if "job_id" not in o],
        "wall s": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--create-delay", type=float, nargs="+", default=[1.5, 6.0])
    parser.add_argument("--redis", action="store_true", help="Redis leases (SHORTAPI_LEASE_URL) instead of files")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    sys.path.insert(0, str(REPO))
    from tests.deploy_helpers import redis_server

    folder = Path(tempfile.mkdtemp(prefix="bench-one-step-"))
    rows = []
    try:
        with contextlib.ExitStack() as stack:
            redis_url = stack.enter_context(redis_server(folder)) if args.redis else None
            stack.enter_context(prefect_test_harness(server_startup_timeout=120))
            api_url = str(PREFECT_API_URL.value())
            index = 0
            for processes in args.processes:
                for delay in args.create_delay:
                    index += 1
                    row = one_round(processes, delay, redis_url, api_url, folder, index)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print()
    print(
        "| processes | create answers after | leases | creates billed | jobs | returned the clip | resumed | failed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['processes']} | {r['create delay']:g} s | {r['leases']} | {r['creates']} | {r['jobs']} | "
            f"{r['returned the clip']} / {r['processes']} | {r['resumed']} | {len(r['failed'])} |"
        )
    return 0 if all(r["creates"] == 1 and r["returned the clip"] == r["processes"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
