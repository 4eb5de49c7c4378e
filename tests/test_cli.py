"""The ``kling-prefect`` console script, run as a user runs it: a subprocess, over HTTP to the emulator.

What a newcomer meets: it starts on a fresh ``PREFECT_HOME`` while other processes load the CPU; a successful
run prints a few lines; every expected failure prints one line naming what was wrong and the fix, with no
traceback; the progress display has a row per clip on a terminal and plain lines elsewhere; every option has
help; prices are written one way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import kling_prefect
from kling_prefect import KlingO1ImageToVideo, media
from kling_prefect.cli import build_parser
from kling_prefect.emulator import Emulator
from kling_prefect.models import REQUEST_MODELS, request_model_for
from kling_prefect.planning import PLACEHOLDER_FRAME
from kling_prefect.pricing import estimate_cost, format_usd

from .conftest import TEST_KEY
from .helpers import CLI, run_cli, run_cli_in_pty, screen_text

REPO = Path(__file__).resolve().parents[1]
MONEY = re.compile(r"\$\d[\d,]*\.\d+")


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prefect_env(prefect_server, emulator) -> dict[str, str]:
    """Environment for a CLI process: the session's Prefect server and result storage, the emulator."""
    from prefect.settings import PREFECT_API_URL

    return {
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "SHORTAPI_KEY": TEST_KEY,
        "SHORTAPI_BASE_URL": emulator.base_url,
    }


def fresh_home_env(home: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: no Prefect, ShortAPI or package settings, a PREFECT_HOME never used."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SHORTAPI_", "KLING_PREFECT_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **extra)
    return env


# --------------------------------------------------------------------------------------------- complete commands


def test_version_and_help_on_every_option() -> None:
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"kling-prefect {kling_prefect.__version__}"

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) >= {"demo", "chain", "batch", "estimate", "emulator", "setup"}
    helps: dict[str, dict[str, str]] = {}
    for name, sub in commands.items():
        helps[name] = {}
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest} has no help"
            helps[name][(action.option_strings or [action.dest])[-1]] = action.help
    # Bounds are in the help, not only in the error.
    assert "1-1000" in helps["batch"]["--max-concurrency"]
    assert "0-65535" in helps["emulator"]["--port"]
    assert "3-15" in helps["chain"]["--duration"] and "5 or 10" in helps["chain"]["--duration"]
    assert "0.01-3600" in helps["chain"]["--poll-interval"]
    assert "at least 1" in helps["setup"]["--jobs-limit"]
    for flag in ("--mode", "--audio", "--multi-prompt", "--model", "--duration"):
        assert flag in helps["chain"] and flag in helps["estimate"], flag

    batch_help = run_cli("batch", "--help")
    assert batch_help.returncode == 0
    assert '{"prompt": "A fox in the snow", "duration": 10}' in batch_help.stdout  # a JSONL line
    assert "prompt,duration,model,generate_audio" in batch_help.stdout  # a CSV header, and rows below it


def test_estimate_prices_every_model_image_to_video_included() -> None:
    def estimate(model: str) -> Any:
        return run_cli("estimate", "A fox in the snow", "--model", model, "--json")

    names = [model.short_name for model in REQUEST_MODELS]
    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = dict(zip(names, pool.map(estimate, names), strict=True))
    for model in REQUEST_MODELS:
        done = outcomes[model.short_name]
        assert done.returncode == 0, (model.short_name, done.stderr)
        if model is KlingO1ImageToVideo:
            expected = estimate_cost(KlingO1ImageToVideo(prompt="x", images=[PLACEHOLDER_FRAME]))
        else:
            expected = estimate_cost(request_model_for(model.short_name)(prompt="x"))
        assert Decimal(json.loads(done.stdout)["total_usd"]) == expected, model.short_name


