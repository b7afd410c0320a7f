"""``python -m services.dashboard``: serve the page (settings from LONGTAIL_DASHBOARD_*).

Prints ``LISTENING host:port`` once serving (for launchers) and then the page's address;
SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from services.common.logging import configure_logging
from services.common.settings import SettingsError, load_settings
from services.dashboard.app import serve
from services.dashboard.config import DashboardSettings


async def main(settings: DashboardSettings) -> None:
    running = await serve(settings)
    print(f"LISTENING {running.host}:{running.port}", flush=True)
    print(f"dashboard at {running.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.stop()


if __name__ == "__main__":
    try:
        dashboard_settings = load_settings(DashboardSettings, "LONGTAIL_DASHBOARD_")
    except SettingsError as error:
        print(str(error), file=sys.stderr)
        raise SystemExit(2) from error
    configure_logging("dashboard", dashboard_settings.log_level)
    asyncio.run(main(dashboard_settings))
