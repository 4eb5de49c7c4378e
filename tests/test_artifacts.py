"""The run summary and table as text: figures that add up, cells that fit, prompts shown as typed, no file:// links.

How they look in the two web UIs is checked in a browser by tests/test_browser.py; these pin the text rules fast.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from kling_prefect.artifacts import (
    MODEL_CELL,
    PROMPT_CELL,
    STATUS_CELL,
    STEP_CELL,
    SeamPicture,
    escape,
    progress_description,
    progress_key,
    summary_markdown,
    table_rows,
    wrap,
)
from kling_prefect.exceptions import JobFailed, UnknownJobStatus
from kling_prefect.records import SubmittedJob
from kling_prefect.runs import ClipRecord, RunResult
from kling_prefect.storage import StoredObject

PICTURE = "data:image/jpeg;base64,/9j/AAAA"
MONEY = re.compile(r"\$\d+\.\d{2,3}\b")


def stored(step: str, seconds: float = 5.0, resumed: bool = False, amount: str | None = "0.475", **kw) -> ClipRecord:
    defaults = {
        "prompt": f"prompt of {step}",
        "model": "kwaivgi/kling-o3/text-to-video",
        "status": "stored",
        "job_id": f"job-{step}",
        "video_seconds": 5,
        "estimated_cost": Decimal("0.475"),
        "amount": None if amount is None else Decimal(amount),
        "resumed": resumed,
        "duration_seconds": seconds,
        "uri": f"file:///data/out/{step}.mp4",
        "local_path": f"/data/out/{step}.mp4",
        "thumbnail_data_uri": PICTURE,
        "filmstrip_data_uri": PICTURE,
    }
    return ClipRecord(step=step, **{**defaults, **kw})


def failed(step: str, reason: str = "failed at the vendor: video generation failed: content moderation") -> ClipRecord:
    return ClipRecord(
        step=step,
        prompt=f"prompt of {step}",
        model="kwaivgi/kling-2.6/text-to-video",
        status="failed",
        job_id=f"job-{step}",
        video_seconds=5,
        estimated_cost=Decimal("0.35"),
        amount=Decimal("0.35"),
        error=f"JobFailed: {reason}",
        reason=reason,
    )


def table_of(markdown: str) -> list[list[str]]:
    """The summary's table: one list of cells per row (header first, the |---| rule left out)."""
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_wrap_keeps_lines_and_cells_within_their_size() -> None:
    assert wrap("A red fox runs through fresh snow, slow motion", 16, 4) == [
        "A red fox runs",
        "through fresh",
        "snow, slow",
        "motion",
    ]
    assert wrap("one two three four five six seven", 10, 2) == ["one two", "three fou…"]
    assert wrap("x" * 25, 10, 3) == ["x" * 10, "x" * 10, "x" * 5]  # a long word is split, never overflows
    assert wrap("  spaced \n out  ", 20, 2) == ["spaced out"]
    assert wrap(None, 10, 2) == []


def test_escape_shows_a_prompt_as_typed() -> None:
    typed = "a *bold* _move_ | pipe [link](x) ![img](y) <b>html</b> `code` #tag ~strike~ & co \\ end"
    shown = escape(typed)
    # every markdown or HTML character is backslash-escaped: unescaping gives the prompt back
    assert re.sub(r"\\(.)", r"\1", shown) == typed
    assert not re.search(r"(?<!\\)[*_|\[\]<>`#~!&]", shown)


def test_summary_of_a_resumed_run_separates_this_run_from_earlier() -> None:
    records = [stored("clip-01", resumed=True), stored("clip-02", resumed=True), stored("clip-03", amount="0.50")]
    text = summary_markdown("Kling continuation", RunResult(run_key="story-1", records=records), "local directory")
    assert text.startswith("# Kling continuation: 3 of 3 clips stored\n")
    assert "- jobs: 1 created in this run, 2 resumed from earlier runs\n" in text
    assert "- paid in this run: vendor-reported $0.50, estimated $0.475 for 1 new job\n" in text
    assert "- paid earlier: vendor-reported $0.95 for 2 resumed jobs (not paid again)\n" in text
    assert "stored<br>(resumed)" in text


def test_summary_of_a_batch_with_a_failure_counts_what_was_stored() -> None:
    records = [failed("item-0001"), stored("item-0002", seconds=5.0), stored("item-0003", seconds=3.04)]
    result = RunResult(run_key="batch-1", records=records)
    text = summary_markdown("Kling batch", result, "local directory")
    assert text.startswith(
        "# Kling batch: 2 of 3 clips stored\n\n"
        "**item-0001 failed at the vendor: video generation failed: content moderation**\n"
    )
    assert "- video stored: 8.04 s in 2 clips\n" in text  # not 15 s: the failed clip stored nothing
    assert "- jobs: 3 created in this run, 0 resumed from earlier runs, 1 failed\n" in text
    header, *rows = table_of(text)
    assert header == ["step", "prompt", "model", "status", "s", "cost", "picture"]
    assert rows[0][3] == "**failed** at the<br>vendor: video<br>generation<br>failed: content<br>moderation"
    assert [r[4] for r in rows] == ["—", "5", "3"]
    assert [r[5] for r in rows] == ["$0.35", "$0.475", "$0.475"]


