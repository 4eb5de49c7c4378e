"""Browser checks of what a person sees in Prefect's web UIs: artifact pages and flow-run states.

Debian's headless Chromium (``/usr/bin/chromium``) driven by Selenium through Debian's ``/usr/bin/chromedriver``.
Nothing is fetched at run time: the driver path is given explicitly, so Selenium Manager never runs, and Chromium's
own background traffic (component updates, sync) is switched off because a closed network refuses it.

The server serves two UIs and both are checked: the classic one (``/runs/flow-run/<id>``, the links Prefect prints)
and the new one under ``/v2/`` (where ``/`` redirects). Their DOMs differ; the selectors live in ``UIS``.
"""

from __future__ import annotations

import base64
import contextlib
import fractions
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.deploy_helpers import PrefectServer, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# Headless Chromium as root in a closed network: no sandbox (root), no GPU, /tmp instead of a small /dev/shm, and
# none of the background connections (component updates, sync, QUIC probes) whose refusal would only add noise.
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

UI = Literal["classic", "v2"]
T = TypeVar("T")


@dataclass(frozen=True)
class UISelectors:
    """Where one UI puts things (CSS selectors), and the path prefix of its pages."""

    prefix: str
    artifact_content: str
    details_panel: str
    state_badge: str


UIS: dict[str, UISelectors] = {
    # Classic (Vue, prefect-ui-library): the markdown body is an <article> inside the data view; the description
    # above it is a separate renderer and not part of the artifact's data. Tables sit in a scrolling `.p-table` box.
    "classic": UISelectors(
        prefix="",
        artifact_content=".artifact-data-view .artifact-data-markdown",
        details_panel=".p-layout-well__well",
        state_badge=".page-heading-flow-run .state-badge",
    ),
    # New (React, under /v2/): the markdown body carries a test id; the details column is the page's <aside>. The
    # state badge is the badge beside the breadcrumb (log levels further down are badges too).
    "v2": UISelectors(
        prefix="/v2",
        artifact_content='[data-testid="markdown-display"]',
        details_panel="aside",
        state_badge='nav[aria-label="breadcrumb"] ~ div [data-slot="badge"]',
    ),
}


# ============================================================================================ the server


def start_ui_server(home: Path, timeout: float = 120.0) -> PrefectServer:
    """Start ``prefect server start`` with both UIs on a free port, and check the UI will call this server.

    Args:
        home: An empty folder for the server's PREFECT_HOME, database and log.
        timeout: Seconds to wait for ``/api/health``.

    Returns:
        The running server; stop it with ``server.stop()``.
    """
    server = PrefectServer(home=home, port=free_port(), ui=True).start(timeout=timeout)
    try:
        # The UI reads its API address from /ui-settings: a wrong one shows "Can't connect to Server API" in every
        # page, which would otherwise surface as a confusing wait timeout in the first check.
        settings = httpx.get(f"{server.ui_url}/ui-settings", timeout=10).json()
        if settings.get("api_url") != server.api_url:
            raise RuntimeError(f"the UI would call {settings.get('api_url')!r}, not {server.api_url!r}")
    except BaseException:
        server.stop()
        raise
    return server


# ============================================================================================ the browser


