"""The recommend benchmark's per-row reading of the gateway's profile cache counter."""

from __future__ import annotations

from prometheus_client import start_http_server

from benchmarks.recommend import Row, profile_reads
from services.common.observability import RecommenderMetrics
from services.embeddings.tritonserver import free_ports


def test_profile_reads_come_from_the_gateways_metrics_endpoint() -> None:
    metrics = RecommenderMetrics()
    for source in ("kept", "kept", "kept", "read", "unknown"):
        metrics.observe_profile_read(source)
    port = free_ports(1)[0]
    server, thread = start_http_server(port, "127.0.0.1", registry=metrics.registry)
    try:
        reads = profile_reads(port)
    finally:
        server.shutdown()
        thread.join()
    assert reads == {"kept": 3.0, "read": 1.0, "unknown": 1.0}
    row = Row("closed", "1 callers", 5, 5, 0, 0, 1.0, [], profile_reads=reads)
    # New users (unknown) have no profile to keep: the share is over known users.
    assert row.kept_share == "75%"
    assert profile_reads(None) == {} and Row("open", "", 0, 0, 0, 0, 1.0, []).kept_share == ""