def test_summary_cells_fit_their_sizes_and_money_has_one_format() -> None:
    records = [
        stored("clip-01", prompt="A very long prompt " * 10, model="kwaivgi/kling-o1/image-to-video"),
        failed("clip-02", reason="JobMayHaveBeenCreated: the create may have been accepted (a timeout after sending)"),
    ]
    text = summary_markdown("Kling chain", RunResult(run_key="k", records=records), "local directory")
    _, *rows = table_of(text)
    for row in rows:
        assert len(row) == 7
        for cell, (width, lines) in zip(row[:4], [STEP_CELL, PROMPT_CELL, MODEL_CELL, STATUS_CELL], strict=True):
            parts = [re.sub(r"\\(.)", r"\1", p).replace("**", "") for p in cell.split("<br>")]
            assert len(parts) <= lines and all(len(p) <= width for p in parts), cell
    # every amount anywhere is $ and 2 or 3 decimals, and the table artifact writes money the same way
    for amount in re.findall(r"\$[\d.]+", text):
        assert MONEY.fullmatch(amount), amount
    for row in table_rows(RunResult(run_key="k", records=records)):
        for field in ("estimated_cost", "vendor_amount"):
            assert row[field] == "" or MONEY.fullmatch(str(row[field])), row


def test_local_files_are_text_and_s3_files_are_links() -> None:
    final = StoredObject("file:///data/out/final.mp4", "final.mp4", 10, None, "/data/out/final.mp4")
    local = RunResult(run_key="k", records=[stored("clip-01")], final=final)
    text = summary_markdown("Kling continuation", local, "local directory /data/out", [SeamPicture("a", "b", PICTURE)])
    rows = json.dumps(table_rows(local))
    assert "file:" not in text and "file:" not in rows
    assert "- final video: `/data/out/final.mp4`" in text and "`/data/out/clip-01.mp4`" in text
    assert "/data/out/clip-01.mp4" in rows

    url = "https://bucket.s3.example/kling/k/clip-01.mp4?X-Amz-Signature=abc"
    s3 = RunResult(
        run_key="k",
        records=[stored("clip-01", uri="s3://bucket/kling/k/clip-01.mp4", url=url)],
        final=StoredObject("s3://bucket/kling/k/final.mp4", "final.mp4", 10, url + "f", "/tmp/x/final.mp4"),
    )
    text = summary_markdown("Kling continuation", s3, "S3")
    assert f"[clip-01.mp4]({url})" in text and f"- final video: [final.mp4]({url}f)" in text
    assert table_rows(s3)[0]["output"] == "s3://bucket/kling/k/clip-01.mp4"


def test_pictures_rows_and_strips_are_bounded_for_big_batches() -> None:
    records = [stored(f"item-{i:04d}") for i in range(300)] + [failed("item-0300")]
    text = summary_markdown("Kling batch", RunResult(run_key="big", records=records), "local directory")
    _, *rows = table_of(text)
    assert len(rows) == 101 and rows[-1][0] == "item-0300"  # the first 100, and every failed one
    assert text.count("](data:image/jpeg;base64,") == 24 + 12
    assert "every clip is in the table artifact" in text


@pytest.mark.parametrize(
    ("flow_name", "deployment_name", "key"),
    [
        ("kling-batch", None, "kling-batch-progress-item-0001"),
        ("my-clips", None, "kling-my-clips-progress-item-0001"),
        ("kling-batch", "batch-every-6h", "kling-batch-every-6h-progress-item-0001"),
        (None, None, "kling-progress-item-0001"),
    ],
)
def test_progress_keys_are_stable_per_flow_or_deployment(monkeypatch, flow_name, deployment_name, key) -> None:
    # Prefect's documented overrides of its runtime values (what a flow run in a deployment would report)
    for variable, value in (
        ("PREFECT__RUNTIME__FLOW_RUN__FLOW_NAME", flow_name),
        ("PREFECT__RUNTIME__DEPLOYMENT__NAME", deployment_name),
    ):
        if value is not None:
            monkeypatch.setenv(variable, value)
    assert progress_key("item-0001") == key


def test_a_progress_description_says_what_the_job_is_and_how_it_ended() -> None:
    job = SubmittedJob(
        "9f00", "kwaivgi/kling-2.6/text-to-video", "batch-1", "item-0001", {}, Decimal("0.35"), None, 5, 0
    )
    assert progress_description(job, "running") == "item-0001: kling-2.6 job 9f00 of run batch-1"
    assert progress_description(job, "succeeded") == "item-0001 succeeded: kling-2.6 job 9f00 of run batch-1"
    moderated = JobFailed("job failed at the vendor: content moderation", job_id="9f00")
    assert (
        progress_description(job, "failed", moderated)
        == "item-0001 FAILED at the vendor: content moderation (job 9f00)"
    )
    odd = UnknownJobStatus("status 9 is not documented", status=9, job_id="9f00")
    assert progress_description(job, "failed", odd) == "item-0001 FAILED: undocumented status 9 (job 9f00)"
