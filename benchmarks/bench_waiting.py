#!/usr/bin/env python
"""Waiting on many Kling jobs: the vendor's plain loop, our client, our Prefect batch flow, on one emulator.

Starts the bundled ShortAPI emulator (job times from its table x log-normal jitter x ``--time-scale``), then
runs the same ``--jobs`` prompts several ways, each in its own fresh process:

- ``a``: the loop of the vendor's documents: ``requests`` create, then a query every 5 s, then download (one
  thread per job, as a user would parallelise it).
- ``b``: :class:`~kling_prefect.client.ShortAPIClient` alone: create, learned wait, download, check the MP4
  decodes, probe it and make a thumbnail (what the flow's store task does), all jobs concurrently.
- ``c``: the :func:`~kling_prefect.flows.batch` flow on a local Prefect server, ``max_concurrency`` = jobs.
- ``w``: ``b`` twice in one process, the second batch measured (what the learned schedule does warm).
- ``cw``: ``c`` again in a new process that starts from the job durations ``c`` saved (the next run of a
  scheduled deployment); every other way starts with no saved durations.
- ``bc`` / ``cc``: ``b`` / ``c`` with callbacks (``SHORTAPI_CALLBACK_URL`` set: a receiver on loopback that
  the emulator POSTs to when each job ends); polling is then only a fallback for lost callbacks.

For each way it prints the wall time against the ideal (the slowest job's create-to-done), queries per job,
the delay from a job's completion to the first query that saw it (p50/p95, unscaled seconds), the process's
peak RSS and its growth during the work, and its CPU seconds (the Prefect server's CPU separately). Then the
``--scaling-ways`` again at each ``--scaling`` size (per-job CPU and memory), and a streaming case: download
and store one result padded to ``--stream-mb`` MiB, reporting the process's peak RSS growth.

Examples:
    ```bash
    ./dev python benchmarks/bench_waiting.py                     # defaults: 200 jobs, scale 0.5
    ./dev python benchmarks/bench_waiting.py --jobs 20 --ways a,b --scaling "" --stream-mb 64
    ```
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

MODEL = "kwaivgi/kling-o3/text-to-video"
API_KEY = "bench-key-0123456789"
RESULT_PREFIX = "BENCH-RESULT "
#: The ways: a/b/c as in the docstring, w = b's second batch in one process, cw = c's next run (a new process
#: starting from the durations c saved), bc/cc = b/c with callbacks.
WAYS = ("a", "b", "c", "w", "cw", "bc", "cc")
CALLBACK_WAYS = ("bc", "cc")
CALLBACK_URL = "http://127.0.0.1:{port}/bench-callbacks"  # the receiver binds 127.0.0.1, any free port
PROMPTS = [
    "A red kite over golden dunes at sunset",
    "A lighthouse in a storm, waves breaking on the rocks",
    "A paper boat drifting down a rainy city gutter",
    "A fox crossing a snowy forest clearing at dawn",
    "Neon signs reflected in puddles on a night street",
    "A hot air balloon rising over green hills",
    "A cup of coffee steaming on a cafe table, morning light",
    "A whale breaching in slow motion under a grey sky",
]


def batch_items(count: int) -> list[dict[str, Any]]:
    """A realistic batch for one model: std and pro, 5 s and 10 s clips (4 job kinds, 90 to 200 s each)."""
    return [
        {
            "prompt": PROMPTS[i % len(PROMPTS)],
            "mode": "pro" if i % 2 else "std",
            "duration": 10 if i % 5 in (1, 2) else 5,
        }
        for i in range(count)
    ]


# --------------------------------------------------------------------------------------------- measuring


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss``, not inherited from the parent across exec)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0), so a phase's own peak can be read afterwards."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssSampler:
    """Samples this process's RSS every few milliseconds (the peak of a phase, when ru_maxrss was set earlier)."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


