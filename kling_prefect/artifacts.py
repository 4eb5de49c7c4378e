"""What a flow run leaves in the Prefect UI: one compact summary, one table of details, a link to the final video.

At most three flow-level artifacts per run (plus the progress artifact of each job, made by the wait task):

- ``kling-<flow>-summary`` (markdown): the figures, then one row per clip in at most 7 columns that fit a
  1280 px window (step, prompt shortened, model, status with the failure reason, seconds, cost, picture), and
  pictures: a filmstrip per clip and, for chains, a seam strip per join (for storyboards, each keyframe beside
  the final video at its point, with their difference). Pictures are small JPEGs inline
  (``data:image/jpeg;base64``): the UI cannot load ``file://`` images. Local paths are shown as text.
- ``kling-<flow>-clips`` (table): full job ids, model ids, paths or URIs, estimated and vendor amounts, errors.
- ``kling-<flow>-final`` (link): the joined video, only when it has a link a browser opens (S3, presigned).

Keys are stable per flow (per deployment when the run has one), so the UI shows each run as a new version of
the same artifacts. Money is written one way (:func:`~kling_prefect.pricing.format_usd`).

All calls are the async ``a*`` twins: in async code the sync names return coroutines, and an un-awaited call
silently creates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from prefect.artifacts import acreate_link_artifact, acreate_markdown_artifact, acreate_table_artifact
from prefect.runtime import deployment, flow_run

from kling_prefect.models import facts_for
from kling_prefect.pricing import format_usd
from kling_prefect.records import SubmittedJob
from kling_prefect.runs import ClipRecord, RunResult, failure_reason
from kling_prefect.storage import StoredObject, artifact_key

__all__ = [
    "MAX_PICTURES",
    "KeyframePicture",
    "SeamPicture",
    "artifact_base",
    "escape",
    "keyframe_markdown",
    "progress_description",
    "progress_key",
    "publish_run_artifacts",
    "shown_path",
    "wrap",
]

#: Thumbnails in one summary's table at most (a batch of a thousand clips shows its first ones).
MAX_PICTURES = 24
#: Filmstrips and seam strips in one summary at most (each is a JPEG of ~10 KB).
MAX_STRIPS = 12
#: Rows of the summary's table at most; failed clips are always listed. Every clip is in the table artifact.
MAX_ROWS = 100
#: Characters per line and lines of a table cell. The classic UI never wraps a table cell, so the summary breaks
#: the lines itself (``<br>``); at these widths 7 columns fit a 1280 px window in both UIs without either UI
#: wrapping a line again (checked in tests/test_browser.py).
STEP_CELL = (10, 2)
PROMPT_CELL = (16, 4)
STATUS_CELL = (16, 5)
MODEL_CELL = (12, 1)

# Backslash escapes work in both UIs (HTML entities do not: the classic UI shows some of them as typed).
_MARKDOWN_PUNCTUATION = "\\`*_[]|#!~<>&"


@dataclass(frozen=True)
class SeamPicture:
    """A join of a chain: the last frame of ``left`` beside the first frame of ``right``, inline."""

    left: str
    right: str
    data_uri: str


@dataclass(frozen=True)
class KeyframePicture:
    """A storyboard keyframe beside the frame of the final video at its point, and how far apart they are.

    Attributes:
        index: the keyframe's number, from 1.
        source: the keyframe as given (a file, or a URL without its query).
        seconds: where in the final video it belongs (its first frame, a join, its last frame).
        difference: mean absolute difference of the two pictures on 0-255 RGB (0: the same picture).
        data_uri: the two side by side, a small inline JPEG.
    """

    index: int
    source: str
    seconds: float
    difference: float
    data_uri: str


def keyframe_markdown(pictures: Sequence[KeyframePicture], neighbours: Sequence[float] = ()) -> list[str]:
    """The summary section of a storyboard: each keyframe beside the final video at its point, with their
    difference, and (``neighbours``: the differences between consecutive keyframes) the scale to read it on."""
    if not pictures:
        return []
    scale = ""
    if neighbours:
        low, high = min(neighbours), max(neighbours)
        spread = f"{low:.1f}" if round(low, 1) == round(high, 1) else f"{low:.1f} to {high:.1f}"
        scale = f"; consecutive keyframes differ by {spread}"
    lines = [
        "",
        "## Keyframes (keyframe | final video there)",
        "",
        f"Difference: mean absolute difference on 0-255 RGB, 0 for the same picture{scale}.",
        "",
    ]
    last = max(p.index for p in pictures)
    for picture in pictures[:MAX_PICTURES]:
        where = "first frame" if picture.index == 1 else "last frame" if picture.index == last else "join"
        lines += [
            f"**keyframe {picture.index}** `{_shorten(picture.source, 60)}` at {picture.seconds:.2f} s ({where}): "
            f"difference **{picture.difference:.1f}**",
            "",
            f"![keyframe {picture.index} and the final video]({picture.data_uri})",
            "",
        ]
    return lines


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (inside backticks: no escaping, which would show)."""
    text = " ".join(text.replace("`", "'").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def artifact_base(flow: str) -> str:
    """``kling-<deployment or flow>``: the stem of a run's artifact keys, stable from run to run.

    Examples:
        ```python
        artifact_base("continuation")  # 'kling-continuation' (in a deployment 'daily-story': 'kling-daily-story')
        ```
    """
    name = deployment.name or flow
    return artifact_key("kling", name.removeprefix("kling-"))


def progress_key(step: str) -> str:
    """``kling-<deployment or flow>-progress-<step>``: the progress artifact of a step's job, one history per step
    of a flow (or deployment). Outside a flow run: ``kling-progress-<step>``."""
    name = deployment.name or flow_run.flow_name or ""
    return artifact_key("kling", name.removeprefix("kling-"), "progress", step)


def progress_description(
    job: SubmittedJob, state: Literal["running", "succeeded", "failed"], failure: BaseException | None = None
) -> str:
    """The description of a job's progress artifact: what the job is, and how it ended.

    Examples:
        ```python
        progress_description(job, "failed", error)  # 'item-0001 FAILED at the vendor: content moderation (job 9f…)'
        ```
    """
    facts = facts_for(job.model)
    model = facts.short_name if facts else job.model
    if state == "failed":
        why = failure_reason(failure) if failure is not None else "failed"  # "failed at the vendor: <reason>", ...
        why = " " + why.removeprefix("failed ") if why.startswith("failed ") else f": {why}"
        return f"{job.step} FAILED{why[:300]} (job {job.job_id})"
    if state == "succeeded":
        return f"{job.step} succeeded: {model} job {job.job_id} of run {job.run_key}"
    return f"{job.step}: {model} job {job.job_id} of run {job.run_key}"


def escape(text: str) -> str:
    """``text`` shown as itself in markdown: no emphasis, link, image, table cell break or HTML from a prompt."""
    for char in _MARKDOWN_PUNCTUATION:
        text = text.replace(char, "\\" + char)
    return text


def wrap(text: str | None, width: int, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of at most ``width`` characters (words split only when longer than a
    line); what does not fit ends in ``…``."""
    words = " ".join((text or "").split()).split(" ")
    out: list[str] = []
    line = ""
    for word in words:
        while len(word) > width:  # a word longer than a line is split
            if line:
                out.append(line)
                line = ""
            out.append(word[:width])
            word = word[width:]
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        out.append(line)
    if len(out) > lines:
        out = out[:lines]
        last = out[-1]
        out[-1] = (last if len(last) < width else last[: width - 1]) + "…"
    return out


def _cell_lines(text: str | None, size: tuple[int, int]) -> str:
    return "<br>".join(escape(line) for line in wrap(text, *size))


def _status(record: ClipRecord) -> str:
    if record.stored:
        return "stored<br>(resumed)" if record.resumed else "stored"
    reason = record.reason or record.error or ""
    # "failed at the vendor: ..." reads on from the status word: "**failed** at the vendor: ..."
    text = "failed " + reason.removeprefix("failed ") if reason.startswith("failed ") else f"failed: {reason}"
    cell = _cell_lines(text, STATUS_CELL)
    return "**failed**" + cell.removeprefix("failed")


def _seconds(record: ClipRecord) -> str:
    if not record.stored:
        return "—"
    return f"{round(record.duration_seconds or record.video_seconds):d}"


def _cost(record: ClipRecord) -> str:
    """What the clip cost: the vendor's amount, else the estimate (``~``), else nothing (no job was created)."""
    if record.amount is not None:
        return format_usd(record.amount)
    if record.job_id and record.estimated_cost is not None:
        return "≈" + format_usd(record.estimated_cost)
    return "—"


def _where(record: ClipRecord | StoredObject) -> str:
    """Where a file is, as markdown: a link only when a browser opens it (http/https), else the path as code."""
    if record.url and record.url.startswith(("http://", "https://")):
        name = (record.uri or "").rsplit("/", 1)[-1] or "video"
        return f"[{escape(name)}]({record.url})"
    return f"`{shown_path(record.uri, record.local_path)}`" if (record.local_path or record.uri) else ""


def shown_path(uri: str | None, local_path: str | None) -> str:
    """A file as a person reads it: the local path for local files (never a ``file://`` URI), else the URI."""
    if uri and not uri.startswith("file:"):
        return uri
    return local_path or (uri or "").removeprefix("file://")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def summary_markdown(
    title: str,
    result: RunResult,
    storage: str,
    seams: Sequence[SeamPicture] = (),
    extra: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """The summary's markdown (see the module documentation). ``notes``: more lines of its list (what the process
    learned of the account's limit)."""
    sums = result.totals
    lines = [f"# {title}: {sums.stored} of {_plural(sums.clips, 'clip')} stored", ""]
    failed = result.failed
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more: see the table)" if len(failed) > 1 else ""
        lines += [f"**{escape(first.step)} {escape(first.reason or first.error or 'failed')}**{more}", ""]
    paid = f"vendor-reported {format_usd(sums.paid_in_run)}"
    if sums.unreported:
        paid += f" ({_plural(sums.unreported, 'job')} without a reported amount)"
    lines += [
        f"- run key: `{result.run_key}`",
        f"- jobs: {sums.created} created in this run, {sums.resumed} resumed from earlier runs"
        + (f", {sums.failed} failed" if sums.failed else ""),
        f"- video stored: {sums.stored_seconds:g} s in {_plural(sums.stored, 'clip')}",
        f"- paid in this run: {paid}, estimated {format_usd(sums.estimated_cost)}"
        f" for {_plural(sums.created, 'new job')}",
    ]
    if sums.resumed:
        lines.append(
            f"- paid earlier: vendor-reported {format_usd(sums.paid_earlier)} for "
            f"{_plural(sums.resumed, 'resumed job')} (not paid again)"
        )
    lines.append(f"- storage: {escape(storage)}")
    lines += [f"- account limit: {escape(note)}" for note in notes]
    if result.final is not None:
        lines.append(f"- final video: {_where(result.final)}")
    lines += [
        "",
        "| step | prompt | model | status | s | cost | picture |",
        "|---|---|---|---|---|---|---|",
    ]
    pictures = shown = 0
    for index, record in enumerate(result.records):
        if index >= MAX_ROWS and record.stored:
            continue
        shown += 1
        picture = ""
        if record.thumbnail_data_uri and pictures < MAX_PICTURES:
            # A no-break space first: the new UI aligns a row's cells on their first line, and a cell that starts
            # with a (block) picture would push the other cells' text below the picture's bottom.
            picture = f"\u00a0![{escape(record.step)}]({record.thumbnail_data_uri})"
            pictures += 1
        lines.append(
            f"| {_cell_lines(record.step, STEP_CELL)} | {_cell_lines(record.prompt, PROMPT_CELL)} "
            f"| {_cell_lines(record.short_model, MODEL_CELL)} | {_status(record)} | {_seconds(record)} "
            f"| {_cost(record)} | {picture} |"
        )
    if shown < len(result.records) or pictures < sum(1 for r in result.records if r.thumbnail_data_uri):
        lines += ["", "Rows and pictures of the first clips: every clip is in the table artifact."]
    strips = [r for r in result.records if r.filmstrip_data_uri][:MAX_STRIPS]
    if strips:
        lines += ["", "## Clips", ""]
        for record in strips:
            lines += [
                f"**{escape(record.step)}** {_seconds(record)} s, {_where(record)}",
                "",
                f"![{escape(record.step)} filmstrip]({record.filmstrip_data_uri})",
                "",
            ]
    if seams:
        lines += ["", "## Joins: last frame, first frame", ""]
        for seam in seams[:MAX_STRIPS]:
            left, right = escape(seam.left), escape(seam.right)
            lines += [f"**{left} → {right}**", "", f"![{left} to {right}]({seam.data_uri})", ""]
    lines += list(extra)
    return "\n".join(lines).rstrip() + "\n"


def table_rows(result: RunResult) -> list[dict[str, str | float | bool]]:
    """The table artifact: every detail of every clip (paths as paths, never ``file://``). The columns a person
    looks for first (what happened, why) come first: both UIs scroll a table artifact sideways."""
    return [
        {
            "step": r.step,
            "status": r.status,
            "error": r.error or "",
            "job_id": r.job_id or "",
            "model": r.model,
            "resumed": r.resumed,
            "stored_seconds": round(r.duration_seconds, 3) if r.stored else 0,
            "billed_seconds": r.video_seconds if r.job_id else 0,
            "estimated_cost": format_usd(r.estimated_cost, unknown=""),
            "vendor_amount": format_usd(r.amount, unknown=""),
            "output": shown_path(r.uri, r.local_path) if r.stored else "",
            "prompt": r.prompt,
        }
        for r in result.records
    ]


async def publish_run_artifacts(
    *,
    flow: str,
    title: str,
    result: RunResult,
    storage: str,
    seams: Sequence[SeamPicture] = (),
    extra: Sequence[str] = (),
) -> str:
    """Create the run's summary, table and (when it opens) final-video link; returns the summary's key."""
    base = artifact_base(flow)
    summary_key = f"{base}-summary"
    description = f"{title} {result.run_key}: {result.describe()}"
    from kling_prefect.concurrency import account_reports

    # What the CLI and the run log say of an account that refused creates for its concurrency, in the UI too.
    notes = [report.describe() for report in account_reports()]
    await acreate_markdown_artifact(
        summary_markdown(title, result, storage, seams, extra, notes), key=summary_key, description=description
    )
    await acreate_table_artifact(
        table_rows(result),
        key=f"{base}-clips",
        description=f"Every clip of {result.run_key}: job ids, models, outputs, costs, errors",
    )
    final = result.final
    if final is not None and final.url and final.url.startswith(("http://", "https://")):
        await acreate_link_artifact(
            final.url,
            link_text=f"final video of {result.run_key}",
            key=f"{base}-final",
            description=f"The joined video of {result.run_key} ({final.uri}); the link is valid for 7 days",
        )
    return summary_key
