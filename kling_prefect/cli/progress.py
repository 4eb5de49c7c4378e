"""The progress display of a run: one row per planned clip, fed by :mod:`kling_prefect.progress` events.

:class:`Tracker` holds the rows (step, prompt, model, state, elapsed time, time left) and is fed from the
tasks' events; a display renders it on stderr:

- :class:`LiveDisplay` on a terminal: a table redrawn a few times a second (``rich``), with a bar per row
  that moves along the job's expected duration, and the run's time left when job durations were learned;
- :class:`PlainDisplay` when stderr is not a terminal: one line per change of state;
- :class:`NoDisplay` with ``--no-progress``.

Each ends with the summary line: stored, failed, seconds of video, cost.

Examples:
    ```python
    from kling_prefect.cli.progress import Tracker, clock

    clock(83.4)  # '1:23'
    ```
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from kling_prefect.cli.plans import Plan
from kling_prefect.pricing import format_usd
from kling_prefect.progress import ProgressEvent
from kling_prefect.waiting import DurationModel, JobKind

__all__ = [
    "Display",
    "LiveDisplay",
    "NoDisplay",
    "PlainDisplay",
    "Row",
    "Tracker",
    "clock",
    "make_display",
    "summary_line",
]

PROMPT_WIDTH = 40
REASON_WIDTH = 60
#: Rows in these states are done; a row in any other state is still to come or in progress.
ENDED = frozenset({"stored", "failed"})
#: Rank of each state: an event never moves a row back (a late "running" after "downloading").
ORDER = {"waiting": 0, "queued": 1, "running": 2, "succeeded": 3, "downloading": 3, "stored": 4, "failed": 4}


def clock(seconds: float) -> str:
    """``83.4`` -> ``1:23``; an hour or more: ``1:02:03``."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@dataclass
class Row:
    """One planned clip as the display shows it."""

    step: str
    prompt: str
    model: str
    kind: JobKind
    state: str = "waiting"
    fraction: float = 0.0
    job_id: str | None = None
    reason: str = ""
    started: float | None = None
    ended: float | None = None

    @property
    def done(self) -> bool:
        return self.state in ENDED


