"""The HTML report and its thought viewer in a real browser: headless Chromium (``/usr/bin/chromium``,
Debian's ``chromium`` package) driven by playwright over the report of a small real ``em`` run.

Each page must load from a ``file://`` URL without a console error or a page error, show the run's
numbers, and its filters must change the chunks shown as the run's files say they should. A
screenshot of each is written to ``$LATENT_THOUGHTS_SCREENSHOTS`` (else the test's temporary folder)
and its path printed (``pytest -s`` shows it). Skipped where Chromium or playwright is missing,
except under ``.ci/run`` (``LATENT_THOUGHTS_REQUIRE_BROWSER=1``), which installs Chromium.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from latent_thoughts.cli import main
from latent_thoughts.report.viewer import viewer_page
from latent_thoughts.testbed.checker import check_thought
from tests.test_report_viewer import make_tiny_em_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

REQUIRED = os.environ.get("LATENT_THOUGHTS_REQUIRE_BROWSER") == "1"
"""Set by ``.ci/run``, which installs Chromium: a missing browser there fails instead of skipping."""

if REQUIRED:
    assert CHROMIUM.exists(), f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    ),
]
if REQUIRED:
    import playwright.sync_api as sync_api
else:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )


@pytest.fixture(scope="module")
def em_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_em_run(tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LATENT_THOUGHTS_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Page:
    """A browser tab on one HTML file, recording console errors and uncaught page errors."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 1000})
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector("#lt-viewer[data-ready='1']", timeout=20_000)

    def shown(self) -> int:
        """How many chunks match the viewer's filters."""
        return int(self.page.get_attribute("#lt-viewer .lt-count", "data-shown"))

    def cards(self, attribute: str) -> list[str]:
        """``attribute`` of every chunk card on the viewer's current page."""
        return list(
            self.page.eval_on_selector_all(
                "#lt-viewer .lt-chunk", f"cards => cards.map(card => card.getAttribute('{attribute}'))"
            )
        )

    def choose(self, control: str, value: str) -> None:
        self.page.select_option(f"#lt-viewer .{control}", value)

    def search(self, text: str) -> None:
        """Type ``text`` in the search box and wait for the viewer to apply it."""
        self.page.fill("#lt-viewer .lt-search", text)
        self.page.wait_for_function(
            "text => document.querySelector('#lt-viewer .lt-count').dataset.query === text", arg=text
        )

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path


def shows_number(value: float, text: str) -> bool:
    """Whether ``value`` appears in ``text`` at some precision from 1 to 4 decimals."""
    return any(f"{value:.{digits}f}" in text for digits in range(1, 5))


def selected_verdicts(run: Path, t: int) -> dict[tuple[str, int], bool]:
    """The checker's verdict on the thought iteration ``t``'s E-step selected, per chunk."""
    rows = pq.read_table(run / f"iter_{t}" / "samples.parquet").to_pylist()
    return {
        (row["doc_id"], row["chunk_index"]): check_thought(row["thought"], row["text"]).valid
        for row in rows
        if row["thought"] is not None
    }


def test_the_report_page_loads_shows_the_runs_numbers_and_filters_invalid_thoughts(
    em_run: Path, browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(em_run), "--out", str(out)]) == 0
    page = Page(browser, out)
    text = page.page.inner_text("body")
    summary = json.loads((em_run / "summary.json").read_text())
    first = summary["iterations"][1]
    assert shows_number(first["mean_bound"], text) and shows_number(first["mean_ess"], text)

    page.choose("lt-source", "1")  # iteration 1's E-step
    chunks = pq.read_table(em_run / "iter_1" / "samples.parquet").num_rows
    assert page.shown() == chunks
    verdicts = selected_verdicts(em_run, 1)
    page.choose("lt-validity", "invalid")
    invalid = sum(not valid for valid in verdicts.values())
    assert 0 < invalid < chunks and page.shown() == invalid
    assert set(page.cards("data-valid")) == {"0"}
    assert len(page.cards("data-row")) == min(invalid, 50)
    page.choose("lt-validity", "valid")
    assert page.shown() == chunks - invalid and set(page.cards("data-valid")) == {"1"}
    page.page.evaluate("document.getElementById('lt-viewer').scrollIntoView()")
    assert page.screenshot(screenshots / "report-viewer.png").stat().st_size > 10_000
    assert page.errors == []


def test_the_viewer_page_filters_by_document_and_search_and_pages_through_chunks(
    em_run: Path, browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    out = tmp_path / "viewer.html"
    html = viewer_page(em_run)
    assert html is not None
    out.write_text(html, encoding="utf-8")
    page = Page(browser, out)
    e_step = json.loads((em_run / "iter_1" / "samples.summary.json").read_text())
    assert f"{e_step['mean_ess']:.3f}" in page.page.inner_text("#lt-viewer .lt-summary")

    page.choose("lt-source", "1")
    rows = pq.read_table(em_run / "iter_1" / "samples.parquet").to_pylist()
    assert page.shown() == len(rows) > 50
    assert len(page.cards("data-row")) == 50
    page.page.click("#lt-viewer .lt-next")
    assert page.cards("data-row") == [str(row) for row in range(50, min(len(rows), 100))]

    document = rows[-1]["doc_id"]
    page.choose("lt-doc", str(list(dict.fromkeys(row["doc_id"] for row in rows)).index(document)))
    assert page.shown() == sum(row["doc_id"] == document for row in rows)
    assert set(page.cards("data-doc")) == {document}

    page.choose("lt-doc", "-1")
    word = "Adding"
    page.search(word)
    expected = sum(
        any(word.lower() in text.lower() for text in [row["text"], *row["samples"]]) for row in rows
    )
    assert 0 < expected < len(rows) and page.shown() == expected
    assert page.screenshot(screenshots / "viewer.png").stat().st_size > 10_000
    assert page.errors == []