class LoopLag:
    """How late the event loop runs a 50 ms timer (what delays every query of every wait in that loop)."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.samples: list[float] = []

    async def run(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.samples.append(max(0.0, loop.time() - planned))

    def summary(self) -> dict[str, float]:
        return {"lag_p50_s": percentile(self.samples, 0.5), "lag_p95_s": percentile(self.samples, 0.95)}


LAG = LoopLag()


class MediaCpu:
    """CPU seconds spent in the MP4 checks and thumbnails (``kling_prefect.media``), counted per calling thread.

    The same work runs in ``b`` and in ``c``'s store task; counting it apart leaves the cost of waiting.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def install(self) -> None:
        from kling_prefect import media

        for name in ("is_decodable_mp4", "probe", "make_thumbnail"):
            setattr(media, name, self._timed(getattr(media, name)))

    def _timed(self, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.thread_time() - began

        return timed


MEDIA = MediaCpu()


async def with_lag_monitor(coroutine: Any) -> Any:
    import asyncio

    monitor = asyncio.ensure_future(LAG.run())
    try:
        return await coroutine
    finally:
        monitor.cancel()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its live descendants (from /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += times.get(current, 0.0)
        stack.extend(child for child, parent in parents.items() if parent == current)
    return total


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --------------------------------------------------------------------------------------------- the ways (children)


def way_a(items: list[dict[str, Any]], base_url: str, scale: float, out: Path) -> int:
    """The vendor's documented loop (Python/requests), one thread per job."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    def one(index: int, args: dict[str, Any]) -> bool:
        response = requests.post(f"{base_url}/api/v1/job/create", headers=headers, json={"model": MODEL, "args": args})
        job_id = response.json()["data"]["job_id"]
        while True:
            time.sleep(5 * scale)
            result = requests.get(f"{base_url}/api/v1/job/query?id={job_id}", headers=headers)
            data = result.json()["data"]
            if data["status"] == 2:
                break
            if data["status"] not in (0, 1):
                return False
        with requests.get(data["result"]["videos"][0]["url"], stream=True) as download:
            download.raise_for_status()
            with open(out / f"item-{index}.mp4", "wb") as sink:
                for chunk in download.iter_content(1024 * 1024):
                    sink.write(chunk)
        return True

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return sum(pool.map(one, range(len(items)), items))


def way_b(items: list[dict[str, Any]], base_url: str, scale: float, out: Path) -> int:
    """Our client alone, doing what the flow's tasks do: create, learned wait, download, check, thumbnail."""
    import asyncio

    import anyio.to_thread

    from kling_prefect import media
    from kling_prefect.client import PollPolicy, ShortAPIClient, shared_http_client
    from kling_prefect.credentials import ShortAPICredentials
    from kling_prefect.models import request_model_for
    from kling_prefect.waiting import JobKind

    async def main() -> int:
        poll = PollPolicy.scaled(2.0 * scale)
        credentials = ShortAPICredentials.from_env()  # SHORTAPI_CALLBACK_URL for way bc
        client = ShortAPIClient(
            api_key=API_KEY,
            base_url=base_url,
            poll=poll,
            http_client=shared_http_client("api"),
            download_client=shared_http_client("download"),
            callbacks=credentials.callback_receiver(),
        )

        async def one(index: int, args: dict[str, Any]) -> bool:
            request = request_model_for(MODEL).model_validate(args)
            created = await client.create_job(request)
            job = await client.wait_for_job(
                created.job_id,
                timeout=3600,
                started_at=created.created_at,
                kind=JobKind.of(request),
                callback_url=created.callback_url,
            )
            path = await client.download(job.video_url, out / f"item-{index}.mp4", job_id=job.job_id)
            if not await anyio.to_thread.run_sync(media.is_decodable_mp4, path):
                return False
            await anyio.to_thread.run_sync(media.probe, path)
            await anyio.to_thread.run_sync(media.make_thumbnail, path, path.with_suffix(".thumb.png"))
            return True

        async with client:
            done = await asyncio.gather(*(one(i, args) for i, args in enumerate(items)))
        return sum(done)

    return asyncio.run(with_lag_monitor(main()))


def way_c(items: list[dict[str, Any]], base_url: str, scale: float, out: Path) -> int:
    """The Prefect batch flow (needs PREFECT_API_URL), every job in flight at once."""
    import asyncio

    from kling_prefect.flows import batch

    flow_run = batch(
        prompts=items,
        model=MODEL,
        max_concurrency=len(items),
        run_key=f"bench-{len(items)}-{uuid.uuid4().hex[:8]}",
        output_dir=str(out),
        poll_interval=2.0 * scale,
        timeout_seconds=3600,
        fail_on_error=False,
    )
    result = asyncio.run(with_lag_monitor(flow_run))  # an async flow: calling it gives a coroutine
    return sum(1 for record in result.records if record.status == "stored")


def stream_case(base_url: str, out: Path) -> dict[str, Any]:
    """Create one job (its result padded to the emulator's size), then download and store it with the store task."""
    import asyncio

    from prefect.logging import disable_run_logger

    from kling_prefect.client import PollPolicy, ShortAPIClient
    from kling_prefect.models import request_model_for
    from kling_prefect.storage import StorageSpec
    from kling_prefect.tasks import FinishedJob, SubmittedJob, store_kling_video

    async def main() -> dict[str, Any]:
        request = request_model_for(MODEL).model_validate({"prompt": PROMPTS[0], "duration": 5, "mode": "std"})
        # The emulator runs 1000x fast here (its result URLs expire 1000x sooner): so does the wait.
        async with ShortAPIClient(api_key=API_KEY, base_url=base_url, poll=PollPolicy.scaled(0.002)) as client:
            created = await client.create_job(request)
            job = await client.wait_for_job(created, timeout=600)
        submitted = SubmittedJob(
            job_id=created.job_id,
            model=MODEL,
            run_key="stream",
            step="big",
            args=request.to_args(),
            estimated_cost=created.estimated_cost,
            amount=created.amount,
            video_seconds=created.video_seconds,
            created_at=created.created_at,
        )
        finished = FinishedJob(submitted=submitted, video_urls=job.video_urls, finished_at=time.time())
        reset = reset_peak_rss()
        baseline = rss_mb()
        cpu0, t0 = cpu_seconds(), time.monotonic()
        with RssSampler() as sampler, disable_run_logger():
            stored = await store_kling_video.fn(finished, StorageSpec(directory=str(out)))
        peak = max(peak_rss_mb(), sampler.peak) if reset else sampler.peak
        return {
            "bytes": stored.video.size_bytes,
            "seconds": time.monotonic() - t0,
            "cpu_s": cpu_seconds() - cpu0,
            "baseline_mb": baseline,
            "peak_mb": peak,
            "growth_mb": max(0.0, peak - baseline),
        }

    return asyncio.run(main())


def child_main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_url = os.environ["SHORTAPI_BASE_URL"]
    if args.child == "stream":
        print(RESULT_PREFIX + json.dumps(stream_case(base_url, out)), flush=True)
        return
    way = {"a": way_a, "b": way_b, "c": way_c, "w": way_b, "cw": way_c, "bc": way_b, "cc": way_c}[args.child]
    items = batch_items(args.jobs)
    if args.child == "w":  # warm: a first batch teaches the process; the second one is measured
        way_b(items, base_url, args.time_scale, out / "first")
    # Import everything the way needs before the baseline (the work, not the imports, is measured).
    if args.child == "a":
        import requests  # noqa: F401
    elif args.child in ("b", "bc"):
        import kling_prefect.client
        import kling_prefect.media
    else:
        import kling_prefect.flows  # noqa: F401
    if args.child != "a":
        MEDIA.install()
    reset = reset_peak_rss()
    baseline, cpu0, t0 = rss_mb(), cpu_seconds(), time.monotonic()
    with RssSampler(period=0.05) as sampler:
        stored = way(items, base_url, args.time_scale, out)
    t1 = time.monotonic()
    report = {
        "way": args.child,
        "jobs": len(items),
        "stored": stored,
        "start": t0,
        "end": t1,
        "wall_s": t1 - t0,
        "cpu_s": cpu_seconds() - cpu0,
        "cpu_total_s": cpu_seconds(),
        "baseline_mb": baseline,
        "peak_mb": max(peak_rss_mb(), sampler.peak) if reset else sampler.peak,
        "media_cpu_s": MEDIA.seconds,
        **(LAG.summary() if LAG.samples else {}),
    }
    print(RESULT_PREFIX + json.dumps(report), flush=True)


# --------------------------------------------------------------------------------------------- parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrefectServer:
    """``prefect server start`` in a subprocess with its own PREFECT_HOME (SQLite), for way ``c``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }

    def __enter__(self) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "server.log", "wb")  # closed when the process ends
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--no-ui", "--analytics-off"]
        self.process = subprocess.Popen(
            command, env={**os.environ, **self.env()}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited; see {self.home / 'server.log'}")
            time.sleep(0.5)
        raise RuntimeError("prefect server did not answer /api/health within 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()


def prerender(workdir: Path, jobs: int) -> None:
    """Render every distinct result once, so no way pays the emulator's rendering (a server-side cost)."""
    import httpx

    from kling_prefect.emulator import Emulator

    distinct = {json.dumps(item, sort_keys=True): item for item in batch_items(jobs)}
    distinct[json.dumps({"stream": 1})] = {"prompt": PROMPTS[0], "duration": 5, "mode": "std"}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    # Jobs of ~20 ms, result URLs valid for result_ttl x time_scale = 1000 s.
    emulator = Emulator(time_scale=1e-4, seed=0, workdir=workdir, result_ttl=1e7)
    with emulator, httpx.Client(timeout=300) as http:
        for args in distinct.values():
            body = {"model": MODEL, "args": args}
            created = http.post(emulator.base_url + "/api/v1/job/create", json=body, headers=headers).json()
            while True:
                query = {"id": created["data"]["job_id"]}
                data = http.get(emulator.base_url + "/api/v1/job/query", params=query, headers=headers).json()["data"]
                if data["status"] == 2:
                    break
                time.sleep(0.01)
            http.get(data["result"]["videos"][0]["url"]).raise_for_status()


def run_child(
    kind: str, jobs: int, args: argparse.Namespace, env: dict[str, str], workdir: Path
) -> tuple[dict[str, Any], str]:
    out = workdir / f"out-{kind}-{jobs}-{uuid.uuid4().hex[:6]}"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--jobs", str(jobs)]
    command += ["--time-scale", repr(args.time_scale), "--out", str(out)]
    log_path = workdir / f"child-{kind}-{jobs}.log"
    with open(log_path, "w") as log:
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"way {kind} with {jobs} jobs failed (exit {done.returncode}):\n{tail}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(lines[-1][len(RESULT_PREFIX) :]), str(log_path)


def measure_way(
    way: str,
    jobs: int,
    args: argparse.Namespace,
    emulator: Any,
    env: dict[str, str],
    workdir: Path,
    server: PrefectServer | None,
) -> dict[str, Any]:
    emulator.reset_stats()
    server_cpu0 = tree_cpu_seconds(server.process.pid) if server and server.process else None
    report, _ = run_child(way, jobs, args, env, workdir)
    stats = emulator.stats()
    scale = args.time_scale
    # Way w runs two batches in one process: only the second (created after its measured start) counts.
    measured = [job for job in stats.jobs.values() if way != "w" or job.created_at >= report["start"]]
    spans = [job.done_at - job.created_at for job in measured]
    delays = [
        (job.first_terminal_seen_at - job.done_at) / scale for job in measured if job.first_terminal_seen_at is not None
    ]
    ideal = max(spans) if spans else math.nan
    first_create = min((job.created_at for job in measured), default=0.0)
    per_job = [
        {
            "kind": f"{job.args.get('mode')}-{job.args.get('duration')}s",
            "created_s": job.created_at - first_create,
            "duration_s": (job.done_at - job.created_at) / scale,
            "detect_s": None
            if job.first_terminal_seen_at is None
            else (job.first_terminal_seen_at - job.done_at) / scale,
            "queries": job.queries,
        }
        for job in measured
    ]
    queries = sum(job.queries for job in measured)
    result = {
        **report,
        "label": f"{way}@{jobs}",
        "ideal_s": ideal,
        "wall_over_ideal": report["wall_s"] / ideal,
        "creates": len(measured),
        "queries": queries,
        "queries_per_job": queries / max(1, len(measured)),
        "connections": stats.connections,
        "detect_p50_s": percentile(delays, 0.5),
        "detect_p95_s": percentile(delays, 0.95),
        "detect_max_s": max(delays) if delays else math.nan,
        "growth_mb": max(0.0, report["peak_mb"] - report["baseline_mb"]),
        "cpu_ms_per_job": 1000 * report["cpu_s"] / jobs,
        "wait_cpu_ms_per_job": 1000 * (report["cpu_s"] - report.get("media_cpu_s", 0.0)) / jobs,
        "growth_kb_per_job": 1024 * max(0.0, report["peak_mb"] - report["baseline_mb"]) / jobs,
    }
    if server_cpu0 is not None and server and server.process:
        result["server_cpu_s"] = tree_cpu_seconds(server.process.pid) - server_cpu0
    if args.json:
        result["per_job"] = per_job
    return result


def print_table(rows: list[dict[str, Any]], scale: float) -> None:
    header = (
        f"{'way':<8}{'jobs':>5}{'ok':>5}{'wall s':>8}{'ideal s':>9}{'wall/ideal':>11}{'queries/job':>12}"
        f"{'detect p50':>11}{'detect p95':>11}{'peak MB':>9}{'growth MB':>10}{'KB/job':>8}{'CPU s':>7}"
        f"{'ms/job':>8}{'media CPU s':>12}{'server CPU s':>13}{'conns':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        server = row.get("server_cpu_s")
        print(
            f"{row['label']:<8}{row['jobs']:>5}{row['stored']:>5}{row['wall_s']:>8.1f}{row['ideal_s']:>9.1f}"
            f"{row['wall_over_ideal']:>11.3f}{row['queries_per_job']:>12.2f}{row['detect_p50_s']:>11.2f}"
            f"{row['detect_p95_s']:>11.2f}{row['peak_mb']:>9.0f}{row['growth_mb']:>10.1f}"
            f"{row['growth_kb_per_job']:>8.0f}{row['cpu_s']:>7.1f}{row['cpu_ms_per_job']:>8.1f}"
            f"{row.get('media_cpu_s', 0.0):>12.1f}"
            f"{(f'{server:.1f}' if server is not None else '-'):>13}{row['connections']:>7}"
        )
    print(f"(detect = first query that saw a job done - its completion, unscaled: seconds / {scale};")
    print(" media CPU s = part of CPU s spent checking MP4s and making thumbnails, in b and in c's store task)")


def print_targets(rows: list[dict[str, Any]], jobs: int) -> None:
    by = {row["label"]: row for row in rows}
    a = by.get(f"a@{jobs}")
    checks: list[tuple[str, str, bool]] = []
    # The flow ways, each against its client twin: c (polling) vs b, cc (callbacks) vs bc.
    for flow_way, client_way in (("c", "b"), ("cc", "bc")):
        c, b = by.get(f"{flow_way}@{jobs}"), by.get(f"{client_way}@{jobs}")
        if not c:
            continue
        ratio = c["wall_over_ideal"]
        name = f"({flow_way})"
        checks.append((f"{name} wall within 1.15x of ideal at {jobs} jobs", f"{ratio:.3f}x", ratio <= 1.15))
        checks.append((f"{name} detect p95 under 3 s (unscaled)", f"{c['detect_p95_s']:.2f} s", c["detect_p95_s"] < 3))
        if a:
            share = c["queries_per_job"] / a["queries_per_job"]
            checks.append((f"{name} queries under a third of (a)'s", f"{share:.2f} of (a)", share < 1 / 3))
        if b:
            overhead = (c["wall_s"] - b["wall_s"]) / b["wall_s"]
            checks.append(
                (f"Prefect overhead {name} vs ({client_way}) under 20% of wall", f"{overhead:+.1%}", overhead < 0.2)
            )
    for reference in ("b", "bc", "w", "cw"):
        row = by.get(f"{reference}@{jobs}")
        if row and a:
            share = row["queries_per_job"] / a["queries_per_job"]
            p95 = row["detect_p95_s"]
            checks.append((f"({reference}) queries under 1/3 of (a)'s (ref.)", f"{share:.2f} of (a)", share < 1 / 3))
            checks.append((f"({reference}) detect p95 under 3 s (ref.)", f"{p95:.2f} s", p95 < 3))
    for way in ("c", "cc"):
        scaling = sorted((row for row in rows if row["way"] == way), key=lambda row: row["jobs"])
        if len(scaling) < 2:
            continue
        cpu = ", ".join(
            f"{row['jobs']}: {row['cpu_ms_per_job']:.0f} ({row['wait_cpu_ms_per_job']:.0f} without media)"
            for row in scaling
        )
        mem = ", ".join(f"{row['jobs']}: {row['growth_kb_per_job']:.0f}" for row in scaling)
        first, last = scaling[0], scaling[-1]
        flat_cpu = last["cpu_ms_per_job"] <= 1.25 * first["cpu_ms_per_job"]
        flat_mem = last["growth_kb_per_job"] <= 1.25 * first["growth_kb_per_job"]
        checks.append((f"({way}) CPU ms per job flat across sizes", cpu, flat_cpu))
        checks.append((f"({way}) RSS growth KB per job flat across sizes", mem, flat_mem))
    if checks:
        print("\ntargets:")
        for name, value, ok in checks:
            print(f"  [{'met' if ok else 'MISSED'}] {name}: {value}")


def parent_main(args: argparse.Namespace) -> int:
    from kling_prefect.emulator import Emulator

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kling-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ways = [w for w in args.ways.split(",") if w]
    scaling = [int(n) for n in args.scaling.split(",") if n.strip()]
    scaling_ways = [w for w in args.scaling_ways.split(",") if w] if scaling else []
    need_server = any(w in ("c", "cw", "cc") for w in ways + scaling_ways)
    if "cw" in ways and "c" not in ways:
        ways.insert(ways.index("cw"), "c")  # cw starts from what c saved
    print(
        f"benchmark: {args.jobs} jobs, time scale {args.time_scale}, timing jitter {args.timing_jitter}, "
        f"seed {args.seed}, ways {','.join(ways) or '-'}, scaling {scaling or '-'}, stream {args.stream_mb} MiB, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    renders = workdir / "emulator"
    started = time.monotonic()
    prerender(renders, max([args.jobs, *scaling]))
    print(f"pre-rendered results in {time.monotonic() - started:.1f} s", flush=True)
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SHORTAPI_")) and k != "DO_NOT_TRACK"
    }
    base_env["KLING_PREFECT_DURATIONS"] = "off"  # nothing learned in earlier runs or elsewhere on this machine
    rows: list[dict[str, Any]] = []
    failures = 0
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(
            Emulator(time_scale=args.time_scale, timing_jitter=args.timing_jitter, seed=args.seed, workdir=renders)
        )
        server = stack.enter_context(PrefectServer(workdir / "prefect-server")) if need_server else None
        env = {**base_env, "SHORTAPI_KEY": API_KEY, "SHORTAPI_BASE_URL": emulator.base_url}
        if server is not None:
            print(f"prefect server at {server.url}", flush=True)
            env.update(server.env())
            env["PREFECT_API_URL"] = server.url
        plan = [(way, args.jobs) for way in ways] + [
            (way, n) for way in scaling_ways for n in scaling if not (way in ways and n == args.jobs)
        ]
        for way, jobs in plan:
            child_env = dict(env)
            if way in CALLBACK_WAYS:
                child_env["SHORTAPI_CALLBACK_URL"] = CALLBACK_URL
            # Learned durations: each way writes its own file; cw starts from a copy of what c@jobs wrote.
            durations = workdir / f"durations-{way}-{jobs}.json"
            if way == "cw":
                saved = workdir / f"durations-c-{jobs}.json"
                if saved.exists():
                    shutil.copyfile(saved, durations)
            child_env["KLING_PREFECT_DURATIONS"] = str(durations)
            if server is not None:
                home = workdir / f"prefect-client-{way}-{jobs}"
                child_env["PREFECT_HOME"] = str(home)
                child_env["PREFECT_LOCAL_STORAGE_PATH"] = str(home / "storage")
            print(f"running {way} with {jobs} jobs (load {os.getloadavg()[0]:.2f})...", flush=True)
            try:
                row = measure_way(way, jobs, args, emulator, child_env, workdir, server)
            except RuntimeError as exc:
                print(f"  FAILED: {exc}", flush=True)
                failures += 1
                continue
            rows.append(row)
            print(
                f"  {row['wall_s']:.1f} s ({row['wall_over_ideal']:.3f}x ideal), {row['queries_per_job']:.2f} "
                f"queries/job, detect p95 {row['detect_p95_s']:.2f} s, {row['cpu_s']:.1f} CPU s"
                + (
                    f", loop lag p50/p95 {row['lag_p50_s'] * 1000:.0f}/{row['lag_p95_s'] * 1000:.0f} ms"
                    if "lag_p50_s" in row
                    else ""
                ),
                flush=True,
            )
    print()
    if rows:
        print_table(rows, args.time_scale)
        print_targets(rows, args.jobs)
    stream = None
    if args.stream_mb > 0:
        size = int(args.stream_mb * 2**20)
        with Emulator(time_scale=0.001, seed=args.seed, workdir=renders, result_padding_bytes=size) as emulator:
            env = {**base_env, "SHORTAPI_KEY": API_KEY, "SHORTAPI_BASE_URL": emulator.base_url}
            env["PREFECT_HOME"] = str(workdir / "prefect-stream")
            stream, _ = run_child("stream", 1, args, env, workdir)
        print(
            f"\nstreaming download + store of one {stream['bytes'] / 2**20:.0f} MiB result: "
            f"RSS growth {stream['growth_mb']:.1f} MB (peak {stream['peak_mb']:.0f} MB, baseline "
            f"{stream['baseline_mb']:.0f} MB), {stream['seconds']:.1f} s, {stream['cpu_s']:.1f} CPU s"
        )
        print(f"  [{'met' if stream['growth_mb'] < 100 else 'MISSED'}] peak RSS growth under 100 MB")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "stream": stream}, indent=2))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per way (default 200)")
    parser.add_argument("--time-scale", type=float, default=0.5, help="emulator job-time multiplier (default 0.5)")
    parser.add_argument("--timing-jitter", type=float, default=0.1, help="log-normal sigma of job times (0.1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated subset of {','.join(WAYS)} (all)")
    parser.add_argument("--scaling", default="50,500", help="extra job counts for the scaling ways (50,500)")
    parser.add_argument("--scaling-ways", default="c,cc", help="ways run at each --scaling size (default c,cc)")
    parser.add_argument("--stream-mb", type=float, default=1024, help="streaming case size in MiB (0: skip)")
    parser.add_argument("--workdir", help="keep outputs and logs here (default: a temporary directory)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", choices=[*WAYS, "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
