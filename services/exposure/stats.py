"""Exposure counters (impressions, feedback per item) for fair_exposure and explore.

The reranker sees only the ``ExposureStatsSource`` Protocol; ``ProfilesStatsSource`` is the real
one, over ``profiles.GetItemStats``. A failing call raises ``StatsUnavailable``, which the reranker
turns into zero counts (logged), so that exposure counters never take a request down with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grpc

from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.exposure.policies import ItemCounts

# profiles' batch limit.
STATS_BATCH = 1000


class StatsUnavailable(Exception):
    """The counters could not be read (profiles down, slow or refusing)."""


class ExposureStatsSource(Protocol):
    async def item_stats(self, ids: Sequence[str], timeout: float) -> dict[str, ItemCounts]:
        """Counters of the known items among ``ids``; unknown items are left out."""
        ...


class ProfilesStatsSource:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)

    async def item_stats(self, ids: Sequence[str], timeout: float) -> dict[str, ItemCounts]:
        counts: dict[str, ItemCounts] = {}
        for start in range(0, len(ids), STATS_BATCH):
            request = profiles_service_pb2.GetItemStatsRequest(
                item_ids=list(ids[start : start + STATS_BATCH])
            )
            try:
                response = await self._stub.GetItemStats(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                raise StatsUnavailable(f"{error.code().name}: {error.details()}") from error
            for stats in response.stats:
                counts[stats.item_id] = ItemCounts(stats.impression_count, stats.feedback_count)
        return counts
