"""A newcomer's first run of the console script: a ``PREFECT_HOME`` never used, on a machine whose CPU is busy.

Prefect's temporary server migrates a new database before it answers; on two busy cores that can take longer
than Prefect's own start-up timeout. These are the slowest tests of the command line, in a module of their own so
that the test processes share the command-line tests between them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kling_prefect import media

from .conftest import TEST_KEY
from .helpers import CLI
from .test_cli import fresh_home_env

# --------------------------------------------------------------------------------------------- starts every time


#: Seconds the busy loops run: the window in which a first start's server starts and migrates its database.
BUSY_SECONDS = 40.0


@pytest.mark.timeout(900)  # two first starts at once on a loaded machine: minutes on a busy one
def test_fresh_prefect_home_while_the_cpu_is_busy(emulator, tmp_path) -> None:
    """A chain and the demo, each in a PREFECT_HOME never used, at once, with two busy-looping processes:
    Prefect's temporary server must migrate two new databases on a loaded machine. Both start, both quietly.
    The loops last the start-up window (BUSY_SECONDS: the servers start and migrate within it), not the whole
    runs: the other tests of the suite share these cores."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    stop_burning = threading.Timer(BUSY_SECONDS, lambda: [burner.kill() for burner in burners])
    stop_burning.start()
    try:

        def chain(index: int) -> Any:
            env = fresh_home_env(tmp_path / f"home-{index}", SHORTAPI_KEY=TEST_KEY, SHORTAPI_BASE_URL=emulator.base_url)
            args = ["chain", f"A fox in the snow, take {index}", "--duration", "3", "--poll-interval", "0.05"]
            return subprocess.run(
                [CLI, *args, "--no-progress", "--out", str(tmp_path / f"out-{index}")],
                capture_output=True, text=True, timeout=800, env=env, cwd=tmp_path, check=False,
            )  # fmt: skip

        def demo() -> Any:
            return subprocess.run(
                [CLI, "demo", "--out", str(tmp_path / "kling-output"), "--json"],
                capture_output=True, text=True, timeout=800, env=fresh_home_env(tmp_path / "home-demo"),
                cwd=tmp_path, check=False,
            )  # fmt: skip

        with ThreadPoolExecutor(max_workers=2) as pool:
            chains = [pool.submit(chain, index) for index in (1,)]
            demo_run = pool.submit(demo)
            outcomes = [c.result() for c in chains]
            demoed = demo_run.result()
    finally:
        stop_burning.cancel()
        for burner in burners:
            burner.kill()
            burner.wait()
    for done in outcomes:
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr == "" and len(done.stdout.splitlines()) <= 10, (done.stdout, done.stderr)
    assert demoed.returncode == 0, demoed.stderr[-3000:]
    result = json.loads(demoed.stdout)
    final = Path(result["final"]["local_path"])
    assert final.is_file() and final.parent.parent == tmp_path / "kling-output"
    info = media.probe(final)
    assert info.frame_count == 3 * 5 * 24 and info.aspect_ratio == "16:9"
    assert result["stored"] == 3 and result["summary_artifact"].endswith("-summary")


def test_the_users_start_up_timeout_wins(tmp_path) -> None:
    """The temporary server gets 300 s unless the user set a timeout, in the environment or in a profile."""
    probe = [sys.executable, "-c", "from kling_prefect.cli.server import startup_timeout; print(*startup_timeout())"]

    def timeout(home: Path, **extra: str) -> str:
        env = fresh_home_env(home, **extra)
        return subprocess.run(probe, env=env, capture_output=True, text=True, check=True, timeout=120).stdout.strip()

    assert timeout(tmp_path / "a") == "300 False"
    assert timeout(tmp_path / "a", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="60") == "60 True"
    profile = tmp_path / "b"
    subprocess.run(
        [str(Path(CLI).with_name("prefect")), "config", "set", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=45"],
        env=fresh_home_env(profile), capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    assert timeout(profile) == "45 True"
