"""``longtail up`` starts the dashboard: LocalSuite runs ``python -m services.dashboard`` as a
child like the services, waits for its /healthz, and gives its address (no Triton needed here)."""

from __future__ import annotations

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