def test_estimate_uses_the_chain_options_and_one_money_format(tmp_path) -> None:
    shots = tmp_path / "shots.json"
    shots.write_text(json.dumps([{"prompt": "A door opens", "duration": 2}, {"prompt": "A cat comes", "duration": 3}]))
    chain = run_cli("estimate", "first", "second", "--mode", "std", "--duration", "8", "--audio")
    assert chain.returncode == 0, chain.stderr
    # kling-o3 std with sound, 8 s: 0.095 x 8; the continuation: kling-o1-i2v std, 10 s (the nearer to 8): 0.075 x 10.
    assert "total: $1.51 for 2 jobs, 18 s of video" in chain.stdout, chain.stdout
    multi = run_cli("estimate", "--multi-prompt", f"@{shots}", "then the cat sleeps", "--json")
    assert multi.returncode == 0, multi.stderr
    rows = json.loads(multi.stdout)["requests"]
    assert [(r["short_name"], r["seconds"]) for r in rows] == [("kling-o3", 5), ("kling-o1-i2v", 5)]
    # Money is written one way everywhere: format_usd (cents, a third decimal only when needed).
    for text in (chain.stdout, run_cli("estimate", "x", "--model", "kling-2.6", "--duration", "10").stdout):
        amounts = MONEY.findall(text)
        assert amounts and all(a == format_usd(Decimal(a[1:].replace(",", ""))) for a in amounts), text


