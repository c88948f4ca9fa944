"""The dashboard in a real browser: Debian's chromium, driven by Playwright, on `hookline serve`.

Skipped when /usr/bin/chromium is missing, unless HOOKLINE_REQUIRE_BROWSER is set (CI sets it),
in which case a missing browser fails. Playwright never downloads a browser here. The tests are
plain functions: Playwright's sync API refuses to run inside an asyncio loop.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from conftest import STANDARD_SECRET, standard_body, standard_headers
from server import ServerProcess, running_server

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Screenshots go to $HOOKLINE_SCREENSHOTS when set (CI keeps that folder), else to tmp_path.
SCREENSHOTS_ENV = "HOOKLINE_SCREENSHOTS"
ADMIN_TOKEN = "dashboard-admin-token-0123456789"
READ_TOKEN = "dashboard-read-token-0123456789"
WAIT = 15_000  # ms: generous for a loaded CI machine; every wait ends as soon as it holds


def require_browser() -> None:
    required = bool(os.environ.get("HOOKLINE_REQUIRE_BROWSER"))
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if required:
            pytest.fail(f"HOOKLINE_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(reason)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if required:
            raise
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")


def write_config(path: Path, tokens: bool = True) -> Path:
    api_tokens = f"""
[[api.tokens]]
name = "ops"
token = "{ADMIN_TOKEN}"
scopes = ["read", "admin"]

[[api.tokens]]
name = "viewer"
token = "{READ_TOKEN}"
scopes = ["read"]
""" if tokens else ""
    config = path / "hookline.toml"
    config.write_text(f"""
[storage]
url = "sqlite:///{path / 'hl.db'}"
{api_tokens}
[sources.partner]
platform = "standard"
unknown_events = "accept"
auth = {{ scheme = "standard_webhooks", secrets = ["{STANDARD_SECRET}"] }}

[[routes]]
match = "*"
handler = "log"

[handlers.log]
use = "log"
""")
    return config


def post_event(server: ServerProcess, msg_id: str, job_id: str) -> str:
    body = standard_body(platform="dcycle", file_id="file-42", job_id=job_id)
    response = httpx.post(f"{server.url}/webhooks/partner", content=body,
                          headers=standard_headers(body, time.time(), msg_id), timeout=10)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def browser_page(server: ServerProcess, missing: tuple[str, ...] = (), width: int = 1280,
                 start: str = "/") -> Iterator[Page]:
    """A fresh page `width` px wide at `start`, where the paths in `missing` answer 404 as an
    older server would; fails the test on any uncaught script error or Content-Security-Policy
    violation."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("pageerror", lambda error: errors.append(str(error)))
            # A Content-Security-Policy violation is only a console message: fail on it too.
            page.on("console", lambda message: errors.append(message.text)
                    if "Content Security Policy" in message.text else None)
            for path in missing:
                page.route(f"{server.url}{path}*", lambda route: route.fulfill(
                    status=404, content_type="application/json",
                    body='{"error": {"code": "not_found", "message": "Not Found", "details": []}}'))
            page.goto(f"{server.url}{start}")
            yield page
        finally:
            browser.close()
    assert not errors, errors


