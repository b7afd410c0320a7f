"""Load benchmark of the profiles store, through the real service.

    python -m benchmarks.load_store --dataset ../shared/datasets/movielens-latest-small \\
        --database-url sqlite:///.longtail/bench.db

Migrates a fresh store, starts the profiles service in-process on port 0, uploads the dataset
(items, users, interactions in batches of 1000), then records ``--batches`` batches of
``--batch-size`` impressions one after the other, and prints rows, seconds and rows/s per phase.
The store must be empty (a new SQLite file or a new PostgreSQL database).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.common.channels import open_channel
from services.common.server import start_service
from services.common.settings import ClientSettings, ServerSettings
from services.profiles.app import ProfilesSettings, build
from services.profiles.store import migrate
from services.suite.datasets import Dataset, read_generic, read_movielens, upload


def _read(path: Path) -> Dataset:
    return read_movielens(path) if (path / "movies.csv").is_file() else read_generic(path)


def _impressions(
    dataset: Dataset, batch: int, size: int, rng: random.Random
) -> list[common_pb2.Impression]:
    user = rng.choice(dataset.users).user_id
    return [
        common_pb2.Impression(
            request_id=f"bench-{batch:06d}",
            position=position,
            user_id=user,
            item_id=rng.choice(dataset.items).item_id,
            policy_name="tail_quota",
            policy_version="bench",
            reason=common_pb2.REASON_RELEVANCE if position % 3 else common_pb2.REASON_TAIL_BOOST,
            score=1.0 / (position + 1),
        )
        for position in range(size)
    ]


async def run(dataset_path: Path, database_url: str, batches: int, batch_size: int) -> None:
    rows: list[tuple[str, int, float]] = []
    started = time.perf_counter()
    await asyncio.to_thread(migrate, database_url)
    rows.append(("migrate", 0, time.perf_counter() - started))

    started = time.perf_counter()
    dataset = await asyncio.to_thread(_read, dataset_path)
    rows.append(("read dataset", len(dataset.interactions), time.perf_counter() - started))

    definition = await build(ProfilesSettings(database_url=database_url, migrate_on_start=False))
    running = await start_service(definition, ServerSettings(port=0))
    channel = open_channel(ClientSettings(target=f"127.0.0.1:{running.port}"))
    try:
        stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)
        before = await stub.GetCatalogStats(profiles_service_pb2.GetCatalogStatsRequest())
        if before.item_count or before.interaction_count or before.impression_count:
            raise SystemExit(f"{database_url} is not empty: the benchmark needs a fresh store")

        phases = [
            ("items", Dataset(dataset.items, [], [])),
            ("users", Dataset([], dataset.users, [])),
            ("interactions", Dataset([], [], dataset.interactions)),
        ]
        load_rows = 0
        load_seconds = 0.0
        for name, part in phases:
            started = time.perf_counter()
            counts = await upload(part, stub, progress=False, timeout=120)
            seconds = time.perf_counter() - started
            stored = counts[name]
            if stored != len(getattr(part, name)):
                raise SystemExit(f"{name}: stored {stored} of {len(getattr(part, name))}")
            rows.append((f"load {name}", stored, seconds))
            load_rows += stored
            load_seconds += seconds
        rows.append(("load total", load_rows, load_seconds))

        rng = random.Random(0)
        requests = [_impressions(dataset, n, batch_size, rng) for n in range(batches)]
        started = time.perf_counter()
        recorded = 0
        for impressions in requests:
            answer = await stub.RecordImpressions(
                profiles_service_pb2.RecordImpressionsRequest(impressions=impressions), timeout=30
            )
            recorded += answer.recorded_count
        rows.append(
            (f"impressions ({batches}x{batch_size})", recorded, time.perf_counter() - started)
        )

        started = time.perf_counter()
        replayed = 0
        for impressions in requests[: max(1, batches // 10)]:
            answer = await stub.RecordImpressions(
                profiles_service_pb2.RecordImpressionsRequest(impressions=impressions), timeout=30
            )
            replayed += answer.duplicate_count
        rows.append(("impression replays", replayed, time.perf_counter() - started))

        stats = await stub.GetCatalogStats(profiles_service_pb2.GetCatalogStatsRequest())
        if stats.impression_count != recorded or recorded != batches * batch_size:
            raise SystemExit(f"impressions: {stats.impression_count} stored, {recorded} recorded")
    finally:
        await channel.close()
        await running.stop(grace=0)

    print(f"store: {database_url.split('@')[-1]}")
    print(f"{'phase':<28}{'rows':>10}{'seconds':>10}{'rows/s':>12}")
    for name, count, seconds in rows:
        rate = f"{count / seconds:,.0f}" if count and seconds > 0 else "-"
        print(f"{name:<28}{count:>10,}{seconds:>10.2f}{rate:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="MovieLens or generic folder")
    parser.add_argument("--database-url", required=True, help="a fresh, empty store")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args.dataset, args.database_url, args.batches, args.batch_size))


if __name__ == "__main__":
    main()