def missing_browser() -> str | None:
    """Why the browser checks cannot run here (Chromium or its driver not installed), or None when they can."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        return f"{' and '.join(missing)} missing: Debian packages chromium, chromium-driver (.ci/run installs them)"
    return None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900, page_load_timeout: float = 60.0) -> Iterator[WebDriver]:
    """A Selenium WebDriver for Debian's headless Chromium whose viewport is ``width`` x ``height`` CSS pixels.

    Skips the calling test when Chromium or its driver is not installed (CI installs both: see ``.ci/run``).

    Args:
        width: Viewport width; screenshots have this width.
        height: Viewport height; screenshots have this height.
        page_load_timeout: Seconds a ``driver.get`` may take.

    Yields:
        A ``selenium.webdriver.Chrome``; it quits, and its profile folder is removed, on exit.
    """
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="kling-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in CHROMIUM_ARGS:
            options.add_argument(arg)
        # A fresh profile each time: no cache, cookies or local storage carry over from another run.
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            driver.set_page_load_timeout(page_load_timeout)
            set_viewport(driver, width, height)
            yield driver
        finally:
            driver.quit()


def set_viewport(driver: WebDriver, width: int, height: int) -> None:
    """Resize the window so that the page itself (not the window) is ``width`` x ``height``.

    Headless Chromium still reserves room for browser chrome inside ``--window-size`` (a 1280x900 window has a
    1280x757 viewport), so the window is grown by the difference.
    """
    inner_width, inner_height = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    if (inner_width, inner_height) != (width, height):
        size = driver.get_window_size()
        driver.set_window_size(size["width"] + width - inner_width, size["height"] + height - inner_height)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T], timeout: float, what: str) -> T:
    """Wait until ``condition(driver)`` is truthy; on timeout fail with what was awaited and what the page shows."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException:
        try:
            shown = driver.execute_script("return document.body ? document.body.innerText : ''")[:1500]
        except Exception as exc:  # the page may be gone; the timeout is the news
            shown = f"(page text unavailable: {exc})"
        raise AssertionError(f"{what}: not within {timeout} s at {driver.current_url}\npage text:\n{shown}") from None


def page_url(server: PrefectServer, ui: UI, path: str) -> str:
    return f"{server.ui_url}{UIS[ui].prefix}{path}"


# ============================================================================================ artifacts


def open_artifact(
    driver: WebDriver,
    server: PrefectServer,
    artifact_id: str,
    ui: UI = "classic",
    timeout: float = 30.0,
    settle: float = 0.5,
) -> None:
    """Open an artifact's page and wait until its markdown has rendered, its images have loaded and it holds still.

    The new UI mounts the markdown twice (a first render is replaced ~0.2-0.3 s later, once its other queries
    answer), so "rendered" means: the same content element, with children and every image complete, for
    ``settle`` seconds. The helpers that read the page afterwards look the content up again each time and read it
    in one script, so a late re-render can never leave them holding a detached element.

    Args:
        driver: From ``chromium()``.
        server: From ``start_ui_server()``.
        artifact_id: The artifact's id (not its key).
        ui: "classic" (``/artifacts/artifact/<id>``) or "v2" (``/v2/artifacts/artifact/<id>``).
        timeout: Seconds for all of that to happen.
        settle: Seconds the rendered content must stay the same element.
    """
    selector = UIS[ui].artifact_content
    driver.get(page_url(server, ui, f"/artifacts/artifact/{artifact_id}"))
    wait_for(
        driver,
        lambda d: (d.execute_script(_SETTLED_JS, selector) or 0) >= settle * 1000,
        timeout,
        f"{ui} artifact {artifact_id}: rendered markdown ({selector}) with its images, holding still",
    )


# Milliseconds the content element has been rendered, with children and every image complete (a loaded or broken
# image is `complete`, one still in flight is not; an <img> without src counts as complete); null until then.
_SETTLED_JS = """
const c = document.querySelector(arguments[0]);
if (!c || !c.children.length || ![...c.querySelectorAll('img')].every(i => i.complete)) return null;
c.__klingReadySince = c.__klingReadySince || performance.now();
return performance.now() - c.__klingReadySince;
"""


def current_ui(driver: WebDriver) -> UI:
    """Which UI the current page belongs to: the new one lives under ``/v2/``."""
    return "v2" if urlsplit(driver.current_url).path.startswith("/v2/") else "classic"


SrcKind = Literal["data", "http", "file", "missing", "other"]


@dataclass(frozen=True)
class ImageInfo:
    """One ``<img>`` as the browser has it: what its src is and whether it decoded."""

    kind: SrcKind
    natural_width: int
    natural_height: int
    alt: str
    src_start: str  # the first 40 characters of src ("" when missing): enough to recognise it in a failure

    @property
    def loaded(self) -> bool:
        """True when the browser decoded a picture (a broken or src-less image has natural width 0)."""
        return self.natural_width > 0


def src_kind(src: str) -> SrcKind:
    if not src:
        return "missing"
    scheme = src.split(":", 1)[0].lower() if ":" in src else ""
    if scheme == "data":
        return "data"
    if scheme in ("http", "https"):
        return "http"
    if scheme == "file":
        return "file"
    return "other"


