"""The wait schedule on simulated time, for tests and ``benchmarks/simulate_waiting.py``: nothing sleeps.

:func:`simulate_waits` runs the real :class:`~kling_prefect.waiting.schedule.PollPolicy` and
:class:`~kling_prefect.waiting.estimates.DurationModel` in an event simulation of jobs created at once, with
the re-planning a real wait does when a completion teaches the model something.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from kling_prefect.waiting.estimates import DurationModel
from kling_prefect.waiting.kinds import JobKind
from kling_prefect.waiting.schedule import PollPolicy

__all__ = ["SimulatedWait", "simulate_waits"]


@dataclass(frozen=True)
class SimulatedWait:
    """One job of :func:`simulate_waits`: how many queries it cost and how late its completion was seen."""

    queries: int
    delay: float


@dataclass
class _State:
    pending_at: float = 0.0
    queries: int = 0
    version: int = 0


def simulate_waits(
    policy: PollPolicy, model: DurationModel, jobs: list[tuple[JobKind, float]], seed: int
) -> list[SimulatedWait]:
    """``jobs`` are (kind, duration) pairs, all created at time 0 and sharing ``model``; each wait follows
    ``policy.next_query``, and a completion that teaches the model re-plans every job still waiting on that
    kind and on a prior (as :meth:`DurationModel.watch` does for real waits)."""
    rng = random.Random(seed)
    states = [_State() for _ in jobs]
    delays = [0.0] * len(jobs)
    heap: list[tuple[float, int, int]] = []

    def plan(index: int, now: float) -> None:
        state = states[index]
        interval = policy.next_query(state.pending_at, model.estimate(jobs[index][0]), rng)
        state.version += 1
        heapq.heappush(heap, (max(now, state.pending_at + interval), state.version, index))

    for index in range(len(jobs)):
        plan(index, 0.0)
    done: set[int] = set()
    while heap:
        now, version, index = heapq.heappop(heap)
        state = states[index]
        if index in done or version != state.version:
            continue
        state.queries += 1
        kind, duration = jobs[index]
        if now < duration:
            state.pending_at = now
            plan(index, now)
            continue
        done.add(index)
        delays[index] = now - duration
        seen = set(model.known_kinds())
        if model.observe(kind, pending_at=state.pending_at, done_by=now):
            for other in range(len(jobs)):
                if other not in done and (jobs[other][0] == kind or jobs[other][0] not in seen):
                    plan(other, now)
    return [SimulatedWait(state.queries, delay) for state, delay in zip(states, delays, strict=True)]
