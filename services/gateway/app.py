"""Builds the gateway: channels to profiles, ranking and exposure, the pipeline, the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from services.common.channels import open_channel
from services.common.observability import RecommenderMetrics
from services.common.server import ServiceDefinition
from services.common.settings import ClientSettings
from services.gateway.config import GatewaySettings
from services.gateway.pipeline import PipelineConfig, RecommendPipeline
from services.gateway.ports import GrpcExposure, GrpcProfiles, GrpcRanking
from services.gateway.servicer import GatewayServicer

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


async def build(settings: GatewaySettings) -> ServiceDefinition:
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
    metrics = RecommenderMetrics()
    pipeline = RecommendPipeline(
        GrpcProfiles(channels[0]),
        GrpcRanking(channels[1]),
        GrpcExposure(channels[2]),
        PipelineConfig(
            candidate_count=settings.candidate_count,
            history_limit=settings.history_limit,
            pipeline_time_share=settings.pipeline_time_share,
            fallback_size=settings.fallback_size,
            title_cache_size=settings.title_cache_size,
            ranking_timeout=settings.ranking_timeout_seconds,
            exposure_timeout=settings.exposure_timeout_seconds,
        ),
        metrics,
    )

    async def refresh_fallback() -> None:
        while True:
            try:
                await pipeline.fallback.refresh()
            except Exception as error:  # the store may be down; keep the last list
                log.warning("fallback refresh failed", extra={"fields": {"error": str(error)}})
            await asyncio.sleep(settings.fallback_refresh_seconds)

    refresher = asyncio.create_task(refresh_fallback())

    async def close() -> None:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        for channel in channels:
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