def image_report(driver: WebDriver, timeout: float = 30.0) -> list[ImageInfo]:
    """Every ``<img>`` in the rendered artifact content (after ``open_artifact``), once all finished loading.

    The src is read as written in the DOM (``getAttribute``): the new UI drops ``file:`` sources, which shows up
    here as "missing".
    """
    found = wait_for(
        driver,
        lambda d: d.execute_script(_IMAGES_JS, UIS[current_ui(d)].artifact_content),
        timeout,
        "artifact content with every image loaded or failed",
    )
    return [ImageInfo(src_kind(src), int(w), int(h), alt, src[:40]) for src, w, h, alt in found["images"]]


_IMAGES_JS = """
const c = document.querySelector(arguments[0]);
const images = c ? [...c.querySelectorAll('img')] : [];
if (!c || !images.every(i => i.complete)) return null;
return {images: images.map(i => [
  i.getAttribute('src') || '', i.naturalWidth, i.naturalHeight, i.getAttribute('alt') || ''])};
"""


@dataclass(frozen=True)
class OverflowReport:
    """How the artifact content fits the page. Widths and edges in CSS pixels of the viewport.

    Attributes:
        content_width: The content element's inner width: what a table must fit into.
        widest_table: The widest table's full (unclipped) width; 0 without tables.
        tables_too_wide: How many tables are wider than the content.
        content_overflows: Something inside the content reaches past its box (``scrollWidth > clientWidth``).
        scroll_boxes: Boxes inside the content that scroll sideways because of it (the classic UI's table box).
        page_scrolls: The page, or a scrolling ancestor of the content (the new UI's <main>), scrolls sideways.
        visible_right: Right edge of the content as a person sees it: every element clipped by its scrolling
            ancestors.
        panel_left: Left edge of the right-hand details panel; None when the UI shows no panel.
        under_panel: The visible content reaches into the panel's column.
    """

    content_width: float
    widest_table: float
    tables_too_wide: int
    content_overflows: bool
    scroll_boxes: int
    page_scrolls: bool
    visible_right: float
    panel_left: float | None
    under_panel: bool

    @property
    def fits(self) -> bool:
        """True when nothing is too wide, nothing scrolls sideways and nothing runs under the panel."""
        return not (
            self.tables_too_wide or self.content_overflows or self.scroll_boxes or self.page_scrolls or self.under_panel
        )


_OVERFLOW_JS = """
const content = document.querySelector(arguments[0]);
if (!content) return null;
// The first details panel that is laid out (the new UI's <aside> is display:none below its `lg` breakpoint).
const panel = [...document.querySelectorAll(arguments[1])].find(p => p.getBoundingClientRect().width > 0);
const SLACK = 1;  // sub-pixel rounding
const scrollsX = el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX)
    && el.scrollWidth > el.clientWidth + SLACK;
// Right edge of what is visible of el: clipped by every ancestor that does not let overflow show.
const visibleRight = el => {
  const r = el.getBoundingClientRect();
  if (!r.width || !r.height) return -Infinity;
  let right = r.right;
  for (let a = el.parentElement; a; a = a.parentElement) {
    if (getComputedStyle(a).overflowX !== 'visible') right = Math.min(right, a.getBoundingClientRect().right);
  }
  return right;
};
const width = content.clientWidth;
const tables = [...content.querySelectorAll('table')].map(t => t.getBoundingClientRect().width);
const inside = [...content.querySelectorAll('*')];
let pageScrolls = document.documentElement.scrollWidth > document.documentElement.clientWidth + SLACK;
for (let a = content.parentElement; a; a = a.parentElement) if (scrollsX(a)) pageScrolls = true;
const panelRect = panel ? panel.getBoundingClientRect() : null;
return {
  content_width: width,
  widest_table: Math.max(0, ...tables),
  tables_too_wide: tables.filter(w => w > width + SLACK).length,
  content_overflows: content.scrollWidth > content.clientWidth + SLACK,
  scroll_boxes: inside.filter(scrollsX).length,
  page_scrolls: pageScrolls,
  visible_right: Math.max(visibleRight(content), ...inside.map(visibleRight)),
  panel_left: panelRect ? panelRect.left : null,
};
"""


