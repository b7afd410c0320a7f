"""What a dashboard page shows, read through the services' gRPC APIs (never their stores).

Profiles answers the aggregates and the request explorer; a page cannot be drawn without it.
Exposure, ranking and embeddings only tell the running configuration: one that is unset or
down leaves its part of the page saying so, the rest is drawn.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from longtail.embeddings.v1 import embeddings_service_pb2 as epb
from longtail.embeddings.v1 import embeddings_service_pb2_grpc
from longtail.exposure.v1 import exposure_service_pb2 as xpb
from longtail.exposure.v1 import exposure_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2 as ppb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from longtail.ranking.v1 import ranking_service_pb2 as rpb
from longtail.ranking.v1 import ranking_service_pb2_grpc
from services.common.channels import check_health, open_channel
from services.common.settings import ClientSettings
from services.dashboard.config import DashboardSettings

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Configuration:
    exposure: xpb.ListPoliciesResponse | None
    ranking: rpb.GetRankingStatusResponse | None
    embeddings: epb.GetModelInfoResponse | None
    # The newest publication per model kind (the active one), from profiles' registry.
    active_models: list[ppb.ModelPublication]
    # Service name -> why its part is missing (not configured, unreachable, ...).
    problems: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Overview:
    summary: ppb.GetExposureSummaryResponse
    outcomes: ppb.ListPolicyOutcomesResponse
    gaps: ppb.ListExposureGapsResponse
    requests: ppb.ListServedRequestsResponse
    configuration: Configuration


def _problem(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details() or ''}".strip()
    return f"{type(error).__name__}: {error}"


class DashboardSource:
    """The services' stubs, one channel each, opened once."""

    def __init__(self, settings: DashboardSettings) -> None:
        self._settings = settings
        self._timeout = settings.timeout_seconds
        self._channels: list[grpc.aio.Channel] = []
        self._profiles_channel = self._open(settings.profiles_target)
        self.profiles = profiles_service_pb2_grpc.ProfilesServiceStub(self._profiles_channel)
        self.exposure = (
            exposure_service_pb2_grpc.ExposureServiceStub(self._open(settings.exposure_target))
            if settings.exposure_target
            else None
        )
        self.ranking = (
            ranking_service_pb2_grpc.RankingServiceStub(self._open(settings.ranking_target))
            if settings.ranking_target
            else None
        )
        self.embeddings = (
            embeddings_service_pb2_grpc.EmbeddingsServiceStub(
                self._open(settings.embeddings_target)
            )
            if settings.embeddings_target
            else None
        )

    def _open(self, target: str) -> grpc.aio.Channel:
        channel = open_channel(
            ClientSettings(
                target=target,
                tls_ca_file=self._settings.client_tls_ca_file,
                auth_token=self._settings.client_auth_token,
                timeout_seconds=self._settings.timeout_seconds,
            )
        )
        self._channels.append(channel)
        return channel

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def ready(self) -> bool:
        """Whether profiles, without which no page can be drawn, is SERVING."""
        from grpc_health.v1 import health_pb2

        status = await check_health(self._profiles_channel, timeout=min(self._timeout, 2.0))
        return status == health_pb2.HealthCheckResponse.SERVING

    async def overview(self, window: ppb.ServedWindow, bucket_count: int) -> Overview:
        """Every aggregate of one window, asked concurrently. A profiles error is raised."""
        timeout = self._timeout
        summary, outcomes, gaps, requests, configuration = await asyncio.gather(
            self.profiles.GetExposureSummary(
                ppb.GetExposureSummaryRequest(window=window, bucket_count=bucket_count),
                timeout=timeout,
            ),
            self.profiles.ListPolicyOutcomes(
                ppb.ListPolicyOutcomesRequest(window=window), timeout=timeout
            ),
            self.profiles.ListExposureGaps(
                ppb.ListExposureGapsRequest(window=window, limit=self._settings.gap_rows),
                timeout=timeout,
            ),
            self.profiles.ListServedRequests(
                ppb.ListServedRequestsRequest(window=window, page_size=self._settings.request_rows),
                timeout=timeout,
            ),
            self.configuration(),
        )
        return Overview(summary, outcomes, gaps, requests, configuration)

    async def served_request(self, request_id: str) -> ppb.GetServedRequestResponse:
        return await self.profiles.GetServedRequest(
            ppb.GetServedRequestRequest(request_id=request_id), timeout=self._timeout
        )

    async def configuration(self) -> Configuration:
        """What serves now: default policy and models. Each part on its own; never raises."""
        problems: dict[str, str] = {}
        quick = min(self._timeout, 5.0)

        async def ask(name: str, call: Awaitable[T] | None) -> T | None:
            if call is None:
                problems[name] = "not configured"
                return None
            try:
                return await call
            except (grpc.aio.AioRpcError, OSError) as error:
                problems[name] = _problem(error)
                return None

        exposure, ranking, embeddings, publications = await asyncio.gather(
            ask(
                "exposure",
                self.exposure.ListPolicies(xpb.ListPoliciesRequest(), timeout=quick)
                if self.exposure
                else None,
            ),
            ask(
                "ranking",
                self.ranking.GetRankingStatus(rpb.GetRankingStatusRequest(), timeout=quick)
                if self.ranking
                else None,
            ),
            ask(
                "embeddings",
                self.embeddings.GetModelInfo(epb.GetModelInfoRequest(), timeout=quick)
                if self.embeddings
                else None,
            ),
            ask(
                "registry",
                self.profiles.ListModelPublications(
                    ppb.ListModelPublicationsRequest(page_size=100), timeout=quick
                ),
            ),
        )
        # Newest first: the first publication of a kind is its active one (a kind published
        # last more than 100 publications ago is not shown).
        active: dict[str, ppb.ModelPublication] = {}
        for publication in publications.publications if publications else ():
            active.setdefault(publication.model_kind, publication)
        return Configuration(
            exposure=exposure,
            ranking=ranking,
            embeddings=embeddings,
            active_models=[active[kind] for kind in sorted(active)],
            problems=problems,
        )