class Tracker:
    """The rows of a run, in step order, updated from progress events (from any thread).

    ``durations`` is the process's learned job durations: a row's bar moves along the expected duration of its
    kind of job, and its time left is shown once jobs of that kind were seen to end (``learned``).
    """

    def __init__(
        self,
        plan: Plan,
        durations: DurationModel | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.durations = durations
        self.now = now
        self.rows = {
            clip.step: Row(
                step=clip.step,
                prompt=shorten(clip.prompt, PROMPT_WIDTH),
                model=clip.request.short_name,
                kind=JobKind.of(clip.request),
            )
            for clip in plan.clips
        }
        self.status = ""
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Row], None]] = []

    def on_change(self, listener: Callable[[Row], None]) -> None:
        """Call ``listener(row)`` after a row changes state."""
        self._listeners.append(listener)

    def __call__(self, event: ProgressEvent) -> None:
        """Take one event of the tasks (:func:`kling_prefect.progress.emit`)."""
        with self._lock:
            row = self.rows.get(event.step)
            if row is None or row.done:
                return
            state = "downloading" if event.state == "succeeded" else event.state
            if ORDER.get(state, 0) < ORDER.get(row.state, 0):
                return
            now = self.now()
            if row.started is None:
                row.started = now
            row.fraction = max(row.fraction, min(max(event.fraction, 0.0), 1.0))
            row.job_id = event.job_id or row.job_id
            changed = state != row.state
            row.state = state
            if state == "failed":
                row.reason = shorten(event.message or "failed", REASON_WIDTH)
            if state in ENDED:
                row.ended = now
        if changed:
            for listener in list(self._listeners):
                listener(row)

    def end_unfinished(self, reason: str) -> None:
        """Mark the rows in progress failed with ``reason`` (the run ended before they did)."""
        for row in self.snapshot():
            if row.started is not None and not row.done:
                self(ProgressEvent("", row.step, "failed", row.fraction, row.job_id, reason))

    def apply(self, result: Any) -> None:
        """Take the final word from a :class:`~kling_prefect.runs.RunResult`: each record's status and reason."""
        for record in result.records:
            if record.step in self.rows:
                if record.stored:
                    self(ProgressEvent("", record.step, "stored", 1.0, record.job_id))
                else:
                    reason = record.reason or record.error or "failed"
                    self(ProgressEvent("", record.step, "failed", 0.0, record.job_id, reason))

    def snapshot(self) -> list[Row]:
        with self._lock:
            return [Row(**vars(row)) for row in self.rows.values()]

    @property
    def active(self) -> str | None:
        """The step started most recently and not ended (where a run that stops was)."""
        started = [row for row in self.snapshot() if row.started is not None and not row.done]
        return max(started, key=lambda row: row.started or 0).step if started else None

    # -- times

    def elapsed(self, row: Row) -> float:
        if row.started is None:
            return 0.0
        return (row.ended if row.ended is not None else self.now()) - row.started

    def shown_fraction(self, row: Row) -> float:
        """The bar: the tasks' own figure, or how far the job is along its kind's expected duration."""
        if row.done or row.state == "downloading":
            return 1.0 if row.state != "failed" else row.fraction
        if row.started is None or self.durations is None:
            return row.fraction
        expected = self.durations.estimate(row.kind).median
        along = 0.05 + 0.9 * min(self.elapsed(row) / expected, 1.0) if expected > 0 else 0.0
        return max(row.fraction, min(along, 0.95))

    def left(self, row: Row) -> float | None:
        """Seconds left for the row's job, when jobs of its kind were seen to end (else ``None``)."""
        if row.done or row.state == "downloading":
            return 0.0
        learned = self.durations.learned(row.kind) if self.durations is not None else None
        if learned is None:
            return None
        return max(0.0, learned.median - self.elapsed(row))

    def run_left(self) -> float | None:
        """Seconds left for the whole run, when every unfinished row has a learned duration."""
        lefts = []
        for row in self.snapshot():
            left = self.left(row)
            if left is None:
                return None
            if left > 0:
                lefts.append(left)
        if not lefts:
            return None
        lanes = [0.0] * max(1, self.plan.concurrency)
        for left in lefts:  # in step order: the order the run takes them up
            index = lanes.index(min(lanes))
            lanes[index] += left
        return max(lanes)

    # -- the end

    def summary(self, result: Any | None = None) -> str:
        """The last line: from the result's totals, or from the rows when the run ended without one."""
        if result is not None:
            return summary_line(result.totals)
        rows = self.snapshot()
        stored = [row for row in rows if row.state == "stored"]
        seconds = sum(
            self.plan.clips[index].request.video_seconds for index, row in enumerate(rows) if row.state == "stored"
        )
        return _summary(
            stored=len(stored),
            failed=sum(row.state == "failed" for row in rows),
            not_run=sum(row.started is None and not row.done for row in rows),
            seconds=seconds,
            cost=f"{format_usd(self.plan.estimated_cost)} planned",
        )


def summary_line(totals: Any) -> str:
    """``2 stored, 1 failed, 10 s of video, $0.95 estimated ($0.95 charged)`` from a run's totals."""
    cost = f"{format_usd(totals.estimated_cost)} estimated"
    if totals.created and totals.unreported < totals.created:
        cost += f" ({format_usd(totals.paid_in_run)} charged)"
    if totals.resumed:
        cost += f"; {totals.resumed} resumed from an earlier run"
    return _summary(stored=totals.stored, failed=totals.failed, not_run=0, seconds=totals.stored_seconds, cost=cost)


def _summary(*, stored: int, failed: int, not_run: int, seconds: float, cost: str) -> str:
    parts = [f"{stored} stored", f"{failed} failed"] + ([f"{not_run} not run"] if not_run else [])
    return f"{', '.join(parts)}, {round(seconds, 1):g} s of video, {cost}"


# --------------------------------------------------------------------------------------------- displays


