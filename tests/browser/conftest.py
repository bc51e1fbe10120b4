"""The console in a real browser: one embedded stack per session, the scenarios placed once, one Chromium.

Without Chromium (or Playwright) the tests skip, loudly, and the summary counts them; under CI (env CI set)
the same absence fails every test instead, because CI must have run them (.ci/run installs Chromium).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.browser.harness import (
    CHROMIUM_PACKAGES,
    browser_missing,
    launch,
    place_scenarios,
    start_stack,
    stop_stack_process,
)

MISSING = browser_missing()
PAGE_TIMEOUT_MS = 20_000  # a loaded 2-core machine: generous, but a deadline


@pytest.fixture(scope="session")
def chromium() -> Any:
    if MISSING:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests, and cannot: {MISSING}", pytrace=False)
        pytest.skip(f"BROWSER TESTS NOT RUN: {MISSING}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    running = start_stack(tmp_path_factory.mktemp("console-stack"))
    try:
        yield running
    finally:
        stop_stack_process(running.process)


@pytest.fixture(scope="session")
def scenarios(stack: Any) -> Any:
    return place_scenarios(stack)


class Page:
    """A browser page on the console that records what a person would see go wrong: errors in its console."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        page.on("console", lambda message: self.errors.append(f"console.{message.type}: {message.text}")
                if message.type in ("error", "warning") else None)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.set_default_timeout(PAGE_TIMEOUT_MS)

    def open(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        assert response is not None, path
        assert response.status == 200, f"{path}: {response.status}"
        assert "tok_" not in self.page.content(), f"{path} shows a card token"
        return self.page


@pytest.fixture
def console(chromium: Any, stack: Any) -> Any:
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = Page(context.new_page(), stack.console)
    yield page
    content = page.page.content()
    context.close()
    assert page.errors == [], f"the page logged errors: {page.errors}"
    assert "tok_" not in content, "a card token is on the page"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "tests/browser" in r.nodeid]
    if MISSING and skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} browser tests SKIPPED: {MISSING}", red=True, bold=True)
        terminalreporter.write_line(f"Install Chromium to run them: sudo apt-get install -y {CHROMIUM_PACKAGES}")

