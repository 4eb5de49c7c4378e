"""Waiting for jobs: one schedule, learned from what jobs of each kind take.

A Kling job takes minutes, and how many depends on the model, the mode, the length of the clip and the
vendor's load, none of which the vendor documents. The pieces:

- :mod:`~kling_prefect.waiting.kinds`: :class:`JobKind` (model, mode, seconds of video, audio).
- :mod:`~kling_prefect.waiting.estimates`: :class:`DurationModel`, the belief per kind: a wide prior around the
  model's typical time, calibrated by the first completions of any kind, then learned from the kind's own jobs.
- :mod:`~kling_prefect.waiting.persistence`: what was learned outlives the process
  (``$PREFECT_HOME/kling-prefect/durations.json``, ``KLING_PREFECT_DURATIONS``).
- :mod:`~kling_prefect.waiting.schedule`: :class:`PollPolicy`, when to query given the belief.
- :mod:`~kling_prefect.waiting.querycap`: :class:`QueryCap`, the process-wide cap on queries per second (and the
  rate shared by every process of a Prefect server, when ``kling-prefect setup`` made one).
- :mod:`~kling_prefect.waiting.wait`: :func:`wait_for_end`, the wait loop, and :class:`JobWatcher`.
- :mod:`~kling_prefect.waiting.doorbell` and :mod:`~kling_prefect.waiting.simulate` (the schedule on simulated
  time, for the benchmark).

Examples:
    ```python
    from kling_prefect.waiting import DurationModel, JobKind

    model = DurationModel()
    kind = JobKind("kwaivgi/kling-o3/text-to-video", "std", 5)
    model.estimate(kind).observations  # 0: the prior around the model's typical time
    model.observe(kind, pending_at=88.0, done_by=92.0)
    model.estimate(kind)  # DurationEstimate(median=90.0, sigma=..., observations=1)
    ```
"""

from kling_prefect.waiting.doorbell import Doorbell
from kling_prefect.waiting.estimates import DurationEstimate, DurationModel
from kling_prefect.waiting.kinds import JobKind
from kling_prefect.waiting.persistence import DURATIONS_ENV, DurationFile, default_duration_model, durations_path
from kling_prefect.waiting.querycap import (
    DEFAULT_QUERIES_PER_SECOND,
    DEFAULT_QUERY_RATE_LIMIT,
    ENV_QUERY_RATE_LIMIT,
    QueryCap,
    shared_burst,
    shared_query_cap,
)
from kling_prefect.waiting.schedule import PollPolicy
from kling_prefect.waiting.simulate import SimulatedWait, simulate_waits
from kling_prefect.waiting.wait import JobWatcher, wait_for_end

__all__ = [
    "DEFAULT_QUERIES_PER_SECOND",
    "DEFAULT_QUERY_RATE_LIMIT",
    "DURATIONS_ENV",
    "ENV_QUERY_RATE_LIMIT",
    "Doorbell",
    "DurationEstimate",
    "DurationFile",
    "DurationModel",
    "JobKind",
    "JobWatcher",
    "PollPolicy",
    "QueryCap",
    "SimulatedWait",
    "default_duration_model",
    "durations_path",
    "shared_burst",
    "shared_query_cap",
    "simulate_waits",
    "wait_for_end",
]
