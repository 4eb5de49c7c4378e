"""When to query a running job: one schedule, from what is believed of its duration.

Given a :class:`~kling_prefect.waiting.estimates.DurationEstimate` (learned, or the wide prior of a kind not yet
seen), :meth:`PollPolicy.next_query` places the next query:

- while the job almost surely cannot be done, no query: sleep until the chance that it finishes more than
  ``min_interval`` before the next query would exceed ``late_budget`` (``prior_late_budget`` while the belief is
  only a prior: its shape is a guess), but never more than ``max_skip`` at once, which is what a wrong belief can
  cost;
- while completion is likely, a query every ``min_interval``: the detection delay aimed at. This is the
  ``poll_interval`` users set, and keeps its meaning: how late a finished job is noticed at most (half of it on
  average), as with a plain loop at that interval;
- past the ``overdue_quantile`` the belief is wrong for this job: intervals grow by ``overdue_growth`` of the
  overrun, up to ``max_interval``.

So queries go where completions are: dense while a job may finish, none while it cannot, sparse when it is
overdue. The trade-off is ``late_budget``: a larger one skips more of the early tail (fewer queries) and
notices the fastest jobs later; the wider the jobs' spread, the more queries the window where they may finish
takes (see benchmarks/RESULTS.md for figures). With a prior (nothing learned yet) the same rule applies to a
wide belief: the first queries come early and the intervals stay close to ``min_interval``, until the first
completions of the run (any kind: they calibrate every kind's prior) narrow it.

A wait whose job will get a callback from a trusted receiver queries every ``callback_fallback`` seconds
instead (:meth:`PollPolicy.fallback_interval`), and at once when the callback comes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from kling_prefect.waiting.estimates import DurationEstimate

__all__ = ["SKIP_FROM", "PollPolicy"]

#: A sleep shorter than this many intervals is not worth a skip: the query comes after one interval.
SKIP_FROM = 1.5


@dataclass(frozen=True)
class PollPolicy:
    """The query schedule of a wait (see the module documentation).

    Attributes:
        min_interval: seconds between queries while the job may finish: the detection delay aimed at.
        max_interval: the longest interval between queries of an overdue job.
        late_budget: the chance, per sleep, that the job finishes more than ``min_interval`` before the
            query that ends the sleep.
        prior_late_budget: the same while the belief is a prior (nothing of the kind learned yet).
        max_skip: the longest sleep before or between queries of a job that cannot be done yet.
        overdue_quantile / overdue_growth: when a job counts as overdue, and how fast intervals grow then.
        jitter: spread of query times, as a fraction of ``min_interval`` (downwards: a query never comes later
            than the rule allows), so concurrent waits do not query in lockstep.
        callback_fallback: seconds between the queries of a wait that expects a callback.
    """

    min_interval: float = 2.0
    max_interval: float = 30.0
    late_budget: float = 0.01
    prior_late_budget: float = 0.003
    max_skip: float = 60.0
    overdue_quantile: float = 0.995
    overdue_growth: float = 0.1
    jitter: float = 0.2
    callback_fallback: float = 60.0

    @classmethod
    def scaled(cls, min_interval: float, max_interval: float | None = None, **overrides: Any) -> PollPolicy:
        """The default policy with every duration scaled so that its smallest interval is ``min_interval``.

        ``max_interval`` defaults to 15x ``min_interval`` (30 s for 2 s), ``max_skip`` and
        ``callback_fallback`` to 30x.
        """
        if min_interval <= 0:
            raise ValueError(f"min_interval: must be > 0, got {min_interval}")
        factor = min_interval / cls.min_interval
        policy = replace(
            cls(),
            min_interval=min_interval,
            max_interval=max(min_interval, max_interval if max_interval is not None else 15 * min_interval),
            max_skip=cls.max_skip * factor,
            callback_fallback=cls.callback_fallback * factor,
        )
        return replace(policy, **overrides)

    def next_query(self, since: float, estimate: DurationEstimate, rng: random.Random | None = None) -> float:
        """Seconds from ``since`` (elapsed since creation when the job was last seen pending) to the next query.

        Jitter: up to ``jitter`` x ``min_interval`` earlier (never later) than the rule's time; overdue
        intervals +/- ``jitter`` of themselves.
        """
        rng = rng or random.Random()
        floor = self.min_interval
        early = rng.uniform(0, self.jitter * floor)
        overdue_from = estimate.quantile(self.overdue_quantile)
        if since >= overdue_from:
            base = min(max(floor + self.overdue_growth * (since - overdue_from), floor), self.max_interval)
            return max(0.0, base + rng.uniform(-base * self.jitter, base * self.jitter))
        done = estimate.cdf(since)
        budget = self.late_budget if estimate.observations else self.prior_late_budget
        # Completions before `late_by` would be seen more than `floor` late by a query at `late_by + floor`.
        late_by = estimate.quantile(done + budget * (1 - done))
        base = late_by + floor - since
        if base <= SKIP_FROM * floor:
            # Completion is likely: every `floor`. (The budget is for skipping the early tail, not for stretching
            # every interval in the body a little, which would add up to many late detections.)
            return max(0.0, floor - early / 2)
        return min(base, max(self.max_skip, floor)) - early

    def fallback_interval(self, rng: random.Random | None = None) -> float:
        """Seconds to the next query of a wait expecting a callback: ``callback_fallback``, jittered downwards.

        These queries only catch a lost callback; the callback itself triggers the query that sees the end.
        """
        base = max(self.callback_fallback, self.min_interval)
        return base * (1 - (rng or random.Random()).uniform(0, self.jitter))
