"""Run one kling-prefect flow in a process of its own, for tests that kill it or search its output.

Usage: ``python tests/reliability_run_flow.py '{"flow": "batch", "prompts": [...], "run_key": "k", ...}'``

The JSON object names the flow (``text_to_video``, ``continuation`` or ``batch``); every other key is passed
as a flow parameter. The process talks to whatever ``PREFECT_API_URL`` and ``SHORTAPI_*`` say, and prints one
JSON line: the run's ``as_dict()``, or ``{"error": ..., "repr": ...}`` (then exits 1).
"""

from __future__ import annotations

import asyncio
import json
import sys


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    from kling_prefect import flows

    chosen = {"text_to_video": flows.text_to_video, "continuation": flows.continuation, "batch": flows.batch}
    flow = chosen[spec.pop("flow")]
    try:
        result = asyncio.run(flow(**spec))
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "repr": repr(exc)}), flush=True)
        return 1
    print(json.dumps(result.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
