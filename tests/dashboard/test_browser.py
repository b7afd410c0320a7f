"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

A suite without Triton, in-process on port 0: profiles on a SQLite file, exposure (the running
configuration's default policy) and the dashboard. The known log (tests/dashboard/known_log.py)
is written through the profiles RPCs; the page must show no console error, and figures equal to
the counts recomputed from the log as ListImpressions / ListItemStats read it back; the request
explorer must find a served list. A full-page screenshot is kept under ``.artifacts/dashboard``
(or ``$LONGTAIL_ARTIFACTS_DIR``) and its path printed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.channels import open_channel
from services.common.server import RunningService, start_service
from services.common.settings import ClientSettings, ServerSettings
from services.dashboard.app import RunningDashboard, serve
from services.dashboard.config import DashboardSettings
from services.exposure.app import ExposureSettings
from services.exposure.app import build as build_exposure
from services.profiles.app import ProfilesSettings
from services.profiles.app import build as build_profiles
from tests.conftest import require_browser
from tests.dashboard import known_log
from tests.dashboard.known_log import END, START

REPO = Path(__file__).resolve().parents[2]
# Generous: the test is about what the page shows, never about how fast.
PAGE_TIMEOUT_MS = 60_000


@dataclasses.dataclass
class Suite:
    dashboard: RunningDashboard
    log: known_log.Log


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    servers: list[RunningService] = []
    dashboard: RunningDashboard | None = None
    channel = None
    try:
        profiles = await start_service(
            await build_profiles(
                ProfilesSettings(database_url=f"sqlite:///{tmp_path / 'longtail.db'}")
            ),
            ServerSettings(port=0),
        )
        servers.append(profiles)
        profiles_target = f"127.0.0.1:{profiles.port}"
        exposure = await start_service(
            await build_exposure(ExposureSettings(profiles_target=profiles_target)),
            ServerSettings(port=0),
        )
        servers.append(exposure)
        channel = open_channel(ClientSettings(target=profiles_target))
        stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)
        lists = await known_log.write(stub)
        log = await known_log.read_back(stub, [s.request_id for s in lists])
        dashboard = await serve(
            DashboardSettings(
                port=0,
                profiles_target=profiles_target,
                exposure_target=f"127.0.0.1:{exposure.port}",
                ranking_target="",
                embeddings_target="",
            )
        )
        yield Suite(dashboard, log)
    finally:
        if dashboard is not None:
            await dashboard.stop()
        if channel is not None:
            await channel.close()
        for server in reversed(servers):
            await server.stop(grace=0)


def artefact_dir(tmp_path: Path) -> Path:
    root = os.environ.get("LONGTAIL_ARTIFACTS_DIR")
    folder = Path(root) if root else REPO / ".artifacts"
    try:
        (folder / "dashboard").mkdir(parents=True, exist_ok=True)
        return folder / "dashboard"
    except OSError:  # a read-only checkout: the test's own folder
        return tmp_path


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


