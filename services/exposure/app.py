"""Builds the exposure service: the profiles channel (counters), the reranker, the servicer."""

from __future__ import annotations

from longtail.exposure.v1 import exposure_service_pb2, exposure_service_pb2_grpc
from services.common.channels import open_channel
from services.common.server import ServiceDefinition
from services.common.settings import ClientSettings
from services.exposure.config import ExposureSettings
from services.exposure.reranker import Reranker
from services.exposure.servicer import ExposureServicer
from services.exposure.stats import ExposureStatsSource, ProfilesStatsSource

__all__ = ["SERVICE_NAME", "ExposureSettings", "build", "build_with"]

SERVICE_NAME = exposure_service_pb2.DESCRIPTOR.services_by_name["ExposureService"].full_name


def build_with(settings: ExposureSettings, stats: ExposureStatsSource) -> ServiceDefinition:
    """The service over any counters source (tests pass a fake)."""
    reranker = Reranker(
        stats,
        settings.policy_defaults(),
        settings.profiles_timeout_seconds,
        stats_required=settings.stats_required,
    )
    return ServiceDefinition(
        name="exposure",
        servicers=[
            (
                exposure_service_pb2_grpc.add_ExposureServiceServicer_to_server,
                ExposureServicer(reranker),
                SERVICE_NAME,
            )
        ],
    )


async def build(settings: ExposureSettings) -> ServiceDefinition:
    channel = open_channel(
        ClientSettings(
            target=settings.profiles_target,
            tls_ca_file=settings.client_tls_ca_file,
            auth_token=settings.client_auth_token,
            timeout_seconds=settings.profiles_timeout_seconds,
        )
    )
    stats = ProfilesStatsSource(
        channel,
        cache_ttl_seconds=settings.stats_cache_seconds,
        mirror_refresh_seconds=settings.stats_mirror_seconds,
    )
    stats.start()
    definition = build_with(settings, stats)

    async def close() -> None:
        await stats.close()
        await channel.close()

    definition.on_shutdown = close
    return definition
