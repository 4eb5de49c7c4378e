"""What a Prefect user sees, checked in headless Chromium against a real ``prefect server start`` with both web UIs.

A subprocess (``python -m tests.test_browser``) runs the package's real flows against that server, with the ShortAPI
emulator over HTTP: a 3-clip chain (``continuation``) and a mixed batch of three models and aspect ratios whose first
job fails at the vendor. Then each run's summary artifact is opened in the classic UI (where Prefect's "View at"
links go) and the new one under ``/v2/``, at 1280 px: every picture loads, nothing overflows or runs under the
details panel, the failed batch run shows Failed. The artifacts, events and run names are checked through the API.

One synthetic artifact with a ``file://`` picture and a 15-column table proves the checks can fail.

Screenshots of the summaries go to a temporary folder; ``KLING_PREFECT_SCREENSHOTS=docs`` writes them to ``docs/``
(what the README shows), any other value to that folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from kling_prefect.emulator import Emulator
from tests.browser import (
    UI,
    UIS,
    chromium,
    flow_run_state,
    image_report,
    jpeg_bytes,
    missing_browser,
    open_artifact,
    overflow_report,
    screenshot,
    set_viewport,
    start_ui_server,
)
from tests.deploy_helpers import REPO, PrefectServer, tail

pytestmark = [
    pytest.mark.slow,
    # Checked before the server starts, so a machine without Chromium does not pay 20 s for nothing.
    pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or ""),
]

VIEWPORT = (1280, 900)
SCREENSHOT_VIEWPORT = (1280, 1500)
BOTH_UIS: tuple[UI, ...] = ("classic", "v2")

CHAIN = [
    "A paper boat is set on a calm canal at sunrise",
    "The paper boat drifts under an old stone bridge",
    "The paper boat glides into a sunny harbour",
]
BATCH = [
    {"prompt": "A red fox runs through fresh snow, slow motion", "model": "kling-o3", "duration": 3},
    {
        "prompt": "Rain on a neon-lit street at night, reflections in the puddles",
        "model": "kling-2.6",
        "duration": 5,
        "aspect_ratio": "9:16",
    },
    {"prompt": "A hot air balloon rises over green hills", "model": "kling-3.0", "duration": 3, "aspect_ratio": "1:1"},
]
MODERATION = "video generation failed: content moderation"
#: The bound of the summary table's thumbnails (kling_prefect.tasks.store.SUMMARY_THUMBNAIL_BOX).
THUMBNAIL_BOX = (72, 40)
WIDE_COLUMNS = 15


# ============================================================================================ the runs (subprocess)


async def run_flows(folder: Path, emulator: Emulator) -> dict[str, Any]:
    """The chain and the failing batch, as a user runs them; returns what the checks open."""
    from prefect import flow
    from prefect.artifacts import acreate_markdown_artifact

    from kling_prefect.flows import batch, continuation

    fast = {"poll_interval": 0.05, "timeout_seconds": 120}
    chain = await continuation(
        CHAIN, duration=3, run_key="boat-story", output_dir=str(folder / "chain"), return_state=True, **fast
    )
    assert chain.is_completed(), chain
    emulator.inject("job_failure", times=1, message=MODERATION)  # the batch's first job
    failed = await batch(
        prompts=BATCH,
        max_concurrency=1,  # in order: item-0001 is the job that fails
        run_key="fox-batch",
        output_dir=str(folder / "batch"),
        return_state=True,
        **fast,
    )

    picture = folder / "frame.jpg"
    picture.write_bytes(jpeg_bytes(160, 90, (230, 160, 20)))  # a real file: only the file:// scheme is at fault

    @flow(name="browser-check-broken")
    async def broken() -> str:
        return str(await acreate_markdown_artifact(broken_markdown(picture), key="browser-check-broken"))

    return {
        "chain_run": str(chain.state_details.flow_run_id),
        "batch_run": str(failed.state_details.flow_run_id),
        "broken": await broken(),
    }


def broken_markdown(picture: Path) -> str:
    """A local-file picture (which browsers refuse) and a table far wider than any page column."""
    header = "| " + " | ".join(f"column {i + 1} with a long heading" for i in range(WIDE_COLUMNS)) + " |"
    rule = "|" + "---|" * WIDE_COLUMNS
    row = "| " + " | ".join("a long sentence of prompt text that a cell has to hold" for _ in range(WIDE_COLUMNS))
    return "\n".join(
        ["# Browser check: broken", "", f"![local frame]({picture.as_uri()})", "", header, rule, row + " |"]
    )


# ============================================================================================ fixtures


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = start_ui_server(tmp_path_factory.mktemp("ui-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ids(ui_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The runs, made once in a subprocess with the UI server's PREFECT_API_URL (and a PREFECT_HOME of its own)."""
    folder = tmp_path_factory.mktemp("browser-runs")
    log = folder / "flows.log"
    extra = {
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "KLING_PREFECT_DURATIONS": "off",
        "SHORTAPI_MAX_QUERIES_PER_SECOND": "2000",
    }
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "tests.test_browser", str(folder)],
            env=ui_server.env(extra),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=240,
        )
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, f"flows exited with {done.returncode}:\n{tail(log)}"
    return dict(json.loads(lines[-1]))


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    """One browser for the module: later pages load the UIs' scripts from its cache."""
    with chromium(*VIEWPORT) as d:
        yield d


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("KLING_PREFECT_SCREENSHOTS", "")
    if wanted == "docs":
        return REPO / "docs"
    return Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")


