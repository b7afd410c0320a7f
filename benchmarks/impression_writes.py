"""Concurrent impression writes through the profiles service: does the write path scale?

    python -m benchmarks.impression_writes --out out/writes                  # SQLite
    createdb -h 127.0.0.1 -U postgres bench_writes
    python -m benchmarks.impression_writes --out out/writes \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_writes

Every Recommend ends with one RecordImpressions: the served list, stored under its request_id in
one transaction that also bumps the impression counter of each listed item. Popular items are in
many concurrent lists, so on PostgreSQL their counter rows are hot: a transaction holds their row
locks until it commits, and writers that list the same item queue behind each other.

The benchmark starts the profiles service alone (LocalSuite, its own process, the store given or
SQLite in a temporary folder, which must be empty), loads a demo catalogue, then for each number of
concurrent writers sends lists of ``--list-size`` distinct items drawn with Zipf popularity (so
that the head items are in most lists, as a recommender serves them) for ``--seconds``, each
under a new request_id, as the gateway does. Per row: acknowledged writes/s, latency, errors by
status code, and the CPU-ms per write of the profiles process, of the PostgreSQL server processes
(all of them on this machine, read from ``/proc``) and of this load generator. At the end the
store is checked: every acknowledged list is in the impression log, row for row, and the counters
add up to the log (``missing`` and ``extra`` must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from rich.console import Console

from benchmarks.cpu import CpuSnapshot
from benchmarks.tables import emit_table, write_csv
from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.common.channels import open_channel
from services.common.settings import ClientSettings
from services.profiles.repository import Repository
from services.profiles.store import Database, create_store_engine
from services.suite import datasets
from services.suite.local import LocalSuite, SuiteConfig

console = Console()


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on this machine (the backends do the writes' work)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@dataclass
class WriteRow:
    writers: int
    seconds: float
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    def cells(self) -> list[str]:
        p50, p99 = (
            np.percentile(self.latencies_ms, [50, 99]) if self.latencies_ms else (np.nan, np.nan)
        )
        errors = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items())) or "0"
        return [
            str(self.writers),
            f"{self.ok / self.seconds:.1f}",
            f"{p50:.2f}",
            f"{p99:.2f}",
            errors,
            f"{self.cpu_ms.get('profiles', 0.0):.2f}",
            f"{self.cpu_ms.get('postgres', 0.0):.2f}",
            f"{self.cpu_ms.get('total', 0.0):.2f}",
            f"{self.cpu_ms.get('load gen', 0.0):.2f}",
        ]


HEADER = [
    "writers",
    "writes/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "profiles CPU-ms",
    "postgres CPU-ms",
    "store total CPU-ms",
    "load gen CPU-ms",
]


class Lists:
    """Served lists: ``size`` distinct items, drawn with Zipf(``exponent``) popularity."""

    def __init__(self, item_ids: list[str], size: int, exponent: float, seed: int) -> None:
        self._ids = item_ids
        weights = 1.0 / np.arange(1, len(item_ids) + 1) ** exponent
        self._p = weights / weights.sum()
        self.size = min(size, len(item_ids))
        self._rng = np.random.default_rng(seed)

    def next(self) -> list[str]:
        picks = self._rng.choice(len(self._ids), size=self.size, replace=False, p=self._p)
        return [self._ids[i] for i in picks]


async def measure(
    stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub,
    lists: Lists,
    users: list[str],
    writers: int,
    seconds: float,
    profiles_pids: list[int],
    run: str,
) -> tuple[WriteRow, int]:
    """``writers`` callers writing back to back for ``seconds``; also returns the rows sent."""
    row = WriteRow(writers, seconds)
    rng = random.Random(writers)
    counter = iter(range(10**9))
    groups = {"profiles": profiles_pids, "postgres": postgres_pids()}
    before = CpuSnapshot.take(groups)
    deadline = time.monotonic() + seconds

    async def writer() -> None:
        while time.monotonic() < deadline:
            n = next(counter)
            user = rng.choice(users)
            impressions = [
                common_pb2.Impression(
                    request_id=f"{run}-w{writers}-{n}",
                    position=position,
                    user_id=user,
                    item_id=item_id,
                    policy_name="bench",
                    reason=common_pb2.REASON_RELEVANCE,
                    score=1.0 / (position + 1),
                )
                for position, item_id in enumerate(lists.next())
            ]
            started = time.perf_counter()
            try:
                await stub.RecordImpressions(
                    profiles_service_pb2.RecordImpressionsRequest(impressions=impressions),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as error:
                code = error.code().name
                row.errors[code] = row.errors.get(code, 0) + 1
                continue
            row.latencies_ms.append((time.perf_counter() - started) * 1000)
            row.ok += 1

    began = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    row.seconds = time.perf_counter() - began
    row.cpu_ms = before.per_request_ms(CpuSnapshot.take(groups), max(row.ok, 1))
    return row, row.ok * lists.size


def impression_totals(database_url: str) -> tuple[int, int]:
    """(rows in the impression log, sum of the items' impression counters) of the store."""
    database = Database(create_store_engine(database_url, pool_size=1))
    try:
        return database.call(Repository().impression_totals, write=False)
    finally:
        database.dispose()


async def main(args: argparse.Namespace) -> list[WriteRow]:
    # The suite's state (a SQLite store of the whole catalogue: ~250 MB at 100k items) goes with
    # the run.
    with tempfile.TemporaryDirectory(prefix="longtail-writes-", ignore_cleanup_errors=True) as temp:
        return await run(args, Path(temp))


async def run(args: argparse.Namespace, workdir: Path) -> list[WriteRow]:
    config = SuiteConfig(workdir=workdir, database_url=args.database_url, services=("profiles",))
    rows: list[WriteRow] = []
    async with LocalSuite(config) as suite:
        channel = open_channel(ClientSettings(target=suite.target("profiles")))
        try:
            stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub = (
                profiles_service_pb2_grpc.ProfilesServiceStub(channel)
            )
            dataset = datasets.make_demo_catalogue(args.items, args.users, seed=args.seed)
            await datasets.upload(dataset, stub, progress=not args.no_progress)
            # Item ids in popularity order (the demo catalogue's interaction counts).
            popularity: dict[str, int] = {item.item_id: 0 for item in dataset.items}
            for interaction in dataset.interactions:
                popularity[interaction.item_id] += 1
            ranked = sorted(popularity, key=lambda item_id: (-popularity[item_id], item_id))
            lists = Lists(ranked, args.list_size, args.zipf, args.seed)
            users = [user.user_id for user in dataset.users]
            profiles_pids = suite.group_members()["profiles"]
            database_url = suite.database_url
            before = await asyncio.to_thread(impression_totals, database_url)
            acknowledged = 0
            run = f"bench-{time.time_ns()}"
            for writers in args.writers:
                row, sent_rows = await measure(
                    stub, lists, users, writers, args.seconds, profiles_pids, run
                )
                rows.append(row)
                acknowledged += sent_rows
                console.print(f"{writers} writers: {row.ok / row.seconds:.1f} writes/s")
            after = await asyncio.to_thread(impression_totals, database_url)
            # Every acknowledged list is logged and counted once; a refused write stores nothing.
            logged, counted = after[0] - before[0], after[1] - before[1]
            missing = max(0, acknowledged - min(logged, counted))
            extra = max(0, logged - acknowledged) + max(0, counted - acknowledged)
        finally:
            await channel.close()
    store = "PostgreSQL" if args.database_url else "SQLite"
    title = (
        f"RecordImpressions, {store}, lists of {args.list_size} from {args.items} items "
        f"(Zipf {args.zipf:g}); CPU-ms per acknowledged write; log check: "
        f"{missing} missing, {extra} extra"
    )
    text = emit_table(console, title, HEADER, [row.cells() for row in rows], left=())
    if args.out:
        name = f"impression-writes-{store.lower()}"
        await asyncio.to_thread(write_outputs, Path(args.out), name, title, text, rows, store)
        console.print(f"wrote {Path(args.out) / name}.md, .csv and .png")
    if missing or extra:
        raise SystemExit(f"the impression log does not match: {missing} missing, {extra} extra")
    return rows


def write_outputs(
    out: Path, name: str, title: str, text: str, rows: list[WriteRow], store: str
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(f"## {title}\n\n{text}\n")
    write_csv(out / f"{name}.csv", HEADER, [row.cells() for row in rows])
    plot(rows, store, out / f"{name}.png")


def plot(rows: list[WriteRow], store: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    writers = [row.writers for row in rows]
    left.plot(writers, [row.ok / row.seconds for row in rows], marker="o")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent writers")
    left.set_ylabel("acknowledged writes/s")
    left.set_title(f"Throughput ({store})")
    right.plot(writers, [np.percentile(row.latencies_ms, 99) for row in rows], marker="o")
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrent writers")
    right.set_ylabel("p99 ms")
    right.set_title("Latency")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--database-url", help="an empty store (default: SQLite in a temporary folder)"
    )
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--list-size", type=int, default=10)
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity exponent of listings")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", help="folder for the table, CSV and plot")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