def test_dev_keeps_the_callers_folder(tmp_path) -> None:
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "A fox in the snow"}\n')
    where = subprocess.run(
        [str(REPO / "dev"), "python", "-c", "import os; print(os.getcwd())"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert where.returncode == 0 and where.stdout.strip() == str(tmp_path), where.stderr
    relative = subprocess.run(
        [str(REPO / "dev"), "kling-prefect", "estimate", "--file", "prompts.jsonl"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert relative.returncode == 0 and "total: $0.475 for 1 job" in relative.stdout, relative.stderr


# --------------------------------------------------------------------------------------------- quiet runs


def test_a_quiet_chain_prints_a_few_lines(prefect_env, tmp_path) -> None:
    out = tmp_path / "out"
    done = run_cli(
        "chain", "A red kite rises over the dunes", "--duration", "3", "--out", str(out), "--run-key", "quiet-1",
        "--poll-interval", "0.05", "--no-progress", env=prefect_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no Prefect logs, no progress
    lines = done.stdout.splitlines()
    assert len(lines) <= 10, done.stdout
    assert lines[0] == f"clip-01  {out / 'clip-01.mp4'}"
    assert "1 stored, 0 failed, 3 s of video, $0.285 estimated ($0.285 charged)" in lines
    assert lines[-1].startswith("in Prefect: http") and "kling-continuation-summary" in lines[-1]


def test_chain_writes_final_beside_clips_json_and_plain_progress(prefect_env, emulator, tmp_path) -> None:
    out = tmp_path / "story"
    args = ["chain", "A red kite rises", "The kite loops over the sea", "--duration", "3", "--out", str(out)]
    args += ["--run-key", "cli-chain", "--poll-interval", "0.05"]
    done = run_cli(*args, "--max-cost", "2", "--json", env=prefect_env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout is pure JSON
    assert result["stored"] == 2 and result["final"]["local_path"] == str(out / "final.mp4")
    assert sorted(p.name for p in out.glob("*.mp4")) == ["clip-01.mp4", "clip-02.mp4", "final.mp4"]
    assert media.probe(out / "final.mp4").frame_count == (3 + 5) * 24
    assert emulator.stats().creates == 2
    # stderr is not a terminal: plain progress lines, in step order, and the summary; no Prefect logs.
    progress = done.stderr.splitlines()
    rows = [line.split()[:3] for line in progress if line.startswith("clip-")]
    for step, model in (("clip-01", "kling-o3"), ("clip-02", "kling-o1-i2v")):
        states = [state for name, shown_model, state in rows if name == step and shown_model == model]
        assert states[0] == "queued" and states[-1] == "stored", done.stderr
        assert set(states) <= {"queued", "running", "downloading", "stored"}  # ("running" may be missed: fast jobs)
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)  # clip-01's lines, then clip-02's
    assert progress[-1] == "2 stored, 0 failed, 8 s of video, $0.785 estimated ($0.785 charged)"
    assert " | INFO " not in done.stderr and "Traceback" not in done.stderr

    # Same run key again, verbose: resumes and pays nothing; Prefect's logs are on the terminal.
    again = run_cli(*args, "--json", "--no-progress", "-v", env=prefect_env)
    assert again.returncode == 0, again.stderr
    assert emulator.stats().creates == 2
    assert "Beginning flow run" in again.stderr and json.loads(again.stdout)["jobs_resumed"] == 2


def test_batch_from_jsonl(prefect_env, emulator, tmp_path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "A fox in the snow", "duration": 3}\n'
        "# comments and blank lines are skipped\n\n"
        '{"prompt": "A city at night", "model": "kling-2.6", "generate_audio": true}\n'
    )
    done = run_cli(
        "batch", str(prompts), "--out", str(tmp_path / "out"), "--poll-interval", "0.05", "--json", env=prefect_env
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [c["status"] for c in result["clips"]] == ["stored", "stored"]
    assert {j.model for j in emulator.stats().jobs.values()} == {
        "kwaivgi/kling-o3/text-to-video",
        "kwaivgi/kling-2.6/text-to-video",
    }
    audio = media.probe(tmp_path / "out" / "item-0002.mp4")
    assert audio.has_audio and round(audio.duration_seconds) == 5


def test_batches_named_by_content_share_items_across_overlapping_files(prefect_env, emulator, tmp_path) -> None:
    """Two runs under one run key over overlapping files: the item they share is made and paid for once."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"prompt": "A fox in the snow", "duration": 3}\n{"prompt": "A city at night", "duration": 3}\n')
    second.write_text('{"prompt": "A city at night", "duration": 3}\n{"prompt": "A kite at dawn", "duration": 3}\n')
    options = ["--out", str(tmp_path / "out"), "--poll-interval", "0.05", "--json", "--run-key", "overlap-1"]
    results = []
    for path in (first, second):
        done = run_cli("batch", str(path), "--item-names", "content", *options, env=prefect_env)
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout))
    assert emulator.stats().creates == 3  # 4 items, one of them in both files
    shared = {c["step"] for c in results[0]["clips"]} & {c["step"] for c in results[1]["clips"]}
    assert len(shared) == 1 and next(iter(shared)).startswith("item-")
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 3
    bad = run_cli("batch", str(first), "--item-names", "prompt", env=prefect_env)
    assert bad.returncode == 2 and "--item-names" in bad.stderr


def test_a_batch_with_a_failed_job_exits_1_and_its_flow_run_is_failed_in_prefect(
    prefect_env, emulator, tmp_path
) -> None:
    """What the terminal says and what the Prefect UI shows agree: the run is Failed, with its message."""
    import asyncio
    from uuid import UUID

    from prefect.client.orchestration import get_client

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "A fox in the snow", "duration": 3}\n{"prompt": "A city at night", "duration": 3}\n')
    emulator.inject("job_failure", times=1, message="generation failed: content moderation")
    done = run_cli(
        "batch", str(prompts), "--out", str(tmp_path / "out"), "--poll-interval", "0.05", "--json", env=prefect_env
    )
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert sorted(c["status"] for c in result["clips"]) == ["failed", "stored"]

    async def state_of(flow_run_id: str) -> tuple[str, str]:
        async with get_client() as client:
            run = await client.read_flow_run(UUID(flow_run_id))
        assert run.state is not None
        return run.state.type.value, run.state.message or ""

    kind, message = asyncio.run(state_of(result["flow_run_id"]))
    assert kind == "FAILED" and "1 of 2 clips stored" in message


# --------------------------------------------------------------------------------------------- the progress display


def last_frame(screen: str) -> list[str]:
    """The rows of the display's last redraw (each redraw starts again at clip-01)."""
    lines = [line.rstrip() for line in screen.split("\n") if line.strip()]
    start = max(i for i, line in enumerate(lines) if line.startswith("clip-01"))
    return lines[start:]


def test_progress_on_a_terminal_rows_in_step_order_and_time_left(prefect_env, tmp_path) -> None:
    long_prompt = "A red kite rises over golden dunes at dawn while the wind draws lines in the sand"
    args = ["chain", long_prompt, "The kite loops over the sea", "--duration", "3", "--poll-interval", "0.05"]
    # Jobs of ~2-3 s: long enough for the display (4 redraws a second) to show them running.
    with Emulator(time_scale=0.02, seed=11) as vendor:
        env = {
            **prefect_env,
            "SHORTAPI_BASE_URL": vendor.base_url,
            "KLING_PREFECT_DURATIONS": str(tmp_path / "durations.json"),
        }
        code, out, terminal = run_cli_in_pty(*args, "--out", str(tmp_path / "a"), env=env)
        assert code == 0, terminal[-3000:]
        frame = last_frame(screen_text(terminal))
        assert [line.split()[0] for line in frame[:2]] == ["clip-01", "clip-02"]
        assert "kling-o3" in frame[0] and "stored" in frame[0] and re.search(r"\b0:\d\d\b", frame[0])
        assert "kling-o1-i2v" in frame[1] and "stored" in frame[1]
        assert long_prompt[:20] in frame[0] and long_prompt not in frame[0] and "…" in frame[0]  # shortened
        assert frame[-1] == "2 stored, 0 failed, 8 s of video, $0.785 estimated ($0.785 charged)"
        assert "\x1b[" in terminal  # a live display (redrawn), not plain lines
        assert " | INFO " not in terminal and "Traceback" not in terminal
        assert out.splitlines()[0].startswith("clip-01  ") and out.splitlines()[-1].startswith("in Prefect:")

        # The same kinds of job again: their durations were learned (and saved), so the display says what is left.
        code, _, terminal = run_cli_in_pty(*args, "--out", str(tmp_path / "b"), env=env)
    assert code == 0, terminal[-3000:]
    assert re.search(r"~\d+:\d\d left", screen_text(terminal)), screen_text(terminal)[-3000:]


# --------------------------------------------------------------------------------------------- one line per failure


def failure_cases(tmp_path: Path, good_key_emulator: Emulator, fault_emulators: dict[str, Emulator]) -> list[Any]:
    """(name, arguments, environment, exit status, texts the one line must hold)."""
    closed = free_port()
    run = ["chain", "A fox in the snow", "--duration", "3", "--poll-interval", "0.05", "--no-progress"]

    def vendor(name: str) -> dict[str, str]:
        return {"SHORTAPI_BASE_URL": fault_emulators[name].base_url}

    return [
        ("auth", run, {"SHORTAPI_KEY": "sk-wrong", "SHORTAPI_BASE_URL": good_key_emulator.base_url}, 1,
         ["ShortAPI refused the API key", "set a valid key in SHORTAPI_KEY"]),
        ("unreachable", run, {"SHORTAPI_BASE_URL": f"http://127.0.0.1:{closed}"}, 1,
         [f"could not connect to the ShortAPI API at http://127.0.0.1:{closed}", "check SHORTAPI_BASE_URL"]),
        ("failing", run, vendor("failing"), 1, ["is failing", "internal error", "try again later"]),
        ("vendor-failed", [*run, "--run-key", "failed-1"], vendor("vendor-failed"), 1,
         ["failed at the vendor (job ", "content moderation", "--run-key failed-1"]),
        ("uncertain", [*run, "--run-key", "uncertain-1"], vendor("uncertain"), 1,
         ["may have been accepted", "dashboard", "--run-key uncertain-1 --resubmit-uncertain"]),
        ("no-block", [*run, "--credentials-block", "no-such-block"], {}, 2,
         ["no ShortAPICredentials block named 'no-such-block'", '.save("no-such-block")']),
        ("no-bucket", [*run, "--s3-bucket-block", "no-such-bucket"], {}, 2,
         ["no S3Bucket block named 'no-such-bucket'", ".save('no-such-bucket')"]),
        ("no-limit", [*run, "--jobs-limit", "no-such-limit"], {}, 1,
         ["--jobs-limit", "'no-such-limit' does not exist", "kling-prefect setup --jobs-limit-name no-such-limit"]),
        ("prefect-down", run, {"PREFECT_API_URL": f"http://127.0.0.1:{closed}/api"}, 1,
         [f"cannot reach the Prefect API at http://127.0.0.1:{closed}/api", "prefect server start"]),
    ]  # fmt: skip


def test_each_failure_is_one_line_with_its_fix(prefect_env, tmp_path) -> None:
    faults = {
        "failing": ("error_code", None),
        "vendor-failed": ("job_failure", 1),
        "uncertain": ("drop_after_create", 1),
    }
    emulators = {name: Emulator(time_scale=0.005, seed=3) for name in faults}
    with Emulator(time_scale=0.005, api_key="sk-the-right-key") as good_key:
        for name, (fault, times) in faults.items():
            emulators[name].start()
            params = {"message": "content moderation"} if fault == "job_failure" else {}
            emulators[name].inject(fault, endpoint="create", times=times, **params)
        try:
            cases = failure_cases(tmp_path, good_key, emulators)

            def run(case: Any) -> Any:
                _, args, env, _, _ = case
                return run_cli(*args, "--out", str(tmp_path / case[0]), env={**prefect_env, **env})

            with ThreadPoolExecutor(max_workers=4) as pool:
                outcomes = list(pool.map(run, cases))
        finally:
            for emulator in emulators.values():
                emulator.stop()
        assert good_key.stats().creates == 0
    for (name, _, _, code, needles), done in zip(cases, outcomes, strict=True):
        lines = done.stderr.strip().splitlines()
        print(f"[{name}] exit {done.returncode}: {done.stderr.strip()}")  # shown by `pytest -rP`
        assert len(lines) == 1, (name, done.stderr[-3000:])
        assert done.returncode == code, (name, done.returncode, lines)
        assert lines[0].startswith("kling-prefect: error: ") and "Traceback" not in done.stderr, (name, lines)
        for needle in needles:
            assert needle in lines[0], (name, needle, lines[0])


def test_checks_before_prefect_starts_and_debug_shows_the_traceback(tmp_path) -> None:
    """Bad storage and the budget are refused before Prefect starts: its temporary server never ran."""
    (tmp_path / "a-file").write_text("not a directory")
    home = tmp_path / "home"
    env = fresh_home_env(home, SHORTAPI_KEY=TEST_KEY)
    cases = [
        (["--out", str(tmp_path / "a-file")], ["--out:", "is not a directory; name a directory"]),
        (["--max-cost", "0.10"], ["exceeds --max-cost $0.10", "Raise --max-cost"]),
    ]
    for extra, needles in cases:
        done = run_cli("chain", "A fox", *extra, env=env)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert all(needle in lines[0] for needle in needles), lines[0]
    assert not (home / "kling-prefect" / "temporary-server.log").exists()  # Prefect never started
    debug = run_cli("chain", "A fox", "--max-cost", "0.10", env={**env, "KLING_PREFECT_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "BudgetExceeded" in debug.stderr


def test_an_interrupted_run_says_how_to_resume_and_resuming_pays_nothing(prefect_env, tmp_path) -> None:
    with Emulator(time_scale=0.05, seed=5) as slow:  # a 3 s kling-o3 job takes ~5 s
        env = {**prefect_env, "SHORTAPI_BASE_URL": slow.base_url}
        args = ["chain", "A fox in the snow", "--duration", "3", "--run-key", "ctrl-c", "--poll-interval", "0.05"]
        args += ["--out", str(tmp_path / "out"), "--no-progress"]
        process = subprocess.Popen([CLI, *args], env={**os.environ, **env}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while slow.stats().creates == 0 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # The job exists; let its submit task finish (milliseconds: it records the job), so the interrupt lands
        # while the run waits for the job, as a user's Ctrl-C does. An interrupt within the create itself is
        # another case: the step is then refused until --resubmit-uncertain (tests/test_reliability.py).
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert process.returncode == 130, (process.returncode, err[-3000:])
        assert len(lines) == 1 and "interrupted" in lines[0] and "--run-key ctrl-c" in lines[0], err[-3000:]
        assert "Traceback" not in err and out == ""
        resumed = run_cli(*args, "--json", env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["jobs_resumed"] == 1 and slow.stats().creates == 1


def test_emulator_command_serves_until_stopped() -> None:
    process = subprocess.Popen(
        [CLI, "emulator", "--port", "0", "--time-scale", "0.01", "--account-concurrency", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("ShortAPI emulator listening on http://127.0.0.1:")
        import httpx

        url = line.rsplit(" ", 1)[1].strip()
        auth = {"Authorization": "Bearer k"}
        reply = httpx.get(f"{url}/api/v1/job/query", params={"id": "nope"}, headers=auth)
        assert reply.status_code == 404 and reply.json()["code"] != 0
        # --account-concurrency 1: a second job while the first runs (~1 s at this scale) is refused
        body = {"model": "kwaivgi/kling-o3/text-to-video", "args": {"prompt": "x", "duration": 3, "mode": "std"}}
        assert httpx.post(f"{url}/api/v1/job/create", json=body, headers=auth).json()["code"] == 0
        refused = httpx.post(f"{url}/api/v1/job/create", json=body, headers=auth)
        assert (refused.status_code, refused.json()["code"]) == (429, 1303)
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
