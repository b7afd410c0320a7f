"""Builds the gateway: channels to profiles, ranking and exposure, the pipeline, the servicer.

``build`` is the deployable (gRPC ports to the other services); ``build_with`` takes any ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import grpc

from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from services.common.channels import open_channel
from services.common.observability import RecommenderMetrics
from services.common.server import ServiceDefinition
from services.common.settings import ClientSettings
from services.gateway.config import GatewaySettings
from services.gateway.pipeline import PipelineConfig, RecommendPipeline
from services.gateway.ports import (
    ExposurePort,
    GrpcExposure,
    GrpcProfiles,
    GrpcRanking,
    ProfilesPort,
    RankingPort,
)
from services.gateway.servicer import GatewayServicer

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


def pipeline_config(settings: GatewaySettings) -> PipelineConfig:
    return PipelineConfig(
        candidate_count=settings.candidate_count,
        history_limit=settings.history_limit,
        pipeline_time_share=settings.pipeline_time_share,
        fallback_size=settings.fallback_size,
        title_cache_size=settings.title_cache_size,
        profile_cache_size=settings.profile_cache_size,
        ranking_timeout=settings.ranking_timeout_seconds,
        exposure_timeout=settings.exposure_timeout_seconds,
        profile_timeout=settings.profile_timeout_seconds,
        write_timeout=settings.write_timeout_seconds,
    )


def build_with(
    settings: GatewaySettings,
    profiles: ProfilesPort,
    ranking: RankingPort,
    exposure: ExposurePort,
    *,
    config: PipelineConfig | None = None,
    on_close: Sequence[grpc.aio.Channel] = (),
) -> ServiceDefinition:
    """The gateway over any ports (tests put fakes or hanging servers behind some of them), with
    ``config`` instead of the one ``settings`` give when set. Starts the background task that
    refreshes the fallback list and fills the item info cache with the catalogue items it lacks
    (``RecommendPipeline.refresh_catalogue``); it stops with the service, as do the channels in
    ``on_close``."""
    metrics = RecommenderMetrics()
    pipeline = RecommendPipeline(
        profiles, ranking, exposure, config or pipeline_config(settings), metrics
    )

    async def refresh_catalogue() -> None:
        while True:
            try:
                added = await pipeline.refresh_catalogue()
                if added:
                    log.info("item info cache filled", extra={"fields": {"items": added}})
            except Exception as error:  # the store may be down; keep the last list and cache
                log.warning("catalogue refresh failed", extra={"fields": {"error": str(error)}})
            await asyncio.sleep(settings.fallback_refresh_seconds)

    refresher = asyncio.create_task(refresh_catalogue())

    async def close() -> None:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        for channel in on_close:
            await channel.close()

    servicer = GatewayServicer(pipeline, settings.default_deadline_seconds)
    return ServiceDefinition(
        name="gateway",
        servicers=[
            (gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server, servicer, SERVICE_NAME)
        ],
        on_shutdown=close,
        registries=[metrics.registry],
    )


async def build(
    settings: GatewaySettings, config: PipelineConfig | None = None
) -> ServiceDefinition:
    """The deployable gateway: gRPC ports to the services at the settings' targets."""

    def client(target: str) -> ClientSettings:
        return ClientSettings(
            target=target,
            tls_ca_file=settings.client_tls_ca_file,
            auth_token=settings.client_auth_token,
        )

    channels = [
        open_channel(client(settings.profiles_target)),
        open_channel(client(settings.ranking_target)),
        open_channel(client(settings.exposure_target)),
    ]
    return build_with(
        settings,
        GrpcProfiles(channels[0]),
        GrpcRanking(channels[1]),
        GrpcExposure(channels[2]),
        config=config,
        on_close=channels,
    )
