"""The dashboard's views in a real browser at a wide (1440 px) and a phone (390 px) width: no
sideways scroll, deep links, retry from the dead-letter list, rejected requests' field errors.

Same launch and skip rules as tests/test_dashboard.py. Screenshots of each view are kept in
$HOOKLINE_SCREENSHOTS when set, else in the test's tmp_path; never in the repository.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
import pytest

from test_dashboard import WAIT, browser_page, require_browser, screenshot_dir

from conftest import STANDARD_SECRET, sample, standard_body, standard_headers
from server import ServerProcess, Sink, running_server, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page

WIDTHS = [1440, 390]
HANDLER = "forward-to-the-partner-billing-service-in-eu-west"  # longer than any column
LONG_ID = "job-" + "7" * 60  # an id with no break opportunity


def write_config(path: Path, sink_url: str) -> Path:
    config = path / "hookline.toml"
    config.write_text(f"""
[storage]
url = "sqlite:///{path / 'hl.db'}"

[worker]
sweep_seconds = 0.2

[sources.partner]
platform = "standard"
unknown_events = "accept"
auth = {{ scheme = "standard_webhooks", secrets = ["{STANDARD_SECRET}"] }}

[sources.billing]
platform = "standard"
auth = {{ scheme = "standard_webhooks", secrets = ["{STANDARD_SECRET}"] }}

[sources.alfred]
platform = "alfred"
auth = {{ scheme = "query_token", secrets = ["alfred-token"] }}

[[routes]]
match = "file.*"
handler = "{HANDLER}"

[[routes]]
match = "*"
handler = "log"

[handlers.log]
use = "log"

[handlers.{HANDLER}]
use = "forward"
max_attempts = 1
timeout_seconds = 2

