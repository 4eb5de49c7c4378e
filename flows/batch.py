"""Example: many prompts at once, from a list or a JSONL/CSV file, bounded concurrency, every result stored.

A failed prompt does not lose the others; the run ends Failed (after storing every success) when any failed,
and a re-run with the same run_key only pays for what is missing. Run once:

    python flows/batch.py prompts.jsonl

JSONL: one object per line, {"prompt": "...", plus any request field, optionally "model"}.
CSV: a header row with a "prompt" column, other columns named as request fields.
"""

from __future__ import annotations

import asyncio
import sys

from kling_prefect.flows import batch

__all__ = ["batch"]

if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python flows/batch.py PROMPTS.jsonl|PROMPTS.csv")
    result = asyncio.run(batch(file=sys.argv[1], model="kling-o3", max_concurrency=4, max_cost_usd=20.0))
    print(f"{len(result.records) - len(result.failed)} stored, {len(result.failed)} failed")
