"""A user's own flow making one clip, in a process of its own, for tests that run several at once or kill one.

Usage: ``python tests/lease_run_flow.py GO_FILE RUN_KEY PROMPT``

Imports everything, prints ``ready``, then waits for ``GO_FILE`` to exist (so that several processes start the
step within milliseconds of each other), runs the flow and prints one JSON line: ``{"job_id", "resumed", "uri"}``
or ``{"error": <class name>, "message": ...}`` (then exits 1). The process talks to whatever
``PREFECT_API_URL`` and ``SHORTAPI_*`` say.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from prefect import flow

from kling_prefect import KlingO3TextToVideo
from kling_prefect.tasks import generate_video


@flow
async def my_clip(prompt: str, run_key: str) -> dict[str, object]:
    clip = await generate_video(
        KlingO3TextToVideo(prompt=prompt, duration=3, mode="std"), run_key=run_key, poll_interval=0.05, timeout=120
    )
    return {"job_id": clip.job_id, "resumed": clip.resumed, "uri": clip.video.uri}


def main(argv: list[str]) -> int:
    go, run_key, prompt = Path(argv[1]), argv[2], argv[3]
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    try:
        result = asyncio.run(my_clip(prompt, run_key))
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
