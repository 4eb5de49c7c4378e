#!/usr/bin/env python
"""Waiting at scale, against a vendor whose jobs take 30 s +- 30% (not the emulator's model table).

Every way runs in a fresh process against its own emulator (same settings, same seed), whose jobs take
``--job-seconds`` x uniform(1 - ``--spread``, 1 + ``--spread``) whatever the model: our priors (the model's
typical times, 135 s for kling-o3 pro 5 s) are then off by a factor of 4, as they may be at a real vendor.
Times are compressed by ``--time-scale`` (intervals and the query cap scale with it); delays are reported
unscaled.

Ways:

- ``plain``: the documents' loop: create, then a query every 5 s (one thread per job).
- ``cold``: the batch flow, ``poll_interval`` 5 s, a fresh ``PREFECT_HOME`` (no learned durations).
- ``warm``: the same, starting from the durations ``cold`` saved (the next run of a deployment).
- ``default``: the batch flow at the default ``poll_interval`` (2 s), fresh.
- ``callbacks``: ``cold`` with ``SHORTAPI_CALLBACK_URL`` set (a receiver on loopback that the emulator POSTs to
  when each job ends): polling is then a fallback for lost callbacks.
- ``capped@N`` / ``uncapped@N``: the batch flow with N jobs at the default interval, with the default query cap
  (10 per second) and without any: the largest number of queries in any 1-second window, and detection p95.
- ``memory@N``: the batch flow's process RSS growth with N jobs (``--memory 100,1000``).

Examples:
    ```bash
    ./dev python benchmarks/bench_scale.py                       # the whole set (~25 min)
    ./dev python benchmarks/bench_scale.py --ways plain,cold,warm --jobs 40
    ```
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_waiting import (
    CALLBACK_URL,
    PROMPTS,
    PrefectServer,
    cpu_seconds,
    percentile,
    reset_peak_rss,
    rss_mb,
)

MODEL = "kwaivgi/kling-o3/text-to-video"
API_KEY = "bench-key-0123456789"
RESULT = "BENCH-SCALE "
DEFAULT_CAP = 10.0


def items(count: int) -> list[dict[str, Any]]:
    """One kind of job (o3 pro 5 s), a few distinct prompts (the emulator renders each distinct clip once)."""
    return [{"prompt": PROMPTS[i % len(PROMPTS)], "duration": 5, "mode": "pro"} for i in range(count)]


# --------------------------------------------------------------------------------------------- children


def plain_loop(jobs: list[dict[str, Any]], base_url: str, every: float) -> int:
    """The documents' loop in Python/requests, one thread per job: create, query every ``every`` s."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    headers = {"Authorization": f"Bearer {API_KEY}"}

    def one(args: dict[str, Any]) -> bool:
        created = requests.post(
            f"{base_url}/api/v1/job/create", headers=headers, json={"model": MODEL, "args": args}, timeout=30
        ).json()
        job_id = created["data"]["job_id"]
        while True:
            time.sleep(every)
            data = requests.get(f"{base_url}/api/v1/job/query?id={job_id}", headers=headers, timeout=30).json()["data"]
            if data["status"] == 2:
                return True
            if data["status"] not in (0, 1):
                return False

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return sum(pool.map(one, jobs))


def flow_batch(jobs: list[dict[str, Any]], poll: float, out: Path, concurrency: int) -> int:
    from kling_prefect.flows import batch

    result = asyncio.run(
        batch(
            prompts=jobs,
            model=MODEL,
            max_concurrency=concurrency,
            run_key=f"scale-{len(jobs)}-{uuid.uuid4().hex[:8]}",
            output_dir=str(out),
            poll_interval=poll,
            timeout_seconds=7200,
            fail_on_error=False,
        )
    )
    return sum(1 for record in result.records if record.stored)


def child(args: argparse.Namespace) -> None:
    base_url = os.environ["SHORTAPI_BASE_URL"]
    jobs = items(args.jobs)
    scale = args.time_scale
    out = Path(args.out)
    if args.child != "plain":
        import kling_prefect.flows  # noqa: F401 - imported before the baseline: the work is measured, not imports
    reset_peak_rss()
    baseline, cpu0, began = rss_mb(), cpu_seconds(), time.monotonic()
    peak = baseline
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_mb())
            time.sleep(0.1)

    import threading

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if args.child == "plain":
        stored = plain_loop(jobs, base_url, 5.0 * scale)
    else:
        stored = flow_batch(jobs, args.poll * scale, out, args.concurrency or len(jobs))
    sampling = False
    sampler.join()
    report = {
        "stored": stored,
        "wall_s": time.monotonic() - began,
        "cpu_s": cpu_seconds() - cpu0,
        "baseline_mb": baseline,
        "peak_mb": max(peak, rss_mb()),
    }
    print(RESULT + json.dumps(report), flush=True)


