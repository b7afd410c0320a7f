"""Dashboard settings, read from ``LONGTAIL_DASHBOARD_*``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

DEFAULT_PORT = 50080


@dataclasses.dataclass(frozen=True)
class DashboardSettings:
    # Where the page is served (HTTP, or HTTPS with a certificate). 0 = a free port (tests).
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # When set, pages need it: ``Authorization: Bearer <token>``, or open ``/?token=<token>``
    # once (it is kept in a cookie). /healthz stays open.
    auth_token: str | None = None
    log_level: str = "INFO"
    # The aggregates and the request explorer come from profiles (required); the running
    # configuration from exposure, ranking and embeddings (each optional: empty = not shown).
    profiles_target: str = "127.0.0.1:50051"
    exposure_target: str = "127.0.0.1:50054"
    ranking_target: str = "127.0.0.1:50053"
    embeddings_target: str = "127.0.0.1:50052"
    # Deadline of each call behind a page. An aggregate reads every impression of its window:
    # about 4-6 CPU-seconds per million on SQLite (benchmarks/dashboard_queries.py), so the
    # whole of a 10-million log takes a minute.
    timeout_seconds: float = 120.0
    # The window a page shows when the address names none, and its time buckets.
    default_window_hours: float = 24.0
    bucket_count: int = 24
    # Rows of the most over- and under-exposed items, and of the latest served requests.
    gap_rows: int = 10
    request_rows: int = 20
    client_tls_ca_file: Path | None = None
    client_auth_token: str | None = None
