"""The dashboard's HTTP side without a browser: windows, health, token, refusals, outages."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from services.common.server import RunningService, start_service
from services.common.settings import ServerSettings
from services.dashboard.app import BadWindow, RunningDashboard, serve, window_of
from services.dashboard.config import DashboardSettings
from services.profiles.app import ProfilesSettings
from services.profiles.app import build as build_profiles

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_the_address_names_the_window() -> None:
    assert window_of({}, NOW, 24).start == NOW - dt.timedelta(hours=24)
    assert window_of({"last": "7d"}, NOW, 24).start == NOW - dt.timedelta(days=7)
    assert window_of({"last": "all"}, NOW, 24).start is None
    chosen = window_of({"from": "2026-02-01T10:00", "to": "2026-02-01T12:30:15Z"}, NOW, 24)
    assert chosen.start == dt.datetime(2026, 2, 1, 10, 0, tzinfo=dt.UTC)  # naive = UTC
    assert chosen.end == dt.datetime(2026, 2, 1, 12, 30, 15, tzinfo=dt.UTC)
    offset = window_of({"from": "2026-02-01T10:00+01:00"}, NOW, 24)
    assert offset.start == dt.datetime(2026, 2, 1, 9, 0, tzinfo=dt.UTC) and offset.end == NOW
    for bad in ({"last": "2w"}, {"from": "yesterday"}, {"from": "2026-03-02T00:00"}):
        with pytest.raises(BadWindow):
            window_of(bad, NOW, 24)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def profiles(tmp_path: Path) -> AsyncIterator[str]:
    running: RunningService = await start_service(
        await build_profiles(ProfilesSettings(database_url=f"sqlite:///{tmp_path / 'p.db'}")),
        ServerSettings(port=0),
    )
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await running.stop(grace=0)


async def dashboard(profiles_target: str, **extra: object) -> RunningDashboard:
    settings = DashboardSettings(
        port=0,
        profiles_target=profiles_target,
        exposure_target="",
        ranking_target="",
        embeddings_target="",
        timeout_seconds=5.0,
    )
    return await serve(dataclasses.replace(settings, **extra))  # type: ignore[arg-type]


async def get(url: str, **kwargs: object) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, await response.text()


async def test_an_empty_store_draws_an_empty_page_and_is_healthy(profiles: str) -> None:
    running = await dashboard(profiles)
    try:
        status, text = await get(running.url)
        assert status == 200 and "Nothing was served in this window." in text
        assert (await get(running.url + "healthz"))[0] == 200
        status, text = await get(running.url + "?last=2w")
        assert status == 400 and "Bad window" in text
        status, text = await get(running.url + "?buckets=9999")
        assert status == 400 and "bucket_count" in text
        status, text = await get(running.url + "requests/nope")
        assert status == 404 and "no list was served" in text
        status, _ = await get(running.url + "requests?request_id=a%2Fb", allow_redirects=False)
        assert status == 303
    finally:
        await running.stop()


async def test_without_profiles_the_page_says_so_and_health_fails() -> None:
    running = await dashboard(f"127.0.0.1:{free_port()}")  # nothing listens there
    try:
        assert (await get(running.url + "healthz"))[0] == 503
        status, text = await get(running.url)
        assert status == 503 and "Profiles is unavailable" in text
    finally:
        await running.stop()


async def test_a_token_guards_the_pages_but_not_health(profiles: str) -> None:
    running = await dashboard(profiles, auth_token="s3cret")
    try:
        assert (await get(running.url))[0] == 401
        assert (await get(running.url, headers={"Authorization": "Bearer wrong"}))[0] == 401
        assert (await get(running.url, headers={"Authorization": "Bearer s3cret"}))[0] == 200
        assert (await get(running.url + "healthz"))[0] == 200
        # Opening /?token= once leaves a cookie and an address without the token (a browser
        # keeps cookies of an IP address; aiohttp only when told).
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.get(running.url + "?token=s3cret") as response:
                assert response.status == 200 and "token" not in str(response.url)
            async with session.get(running.url) as response:
                assert response.status == 200
    finally:
        await running.stop()
