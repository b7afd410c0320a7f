"""benchmarks.impression_writes against a real profiles service on SQLite: concurrent writers,
and afterwards every acknowledged list is in the impression log and counted once (the benchmark
exits with an error otherwise)."""

from __future__ import annotations

from benchmarks.impression_writes import main, parse


async def test_concurrent_writes_are_each_logged_and_counted_once() -> None:
    rows = await main(
        parse(
            [
                *("--items", "300", "--users", "40", "--list-size", "5"),
                *("--writers", "1", "8", "--seconds", "1.5", "--no-progress"),
            ]
        )
    )
    assert [row.writers for row in rows] == [1, 8]
    assert all(row.ok > 0 and not row.errors for row in rows)
    assert all(len(row.latencies_ms) == row.ok for row in rows)
