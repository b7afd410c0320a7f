"""The exposure counter mirror: a Rerank reads counters from memory, the mirror reads only what
changed; against the real profiles service (SQLite and PostgreSQL) and, for what a Rerank asks
profiles, against a profiles that counts its calls."""

from __future__ import annotations

import socket

import grpc
import pytest
from google.protobuf import timestamp_pb2

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as pb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.server import Context
from services.exposure.policies import ItemCounts
from services.exposure.stats import (
    CounterMirror,
    MirrorUnsupported,
    ProfilesStatsSource,
    StatsUnavailable,
)
from tests.exposure.test_stats import Clock, CountingProfiles, serve_fake
from tests.profiles.conftest import Served
from tests.profiles.test_service import impression, interaction, seed


class ListingProfiles(CountingProfiles):
    """test_stats' GetItemStats fake, plus the exposure listing over the same dict."""

    def __init__(self, read_at: bool = True) -> None:
        super().__init__()
        self.listings = 0
        self.read_at = read_at

    async def ListItemStats(
        self, request: pb.ListItemStatsRequest, context: Context
    ) -> pb.ListItemStatsResponse:
        self.listings += 1
        stats = [
            common_pb2.ItemStats(item_id=i, impression_count=n, feedback_count=f)
            for i, (n, f) in sorted(self.counts.items())
        ]
        if not self.read_at:  # a profiles from before the exposure listing: every item
            return pb.ListItemStatsResponse(stats=stats)
        stamp = timestamp_pb2.Timestamp()
        stamp.GetCurrentTime()
        return pb.ListItemStatsResponse(stats=stats, exposure_read_at=stamp)


async def test_a_fresh_mirror_answers_without_profiles_and_a_stale_one_falls_back() -> None:
    profiles = ListingProfiles()  # type: ignore[abstract]  # serves the stats reads only
    running = await serve_fake(profiles)
    clock = Clock()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            source = ProfilesStatsSource(
                channel,
                cache_ttl_seconds=2.0,
                cache_max_stale_seconds=10.0,
                clock=clock,
                mirror_refresh_seconds=1.0,
            )
            assert source.mirror is not None
            # Before the mirror's first read: the per-id path.
            assert await source.item_stats(["a"], 1.0) == {"a": ItemCounts(5, 1)}
            assert profiles.asked == [["a"]]

            assert await source.mirror.sync() == 2
            for _ in range(3):
                got = await source.item_stats(["b", "x", "a"], 1.0)
                assert got == {"b": ItemCounts(7, 2), "a": ItemCounts(5, 1)}  # x: never shown
            assert profiles.asked == [["a"]]  # not one call more

            clock.now += 10.5  # no complete read for longer than the max staleness
            assert not source.mirror.fresh
            assert await source.item_stats(["b"], 1.0) == {"b": ItemCounts(7, 2)}
            assert profiles.asked == [["a"], ["b"]]
            await source.close()
    finally:
        await running.stop(0)


async def test_no_mirror_without_the_cache_so_that_every_rerank_reads_profiles() -> None:
    profiles = ListingProfiles()  # type: ignore[abstract]
    running = await serve_fake(profiles)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            # longtail eval's setting: counters read on every request, lists independent of timing.
            assert ProfilesStatsSource(channel, 0.0, mirror_refresh_seconds=1.0).mirror is None
            assert ProfilesStatsSource(channel, 2.0, mirror_refresh_seconds=0.0).mirror is None
    finally:
        await running.stop(0)


async def test_a_profiles_without_the_exposure_listing_leaves_the_mirror_off() -> None:
    profiles = ListingProfiles(read_at=False)  # type: ignore[abstract]
    running = await serve_fake(profiles)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            mirror = CounterMirror(
                profiles_service_pb2_grpc.ProfilesServiceStub(channel), clock=Clock()
            )
            with pytest.raises(MirrorUnsupported):
                await mirror.sync()
            assert not mirror.fresh
            await mirror.run(refresh_seconds=0.0)  # returns: stops instead of retrying
            assert profiles.listings == 2
    finally:
        await running.stop(0)


async def test_profiles_down_keeps_the_last_state_and_the_mirror_goes_stale() -> None:
    profiles = ListingProfiles()  # type: ignore[abstract]
    running = await serve_fake(profiles)
    clock = Clock()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        mirror = CounterMirror(
            profiles_service_pb2_grpc.ProfilesServiceStub(channel),
            max_stale_seconds=10.0,
            clock=clock,
        )
        await mirror.sync()
    await running.stop(0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{dead_port}") as dead:
        mirror._stub = profiles_service_pb2_grpc.ProfilesServiceStub(dead)  # profiles gone
        clock.now += 5.0
        with pytest.raises(StatsUnavailable):
            await mirror.sync()
        assert mirror.fresh and mirror.lookup(["a"]) == {"a": ItemCounts(5, 1)}
        clock.now += 6.0
        assert not mirror.fresh


async def test_the_mirror_reads_what_changed_from_the_real_profiles(served: Served) -> None:
    await seed(served, n_items=6)
    clock = Clock()
    # No overlap: a read then returns exactly what changed after the previous one.
    mirror = CounterMirror(served.stub, clock=clock, overlap_seconds=0.0, full_read_seconds=60.0)
    assert await mirror.sync() == 0 and mirror.fresh and len(mirror) == 0
    await served.stub.RecordImpressions(
        pb.RecordImpressionsRequest(
            impressions=[impression("r1", p, f"item-{p:04d}") for p in range(3)]
        )
    )
    assert await mirror.sync() == 3
    assert mirror.lookup(["item-0000", "item-0001", "item-0002", "item-0005"]) == {
        f"item-{p:04d}": ItemCounts(1, 0) for p in range(3)
    }
    await served.stub.RecordImpressions(
        pb.RecordImpressionsRequest(impressions=[impression("r2", 0, "item-0001")])
    )
    await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(
            interactions=[interaction("u1", "item-0001", 5, request_id="r2")]
        )
    )
    assert await mirror.sync() == 1  # only what moved since the previous read
    assert mirror.lookup(["item-0001", "item-0002"]) == {
        "item-0001": ItemCounts(2, 1),
        "item-0002": ItemCounts(1, 0),
    }
    assert await mirror.sync() == 0
    clock.now += 60.0  # a full read is due: every item whose counters ever moved
    assert await mirror.sync() == 3
    assert len(mirror) == 3 and mirror.lookup(["item-0001"]) == {"item-0001": ItemCounts(2, 1)}
