"""What the gateway needs of the other services, as Protocols, and their gRPC implementations.

The pipeline sees only these ports, so it can be tested with fakes; the gRPC adapters are the one
place where stub calls and upstream errors are translated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc

from longtail.common.v1 import common_pb2
from longtail.exposure.v1 import exposure_service_pb2, exposure_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from longtail.ranking.v1 import ranking_service_pb2, ranking_service_pb2_grpc
from services.common.errors import from_upstream


@dataclass(frozen=True)
class StatsPage:
    """One page of ListItemStats: the stats, the next page's token ("" after the last), and on
    the first page the popularity version, or unchanged (no stats) when the caller's is current."""

    stats: list[common_pb2.ItemStats]
    next_page_token: str
    popularity_version: str = ""
    unchanged: bool = False


@dataclass(frozen=True)
class ProfileRead:
    """One GetUserProfile answer: the profile (None for an unknown user, or when the caller's
    version is current: ``unchanged``), its version ("" for an unknown user), and the impressions
    logged under the request_id asked about."""

    profile: profiles_service_pb2.UserProfile | None
    version: str = ""
    unchanged: bool = False
    served: list[common_pb2.Impression] = field(default_factory=list)


class ProfilesPort(Protocol):
    async def read_profile(
        self,
        user_id: str,
        history_limit: int,
        served_request_id: str,
        timeout: float,
        if_version_differs: str = "",
    ) -> ProfileRead:
        """The profile (None: unknown user) and, when ``served_request_id`` is set, what is logged
        under it; only the version when ``if_version_differs`` is current."""
        ...

    async def upsert_user(self, user_id: str, interests: str, timeout: float) -> None: ...

    async def record_impressions(
        self,
        impressions: Sequence[common_pb2.Impression],
        timeout: float,
        if_profile_version: str = "",
    ) -> int:
        """How many entries were stored (0: the request_id holds this very list already).
        With ``if_profile_version``, FailedPrecondition PROFILE_VERSION_MOVED when the user's
        profile is no longer at that version (nothing written)."""
        ...

    async def list_impressions(
        self, request_id: str, timeout: float
    ) -> list[common_pb2.Impression]: ...

    async def get_items(self, item_ids: Sequence[str], timeout: float) -> list[common_pb2.Item]: ...

    async def get_item_stats(
        self, item_ids: Sequence[str], timeout: float
    ) -> list[common_pb2.ItemStats]: ...

    async def list_item_stats(
        self,
        page_size: int,
        page_token: str,
        timeout: float,
        if_popularity_version_differs: str = "",
    ) -> StatsPage: ...

    async def record_interaction(
        self, interaction: common_pb2.Interaction, timeout: float
    ) -> bool: ...


class RankingPort(Protocol):
    async def rank(
        self, request: ranking_service_pb2.RankCandidatesRequest, timeout: float
    ) -> ranking_service_pb2.RankCandidatesResponse: ...


class ExposurePort(Protocol):
    async def rerank(
        self, request: exposure_service_pb2.RerankRequest, timeout: float
    ) -> exposure_service_pb2.RerankResponse: ...


Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def _call(
    method: Callable[..., Awaitable[Resp]], request: Req, timeout: float, dependency: str
) -> Resp:
    """One outbound call; a failed call becomes the domain error for our own caller."""
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        raise from_upstream(error, dependency) from error


class GrpcProfiles:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)

    async def read_profile(
        self,
        user_id: str,
        history_limit: int,
        served_request_id: str,
        timeout: float,
        if_version_differs: str = "",
    ) -> ProfileRead:
        request = profiles_service_pb2.GetUserProfileRequest(
            user_id=user_id,
            history_limit=history_limit,
            served_request_id=served_request_id,
            if_profile_version_differs=if_version_differs,
        )
        try:
            response = await self._stub.GetUserProfile(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return ProfileRead(None)
            raise from_upstream(error, "profiles") from error
        return ProfileRead(
            response.profile if response.HasField("profile") else None,
            response.profile_version,
            response.unchanged,
            list(response.served),
        )

    async def upsert_user(self, user_id: str, interests: str, timeout: float) -> None:
        request = profiles_service_pb2.UpsertUsersRequest(
            users=[common_pb2.User(user_id=user_id, interests=interests)]
        )
        await _call(self._stub.UpsertUsers, request, timeout, "profiles")

    async def record_impressions(
        self,
        impressions: Sequence[common_pb2.Impression],
        timeout: float,
        if_profile_version: str = "",
    ) -> int:
        request = profiles_service_pb2.RecordImpressionsRequest(
            impressions=impressions, if_profile_version=if_profile_version
        )
        response = await _call(self._stub.RecordImpressions, request, timeout, "profiles")
        return response.recorded_count

    async def list_impressions(
        self, request_id: str, timeout: float
    ) -> list[common_pb2.Impression]:
        request = profiles_service_pb2.ListImpressionsRequest(request_id=request_id)
        response = await _call(self._stub.ListImpressions, request, timeout, "profiles")
        return list(response.impressions)

    async def get_items(self, item_ids: Sequence[str], timeout: float) -> list[common_pb2.Item]:
        request = profiles_service_pb2.GetItemsRequest(item_ids=item_ids)
        response = await _call(self._stub.GetItems, request, timeout, "profiles")
        return list(response.items)

    async def get_item_stats(
        self, item_ids: Sequence[str], timeout: float
    ) -> list[common_pb2.ItemStats]:
        request = profiles_service_pb2.GetItemStatsRequest(item_ids=item_ids)
        response = await _call(self._stub.GetItemStats, request, timeout, "profiles")
        return list(response.stats)

    async def list_item_stats(
        self,
        page_size: int,
        page_token: str,
        timeout: float,
        if_popularity_version_differs: str = "",
    ) -> StatsPage:
        request = profiles_service_pb2.ListItemStatsRequest(
            page_size=page_size,
            page_token=page_token,
            if_popularity_version_differs=if_popularity_version_differs,
        )
        response = await _call(self._stub.ListItemStats, request, timeout, "profiles")
        return StatsPage(
            list(response.stats),
            response.next_page_token,
            response.popularity_version,
            response.unchanged,
        )

    async def record_interaction(self, interaction: common_pb2.Interaction, timeout: float) -> bool:
        request = profiles_service_pb2.RecordInteractionsRequest(interactions=[interaction])
        response = await _call(self._stub.RecordInteractions, request, timeout, "profiles")
        return response.recorded_count > 0


class GrpcRanking:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = ranking_service_pb2_grpc.RankingServiceStub(channel)

    async def rank(
        self, request: ranking_service_pb2.RankCandidatesRequest, timeout: float
    ) -> ranking_service_pb2.RankCandidatesResponse:
        return await _call(self._stub.RankCandidates, request, timeout, "ranking")


class GrpcExposure:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = exposure_service_pb2_grpc.ExposureServiceStub(channel)

    async def rerank(
        self, request: exposure_service_pb2.RerankRequest, timeout: float
    ) -> exposure_service_pb2.RerankResponse:
        return await _call(self._stub.Rerank, request, timeout, "exposure")