class Display:
    """Renders a :class:`Tracker`: ``start``, ``say`` (a status line), ``stop``, ``summary`` (the last line)."""

    console: Any = None

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def start(self) -> None:
        pass

    def say(self, text: str) -> None:
        self.tracker.status = text

    def stop(self) -> None:
        pass

    def summary(self, line: str) -> None:
        pass


class NoDisplay(Display):
    """``--no-progress``: nothing on stderr."""


class PlainDisplay(Display):
    """One line per change of state, for logs and pipes (stderr is not a terminal)."""

    def __init__(self, tracker: Tracker, stream: IO[str] | None = None) -> None:
        super().__init__(tracker)
        self.stream = stream or sys.stderr
        tracker.on_change(self._row)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        super().say(text)
        if text:
            self._write(text)

    def _row(self, row: Row) -> None:
        detail = ""
        if row.state == "queued" and row.job_id:
            detail = f"  job {row.job_id}"
        elif row.state == "failed":
            detail = f": {row.reason}"
        elif row.done:
            detail = f"  {clock(self.tracker.elapsed(row))}"
        self._write(f"{row.step:9} {row.model:13} {row.state}{detail}")

    def summary(self, line: str) -> None:
        self._write(line)


class LiveDisplay(Display):
    """A table on the terminal, redrawn a few times a second."""

    def __init__(self, tracker: Tracker, console: Any = None) -> None:
        super().__init__(tracker)
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console(stderr=True)
        self._live = Live(console=self.console, get_renderable=self.render, refresh_per_second=4, transient=False)

    def start(self) -> None:
        self._live.start()

    def stop(self) -> None:
        self._live.refresh()
        self._live.stop()

    def summary(self, line: str) -> None:
        self.console.print(line, highlight=False)

    def render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        tracker = self.tracker
        rows = tracker.snapshot()
        bar = 8 if self.console.width < 110 else 16
        step_width = max((len(r.step) for r in rows), default=4)
        model_width = max((len(r.model) for r in rows), default=4)
        # Fixed columns keep their width; the prompt takes what is left (cut with an ellipsis).
        fixed = step_width + model_width + bar + 11 + 5 + 12 + 6
        prompt_width = min(PROMPT_WIDTH, max(8, self.console.width - fixed - 1))
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True, width=step_width)
        table.add_column(no_wrap=True, overflow="ellipsis", width=prompt_width)
        table.add_column(no_wrap=True, style="cyan", width=model_width)
        table.add_column(width=bar)
        table.add_column(no_wrap=True, overflow="ellipsis", width=11)
        table.add_column(no_wrap=True, justify="right", width=5)
        table.add_column(no_wrap=True, overflow="ellipsis")  # time left, or why it failed
        for row in rows:
            style = {"stored": "green", "failed": "red", "waiting": "dim"}.get(row.state, "")
            left = tracker.left(row)
            if row.state == "failed":
                last = Text(row.reason, style="red")
            elif left and not row.done and row.started is not None:
                last = Text(f"~{clock(left)} left", style="dim")
            else:
                last = Text("")
            table.add_row(
                row.step,
                row.prompt,
                row.model,
                ProgressBar(total=1.0, completed=tracker.shown_fraction(row), width=bar),
                Text(row.state, style=style),
                clock(tracker.elapsed(row)) if row.started is not None else "",
                last,
            )
        parts: list[Any] = []
        if tracker.status:
            parts.append(Text(tracker.status, style="dim"))
        parts.append(table)
        run_left = tracker.run_left()
        if run_left:
            parts.append(Text(f"about {clock(run_left)} left (from the job times seen so far)", style="dim"))
        return Group(*parts)


def make_display(tracker: Tracker, *, enabled: bool, stream: IO[str] | None = None) -> Display:
    """The display for this terminal: live when stderr is one, plain lines when not, none when disabled."""
    if not enabled:
        return NoDisplay(tracker)
    out = stream or sys.stderr
    if out.isatty():
        from rich.console import Console

        return LiveDisplay(tracker, Console(file=out))
    return PlainDisplay(tracker, out)
