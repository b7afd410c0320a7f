"""The dashboard's profiles queries on a large impression log (SQLite and PostgreSQL).

    python -m benchmarks.dashboard_queries --impressions 10000000 --store sqlite --store postgres

Migrates a fresh store (a SQLite file in a temporary folder; a new PostgreSQL database on
``--postgres-url``'s server, dropped afterwards), bulk-loads a synthetic log straight into the
tables (``executemany`` on SQLite, ``COPY`` on PostgreSQL; the migrations' indexes in place, as
in production), then times each query of ``services/profiles/dashboard_queries.py`` on windows of
the last hour, day, week and the whole log, and prints one table per store (seconds, median of
``--repeats``; windows of more than a million impressions run once).

The log: ``--items`` items whose interaction counts follow a Zipf law (a third of them cold),
lists of 10 served every ``span / lists`` seconds over ``--days`` days by three policy versions,
popular items more often; 2% of the impressions get a click (feedback with the request_id).
The queries run in-process on the store (``DashboardQueries``): the gRPC hop adds well under a
millisecond to answers this small.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from rich.console import Console

from benchmarks.tables import emit_table
from services.profiles.dashboard_queries import DashboardQueries, Window
from services.profiles.store import Database, create_store_engine, migrate

console = Console()
LIST_SIZE = 10
POLICIES = (("relevance", "v1"), ("tail_quota", "v1"), ("tail_quota", "v2"))
REASONS = ("relevance", "tail_boost", "explore")
CLICK_RATE = 0.02
CHUNK = 200_000
END = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
WINDOWS = (
    ("last hour", dt.timedelta(hours=1)),
    ("last day", dt.timedelta(days=1)),
    ("last 7 days", dt.timedelta(days=7)),
    ("whole log", None),
)
QUERIES = (
    "GetExposureSummary",
    "ListPolicyOutcomes",
    "ListExposureGaps",
    "ListServedRequests",
    "GetServedRequest",
)


def _sqlite_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


class Log:
    """The synthetic log, generated chunk by chunk (never all in memory)."""

    def __init__(self, impressions: int, items: int, users: int, days: float, seed: int) -> None:
        self.lists = impressions // LIST_SIZE
        self.items = items
        self.users = users
        self.start = END - dt.timedelta(days=days)
        self.step = dt.timedelta(days=days) / max(1, self.lists)
        rng = np.random.default_rng(seed)
        counts = np.floor(2000.0 / np.arange(1, items + 1) ** 1.1).astype(np.int64)
        counts[rng.random(items) < 1 / 3] = 0
        self.interaction_counts = counts
        weights = 1.0 / np.arange(1, items + 1) ** 0.8
        self.popularity = weights / weights.sum()
        self.seed = seed

    def item_id(self, index: int) -> str:
        return f"item-{index:07d}"

    def items_rows(self) -> Iterator[tuple[str, int]]:
        for index in range(self.items):
            yield self.item_id(index), int(self.interaction_counts[index])

    def impression_chunks(self) -> Iterator[list[tuple[Any, ...]]]:
        """(request_id, position, user_id, item_id, policy_name, policy_version, reason, score,
        served_at) rows, in serving order."""
        rng = np.random.default_rng(self.seed + 1)
        per_chunk = CHUNK // LIST_SIZE
        for first in range(0, self.lists, per_chunk):
            count = min(per_chunk, self.lists - first)
            picks = rng.choice(self.items, size=(count, LIST_SIZE), p=self.popularity)
            users = rng.integers(0, self.users, size=count)
            rows: list[tuple[Any, ...]] = []
            for offset in range(count):
                n = first + offset
                request_id = f"req-{n:09d}"
                policy = POLICIES[n % len(POLICIES)]
                served_at = self.start + self.step * n
                user = f"user-{int(users[offset]):06d}"
                for position in range(LIST_SIZE):
                    rows.append(
                        (
                            request_id,
                            position,
                            user,
                            self.item_id(int(picks[offset, position])),
                            policy[0],
                            policy[1],
                            REASONS[position % len(REASONS)],
                            1.0 - 0.05 * position,
                            served_at,
                        )
                    )
            yield rows

    def click_rows(
        self, impressions: Sequence[tuple[Any, ...]], seed: int
    ) -> list[tuple[Any, ...]]:
        rng = np.random.default_rng(seed)
        chosen = np.flatnonzero(rng.random(len(impressions)) < CLICK_RATE)
        return [
            (
                impressions[i][2],
                impressions[i][3],
                "click",
                0.0,
                impressions[i][8] + dt.timedelta(seconds=20),
                f"bench-click-{impressions[i][0]}-{impressions[i][1]}",
                impressions[i][0],
            )
            for i in chosen
        ]


def load(url: str, log: Log) -> tuple[int, float]:
    """Bulk-loads the log; returns (impressions, seconds)."""
    started = time.perf_counter()
    engine = create_store_engine(url, pool_size=1)
    sqlite = engine.dialect.name == "sqlite"
    created = END - dt.timedelta(days=400)
    total = 0
    try:
        with engine.connect() as connection:
            raw: Any = connection.connection.dbapi_connection
            cursor = raw.cursor()
            if sqlite:
                cursor.execute("PRAGMA synchronous=OFF")
                cursor.execute("BEGIN")
                stamp = _sqlite_time(created)
                cursor.executemany(
                    "INSERT INTO users (user_id, interests, attributes, created_at) "
                    "VALUES (?, '', '{}', ?)",
                    ((f"user-{u:06d}", stamp) for u in range(log.users)),
                )
                cursor.executemany(
                    "INSERT INTO items (item_id, title, description, tags, categories, "
                    "attributes, created_at) VALUES (?, ?, '', '[]', '[]', '{}', ?)",
                    ((item_id, f"Title {item_id}", stamp) for item_id, _ in log.items_rows()),
                )
                cursor.executemany(
                    "INSERT INTO item_counters (item_id, interaction_count, impression_count, "
                    "feedback_count) VALUES (?, ?, 0, 0)",
                    log.items_rows(),
                )
                for index, chunk in enumerate(log.impression_chunks()):
                    cursor.executemany(
                        "INSERT INTO impressions (request_id, position, user_id, item_id, "
                        "policy_name, policy_version, reason, score, served_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        ((*row[:8], _sqlite_time(row[8])) for row in chunk),
                    )
                    cursor.executemany(
                        "INSERT INTO interactions (user_id, item_id, kind, value, occurred_at, "
                        "idempotency_key, request_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            (*row[:4], _sqlite_time(row[4]), *row[5:])
                            for row in log.click_rows(chunk, index)
                        ),
                    )
                    total += len(chunk)
                    _progress(total, started)
                cursor.execute("COMMIT")
                cursor.execute("ANALYZE")
            else:
                with cursor.copy(
                    "COPY users (user_id, interests, attributes, created_at) FROM STDIN"
                ) as copy:
                    for u in range(log.users):
                        copy.write_row((f"user-{u:06d}", "", "{}", created))
                with cursor.copy(
                    "COPY items (item_id, title, description, tags, categories, attributes, "
                    "created_at) FROM STDIN"
                ) as copy:
                    for item_id, _ in log.items_rows():
                        copy.write_row((item_id, f"Title {item_id}", "", "[]", "[]", "{}", created))
                with cursor.copy(
                    "COPY item_counters (item_id, interaction_count, impression_count, "
                    "feedback_count) FROM STDIN"
                ) as copy:
                    for item_id, n in log.items_rows():
                        copy.write_row((item_id, n, 0, 0))
                raw.commit()
                for index, chunk in enumerate(log.impression_chunks()):
                    with cursor.copy(
                        "COPY impressions (request_id, position, user_id, item_id, policy_name, "
                        "policy_version, reason, score, served_at) FROM STDIN"
                    ) as copy:
                        for row in chunk:
                            copy.write_row(row)
                    with cursor.copy(
                        "COPY interactions (user_id, item_id, kind, value, occurred_at, "
                        "idempotency_key, request_id) FROM STDIN"
                    ) as copy:
                        for click in log.click_rows(chunk, index):
                            copy.write_row(click)
                    raw.commit()
                    total += len(chunk)
                    _progress(total, started)
                raw.autocommit = True
                cursor.execute("VACUUM ANALYZE")
    finally:
        engine.dispose()
    return total, time.perf_counter() - started


def _progress(total: int, started: float) -> None:
    if total % 1_000_000 < CHUNK:
        elapsed = time.perf_counter() - started
        console.print(f"  {total:,} impressions loaded, {total / elapsed:,.0f}/s")


def _calls(
    queries: DashboardQueries, window: Window, request_id: str
) -> dict[str, Callable[[], Awaitable[object]]]:
    async def summary() -> object:
        return await queries.exposure_summary(window, 24, 101)

    async def outcomes() -> object:
        return await queries.policy_outcomes(window)

    async def gaps() -> object:
        return await queries.exposure_gaps(window, 10)

    async def requests() -> object:
        return await queries.served_requests(window, 50, "")

    async def one() -> object:
        return await queries.served_request(request_id)

    return dict(zip(QUERIES, (summary, outcomes, gaps, requests, one), strict=True))


async def _time(call: Callable[[], Awaitable[object]], repeats: int) -> tuple[float, float]:
    """Median (wall, process CPU) seconds."""
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        await call()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


async def measure(url: str, log: Log, repeats: int, only: Sequence[str] = ()) -> list[list[str]]:
    database = Database(create_store_engine(url, pool_size=2))
    sqlite = database.dialect == "sqlite"
    queries = DashboardQueries(database, now=lambda: END)
    rows: list[list[str]] = []
    try:
        for label, span in WINDOWS:
            window = Window(start=END - span if span else None, end=END)
            inside = (
                log.lists * LIST_SIZE
                if span is None
                else int(min(log.lists, span / log.step) * LIST_SIZE)
            )
            times = 1 if inside > 1_000_000 else repeats
            calls = _calls(queries, window, f"req-{log.lists // 2:09d}")
            cells = [label, f"{inside:,}"]
            for name in QUERIES:
                if only and name not in only:
                    cells.append("")
                    continue
                wall, cpu = await _time(calls[name], times)
                # SQLite runs in this process: its CPU time is ours (PostgreSQL's is the server's).
                cells.append(f"{wall:.3f}" + (f" ({cpu:.3f})" if sqlite else ""))
                console.print(f"  {label:<12} {name:<20} {wall:8.3f} s wall {cpu:8.3f} s cpu")
            rows.append(cells)
    finally:
        database.dispose()
    return rows


def _nothing() -> None:
    """The SQLite file goes with its temporary folder."""


def _postgres_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    name = f"longtail_dashboard_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--impressions", type=int, default=10_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", action="append", choices=["sqlite", "postgres"])
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("--workdir", type=Path, help="where the SQLite file goes (default: /tmp)")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument("--query", action="append", choices=QUERIES, help="only these queries")
    args = parser.parse_args(argv)
    log = Log(args.impressions, args.items, args.users, args.days, seed=0)
    for store in args.store or ["sqlite"]:
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix="dashboard-bench-") as folder:
            if store == "sqlite":
                url, cleanup = f"sqlite:///{Path(folder) / 'bench.db'}", _nothing
            else:
                url, cleanup = _postgres_database(args.postgres_url)
            try:
                migrate(url)
                console.print(
                    f"[bold]{store}[/bold]: loading {log.lists * LIST_SIZE:,} impressions"
                )
                total, seconds = load(url, log)
                console.print(f"  loaded in {seconds:.0f} s ({total / seconds:,.0f}/s)")
                rows = asyncio.run(measure(url, log, args.repeats, args.query or ()))
                emit_table(
                    console,
                    f"{store}: dashboard queries on {total:,} impressions, {args.items:,} items "
                    "(seconds wall" + (", process CPU in brackets)" if store == "sqlite" else ")"),
                    ["window", "impressions", *QUERIES],
                    rows,
                    left=["window"],
                    echo_markdown=args.markdown,
                )
            finally:
                cleanup()


if __name__ == "__main__":
    main()