# --------------------------------------------------------------------------------------------- parent


def run_way(
    label: str,
    kind: str,
    jobs: int,
    poll: float,
    args: argparse.Namespace,
    workdir: Path,
    server: PrefectServer,
    *,
    durations: Path | None,
    cap: float | None,
    concurrency: int = 0,
    callbacks: bool = False,
) -> dict[str, Any]:
    from kling_prefect.emulator import Emulator

    rng = random.Random(args.seed)
    spread = args.spread

    def job_time(model: str, job_args: Any) -> float:
        return args.job_seconds * rng.uniform(1 - spread, 1 + spread)

    scale = args.time_scale
    out = workdir / f"out-{label}"
    env = {
        **os.environ,
        **server.env(),
        "PREFECT_HOME": str(workdir / f"home-{label}"),  # each run its own (results, caches); the server is shared
        "PREFECT_API_URL": server.url,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "SHORTAPI_KEY": API_KEY,
        "KLING_PREFECT_DURATIONS": str(durations) if durations else "off",
        # The query cap, like every interval, in scaled time: 10 a second is 10 / scale in compressed seconds.
        "SHORTAPI_MAX_QUERIES_PER_SECOND": "0" if cap is None else repr(cap / scale),
    }
    if callbacks:
        env["SHORTAPI_CALLBACK_URL"] = CALLBACK_URL
    else:
        env.pop("SHORTAPI_CALLBACK_URL", None)
    with Emulator(time_scale=scale, seed=args.seed, job_time=job_time, workdir=workdir / "renders") as emulator:
        env["SHORTAPI_BASE_URL"] = emulator.base_url
        command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--jobs", str(jobs)]
        command += ["--time-scale", repr(scale), "--poll", repr(poll), "--out", str(out)]
        command += ["--concurrency", str(concurrency)]
        log = workdir / f"child-{label}.log"
        with open(log, "w") as sink:
            done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=sink, text=True, timeout=7200)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{label} failed (exit {done.returncode}):\n{log.read_text()[-3000:]}")
        report = json.loads(lines[-1][len(RESULT) :])
        stats = emulator.stats()
    measured = list(stats.jobs.values())
    delays = [(j.first_terminal_seen_at - j.done_at) / scale for j in measured if j.first_terminal_seen_at]
    window = max_in_window(stats.query_times, scale)
    return {
        "label": label,
        "jobs": len(measured),
        **report,
        "queries_per_job": sum(j.queries for j in measured) / max(1, len(measured)),
        "p50": percentile(delays, 0.5),
        "p95": percentile(delays, 0.95),
        "max_window": window,
        "cap": cap,
        "growth_mb": report["peak_mb"] - report["baseline_mb"],
    }


