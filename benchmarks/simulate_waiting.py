#!/usr/bin/env python
"""The query schedule on simulated time: queries per job against detection delay, without wall-clock noise.

Runs the real :class:`~kling_prefect.client.PollPolicy` and :class:`~kling_prefect.waiting.DurationModel` in
an event simulation of a batch created at once (the benchmark's batch: kling-o3, std/pro, 5/10 s, job times
from the emulator's table x log-normal jitter), including the wake-ups that re-plan every waiting job of a
kind when one of them completes. Nothing sleeps; a run takes a fraction of a second.

For each spread (``--sigmas``) it prints the vendor's plain loop (a query every 5 s), a cold batch (a fresh
process: nothing learned), and a warm one (a second batch in the same process), and, for the cold batch,
the effect of the largest interval used before anything is learned (``cold_max_interval``).

Examples:
    ```bash
    ./dev python benchmarks/simulate_waiting.py
    ./dev python benchmarks/simulate_waiting.py --jobs 500 --sigmas 0.05,0.1 --min-interval 2.5
    ```
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_waiting import MODEL, batch_items

from kling_prefect.client import PollPolicy
from kling_prefect.emulator import base_job_seconds
from kling_prefect.waiting import DurationModel, JobKind, simulate_waits


def make_batch(jobs: int, sigma: float, rng: random.Random) -> list[tuple[JobKind, float]]:
    batch = []
    for item in batch_items(jobs):
        base = base_job_seconds(MODEL, mode=item["mode"], video_seconds=item["duration"], has_audio=False)
        batch.append((JobKind(MODEL, item["mode"], item["duration"]), base * math.exp(rng.gauss(0, sigma))))
    return batch


def simulate(policy: PollPolicy, model: DurationModel, batch: list[tuple[JobKind, float]], seed: int) -> dict[str, Any]:
    """Mean queries and detection delays of ``batch`` (kind, duration), all created at time 0, sharing ``model``."""
    waits = simulate_waits(policy, model, batch, seed)
    delays = sorted(w.delay for w in waits)
    return {
        "queries": statistics.fmean(w.queries for w in waits),
        "p50": delays[len(delays) // 2],
        "p95": delays[int(0.95 * (len(delays) - 1))],
    }


def plain_loop(batch: list[tuple[JobKind, float]], every: float = 5.0) -> dict[str, Any]:
    queries = [math.ceil(duration / every) for _, duration in batch]
    delays = sorted(every * math.ceil(duration / every) - duration for _, duration in batch)
    return {
        "queries": statistics.fmean(queries),
        "p50": delays[len(delays) // 2],
        "p95": delays[int(0.95 * len(delays))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--sigmas", default="0.05,0.1,0.25", help="log-normal spreads of job times")
    parser.add_argument("--min-interval", type=float, default=2.0, help="PollPolicy.min_interval (poll_interval)")
    parser.add_argument("--caps", default="30,20,10", help="cold_max_interval values (for 2 s) on the cold batch")
    parser.add_argument("--seeds", type=int, default=5, help="runs averaged per line")
    args = parser.parse_args(argv)
    policy = PollPolicy.scaled(args.min_interval)
    print(f"{args.jobs} jobs created at once, 4 kinds, min_interval {args.min_interval} s; mean of {args.seeds} runs")
    print(f"{'sigma':>6} {'schedule':<34}{'queries/job':>12}{'vs plain':>9}{'detect p50':>11}{'detect p95':>11}")

    def line(sigma: float, name: str, runs: list[dict[str, Any]], plain: float) -> None:
        queries = statistics.fmean(r["queries"] for r in runs)
        p50 = statistics.fmean(r["p50"] for r in runs)
        p95 = statistics.fmean(r["p95"] for r in runs)
        print(f"{sigma:>6} {name:<34}{queries:>12.2f}{queries / plain:>9.2f}{p50:>11.2f}{p95:>11.2f}")

    for sigma in (float(s) for s in args.sigmas.split(",")):
        batches = [
            (make_batch(args.jobs, sigma, random.Random(seed)), make_batch(args.jobs, sigma, random.Random(seed + 99)))
            for seed in range(args.seeds)
        ]
        plains = [plain_loop(first) for first, _ in batches]
        plain = statistics.fmean(r["queries"] for r in plains)
        line(sigma, "plain loop, every 5 s", plains, plain)
        for cap in (float(c) for c in args.caps.split(",")):
            capped = dataclasses.replace(policy, cold_max_interval=cap * args.min_interval / 2.0)
            runs = [simulate(capped, DurationModel(), first, seed) for seed, (first, _) in enumerate(batches)]
            line(sigma, f"cold, cold_max_interval {capped.cold_max_interval:g} s", runs, plain)
        warm = []
        for seed, (first, second) in enumerate(batches):
            model = DurationModel()
            simulate(policy, model, first, seed)
            warm.append(simulate(policy, model, second, seed + 1000))
        line(sigma, "warm (second batch, same process)", warm, plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