def overflow_report(driver: WebDriver, timeout: float = 10.0) -> OverflowReport:
    """Measure whether the artifact content (after ``open_artifact``) fits its column, without sideways scrolling.

    The classic UI puts each table in a box that scrolls sideways; the new UI lets a wide table run on, under the
    details panel to its right. Both count as not fitting.
    """
    selectors = UIS[current_ui(driver)]
    raw = wait_for(
        driver,
        lambda d: d.execute_script(_OVERFLOW_JS, selectors.artifact_content, selectors.details_panel),
        timeout,
        f"artifact content ({selectors.artifact_content})",
    )
    panel_left = raw["panel_left"]
    return OverflowReport(
        content_width=float(raw["content_width"]),
        widest_table=float(raw["widest_table"]),
        tables_too_wide=int(raw["tables_too_wide"]),
        content_overflows=bool(raw["content_overflows"]),
        scroll_boxes=int(raw["scroll_boxes"]),
        page_scrolls=bool(raw["page_scrolls"]),
        visible_right=float(raw["visible_right"]),
        panel_left=None if panel_left is None else float(panel_left),
        under_panel=panel_left is not None and raw["visible_right"] > panel_left + 1,
    )


# ============================================================================================ flow runs


@dataclass(frozen=True)
class ShownState:
    """A flow run's state as the UI shows it and as the API has it."""

    shown: str
    api: str


def api_state_name(server: PrefectServer, flow_run_id: str) -> str:
    response = httpx.get(f"{server.api_url}/flow_runs/{flow_run_id}", timeout=10)
    response.raise_for_status()
    return response.json()["state"]["name"]


def flow_run_state(
    driver: WebDriver, server: PrefectServer, flow_run_id: str, ui: UI = "classic", timeout: float = 30.0
) -> ShownState:
    """Open a flow run's page and read the state badge in its heading, next to the API's state name.

    Waits until the badge shows the API's state (the UIs poll, so a run that just finished may show its previous
    state for a moment); if it never does, returns what it last showed, for the caller to report.
    """
    selector = UIS[ui].state_badge
    driver.get(page_url(server, ui, f"/runs/flow-run/{flow_run_id}"))

    def badge_text(d: WebDriver) -> str:
        try:
            return " ".join(" ".join(e.text.split()) for e in d.find_elements(By.CSS_SELECTOR, selector)).strip()
        except StaleElementReferenceException:  # re-rendered between find and read: read again on the next poll
            return ""

    shown = wait_for(driver, badge_text, timeout, f"{ui} flow run {flow_run_id}: state badge ({selector})")
    api = api_state_name(server, flow_run_id)
    last = [shown]

    def shows_api_state(d: WebDriver) -> bool:
        last[0] = badge_text(d) or last[0]
        return last[0] == api

    with contextlib.suppress(TimeoutException):
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(shows_api_state)
    return ShownState(shown=last[0], api=api)


# ============================================================================================ pictures


def screenshot(driver: WebDriver, path: Path) -> Path:
    """Save the viewport as a PNG at ``path`` (folders created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"Chromium did not write a screenshot to {path}")
    return path


def jpeg_bytes(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A small, valid baseline JPEG: a ``rgb`` frame with a white square in the middle (PyAV's mjpeg encoder).

    Made here rather than stored so the tests need no binary fixtures and no image library beyond PyAV, which the
    package depends on already.
    """
    import av
    import numpy as np

    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuvj420p"  # full-range 4:2:0: what a browser decodes from any JPEG
    codec.time_base = fractions.Fraction(1, 25)
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:] = rgb
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuvj420p")
    data = b"".join(bytes(p) for p in codec.encode(frame)) + b"".join(bytes(p) for p in codec.encode(None))
    if not (data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")):
        raise ValueError("the mjpeg encoder did not return one JPEG image")
    return data


def jpeg_data_uri(width: int, height: int, rgb: tuple[int, int, int]) -> str:
    """``data:image/jpeg;base64,...`` of ``jpeg_bytes(width, height, rgb)``: renders in both UIs."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(width, height, rgb)).decode("ascii")