def sign_in(page: Page, token: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#auth")).to_be_visible(timeout=WAIT)
    page.fill("#token-input", token)
    page.click("#token-save")


def test_live_event_detail_and_replay(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    with running_server(["--config", str(write_config(tmp_path))], cwd=tmp_path) as server, \
            browser_page(server) as page:
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        sign_in(page, ADMIN_TOKEN)
        expect(page.locator("#whoami")).to_contain_text("ops", timeout=WAIT)
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live", timeout=WAIT)
        expect(page.locator("#chart svg")).to_be_visible(timeout=WAIT)
        expect(page.locator("#events-empty")).to_be_visible(timeout=WAIT)
        page.evaluate("window.notReloaded = true")

        event_id = post_event(server, "msg-dashboard-1", "job-7")
        row = page.locator(f'#events tbody tr[data-event-id="{event_id}"]')
        expect(row).to_be_visible(timeout=WAIT)
        expect(row).to_contain_text("file.processing_failed")
        expect(row).to_contain_text("job-7")
        assert page.evaluate("window.notReloaded") is True  # it came over the live tail

        row.click()
        detail = page.locator("#detail")
        expect(detail.locator("#detail-payload")).to_contain_text('"file_id": "file-42"',
                                                                  timeout=WAIT)
        expect(detail.locator("#detail-headers")).to_contain_text("webhook-id")
        expect(detail.locator('.delivery[data-status="succeeded"]')).to_have_count(1,
                                                                                    timeout=WAIT)
        expect(detail.locator(".delivery")).to_contain_text("log")
        expect(row.locator("td.status")).to_have_text("delivered", timeout=WAIT)

        page.click("#raw-button")
        expect(page.locator("#raw-body")).to_contain_text('"type": "file.processing_failed"',
                                                          timeout=WAIT)

        page.click("#replay-button")
        expect(page.locator("#replay-result")).to_contain_text("1 new delivery to log",
                                                               timeout=WAIT)
        expect(detail.locator(".delivery")).to_have_count(2, timeout=WAIT)
        expect(detail.locator('.delivery[data-status="succeeded"]')).to_have_count(2,
                                                                                    timeout=WAIT)

        page.screenshot(path=str(screenshot_dir(tmp_path) / "dashboard.png"), full_page=True)

        # The event is a modal dialog: Escape closes it and the address loses the event.
        page.keyboard.press("Escape")
        expect(detail).to_be_hidden(timeout=WAIT)
        expect(page).not_to_have_url(re.compile("event="), timeout=WAIT)
        page.locator("#events tbody tr").first.locator('a[data-kind="job"]').click()
        expect(page.locator("#lifecycle-body")).to_contain_text("job-7", timeout=WAIT)

        expect(page.locator("#dead-letters")).to_contain_text("None", timeout=WAIT)
        assert page.evaluate("sessionStorage.getItem('hookline.token')") == ADMIN_TOKEN
        assert page.evaluate("localStorage.length") == 0
        assert not [url for url in urls if ADMIN_TOKEN in url]

def test_read_token_has_no_replay_and_a_refused_token_is_asked_again(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    with running_server(["--config", str(write_config(tmp_path))], cwd=tmp_path) as server:
        event_id = post_event(server, "msg-dashboard-2", "job-8")
        with browser_page(server) as page:
            sign_in(page, "not-a-token")
            expect(page.locator("#auth")).to_be_visible(timeout=WAIT)
            expect(page.locator("#auth-message")).to_contain_text("refused")

            sign_in(page, READ_TOKEN)
            expect(page.locator("#whoami")).to_contain_text("viewer", timeout=WAIT)
            page.locator(f'#events tbody tr[data-event-id="{event_id}"]').click(timeout=WAIT)
            expect(page.locator("#detail-payload")).to_contain_text("job-8", timeout=WAIT)
            expect(page.locator("#raw-button")).to_be_visible()
            expect(page.locator("#replay-button")).to_have_count(0)


def test_open_api_asks_for_no_token(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    config = write_config(tmp_path, tokens=False)
    with running_server(["--config", str(config)], cwd=tmp_path) as server, \
            browser_page(server) as page:
        expect(page.locator("#app")).to_be_visible(timeout=WAIT)
        expect(page.locator("#whoami")).to_contain_text("open", timeout=WAIT)
        expect(page.locator("#auth")).to_be_hidden()
        expect(page.locator("#sign-out")).to_be_hidden()


def test_what_senders_send_is_shown_as_text_never_as_markup(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    hostile = '<img src=x onerror="window.pwned=1"><b id="injected">bold</b>'
    config = write_config(tmp_path, tokens=False)
    with running_server(["--config", str(config)], cwd=tmp_path) as server, \
            browser_page(server) as page:
        expect(page.locator("#events-empty")).to_be_visible(timeout=WAIT)
        event_id = post_event(server, "msg-hostile", hostile)
        row = page.locator(f'#events tbody tr[data-event-id="{event_id}"]')
        expect(row).to_contain_text(hostile, timeout=WAIT)
        row.click()
        expect(page.locator("#detail-payload")).to_contain_text("onerror", timeout=WAIT)
        page.click("#raw-button")
        expect(page.locator("#raw-body")).to_contain_text("onerror", timeout=WAIT)
        page.keyboard.press("Escape")
        expect(page.locator("#detail")).to_be_hidden(timeout=WAIT)
        page.fill("#search-input", hostile)  # a "/" in an id is no path segment: not found
        page.click("#search-go")
        expect(page.locator("#search-result")).to_contain_text(hostile, timeout=WAIT)
        row.locator('a[data-kind="job"]').click()
        expect(page.locator("#lifecycle-body")).to_contain_text(hostile, timeout=WAIT)
        assert page.locator("#app img, #injected").count() == 0
        assert page.evaluate("window.pwned") is None


def test_degrades_without_the_newer_endpoints(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    missing = ("/api/whoami", "/api/stats", "/api/stream")
    with running_server(["--config", str(write_config(tmp_path))], cwd=tmp_path) as server:
        event_id = post_event(server, "msg-dashboard-3", "job-9")
        with browser_page(server, missing) as page:
            sign_in(page, ADMIN_TOKEN)
            expect(page.locator("#app")).to_be_visible(timeout=WAIT)
            expect(page.locator("#chart")).to_contain_text("no data", timeout=WAIT)
            expect(page.locator("#live-status")).to_have_attribute("data-state", "unavailable",
                                                                   timeout=WAIT)
            page.locator(f'#events tbody tr[data-event-id="{event_id}"]').click(timeout=WAIT)
            expect(page.locator("#detail-payload")).to_contain_text("job-9", timeout=WAIT)
            expect(page.locator("#replay-button")).to_have_count(0)  # scopes unknown: no replay