def api(server: PrefectServer, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{server.api_url}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def artifacts_of(server: PrefectServer, flow_run_id: str) -> list[dict[str, Any]]:
    """Every artifact of a flow run that the UI lists (result records, which have no type, left out)."""
    found = api(server, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    return [a for a in found if a["type"]]


def summary_id(server: PrefectServer, flow_run_id: str) -> str:
    (summary,) = [a for a in artifacts_of(server, flow_run_id) if a["key"].endswith("-summary")]
    return str(summary["id"])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


_TABLE_TEXT_JS = "const t = document.querySelector(arguments[0] + ' table'); return t ? t.innerText : null;"


# ============================================================================================ in the browser


@pytest.mark.parametrize("ui", BOTH_UIS)
@pytest.mark.parametrize("run", ["chain", "batch"])
def test_the_run_summary_shows_every_picture_and_fits_the_window(
    run: str, ui: UI, driver: WebDriver, ui_server: PrefectServer, ids: dict[str, str], screenshots: Path
) -> None:
    open_artifact(driver, ui_server, summary_id(ui_server, ids[f"{run}_run"]), ui)

    images = image_report(driver)
    assert all(i.kind == "data" for i in images), images
    assert all(i.loaded for i in images), [i for i in images if not i.loaded]
    thumbnails = [i for i in images if i.alt.startswith(("clip-", "item-")) and " " not in i.alt]
    strips = [i for i in images if i.alt.endswith(" filmstrip")]
    seams = [i for i in images if " to " in i.alt]
    if run == "chain":
        # a thumbnail and a filmstrip per clip, a seam strip per join
        assert [i.alt for i in thumbnails] == ["clip-01", "clip-02", "clip-03"]
        assert len(strips) == 3 and [i.alt for i in seams] == ["clip-01 to clip-02", "clip-02 to clip-03"]
    else:
        # the failed item has no picture; the portrait (9:16) and square clips stay within the cell's bounds
        assert [i.alt for i in thumbnails] == ["item-0002", "item-0003"]
        assert [(i.natural_width, i.natural_height) for i in thumbnails] == [(22, 40), (40, 40)]
        assert len(strips) == 2 and not seams
    assert all(i.natural_width <= THUMBNAIL_BOX[0] and i.natural_height <= THUMBNAIL_BOX[1] for i in thumbnails)
    assert all(i.natural_width >= 100 for i in strips + seams)

    report = overflow_report(driver)
    assert report.fits, report
    if ui == "v2":
        assert report.panel_left is not None, "the new UI's details panel was not found: the check would be blind"

    table = driver.execute_script(_TABLE_TEXT_JS, UIS[ui].artifact_content) or ""
    if run == "batch":
        # the failure and its reason, in the table that fits: on screen, not in a column off to the right
        assert "failed" in table and "content moderation" in " ".join(table.split()), table

    # Taller than the checked window (the width is what fits or not), to show the pictures below the table too.
    set_viewport(driver, *SCREENSHOT_VIEWPORT)
    try:
        assert png_size(screenshot(driver, screenshots / f"summary-{run}-{ui}.png")) == SCREENSHOT_VIEWPORT
    finally:
        set_viewport(driver, *VIEWPORT)


@pytest.mark.parametrize("ui", BOTH_UIS)
@pytest.mark.parametrize(("run", "expected"), [("batch_run", "Failed"), ("chain_run", "Completed")])
def test_the_flow_run_page_shows_the_runs_state(
    ui: UI, run: str, expected: str, driver: WebDriver, ui_server: PrefectServer, ids: dict[str, str]
) -> None:
    state = flow_run_state(driver, ui_server, ids[run], ui)
    assert state.api == expected
    assert state.shown == expected, state


@pytest.mark.parametrize("ui", BOTH_UIS)
def test_the_checks_catch_a_file_picture_and_a_wide_table(
    ui: UI, driver: WebDriver, ui_server: PrefectServer, ids: dict[str, str]
) -> None:
    open_artifact(driver, ui_server, ids["broken"], ui)

    images = image_report(driver)
    assert [i.alt for i in images] == ["local frame"]
    (picture,) = images
    assert not picture.loaded, picture
    # the classic UI keeps the src and the browser refuses it; the new UI drops it
    assert picture.kind == {"classic": "file", "v2": "missing"}[ui], picture

    report = overflow_report(driver)
    assert not report.fits, report
    assert report.tables_too_wide == 1, report
    if ui == "classic":
        # the table scrolls sideways in its own box and stays out of the details panel
        assert report.scroll_boxes == 1 and not report.under_panel, report
    else:
        assert report.under_panel, report


# ============================================================================================ through the API


def test_a_chain_leaves_a_few_findable_artifacts(ui_server: PrefectServer, ids: dict[str, str]) -> None:
    run = api(ui_server, "GET", f"/flow_runs/{ids['chain_run']}")
    assert (run["state"]["type"], run["state"]["message"]) == ("COMPLETED", "3 of 3 clips stored")
    found = artifacts_of(ui_server, ids["chain_run"])
    flow_level = {a["key"]: a for a in found if a["type"] != "progress"}
    progress = {a["key"]: a for a in found if a["type"] == "progress"}
    # summary and table; no link artifact: a local final video does not open from a web page
    assert set(flow_level) == {"kling-continuation-summary", "kling-continuation-clips"}
    assert {k: a["type"] for k, a in flow_level.items()} == {
        "kling-continuation-summary": "markdown",
        "kling-continuation-clips": "table",
    }
    assert set(progress) == {f"kling-continuation-progress-clip-0{n}" for n in (1, 2, 3)}
    assert all(a["description"] for a in found), found
    assert (
        flow_level["kling-continuation-summary"]["description"] == "Kling continuation boat-story: 3 of 3 clips stored"
    )


def test_a_failed_batch_run_says_what_happened(ui_server: PrefectServer, ids: dict[str, str]) -> None:
    run = api(ui_server, "GET", f"/flow_runs/{ids['batch_run']}")
    assert run["state"]["type"] == "FAILED"
    assert run["state"]["message"] == f"2 of 3 clips stored; item-0001 failed at the vendor: {MODERATION}"
    assert run["name"] == "fox-batch: A red fox runs through fresh snow, slow…"  # run key + first prompt
    found = {a["key"]: a for a in artifacts_of(ui_server, ids["batch_run"])}
    assert set(found) == {"kling-batch-summary", "kling-batch-clips"} | {
        f"kling-batch-progress-item-000{n}" for n in (1, 2, 3)
    }
    failed = found["kling-batch-progress-item-0001"]
    assert failed["data"] == 100 and failed["description"].startswith(f"item-0001 FAILED at the vendor: {MODERATION}")
    task_runs = api(ui_server, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [ids["batch_run"]]}}})
    # stable names, no random suffixes
    assert sorted(t["name"] for t in task_runs) == sorted(
        f"{task}-item-000{n}" for task in ("submit", "wait", "store") for n in (1, 2, 3) if (task, n) != ("store", 1)
    )


