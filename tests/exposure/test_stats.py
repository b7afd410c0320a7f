"""The counters cache of ``ProfilesStatsSource``: hits make no profiles call, stale entries are
served while a background call refreshes them, failures cache nothing."""

from __future__ import annotations

import asyncio
import socket

import grpc

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.common.server import Context, RunningService, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.exposure.policies import ItemCounts
from services.exposure.stats import CountsCache, ProfilesStatsSource, StatsUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingProfiles(profiles_service_pb2_grpc.ProfilesServiceServicer):
    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.counts = {"a": (5, 1), "b": (7, 2)}

    async def GetItemStats(
        self, request: profiles_service_pb2.GetItemStatsRequest, context: Context
    ) -> profiles_service_pb2.GetItemStatsResponse:
        self.asked.append(list(request.item_ids))
        return profiles_service_pb2.GetItemStatsResponse(
            stats=[
                common_pb2.ItemStats(item_id=i, impression_count=n, feedback_count=f)
                for i in request.item_ids
                if i in self.counts
                for n, f in [self.counts[i]]
            ]
        )


async def serve_fake(profiles: profiles_service_pb2_grpc.ProfilesServiceServicer) -> RunningService:
    """A profiles service on port 0 that answers with ``profiles`` (a fake: its unanswered
    methods are UNIMPLEMENTED)."""
    name = profiles_service_pb2.DESCRIPTOR.services_by_name["ProfilesService"].full_name
    return await start_service(
        ServiceDefinition(
            name="profiles",
            servicers=[
                (profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server, profiles, name)
            ],
        ),
        ServerSettings(port=0),
    )


async def test_cached_counters_skip_profiles_until_stale_then_refresh_in_background() -> None:
    profiles = CountingProfiles()  # type: ignore[abstract]  # serves GetItemStats only
    running = await serve_fake(profiles)
    clock = Clock()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            source = ProfilesStatsSource(
                channel, cache_ttl_seconds=2.0, cache_max_stale_seconds=10.0, clock=clock
            )
            first = await source.item_stats(["a", "x", "a"], 1.0)
            assert first == {"a": ItemCounts(5, 1)}  # x is unknown to profiles
            assert profiles.asked == [["a", "x"]]

            clock.now += 1.0  # fresh: a and x (known unknown) need no call; b does
            second = await source.item_stats(["x", "a", "b"], 1.0)
            assert second == {"a": ItemCounts(5, 1), "b": ItemCounts(7, 2)}
            assert profiles.asked == [["a", "x"], ["b"]]

            profiles.counts["a"] = (6, 1)
            clock.now += 1.5  # a and x stale (2.5 s), b fresh: served at once, refreshed after
            third = await source.item_stats(["a", "b", "x"], 1.0)
            assert third == {"a": ItemCounts(5, 1), "b": ItemCounts(7, 2)}
            # The refresh runs in the background: wait for it, not for a guessed time.
            await source.wait_refreshed()
            assert profiles.asked[2] == ["a", "x"]
            assert await source.item_stats(["a"], 1.0) == {"a": ItemCounts(6, 1)}
            assert len(profiles.asked) == 3

            clock.now += 60.0  # too old to serve even stale: fetched inline
            profiles.counts["b"] = (8, 3)
            assert await source.item_stats(["b"], 1.0) == {"b": ItemCounts(8, 3)}
            assert profiles.asked[-1] == ["b"]
    finally:
        await running.stop(0)


async def test_close_stops_a_pending_refresh_before_the_channel_closes() -> None:
    profiles = CountingProfiles()  # type: ignore[abstract]  # serves GetItemStats only
    running = await serve_fake(profiles)
    clock = Clock()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            # A long refresh delay: the stale entry's refresh is pending when close() comes.
            source = ProfilesStatsSource(
                channel, cache_ttl_seconds=2.0, clock=clock, refresh_delay_seconds=3600.0
            )
            await source.item_stats(["a"], 1.0)
            clock.now += 3.0
            await source.item_stats(["a"], 1.0)  # stale: served, refresh scheduled
            await source.close()
            # Nothing is pending any more (without close() this would wait an hour: the bound
            # only turns that failure into a timeout).
            await asyncio.wait_for(source.wait_refreshed(), timeout=60)
        # The channel is closed now; the refresh never ran (it would have failed on it).
        assert profiles.asked == [["a"]]
    finally:
        await running.stop(0)


async def test_profiles_down_raises_and_caches_nothing() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{dead_port}") as channel:
        source = ProfilesStatsSource(channel)
        for _ in range(2):  # the second call asks again instead of serving a cached failure
            try:
                await source.item_stats(["a"], 0.3)
            except StatsUnavailable:
                pass
            else:
                raise AssertionError("expected StatsUnavailable")


def test_cache_is_bounded_least_recently_read_first() -> None:
    clock = Clock()
    cache = CountsCache(ttl=2.0, max_stale=10.0, max_items=2, clock=clock)
    cache.store(["a", "b"], {"a": ItemCounts(1, 0), "b": ItemCounts(2, 0)}, clock.now)
    assert cache.lookup(["a"]) == ({"a": ItemCounts(1, 0)}, [], [])  # a is now the most recent
    cache.store(["c"], {}, clock.now)
    assert len(cache) == 2
    found, missing, stale = cache.lookup(["a", "b", "c"])
    assert found == {"a": ItemCounts(1, 0)} and missing == ["b"] and stale == []


def test_zero_ttl_disables_the_cache() -> None:
    cache = CountsCache(ttl=0.0, max_stale=0.0, max_items=10)
    cache.store(["a"], {"a": ItemCounts(1, 0)}, 0.0)
    assert cache.lookup(["a", "a"]) == ({}, ["a"], [])
    assert len(cache) == 0
