#!/usr/bin/env python
"""A batch wider than the vendor account (issue 18): ``kling-prefect batch`` against an emulator that runs at
most ``--account`` jobs of the account at once (a create over that: HTTP 429, code 1303, nothing made).

What it reports: clips stored, creates billed, creates refused (and how many after the first wave, whose
``min(prompts, max-concurrency) - account`` refusals are how the process learns the limit), the limit learned,
and the makespan (first create to last job's end, at the vendor) against the ideal, ``ceil(prompts / account)``
waves of ``--job-seconds``. ``--baseline`` runs the same batch without the account rule and with
``--max-concurrency`` equal to the account: what a user who knew the limit would get.

Examples:
    ```bash
    ./dev python benchmarks/bench_account_limit.py                      # 20 prompts, 8 at once, account of 3, 10 s jobs
    ./dev python benchmarks/bench_account_limit.py --baseline
    ```
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kling_prefect.emulator import Emulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--account", type=int, default=3, help="jobs the account runs at once")
    parser.add_argument("--job-seconds", type=float, default=10.0)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--baseline", action="store_true", help="no account rule, --max-concurrency = --account")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-account-"))
    prompts = work / "prompts.jsonl"
    lines = (
        json.dumps({"prompt": f"A wide batch, scene {i}", "duration": 3, "mode": "std"}) for i in range(args.prompts)
    )
    prompts.write_text("\n".join(lines) + "\n")
    width = args.account if args.baseline else args.max_concurrency
    rule = None if args.baseline else args.account
    seconds = args.job_seconds
    with Emulator(time_scale=1.0, seed=3, job_time=lambda model, job_args: seconds, account_concurrency=rule) as emu:
        env = {**os.environ, "SHORTAPI_KEY": "bench-key", "SHORTAPI_BASE_URL": emu.base_url}
        if not env.get("PREFECT_API_URL"):
            env["PREFECT_HOME"] = str(work / "prefect-home")  # a temporary server of its own
        command = [str(Path(sys.executable).with_name("kling-prefect")), "batch", str(prompts), "--json"]
        command += ["--max-concurrency", str(width), "--poll-interval", str(args.poll_interval)]
        done = subprocess.run([*command, "--out", str(work / "out")], capture_output=True, text=True, env=env)
        stats = emu.stats()
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
    result = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    jobs = list(stats.jobs.values())
    makespan = max(j.done_at for j in jobs) - min(j.created_at for j in jobs) if jobs else float("nan")
    ideal = math.ceil(args.prompts / args.account) * seconds
    first_wave = 0 if args.baseline else max(0, min(args.prompts, width) - args.account)
    summary = {
        "exit": done.returncode,
        "stored": result.get("stored"),
        "creates": stats.creates,
        "refusals": stats.account_refusals,
        "refusals_after_first_wave": max(0, stats.account_refusals - first_wave),
        "max_in_flight": stats.max_in_flight,
        "learned": result.get("account_limits"),
        "makespan_s": round(makespan, 2),
        "ideal_s": ideal,
        "ratio": round(makespan / ideal, 3),
    }
    print(json.dumps(summary))
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
