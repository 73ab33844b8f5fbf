"""What the UI tests share: headless Debian chromium driven by Playwright, the Dagster webserver on a home, and the
screenshots kept under ``data/screenshots/`` (git-ignored) for people to look at."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.processes import free_port, server_process, venv_env

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package; `make test` installs it
SCREENSHOTS = Path(__file__).resolve().parents[2] / "data" / "screenshots"
# As root, in a closed network: no sandbox, no background traffic (see the machine notes).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def shot(page, name: str, full_page: bool = True) -> Path:
    """A screenshot of ``page`` saved as ``SCREENSHOTS/name``; transitions finished first (a dialog fading in)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path


@contextlib.contextmanager
def dagster_webserver(env: dict[str, str], log: Path) -> Iterator[str]:
    """``dagster-webserver`` on the project's definitions and the home ``env`` names, on 127.0.0.1; yields its URL."""
    port = free_port()
    webserver = str(Path(sys.executable).with_name("dagster-webserver"))
    command = [webserver, "-h", "127.0.0.1", "-p", str(port), "-m", "pipelines.definitions"]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, f"{url}/server_info", log, venv_env(**env), timeout_s=180):
        yield url


def no_welcome_dialog(page) -> None:
    """The project's dagster.yaml turns Dagster's first-visit newsletter dialog off: it would open a second after the
    page, over whatever the test is looking at (and Escape does not close it)."""
    page.wait_for_timeout(1_500)
    assert not page.get_by_role("dialog").count()
