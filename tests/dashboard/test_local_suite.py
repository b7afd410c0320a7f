"""``longtail up`` starts the dashboard: LocalSuite runs ``python -m services.dashboard`` as a
child like the services, waits for its /healthz, and gives its address (no Triton needed here)."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from services.common.tail import HEAD_SHARE
from services.exposure.config import ExposureSettings
from services.suite.local import LocalSuite, SuiteConfig


async def test_the_suite_serves_the_dashboard_and_names_its_address(tmp_path: Path) -> None:
    config = SuiteConfig(workdir=tmp_path / "suite", services=("profiles", "exposure", "dashboard"))
    async with LocalSuite(config) as suite:
        url = suite.dashboard_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        assert "dashboard" not in suite.targets  # a web page, not a gRPC target
        assert set(suite.pids) == {"profiles", "exposure", "dashboard"}
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            text = await response.text()
    assert suite.pids == {}
    assert ExposureSettings().default_policy in text  # exposure's part is shown
    assert "ranking: not configured" in text  # and the parts the suite does not run say so
    assert f"top {100 * HEAD_SHARE:.0f}%" in text


async def test_with_tls_and_a_token_the_dashboard_is_https_and_guarded(tmp_path: Path) -> None:
    from tests.e2e.test_secure_suite import _self_signed

    cert, key = _self_signed(tmp_path)
    config = SuiteConfig(
        workdir=tmp_path / "suite",
        services=("profiles", "dashboard"),
        auth_token="s3cret",
        tls_cert_file=cert,
        tls_key_file=key,
        tls_ca_file=cert,
    )
    trust = ssl.create_default_context(cafile=str(cert))
    async with LocalSuite(config) as suite:  # ready: its /healthz answered over HTTPS
        url = suite.dashboard_url
        assert url is not None and url.startswith("https://127.0.0.1:")
        jar = aiohttp.CookieJar(unsafe=True)  # a browser keeps an IP address's cookies too
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            async with session.get(url, ssl=trust) as response:
                assert response.status == 401
            async with session.get(url + "?token=s3cret", ssl=trust) as response:
                assert response.status == 200  # profiles answered over TLS with the token
                assert "What was served" in await response.text()
