"""How fresh the exposure counters a Rerank reads are: the reproducible setting ``longtail eval``
runs (read on every request, required) against the served default (zero counts when profiles
cannot answer; the cache itself is tested with a fake clock in test_stats.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from longtail.common.v1 import common_pb2
from longtail.exposure.v1 import exposure_service_pb2, exposure_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.common.errors import error_info
from services.common.server import Context, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.exposure.app import build, build_with
from services.exposure.config import ExposureSettings
from services.exposure.policies import ItemCounts
from services.exposure.stats import StatsUnavailable

SPEC = common_pb2.PolicySpec(fair_exposure=common_pb2.FairExposurePolicy(weight=2.0))


def pool() -> list[common_pb2.Candidate]:
    return [
        common_pb2.Candidate(item_id="h1", score=0.9),
        common_pb2.Candidate(item_id="h2", score=0.8),
        common_pb2.Candidate(item_id="h3", score=0.7),
    ]


class MutableProfiles(profiles_service_pb2_grpc.ProfilesServiceServicer):
    """GetItemStats from a dict the test changes between calls; records every call."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.impressions: dict[str, int] = {}

    async def GetItemStats(
        self, request: profiles_service_pb2.GetItemStatsRequest, context: Context
    ) -> profiles_service_pb2.GetItemStatsResponse:
        self.asked.append(list(request.item_ids))
        return profiles_service_pb2.GetItemStatsResponse(
            stats=[
                common_pb2.ItemStats(item_id=i, impression_count=self.impressions.get(i, 0))
                for i in request.item_ids
            ]
        )


@pytest.fixture
async def profiles() -> AsyncIterator[tuple[MutableProfiles, int]]:
    servicer = MutableProfiles()  # type: ignore[abstract]  # serves GetItemStats only
    name = profiles_service_pb2.DESCRIPTOR.services_by_name["ProfilesService"].full_name
    running = await start_service(
        ServiceDefinition(
            name="profiles",
            servicers=[
                (profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server, servicer, name)
            ],
        ),
        ServerSettings(port=0),
    )
    try:
        yield servicer, running.port
    finally:
        await running.stop(0)


async def _two_reranks(settings: ExposureSettings, profiles: MutableProfiles) -> list[list[str]]:
    """Rerank, then make h1 heavily over-exposed in the store, then Rerank again."""
    running = await start_service(await build(settings), ServerSettings(port=0))
    lists: list[list[str]] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = exposure_service_pb2_grpc.ExposureServiceStub(channel)
            for n in range(2):
                request = exposure_service_pb2.RerankRequest(
                    request_id=f"r{n}", candidates=pool(), k=3, policy=SPEC
                )
                answer = await stub.Rerank(request, timeout=30)
                lists.append([item.item_id for item in answer.items])
                profiles.impressions["h1"] = 500
    finally:
        await running.stop(0)
    return lists


async def test_zero_cache_reads_every_request_and_sees_the_latest_impressions(profiles) -> None:
    servicer, port = profiles
    settings = ExposureSettings(
        profiles_target=f"127.0.0.1:{port}",
        profiles_timeout_seconds=30,
        stats_cache_seconds=0,
    )
    first, second = await _two_reranks(settings, servicer)
    assert len(servicer.asked) == 2
    assert first == ["h1", "h2", "h3"]
    assert second == ["h2", "h1", "h3"]  # the impressions written in between count at once


class DownStats:
    def __init__(self) -> None:
        self.calls = 0

    async def item_stats(self, ids: Sequence[str], timeout: float) -> dict[str, ItemCounts]:
        self.calls += 1
        raise StatsUnavailable("profiles is down")


async def _rerank_over_down_counters(settings: ExposureSettings) -> grpc.aio.AioRpcError | None:
    stats = DownStats()
    definition = build_with(settings, stats)
    running = await start_service(definition, ServerSettings(port=0))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = exposure_service_pb2_grpc.ExposureServiceStub(channel)
            request = exposure_service_pb2.RerankRequest(
                request_id="r", candidates=pool(), k=3, policy=SPEC
            )
            failure: grpc.aio.AioRpcError | None = None
            try:
                await stub.Rerank(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                failure = error
    finally:
        await running.stop(0)
    assert stats.calls == 1  # it did try to read them
    return failure


async def test_required_counters_fail_the_rerank_instead_of_counting_zero() -> None:
    error = await _rerank_over_down_counters(ExposureSettings(stats_required=True))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info is not None and info.reason == "EXPOSURE_COUNTERS_UNAVAILABLE"
    # The served default degrades instead: the same call succeeds.
    assert await _rerank_over_down_counters(ExposureSettings()) is None


def test_negative_cache_seconds_is_a_start_up_error() -> None:
    from services.common.settings import SettingsError

    with pytest.raises(SettingsError, match="stats_cache_seconds"):
        ExposureSettings(stats_cache_seconds=-1)