async def test_the_dashboard_shows_the_log_in_a_real_browser(suite: Suite, tmp_path: Path) -> None:
    chromium = require_browser()
    from playwright.async_api import ConsoleMessage, Page, Response, async_playwright

    want = known_log.expected(suite.log, START, END)
    query = urlencode(
        {
            "from": START.strftime("%Y-%m-%dT%H:%M"),
            "to": END.strftime("%Y-%m-%dT%H:%M"),
            "buckets": "12",
        }
    )
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            problems.append(f"HTTP {response.status} for {response.url}")

    async def figure(page: Page, name: str, scope: str = "") -> str:
        locator = page.locator(f'{scope} [data-figure="{name}"]'.strip())
        return (await locator.first.text_content() or "").strip()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
            page.on("response", on_response)
            await page.goto(f"{suite.dashboard.url}?{query}", wait_until="load")

            # The summary: every figure as the log counts it.
            assert int((await figure(page, "impressions")).replace(",", "")) == want.impressions
            assert int((await figure(page, "lists")).replace(",", "")) == want.lists == 12
            assert await figure(page, "tail-impressions") == str(want.tail)
            assert await figure(page, "cold-impressions") == str(want.cold)
            assert await figure(page, "distinct-items") == str(want.distinct_items)
            assert await figure(page, "catalogue-size") == str(want.catalogue_size)
            assert await figure(page, "tail-share") == share(want.tail, want.impressions)
            assert await figure(page, "cold-share") == share(want.cold, want.impressions)
            assert await figure(page, "coverage") == share(want.distinct_items, want.catalogue_size)
            assert await figure(page, "gini") == f"{want.gini:.3f}"
            # Per policy version: lists, impressions by class, clicks, click-through.
            assert await page.locator("tr[data-policy]").count() == len(want.per_policy)
            for (name, version), row in want.per_policy.items():
                lists, head, tail, cold, head_clicks, tail_clicks, cold_clicks = row
                scope = f'tr[data-policy="{name}@{version}"]'
                assert await figure(page, "lists", scope) == str(lists)
                assert await figure(page, "impressions", scope) == str(head + tail)
                assert await figure(page, "head-impressions", scope) == str(head)
                assert await figure(page, "tail-impressions", scope) == str(tail)
                assert await figure(page, "cold-impressions", scope) == str(cold)
                assert await figure(page, "clicks", scope) == str(head_clicks + tail_clicks)
                assert await figure(page, "ctr-head", scope) == share(head_clicks, head)
                assert await figure(page, "ctr-tail", scope) == share(tail_clicks, tail)
                assert await figure(page, "ctr-cold", scope) == share(cold_clicks, cold)
            # The charts are drawn (inline SVG, nothing fetched).
            for chart in ("over-time", "lorenz", "ctr"):
                assert await page.locator(f'[data-chart="{chart}"] svg').count() == 1
            # The most over-exposed item is the one the log says.
            shares = want.shares
            top = max(shares, key=lambda i: (shares[i][0] - shares[i][1], i))
            first_over = page.locator('[data-figure="over-exposed"] tbody tr').first
            assert await first_over.get_attribute("data-item") == top
            # The running configuration: exposure's default policy.
            assert await figure(page, "default-policy") == ExposureSettings().default_policy

            screenshot = artefact_dir(tmp_path) / "overview.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            print(f"\ndashboard screenshot: {screenshot}")

            # The request explorer finds a served list: order, policy, reasons, feedback.
            served = known_log.served_lists()[1]
            await page.fill("#request-id", served.request_id)
            await page.click("form[role=search] button")
            await page.wait_for_url(f"**/requests/{served.request_id}")
            assert await figure(page, "request-id") == served.request_id
            assert await figure(page, "user") == served.user_id
            assert await figure(page, "policy") == f"{served.policy[0]}@{served.policy[1]}"
            items = await page.locator('tbody [data-figure="item"]').all_text_contents()
            assert items == served.items
            reasons = await page.locator('tbody [data-figure="reason"]').all_text_contents()
            assert reasons == ["relevance", "tail boost", "explore", "relevance"]
            feedback = await page.locator('tbody [data-figure="feedback"]').all_text_contents()
            assert feedback == ["", "click, click", "click", ""]
            await page.screenshot(path=str(artefact_dir(tmp_path) / "request.png"), full_page=True)

            # An unknown request_id is a page that says so (its 404 is expected: not a problem).
            page.remove_listener("response", on_response)
            await page.fill("#request-id", "no-such-request")
            await page.click("form[role=search] button")
            await page.wait_for_url("**/requests/no-such-request")
            assert "no list was served" in await figure(page, "message")
        finally:
            await browser.close()
    # A 404 document makes Chromium log a console error; only the expected one may be there.
    unexpected = [p for p in problems if "404" not in p]
    assert unexpected == [], unexpected
