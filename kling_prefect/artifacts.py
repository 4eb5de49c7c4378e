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

from prefect.artifacts import acreate_link_artifact, acreate_markdown_artifact, acreate_table_artifact
from prefect.runtime import deployment

from kling_prefect.pricing import format_usd
from kling_prefect.runs import ClipRecord, RunResult
from kling_prefect.storage import artifact_key

__all__ = [
    "MAX_PICTURES",
    "KeyframePicture",
    "SeamPicture",
    "artifact_base",
    "keyframe_markdown",
    "publish_run_artifacts",
]

#: Pictures embedded in one summary at most (a batch of a thousand clips shows its first ones).
MAX_PICTURES = 24
PROMPT_CELL = 48
REASON_CELL = 90


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
            f"**keyframe {picture.index}** `{_cell(picture.source, 60)}` at {picture.seconds:.2f} s ({where}): "
            f"difference **{picture.difference:.1f}**",
            "",
            f"![keyframe {picture.index} and the final video]({picture.data_uri})",
            "",
        ]
    return lines


def artifact_base(flow: str) -> str:
    """``kling-<deployment or flow>``: the stem of a run's artifact keys, stable from run to run."""
    name = deployment.name or flow
    return artifact_key("kling", name.removeprefix("kling-"))


def _cell(text: str | None, limit: int) -> str:
    text = (text or "").replace("|", "\\|").replace("\n", " ").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status(record: ClipRecord) -> str:
    if record.stored:
        return "stored (resumed)" if record.resumed else "stored"
    return "**failed**: " + _cell(record.reason or record.error, REASON_CELL)


def _where(record: ClipRecord) -> str:
    """Where a clip is, as markdown: a link only when a browser can open it (http/https)."""
    if record.url and record.url.startswith(("http://", "https://")):
        return f"[{_cell(record.step, 40)}.mp4]({record.url})"
    return f"`{record.local_path or record.uri}`" if (record.local_path or record.uri) else ""


def summary_markdown(
    title: str,
    result: RunResult,
    storage: str,
    seams: Sequence[SeamPicture] = (),
    extra: Sequence[str] = (),
) -> str:
    """The summary's markdown (see the module documentation)."""
    sums = result.totals
    lines = [
        f"# {title}: {result.describe()}",
        "",
        f"- run key: `{result.run_key}`",
        f"- jobs: {sums.created} created in this run, {sums.resumed} resumed from earlier runs, {sums.failed} failed",
        f"- video stored: {sums.stored_seconds:g} s in {sums.stored} clip{'s' if sums.stored != 1 else ''}",
        f"- cost: estimated {format_usd(sums.estimated_cost)} for this run's jobs; vendor-reported "
        f"{format_usd(sums.paid_in_run)} in this run, {format_usd(sums.paid_earlier)} earlier"
        + (f" ({sums.unreported} job(s) without a reported amount)" if sums.unreported else ""),
        f"- storage: {storage}",
    ]
    if result.final is not None:
        final = result.final
        if final.url and final.url.startswith(("http://", "https://")):
            lines.append(f"- final video: [{final.uri}]({final.url})")
        else:
            lines.append(f"- final video: `{final.local_path or final.uri}`")
    lines += [
        "",
        "| step | prompt | model | status | s | cost | picture |",
        "|---|---|---|---|---|---|---|",
    ]
    pictures = 0
    for record in result.records:
        picture = ""
        if record.thumbnail_data_uri and pictures < MAX_PICTURES:
            picture = f"![{record.step}]({record.thumbnail_data_uri})"
            pictures += 1
        cost = format_usd(record.amount if record.amount is not None else record.estimated_cost, unknown="—")
        lines.append(
            f"| {_cell(record.step, 24)} | {_cell(record.prompt, PROMPT_CELL)} | {record.short_model} "
            f"| {_status(record)} | {record.video_seconds if record.job_id else 0} | {cost} | {picture} |"
        )
    if len(result.records) > MAX_PICTURES and pictures == MAX_PICTURES:
        lines.append(f"\nPictures of the first {MAX_PICTURES} clips; every clip is in the table artifact.")
    strips = [r for r in result.records if r.filmstrip_data_uri][:MAX_PICTURES]
    if strips:
        lines += ["", "## Clips", ""]
        for record in strips:
            lines += [
                f"**{record.step}** {_where(record)}",
                "",
                f"![{record.step} filmstrip]({record.filmstrip_data_uri})",
                "",
            ]
    if seams:
        lines += ["", "## Joins (last frame | first frame)", ""]
        for seam in seams[:MAX_PICTURES]:
            lines += [f"**{seam.left} → {seam.right}**", "", f"![{seam.left} to {seam.right}]({seam.data_uri})", ""]
    lines += list(extra)
    return "\n".join(lines).rstrip() + "\n"


def table_rows(result: RunResult) -> list[dict[str, str | int | bool]]:
    """The table artifact: every detail of every clip."""
    return [
        {
            "step": r.step,
            "status": r.status,
            "resumed": r.resumed,
            "model": r.model,
            "job_id": r.job_id or "",
            "video_seconds": r.video_seconds if r.job_id else 0,
            "estimated_cost": format_usd(r.estimated_cost, unknown=""),
            "vendor_amount": format_usd(r.amount, unknown=""),
            "output": r.uri or "",
            "prompt": r.prompt,
            "error": r.error or "",
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
    await acreate_markdown_artifact(
        summary_markdown(title, result, storage, seams, extra), key=summary_key, description=description
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
