"""A ShortAPI emulator: a real HTTP server implementing the vendor's job API for the Kling models.

It validates requests with :mod:`kling_prefect.models`, bills with :mod:`kling_prefect.pricing`, walks jobs
through statuses 0 -> 1 -> 2/3 on a (scalable) clock, serves real MP4 results from presigned-style URLs that
expire, POSTs callbacks, and injects faults on demand (rate limits, 5xx pages, connection resets, lost
responses, slow answers, malformed JSON, error envelopes, unknown statuses, truncated downloads, failed
jobs), and, when asked, the account's concurrency rule (``account_concurrency``: a create while that many jobs
run is refused with HTTP 429, code 1303). Used by tests and benchmarks; ``kling-prefect emulator`` runs it from
the command line.
"""

from kling_prefect.emulator.faults import FAULT_KINDS
from kling_prefect.emulator.jobs import JOB_TIME_TABLE, JobStats, Stats, base_job_seconds
from kling_prefect.emulator.server import READY_PREFIX, Emulator, run

__all__ = [
    "FAULT_KINDS",
    "JOB_TIME_TABLE",
    "READY_PREFIX",
    "Emulator",
    "JobStats",
    "Stats",
    "base_job_seconds",
    "run",
]