def max_in_window(times: list[float], scale: float) -> int:
    """The most queries in any 1-second window (scaled: ``scale`` seconds of the emulator's clock)."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= scale:
            start += 1
        most = max(most, end - start + 1)
    return most


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs of the plain/cold/warm/default ways (40)")
    parser.add_argument("--job-seconds", type=float, default=30.0, help="the vendor's typical job time (30)")
    parser.add_argument("--spread", type=float, default=0.3, help="job times uniform in +-spread (0.3)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="clock compression (1.0: real time; below 1 the cold ways meet priors that are too slow by 1/scale)",
    )
    parser.add_argument(
        "--ways", default="plain,cold,warm,default,callbacks", help="of plain,cold,warm,default,callbacks"
    )
    parser.add_argument("--capped", default="150,200,1000", help="job counts of the capped/uncapped pairs")
    parser.add_argument("--memory", default="100,1000", help="job counts of the memory ways")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="keep outputs and logs here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory-concurrency", type=int, default=50, help="max_concurrency of the memory ways (50: the batch holds 50)"
    )
    parser.add_argument(
        "--capped-concurrency", type=int, default=200, help="max_concurrency of the capped/uncapped ways (200)"
    )
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kling-bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ways = [w for w in args.ways.split(",") if w]
    rows: list[dict[str, Any]] = []
    print(
        f"jobs of {args.job_seconds:g} s +-{args.spread:.0%} (uniform), time scale {args.time_scale}, "
        f"seed {args.seed}; workdir {workdir}",
        flush=True,
    )
    with PrefectServer(workdir / "prefect-server") as server:
        durations = workdir / "durations-cold.json"
        plan: list[tuple[str, str, int, float, Path | None, float | None, int]] = []
        for way in ways:
            if way == "plain":
                plan.append(("plain", "plain", args.jobs, 5.0, None, None, 0))
            elif way == "cold":
                plan.append(("cold", "flow", args.jobs, 5.0, durations, DEFAULT_CAP, 0))
            elif way == "warm":
                plan.append(("warm", "flow", args.jobs, 5.0, durations, DEFAULT_CAP, 0))
            elif way == "default":
                plan.append(("default", "flow", args.jobs, 2.0, workdir / "durations-default.json", DEFAULT_CAP, 0))
            elif way == "callbacks":
                plan.append(("callbacks", "flow", args.jobs, 5.0, workdir / "durations-cb.json", DEFAULT_CAP, 0))
        for count in [int(c) for c in args.capped.split(",") if c]:
            concurrency = min(count, args.capped_concurrency)
            plan.append(
                (f"capped@{count}", "flow", count, 2.0, workdir / f"d-c-{count}.json", DEFAULT_CAP, concurrency)
            )
            plan.append((f"uncapped@{count}", "flow", count, 2.0, workdir / f"d-u-{count}.json", None, concurrency))
        for count in [int(c) for c in args.memory.split(",") if c]:
            plan.append((f"memory@{count}", "flow", count, 2.0, None, DEFAULT_CAP, args.memory_concurrency))
        for label, kind, jobs, poll, file, cap, concurrency in plan:
            began = time.monotonic()
            row = run_way(
                label,
                kind,
                jobs,
                poll,
                args,
                workdir,
                server,
                durations=file,
                cap=cap,
                concurrency=concurrency,
                callbacks=label == "callbacks",
            )
            rows.append(row)
            print(
                f"{label:<14} jobs {row['jobs']:>5} stored {row['stored']:>5}"
                f"  queries/job {row['queries_per_job']:6.2f}"
                f"  detect p50 {row['p50']:6.2f} s p95 {row['p95']:6.2f} s  max q in 1 s {row['max_window']:>4}"
                f"  RSS growth {row['growth_mb']:7.1f} MB  ({time.monotonic() - began:.0f} s)",
                flush=True,
            )
    summarize(rows)
    (workdir / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


def summarize(rows: list[dict[str, Any]]) -> None:
    by = {row["label"]: row for row in rows}
    plain = by.get("plain")
    print()
    if plain:
        for label, target_q, target_p in (
            ("cold", 0.8, 1.1),
            ("warm", 0.5, 1.0),
            ("default", None, None),
            ("callbacks", None, None),
        ):
            row = by.get(label)
            if row is None:
                continue
            q, p = row["queries_per_job"] / plain["queries_per_job"], row["p95"] / plain["p95"]
            goal = "" if target_q is None else f"  (targets <= {target_q}x, p95 <= {target_p}x)"
            print(f"{label:<8} vs plain: queries {q:.2f}x, detection p95 {p:.2f}x{goal}")
    for label, row in by.items():
        if label.startswith("capped@"):
            free = by.get("un" + label)
            cap = row["cap"]
            ratio = row["p95"] / free["p95"] if free and free["p95"] else math.nan
            print(
                f"{label:<14} most queries in a 1 s window {row['max_window']} (cap {cap:g}, +20% = {cap * 1.2:g});"
                f" uncapped {free['max_window'] if free else '-'}; detection p95 {row['p95']:.2f} s vs uncapped "
                f"{free['p95'] if free else math.nan:.2f} s ({ratio:.2f}x, target <= 2x)"
            )
    memory = sorted((row for row in rows if row["label"].startswith("memory@")), key=lambda r: r["jobs"])
    if len(memory) >= 2:
        small, large = memory[0], memory[-1]
        print(
            f"RSS growth {small['jobs']} -> {large['jobs']} jobs: {small['growth_mb']:.1f} MB -> "
            f"{large['growth_mb']:.1f} MB (+{large['growth_mb'] - small['growth_mb']:.1f} MB; target < 100 MB)"
        )


if __name__ == "__main__":
    raise SystemExit(main())