[handlers.{HANDLER}.options]
url = "{sink_url}"
""")
    return config


def post(server: ServerProcess, msg_id: str, source: str = "partner",
         event_type: str = "file.processing_failed", **data: object) -> httpx.Response:
    body = standard_body(event_type, **data) if data else standard_body(event_type)
    return httpx.post(f"{server.url}/webhooks/{source}", content=body,
                      headers=standard_headers(body, time.time(), msg_id), timeout=10)


def delivery_status(server: ServerProcess, event_id: str) -> str:
    event = httpx.get(f"{server.url}/api/events/{event_id}", timeout=5).json()
    mine = [d for d in event["deliveries"] if d["handler"] == HANDLER]
    return str(mine[0]["status"]) if mine else "none"


@contextmanager
def seeded(tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """An open-API server with a dead letter (the sink answers 500 once, then 200), a plain
    event with a long job id, and a request the schema refused."""
    with Sink([500]) as sink, running_server(
        ["--config", str(write_config(tmp_path, sink.url))], cwd=tmp_path
    ) as server:
        dead = post(server, "msg-dead", platform="dcycle", file_id="file-dead", job_id="job-dead")
        assert dead.status_code == 202, dead.text
        dead_id = dead.json()["id"]
        wait_until(lambda: delivery_status(server, dead_id) == "dead")
        plain = post(server, "msg-plain", event_type="order.created", job_id=LONG_ID)
        assert plain.status_code == 202, plain.text
        # A request to billing signed over another body: refused before it is read.
        signed = standard_headers(b"{}", time.time(), "msg-refused")
        refused = httpx.post(f"{server.url}/webhooks/billing", content=standard_body(),
                             headers=signed, timeout=10)
        assert refused.status_code == 401, refused.text
        # Rejections are written by the maintenance tick, a moment after the answer.
        wait_until(lambda: bool(
            httpx.get(f"{server.url}/api/rejections", timeout=5).json()["items"]))
        deliveries = httpx.get(f"{server.url}/api/deliveries?status=dead", timeout=5).json()
        yield server, {"dead_event": dead_id, "dead_delivery": deliveries["items"][0]["id"],
                       "plain_event": plain.json()["id"]}


def no_sideways_scroll(page: Page) -> None:
    widths = page.evaluate(
        "[document.scrollingElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page scrolls sideways: {widths}"


def shoot(page: Page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def hash_link(**params: str) -> str:
    return "/#" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


@pytest.mark.parametrize("width", WIDTHS)
def test_every_view_fits_the_width(tmp_path: Path, width: int) -> None:
    require_browser()
    from playwright.sync_api import expect

    folder = screenshot_dir(tmp_path)
    with seeded(tmp_path) as (server, ids), browser_page(server, width=width) as page:
        expect(page.locator(f'#events tr[data-event-id="{ids["plain_event"]}"]')).to_be_visible(
            timeout=WAIT)
        expect(page.locator("#chart svg")).to_be_visible(timeout=WAIT)
        dead = page.locator(f'#dead-list [data-delivery-id="{ids["dead_delivery"]}"]')
        expect(dead).to_be_visible(timeout=WAIT)
        # The handler's full name, never cut; the error on hover and in full on expansion.
        expect(dead.get_by_test_id("dead-handler")).to_have_text(HANDLER)
        summary = dead.locator(".dead-error summary")
        assert "500" in (summary.get_attribute("title") or "")
        summary.click()
        expect(dead.get_by_test_id("dead-error")).to_be_visible()
        expect(dead.get_by_test_id("dead-error")).to_contain_text("500")
        no_sideways_scroll(page)
        shoot(page, folder, f"events-{width}")
        # The side column comes below the log on a narrow screen, never over it.
        log_box = page.locator("#log").bounding_box()
        side_box = page.locator("#dead-letters").bounding_box()
        assert log_box and side_box
        if width < 1000:
            assert side_box["y"] >= log_box["y"] + log_box["height"]
        else:
            assert side_box["x"] >= log_box["x"] + log_box["width"]

        page.goto(f"{server.url}{hash_link(event=ids['plain_event'])}")
        expect(page.locator("#detail-payload")).to_contain_text(LONG_ID, timeout=WAIT)
        no_sideways_scroll(page)
        shoot(page, folder, f"event-{width}")

        page.goto(f"{server.url}{hash_link(job=LONG_ID)}")
        expect(page.locator("#lifecycle-body")).to_contain_text(LONG_ID, timeout=WAIT)
        no_sideways_scroll(page)

        page.goto(f"{server.url}/#view=health")
        expect(page.locator(f'#handlers-body [data-handler="{HANDLER}"]')).to_be_visible(
            timeout=WAIT)
        no_sideways_scroll(page)
        shoot(page, folder, f"health-{width}")

        page.goto(f"{server.url}/#view=rejections")
        expect(page.locator("#rejections")).to_be_visible(timeout=WAIT)
        page.locator("#rejections-table tbody tr").first.click(timeout=WAIT)
        expect(page.locator("#rejection-detail")).to_contain_text("billing", timeout=WAIT)
        no_sideways_scroll(page)
        shoot(page, folder, f"rejections-{width}")


def test_deep_links_open_the_right_view(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    with seeded(tmp_path) as (server, ids):
        link = hash_link(event=ids["dead_event"], delivery=ids["dead_delivery"])
        with browser_page(server, start=link) as page:
            dialog = page.locator("#detail")
            expect(dialog).to_be_visible(timeout=WAIT)
            expect(page.locator("#detail-id")).to_have_text(ids["dead_event"], timeout=WAIT)
            card = dialog.locator(f'.delivery[data-delivery-id="{ids["dead_delivery"]}"]')
            expect(card).to_have_class("delivery focused", timeout=WAIT)
            assert page.evaluate("document.activeElement.id") == "detail-close"

            # Escape closes; back opens the same event again, forward closes it again.
            page.keyboard.press("Escape")
            expect(dialog).to_be_hidden(timeout=WAIT)
            expect(page).not_to_have_url(re.compile("event="), timeout=WAIT)
            page.go_back()
            expect(page.locator("#detail-id")).to_have_text(ids["dead_event"], timeout=WAIT)
            expect(dialog).to_be_visible()
            page.go_forward()
            expect(dialog).to_be_hidden(timeout=WAIT)

            # Filters are part of the address: applying them makes a link that restores them.
            page.fill('#filters input[name="type"]', "order.*")
            page.click("#apply-filters")
            expect(page.locator("#events tbody tr")).to_have_count(1, timeout=WAIT)
            filtered = page.evaluate("location.href")
            assert "type=order.*" in filtered.replace("%2A", "*")

        with browser_page(server, start="/" + filtered.split("/", 3)[3]) as page:
            expect(page.locator('#filters input[name="type"]')).to_have_value("order.*",
                                                                             timeout=WAIT)
            expect(page.locator("#events tbody tr")).to_have_count(1, timeout=WAIT)
            expect(page.locator("#events tbody tr")).to_have_attribute(
                "data-event-id", ids["plain_event"])

        with browser_page(server, start=hash_link(handler=HANDLER)) as page:
            chosen = page.locator(f'#handlers-body [data-handler="{HANDLER}"]')
            expect(chosen).to_have_class("health-item chosen", timeout=WAIT)
            expect(chosen.locator("details")).to_have_attribute("open", "")
            expect(chosen).to_contain_text("file.*")  # the route that reaches it
            expect(page.locator('#tabs a[aria-current="page"]')).to_have_attribute(
                "data-view", "health")

        with browser_page(server, start=hash_link(dead_handler="log")) as page:
            expect(page.locator("#dead-handler")).to_have_value("log", timeout=WAIT)
            expect(page.locator("#dead-message")).to_contain_text("None match", timeout=WAIT)

        with browser_page(server, start=hash_link(file="file-dead")) as page:
            expect(page.locator("#lifecycle-body")).to_contain_text("file-dead", timeout=WAIT)

        # One box finds an event by its id.
        with browser_page(server) as page:
            page.fill("#search-input", ids["plain_event"])
            page.click("#search-go")
            expect(page.locator("#detail-id")).to_have_text(ids["plain_event"], timeout=WAIT)
            assert f"event={ids['plain_event']}" in page.evaluate("location.hash")


@pytest.mark.parametrize("width", WIDTHS)
def test_retry_from_the_dead_letter_list_resolves_it(tmp_path: Path, width: int) -> None:
    require_browser()
    from playwright.sync_api import expect

    with seeded(tmp_path) as (server, ids), browser_page(server, width=width) as page:
        item = page.locator(f'#dead-list [data-delivery-id="{ids["dead_delivery"]}"]')
        expect(item).to_be_visible(timeout=WAIT)

        # The filtered set first: the confirmation states the dry run's count; cancel it.
        page.click("#retry-all")
        expect(page.locator("#retry-confirm")).to_be_visible(timeout=WAIT)
        expect(page.locator("#retry-confirm-text")).to_contain_text("Retry 1 dead delivery")
        page.click("#retry-confirm-no")
        expect(page.locator("#retry-confirm")).to_be_hidden()
        assert delivery_status(server, ids["dead_event"]) == "dead"

        item.get_by_test_id("retry-one").click()
        expect(item).to_have_count(0, timeout=WAIT)
        expect(page.locator("#retry-result")).to_contain_text("pending again")
        wait_until(lambda: delivery_status(server, ids["dead_event"]) == "succeeded")
        page.click("#dead-refresh")
        expect(page.locator("#dead-message")).to_contain_text("None", timeout=WAIT)
        no_sideways_scroll(page)
        # The same delivery, its history kept: two attempts now.
        event = httpx.get(f"{server.url}/api/events/{ids['dead_event']}", timeout=5).json()
        (mine,) = [d for d in event["deliveries"] if d["handler"] == HANDLER]
        assert mine["id"] == ids["dead_delivery"] and mine["attempts"] == 2


def test_retry_all_retries_the_filtered_set(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    with seeded(tmp_path) as (server, ids), \
            browser_page(server, start=hash_link(dead_handler=HANDLER)) as page:
        expect(page.locator("#dead-list .dead-item")).to_have_count(1, timeout=WAIT)
        page.click("#retry-all")
        expect(page.locator("#retry-confirm-text")).to_contain_text(
            f"Retry 1 dead delivery (handler {HANDLER})", timeout=WAIT)
        page.click("#retry-confirm-yes")
        expect(page.locator("#retry-result")).to_contain_text("1 delivery is pending again",
                                                              timeout=WAIT)
        expect(page.locator("#dead-list .dead-item")).to_have_count(0, timeout=WAIT)
        wait_until(lambda: delivery_status(server, ids["dead_event"]) == "succeeded")


@pytest.mark.parametrize("width", WIDTHS)
def test_a_rejected_request_shows_its_field_errors(tmp_path: Path, width: int) -> None:
    require_browser()
    from playwright.sync_api import expect

    with seeded(tmp_path) as (server, _), browser_page(server, width=width) as page:
        # An authenticated body that fails the platform's schema: a 422 with field errors.
        event = json.loads(sample("alfred/alfred.job.retry.json"))
        event["event"]["retries"] = "two"
        refused = httpx.post(f"{server.url}/webhooks/alfred?token=alfred-token",
                             json=event, timeout=10)
        assert refused.status_code == 422, refused.text
        fields = [".".join(map(str, d["loc"])) for d in refused.json()["error"]["details"]]

        def first_id() -> str | None:
            items = httpx.get(f"{server.url}/api/rejections?code=schema_invalid",
                              timeout=5).json()["items"]
            return str(items[0]["id"]) if items else None

        wait_until(lambda: first_id() is not None)  # written by the maintenance tick
        page.goto(f"{server.url}/#view=rejections&rj_code=schema_invalid")
        row = page.locator(f'#rejections-table tr[data-rejection-id="{first_id()}"]')
        row.click(timeout=WAIT)
        errors = page.locator("#rejection-errors")
        for field in fields:
            expect(errors).to_contain_text(field, timeout=WAIT)
        expect(page.locator("#rejection-body")).to_contain_text('"two"')
        assert f"rejection={first_id()}" in page.evaluate("location.hash")
        no_sideways_scroll(page)
        shoot(page, screenshot_dir(tmp_path), f"rejection-{width}")


def test_inputs_are_labelled_and_the_log_is_live(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    with seeded(tmp_path) as (server, _), browser_page(server) as page:
        expect(page.locator("#app")).to_be_visible(timeout=WAIT)
        unlabelled = page.evaluate("""[...document.querySelectorAll('input, select')]
            .filter((el) => !el.labels?.length && !el.getAttribute('aria-label'))
            .map((el) => el.name || el.id)""")
        assert unlabelled == []
        assert page.get_attribute("#events tbody", "aria-live") == "polite"
        assert page.evaluate("document.querySelector('#detail').tagName") == "DIALOG"


def test_the_chart_keeps_delivery_failures_out_of_the_request_stack(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    with seeded(tmp_path) as (server, _), browser_page(server) as page:
        expect(page.locator('.total[data-series="delivery_failed"] b')).to_have_text(
            "1", timeout=WAIT)
        expect(page.locator('.total[data-series="accepted"] b')).to_have_text("2")
        assert page.locator('#chart rect.k-delivery_failed').count() == 0
        expect(page.locator('#chart polyline[data-series="delivery_failed"]')).to_have_count(1)
        # The minute's bar stacks only what came in: its height is the requests', not plus failures.
        heights = page.evaluate("""[...document.querySelectorAll('#chart rect.bar')]
            .map((r) => r.getAttribute('data-series'))""")
        assert "delivery_failed" not in heights and "accepted" in heights
        page.click('.total[data-series="rejected"] a')
        expect(page.locator("#rejections")).to_be_visible(timeout=WAIT)
