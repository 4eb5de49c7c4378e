"""What a person sees in Prefect's two web UIs, checked in headless Chromium against a real server with its UI.

Three small flows, defined here, run once in a subprocess against that server (``python -m tests.test_browser``):
one publishes a markdown artifact with small ``data:`` JPEGs in a narrow table (what should render well), one an
artifact with a ``file://`` picture and a 15-column table of long text (what the helpers must catch), and one
fails. Every check runs in both UIs; the screenshots of the good artifact go to docs/.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser import (
    UI,
    chromium,
    flow_run_state,
    image_report,
    jpeg_bytes,
    jpeg_data_uri,
    missing_browser,
    open_artifact,
    overflow_report,
    screenshot,
    start_ui_server,
)
from tests.deploy_helpers import REPO, PrefectServer, tail

pytestmark = [
    pytest.mark.slow,
    # Checked before the server starts, so a machine without Chromium does not pay 20 s for nothing.
    pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or ""),
]

SCREENSHOTS = Path(os.environ.get("KLING_PREFECT_SCREENSHOT_DIR", REPO / "docs"))
VIEWPORT = (1280, 900)
BOTH_UIS: tuple[UI, ...] = ("classic", "v2")

# The good artifact: 3 rows x 2 thumbnails in a 7-column table, plus one wider picture in a paragraph.
THUMB = (64, 36)
FRAME = (160, 90)
COLOURS = [(200, 40, 40), (40, 160, 60), (40, 70, 200)]
WIDE_COLUMNS = 15


# ============================================================================================ the flows


def pictures_markdown() -> str:
    """Markdown like a run summary: a heading, a picture in a paragraph and a narrow table of thumbnails."""
    rows = [
        f"| {i + 1} | ![first {i + 1}]({jpeg_data_uri(*THUMB, rgb)}) "
        f"| ![last {i + 1}]({jpeg_data_uri(*THUMB, rgb[::-1])}) | fox {i + 1} | 5 s | $0.38 | done |"
        for i, rgb in enumerate(COLOURS)
    ]
    return "\n".join(
        [
            "# Browser check: pictures",
            "",
            f"![final frame]({jpeg_data_uri(*FRAME, (230, 160, 20))})",
            "",
            "| # | first frame | last frame | prompt | length | cost | status |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def broken_markdown(picture: Path) -> str:
    """A local-file picture (which browsers refuse) and a table far wider than any page column."""
    header = "| " + " | ".join(f"column {i + 1} with a long heading" for i in range(WIDE_COLUMNS)) + " |"
    rule = "|" + "---|" * WIDE_COLUMNS
    row = "| " + " | ".join("a long sentence of prompt text that a cell has to hold" for _ in range(WIDE_COLUMNS))
    return "\n".join(
        ["# Browser check: broken", "", f"![local frame]({picture.as_uri()})", "", header, rule, row + " |"]
    )


def run_flows(folder: Path) -> dict[str, str]:
    """Run the three flows against PREFECT_API_URL; returns the ids the checks open."""
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact

    picture = folder / "frame.jpg"
    picture.write_bytes(jpeg_bytes(*FRAME, (230, 160, 20)))  # a real file: only the file:// scheme is at fault

    @flow(name="browser-check-pictures")
    def pictures() -> str:
        return str(create_markdown_artifact(pictures_markdown(), key="browser-check-pictures"))

    @flow(name="browser-check-broken")
    def broken() -> str:
        return str(create_markdown_artifact(broken_markdown(picture), key="browser-check-broken"))

    @flow(name="browser-check-fails", retries=0)
    def fails() -> None:
        raise RuntimeError("this flow fails on purpose, for the browser check")

    ids: dict[str, str] = {}
    for name, made in (("pictures", pictures), ("broken", broken)):
        state = made(return_state=True)
        ids[name] = state.result()
        ids[f"{name}_run"] = str(state.state_details.flow_run_id)
    failed = fails(return_state=True)
    assert failed.is_failed(), failed
    ids["failed_run"] = str(failed.state_details.flow_run_id)
    return ids


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
    """The flows, run once in a subprocess with the UI server's PREFECT_API_URL (and a PREFECT_HOME of its own)."""
    folder = tmp_path_factory.mktemp("browser-flows")
    log = folder / "flows.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "tests.test_browser", str(folder)],
            env=ui_server.env({"PREFECT_LOGGING_LEVEL": "WARNING"}),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=180,
        )
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, f"flows exited with {done.returncode}:\n{tail(log)}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    """One browser for the module: later pages load the UIs' scripts from its cache."""
    with chromium(*VIEWPORT) as d:
        yield d


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# ============================================================================================ checks


@pytest.mark.parametrize("ui", BOTH_UIS)
def test_data_uri_pictures_load_and_the_table_fits(
    ui: UI, driver: WebDriver, ui_server: PrefectServer, ids: dict[str, str]
) -> None:
    open_artifact(driver, ui_server, ids["pictures"], ui)

    images = image_report(driver)
    assert [i.alt for i in images] == ["final frame"] + [f"{e} {n}" for n in (1, 2, 3) for e in ("first", "last")]
    assert all(i.kind == "data" for i in images), images
    assert all(i.loaded for i in images), [i for i in images if not i.loaded]
    # decoded at their own size: the JPEGs are whole, not just "something loaded"
    assert [(i.natural_width, i.natural_height) for i in images] == [FRAME] + [THUMB] * 6

    report = overflow_report(driver)
    assert report.fits, report
    if ui == "v2":
        assert report.panel_left is not None, "the new UI's details panel was not found: the check would be blind"

    shot = screenshot(driver, SCREENSHOTS / f"browser-check-{ui}.png")
    assert png_size(shot) == VIEWPORT


@pytest.mark.parametrize("ui", BOTH_UIS)
def test_a_file_picture_and_a_wide_table_are_caught(
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
    assert report.widest_table > report.content_width, report
    if ui == "classic":
        # the table scrolls sideways in its own box and stays out of the details panel
        assert report.scroll_boxes == 1 and not report.under_panel, report
    else:
        assert report.under_panel, report


@pytest.mark.parametrize("ui", BOTH_UIS)
@pytest.mark.parametrize(("run", "expected"), [("failed_run", "Failed"), ("pictures_run", "Completed")])
def test_the_flow_run_page_shows_the_runs_state(
    ui: UI, run: str, expected: str, driver: WebDriver, ui_server: PrefectServer, ids: dict[str, str]
) -> None:
    state = flow_run_state(driver, ui_server, ids[run], ui)
    assert state.api == expected
    assert state.shown == expected, state


if __name__ == "__main__":
    # The flow subprocess of the `ids` fixture: run the flows, print their ids as the last JSON line.
    print(json.dumps(run_flows(Path(sys.argv[1]))), flush=True)
