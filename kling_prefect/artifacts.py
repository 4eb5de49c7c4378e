"""The record every flow leaves in Prefect: a markdown summary, a table of clips, links and thumbnails.

All calls are the async ``a*`` twins: in async code the sync names return coroutines, and an un-awaited
call silently creates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import anyio
from prefect.artifacts import (
    acreate_image_artifact,
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_table_artifact,
)

from kling_prefect.storage import StoredObject, artifact_key


@dataclass(frozen=True)
class ClipRecord:
    """One row of a run's record: what was asked, what it cost, where the result went (or why it failed)."""

    step: str
    prompt: str
    model: str
    status: str
    job_id: str | None = None
    video_seconds: int = 0
    estimated_cost: Decimal | None = None
    amount: Decimal | None = None
    uri: str | None = None
    url: str | None = None
    thumbnail_url: str | None = None
    error: str | None = None


#: Per-clip artifacts created at once (each is one call to the Prefect API).
ARTIFACT_CONCURRENCY = 8

#: Vendor-reported amounts above this (USD per job) are not believed: shown and summed as unknown.
MAX_PLAUSIBLE_AMOUNT = Decimal(100_000)


def safe_amount(value: Any) -> Decimal | None:
    """A vendor-reported ``amount`` as money, or ``None`` when it is not a finite, non-negative, plausible number.

    Responses are untrusted: ``"NaN"``, ``"-5"`` or ``"1e999999999"`` (which would take a gigabyte to print
    with two decimals) must not reach totals or artifacts.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite() or amount < 0 or amount > MAX_PLAUSIBLE_AMOUNT:
        return None
    return amount


def _money(value: Decimal | None) -> str:
    value = safe_amount(value)
    return "n/a" if value is None else f"${value:.3f}"


def _cell(text: str | None, limit: int = 80) -> str:
    text = (text or "").replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def totals(records: list[ClipRecord]) -> dict[str, Decimal | int]:
    """Seconds of video, estimated and vendor-reported cost over the records that created a job.

    ``vendor_amount`` sums the ``amount`` the vendor reported for each created job; ``unreported`` counts the
    created jobs without one (missing or implausible, see :func:`safe_amount`).
    """
    created = [r for r in records if r.job_id]
    return {
        "jobs": len(created),
        "succeeded": sum(1 for r in records if r.status == "stored"),
        "video_seconds": sum(r.video_seconds for r in created),
        "estimated_cost": sum((safe_amount(r.estimated_cost) or Decimal(0) for r in created), Decimal(0)),
        "vendor_amount": sum((safe_amount(r.amount) or Decimal(0) for r in created), Decimal(0)),
        "unreported": sum(1 for r in created if safe_amount(r.amount) is None),
    }


async def publish_clip_artifacts(run_key: str, record: ClipRecord) -> None:
    """Create one clip's link (to its output) and image (its thumbnail) artifacts, when it has them.

    A flow with many clips calls it as each clip is stored (then ``publish_run_artifacts(...,
    clips_published=True)``), so the calls spread over the run instead of queuing after the last clip.
    """
    base = artifact_key("kling", run_key)
    if record.url:
        await acreate_link_artifact(
            record.url, link_text=f"{record.step}: {record.uri}", key=artifact_key(base, record.step, "video")
        )
    if record.thumbnail_url:
        await acreate_image_artifact(record.thumbnail_url, key=artifact_key(base, record.step, "thumbnail"))


async def publish_run_artifacts(
    *,
    title: str,
    run_key: str,
    records: list[ClipRecord],
    final: StoredObject | None = None,
    storage: str = "",
    clips_published: bool = False,
) -> str:
    """Create the summary (markdown), clips (table), links and thumbnail images for one run.

    ``clips_published``: the per-clip links and images were made already (:func:`publish_clip_artifacts`).
    Returns the summary's artifact key (``<run-key>-summary``).
    """
    base = artifact_key("kling", run_key)
    sums = totals(records)
    lines = [
        f"# {title}",
        "",
        f"- run key: `{run_key}`",
        f"- storage: {storage or 'n/a'}",
        f"- jobs: {sums['jobs']} created, {sums['succeeded']} stored, {len(records) - sums['succeeded']} not stored",
        f"- video: {sums['video_seconds']} s",
        f"- cost: estimated {_money(sums['estimated_cost'])}, vendor-reported {_money(sums['vendor_amount'])}"  # type: ignore[arg-type]
        + (f" ({sums['unreported']} job(s) without a usable reported amount)" if sums["unreported"] else ""),
    ]
    if final is not None:
        lines.append(f"- final video: [{final.uri}]({final.url or final.uri})")
    lines += [
        "",
        "| step | model | prompt | job id | status | seconds | estimated | vendor amount | output | thumbnail |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        output = f"[{_cell(r.uri, 60)}]({r.url or r.uri})" if r.uri else _cell(r.error, 200)
        thumb = f"![{r.step}]({r.thumbnail_url})" if r.thumbnail_url else ""
        lines.append(
            f"| {r.step} | {r.model} | {_cell(r.prompt, 60)} | {_cell(r.job_id, 64) or '—'} | {r.status} "
            f"| {r.video_seconds} "
            f"| {_money(r.estimated_cost)} | {_money(r.amount)} | {output} | {thumb} |"
        )
    summary_key = f"{base}-summary"
    await acreate_markdown_artifact("\n".join(lines), key=summary_key, description=f"{title} ({run_key})")
    await acreate_table_artifact(
        [
            {
                "step": r.step,
                "model": r.model,
                "prompt": r.prompt,
                "job_id": r.job_id or "",
                "status": r.status,
                "video_seconds": r.video_seconds,
                "estimated_cost_usd": str(r.estimated_cost) if r.estimated_cost is not None else "",
                "vendor_amount_usd": str(safe_amount(r.amount)) if safe_amount(r.amount) is not None else "",
                "uri": r.uri or "",
                "error": r.error or "",
            }
            for r in records
        ],
        key=f"{base}-clips",
        description=f"Clips of {run_key}",
    )
    if not clips_published:
        # Two artifacts per clip, one API call each: made a few at a time (one after the other they took ~6 s
        # for 200 clips after the last one was stored).
        limiter = anyio.CapacityLimiter(ARTIFACT_CONCURRENCY)

        async def publish(record: ClipRecord) -> None:
            async with limiter:
                await publish_clip_artifacts(run_key, record)

        async with anyio.create_task_group() as group:
            for record in records:
                group.start_soon(publish, record)
    if final is not None and final.url:
        await acreate_link_artifact(final.url, link_text=f"final: {final.uri}", key=f"{base}-final")
    return summary_key
