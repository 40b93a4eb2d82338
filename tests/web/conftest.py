"""A real browser (Debian's Chromium, driven by Playwright) against a real gateway.

One browser per test module; each test opens its own context (its own cookies). Not one
per session: Playwright's synchronous API keeps its event loop running in this thread
until it stops, and a later test of the same process (pytest-xdist sends the modules of
the suite in any order) could then not start one of its own.

Screenshots of every page go to a temporary directory (printed at the end of a run in one
process: pytest-xdist does not show its workers' output) and, when
``DASHBOARD_SCREENSHOTS`` names a directory, there too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[playwright_api.Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/bootstrap installs Debian's chromium")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


class Shots:
    """Where a test's screenshots go."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.extra = (
            Path(os.environ["DASHBOARD_SCREENSHOTS"])
            if os.environ.get("DASHBOARD_SCREENSHOTS")
            else None
        )

    def take(self, page: playwright_api.Page, name: str, *, full_page: bool = False) -> Path:
        path = self.directory / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.extra / path.name)
        return path


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shots]:
    directory = tmp_path_factory.mktemp("web-screenshots")
    yield Shots(directory)
    print(f"\nscreenshots of the dashboard: {directory}")