def test_no_artifact_has_a_file_url(ui_server: PrefectServer, ids: dict[str, str]) -> None:
    for run in ("chain_run", "batch_run"):
        for artifact in artifacts_of(ui_server, ids[run]):
            assert "file:" not in json.dumps([artifact["data"], artifact["description"]]), artifact["key"]


def test_the_jobs_events_are_related_to_the_run(ui_server: PrefectServer, ids: dict[str, str]) -> None:
    """Through ``POST /api/events/filter``, as an automation or a dashboard reads them."""
    query = {
        "filter": {
            "event": {"prefix": ["kling."]},
            "related": {"id": [f"prefect.flow-run.{ids['chain_run']}"]},
        },
        "limit": 50,
    }
    events = _events_when_stored(ui_server, query, 9)
    names = sorted(e["event"] for e in events)
    assert names == sorted(["kling.job.created", "kling.job.succeeded", "kling.video.stored"] * 3)
    created = [e for e in events if e["event"] == "kling.job.created"]
    assert {e["resource"]["kling.step"] for e in created} == {"clip-01", "clip-02", "clip-03"}
    assert all(e["resource"]["prefect.resource.id"] == f"kling.job.{e['payload']['job_id']}" for e in created)
    # 3 s of kling-o3 pro, then two 5 s kling-o1 image-to-video continuations: USD as decimal strings
    assert sorted(Decimal(e["payload"]["estimated_cost_usd"]) for e in created) == [
        Decimal("0.285"),
        Decimal("0.5"),
        Decimal("0.5"),
    ]


def _events_when_stored(server: PrefectServer, query: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The events of ``query`` once ``count`` are stored (the server writes events in batches), or after 30 s."""
    for _ in range(150):
        events: list[dict[str, Any]] = api(server, "POST", "/events/filter", query)["events"]
        if len(events) >= count:
            break
        time.sleep(0.2)
    return events


if __name__ == "__main__":
    # The subprocess of the `ids` fixture: the emulator here, the flows against PREFECT_API_URL; the ids printed as
    # the last JSON line.
    with Emulator(time_scale=0.005, seed=7, timing_jitter=0.1) as vendor:
        os.environ["SHORTAPI_KEY"] = "sk-test-0123456789"
        os.environ["SHORTAPI_BASE_URL"] = vendor.base_url
        print(json.dumps(asyncio.run(run_flows(Path(sys.argv[1]), vendor))), flush=True)
