"""The ``kling-prefect`` console script, run as a user runs it: a subprocess, over HTTP to the emulator."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kling_prefect import media

from .conftest import TEST_KEY
from .helpers import CLI, run_cli


@pytest.fixture
def prefect_env(prefect_server, emulator, tmp_path) -> dict[str, str]:
    """Environment for a CLI process: the session's Prefect server and result storage, the emulator."""
    from prefect.settings import PREFECT_API_URL

    return {
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "SHORTAPI_KEY": TEST_KEY,
        "SHORTAPI_BASE_URL": emulator.base_url,
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


def test_estimate_single_chain_and_file(tmp_path) -> None:
    single = run_cli("estimate", "A fox", "--model", "kling-3.0", "--duration", "10", "--audio", "--json")
    assert single.returncode == 0, single.stderr
    data = json.loads(single.stdout)
    assert data["total_usd"] == "2.860" and data["requests"][0]["audio"] is True

    chain = run_cli("estimate", "first", "second", "third", "--model", "kling-o1", "--mode", "std")
    assert chain.returncode == 0, chain.stderr
    assert "total: $1.375 for 3 job(s), 15 s of video" in chain.stdout  # 0.375 + 2 x 0.5

    batch = tmp_path / "prompts.csv"
    batch.write_text("prompt,duration,generate_audio,model\nA,5,true,kling-2.6\nB,10,false,kling-2.6\n")
    from_file = run_cli("estimate", "--file", str(batch), "--json")
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout)["total_usd"] == "1.20"  # 0.12 x 5 + 0.06 x 10


def test_bad_arguments_exit_nonzero_with_one_line(emulator) -> None:
    env = {"SHORTAPI_KEY": TEST_KEY, "SHORTAPI_BASE_URL": emulator.base_url}
    cases = [
        (("chain", "x", "--duration", "99"), "duration"),
        (("chain", "x", "--model", "kling-9"), "kling-9"),
        (("chain", "x", "--max-cost", "0.01"), "max_cost_usd"),
        (("estimate",), "PROMPT"),
        (("batch", "/no/such/file.jsonl"), "no such file"),
    ]
    for args, needle in cases:
        done = run_cli(*args, env=env)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0, args
        assert len(lines) == 1 and needle in lines[0], (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert emulator.stats().requests == 0


@pytest.mark.slow
def test_chain_writes_final_beside_clips(prefect_env, emulator, tmp_path) -> None:
    out = tmp_path / "story"
    done = run_cli(
        "chain",
        "A red kite rises",
        "The kite loops over the sea",
        "--duration",
        "3",
        "--out",
        str(out),
        "--run-key",
        "cli-chain",
        "--poll-interval",
        "0.05",
        "--max-cost",
        "2",
        "--json",
        env=prefect_env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["stored"] == 2 and result["final"]["local_path"] == str(out / "final.mp4")
    assert sorted(p.name for p in out.glob("*.mp4")) == ["clip-01.mp4", "clip-02.mp4", "final.mp4"]
    assert media.probe(out / "final.mp4").frame_count == (3 + 5) * 24
    assert emulator.stats().creates == 2

    # Same run key again: resumes, pays nothing.
    again = run_cli(
        "chain", "A red kite rises", "The kite loops over the sea", "--duration", "3", "--out", str(out),
        "--run-key", "cli-chain", "--poll-interval", "0.05", "--json", env=prefect_env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert emulator.stats().creates == 2


@pytest.mark.slow
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


@pytest.mark.slow
def test_demo_runs_on_a_fresh_prefect_home(tmp_path) -> None:
    """`kling-prefect demo` with no configuration: bundled emulator, Prefect's local ephemeral server."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "SHORTAPI_"))}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    done = subprocess.run(
        [CLI, "demo", "--out", str(tmp_path / "kling-output"), "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    final = Path(result["final"]["local_path"])
    assert final.is_file() and final.parent.parent == tmp_path / "kling-output"
    info = media.probe(final)
    assert info.frame_count == 3 * 5 * 24 and info.aspect_ratio == "16:9"
    assert result["stored"] == 3 and result["summary_artifact"].endswith("-summary")


def test_emulator_command_serves_until_stopped() -> None:
    process = subprocess.Popen(
        [CLI, "emulator", "--port", "0", "--time-scale", "0.01"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("ShortAPI emulator listening on http://127.0.0.1:")
        import httpx

        url = line.rsplit(" ", 1)[1].strip()
        reply = httpx.get(f"{url}/api/v1/job/query", params={"id": "nope"}, headers={"Authorization": "Bearer k"})
        assert reply.status_code == 404 and reply.json()["code"] != 0
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
