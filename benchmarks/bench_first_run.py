"""How often does the command line start on a fresh machine while other processes load the CPU?

Each run is ``kling-prefect chain`` (one clip, against the bundled emulator at a small time scale) in a fresh
``PREFECT_HOME``, so Prefect's temporary server must create and migrate a new database before it answers.
``--burners N`` keeps N busy-looping processes running throughout, as other work on a shared machine would.

    ./dev python benchmarks/bench_first_run.py --runs 6 --burners 2
    ./dev python benchmarks/bench_first_run.py --runs 6 --burners 2 \
        --env PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=20
    ./dev python benchmarks/bench_first_run.py --startup-only --runs 6 --burners 2

``--startup-only`` times Prefect's temporary server alone (fresh home, start until ``/api/health`` answers),
with no time limit, to see how much start-up time a loaded machine needs.

Prints one line per run and a summary (runs, failures, load average, seconds); ``--json FILE`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLI = shutil.which("kling-prefect") or str(Path(sys.executable).with_name("kling-prefect"))

STARTUP_PROBE = """
import sys, time
from prefect.server.api.server import SubprocessASGIServer
started = time.monotonic()
server = SubprocessASGIServer()
server.start(timeout=600)
print(round(time.monotonic() - started, 2))
server.stop()
"""


def clean_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a new user: no Prefect or ShortAPI settings, a fresh PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SHORTAPI_", "KLING_PREFECT_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env.update(extra)
    return env


def one_run(
    index: int, emulator_url: str, extra: dict[str, str], startup_only: bool, home: Path | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="first-run-") as folder:
        home = home or Path(folder) / "home"
        env = clean_env(home, extra)
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        if startup_only:
            argv = [sys.executable, "-c", STARTUP_PROBE]
        else:
            env.update(SHORTAPI_KEY="bench-key", SHORTAPI_BASE_URL=emulator_url)
            argv = [CLI, "chain", "A fox in the snow", "--duration", "3", "--no-progress", "--json"]
            argv += ["--poll-interval", "0.05", "--out", str(Path(folder) / "out")]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=folder, timeout=900, check=False)
        seconds = time.monotonic() - started
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {
            "run": index,
            "ok": done.returncode == 0,
            "returncode": done.returncode,
            "seconds": round(seconds, 1),
            "server_seconds": float(done.stdout.strip()) if startup_only and done.returncode == 0 else None,
            "load_1min_before": round(load_before, 2),
            "load_1min_after": round(os.getloadavg()[0], 2),
            "stderr_lines": len(lines),
            "timed_out_starting": "Timed out while attempting to connect to ephemeral" in done.stderr,
            "error": next((line for line in lines if "error:" in line), lines[-1] if lines else "")[:200],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6, help="fresh-home runs (default 6)")
    parser.add_argument("--burners", type=int, default=2, help="busy-looping processes alongside (default 2)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment")
    parser.add_argument("--startup-only", action="store_true", help="time Prefect's temporary server alone")
    parser.add_argument("--home", type=Path, help="one PREFECT_HOME for every run (a home already used)")
    parser.add_argument("--json", metavar="FILE", help="also write the runs as JSON")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)

    from kling_prefect.emulator import Emulator

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
    results = []
    try:
        time.sleep(5 if burners else 0)  # let the load show in the load average
        with Emulator(time_scale=0.005, seed=1) as emulator:
            for index in range(1, args.runs + 1):
                result = one_run(index, emulator.base_url, extra, args.startup_only, args.home)
                results.append(result)
                print(json.dumps(result), flush=True)
    finally:
        for burner in burners:
            burner.terminate()
            burner.wait()
    failures = sum(not r["ok"] for r in results)
    loads = [r["load_1min_before"] for r in results] + [r["load_1min_after"] for r in results]
    summary = {
        "runs": len(results),
        "failures": failures,
        "burners": args.burners,
        "env": extra,
        "load_1min_min": min(loads),
        "load_1min_max": max(loads),
        "seconds_median": sorted(r["seconds"] for r in results)[len(results) // 2],
        "seconds_max": max(r["seconds"] for r in results),
    }
    print("summary:", json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
