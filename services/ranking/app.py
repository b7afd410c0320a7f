"""Wiring of the ranking service: channels, sources, engine, servicer, background refresh."""

from __future__ import annotations

import asyncio
import contextlib

from longtail.embeddings.v1 import embeddings_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2_grpc
from longtail.ranking.v1 import ranking_service_pb2, ranking_service_pb2_grpc
from services.common.artifacts import open_store
from services.common.channels import open_channel
from services.common.server import ServiceDefinition
from services.common.settings import ClientSettings
from services.ranking.catalog import (
    CatalogLoader,
    CatalogSource,
    EmbeddingsTextEncoder,
    InteractionSource,
    ProfilesCatalogSource,
    ProfilesInteractionSource,
    TextEncoder,
)
from services.ranking.config import RankingSettings
from services.ranking.engine import RankingEngine
from services.ranking.model_registry import (
    FollowerMetrics,
    InProcessModelRegistry,
    ModelFollower,
    ModelRegistry,
    ProfilesModelRegistry,
)
from services.ranking.servicer import RankingServicer

__all__ = ["RankingSettings", "build", "build_with_sources"]

SERVICE_NAME = ranking_service_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name


def _single_threaded_blas() -> None:
    """One BLAS thread per call: scoring is one small product per request, and on a shared 2-core
    machine OpenBLAS's second thread made it several times slower (spin-waits), as it does ALS."""
    import threadpoolctl  # type: ignore[import-untyped]

    threadpoolctl.threadpool_limits(1, user_api="blas")


async def build_with_sources(
    settings: RankingSettings,
    catalog: CatalogSource,
    interactions: InteractionSource,
    encoder: TextEncoder,
    on_close: list[object] | None = None,
    registry: ModelRegistry | None = None,
) -> ServiceDefinition:
    """The service over the given sources (tests pass fakes); starts the background loader and
    the registry follower. Without a ``registry`` the models are this process's own."""
    _single_threaded_blas()
    metrics = FollowerMetrics()
    engine = RankingEngine(
        CatalogLoader(catalog, settings.index_params()),
        interactions,
        encoder,
        ModelFollower(
            registry or InProcessModelRegistry(), open_store(settings.store_settings()), metrics
        ),
        settings.scorer_config(),
        settings.als_params(),
        settings.index_params(),
        settings.ranker_params(),
        train_in_process=settings.train_in_process,
    )
    background = asyncio.create_task(engine.run_background(settings.refresh_seconds))
    follower = (
        asyncio.create_task(engine.follow_registry_forever(settings.model_poll_seconds))
        if settings.model_poll_seconds > 0
        else None
    )
    closers = list(on_close or [])

    async def readiness() -> bool:
        return engine.ready

    async def shutdown() -> None:
        for task in (background, follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for channel in closers:
            close = getattr(channel, "close", None)
            if close is not None:
                await close()

    return ServiceDefinition(
        name="ranking",
        servicers=[
            (
                ranking_service_pb2_grpc.add_RankingServiceServicer_to_server,
                RankingServicer(engine),
                SERVICE_NAME,
            )
        ],
        readiness=readiness,
        readiness_interval=0.2,
        on_shutdown=shutdown,
        registries=[metrics.registry],
    )


async def build(settings: RankingSettings) -> ServiceDefinition:
    def client(target: str) -> ClientSettings:
        return ClientSettings(
            target=target,
            tls_ca_file=settings.client_tls_ca_file,
            auth_token=settings.client_auth_token,
        )

    profiles_channel = open_channel(client(settings.profiles_target))
    embeddings_channel = open_channel(client(settings.embeddings_target))
    profiles = profiles_service_pb2_grpc.ProfilesServiceStub(profiles_channel)
    embeddings = embeddings_service_pb2_grpc.EmbeddingsServiceStub(embeddings_channel)
    return await build_with_sources(
        settings,
        ProfilesCatalogSource(profiles, embeddings, timeout=settings.profiles_timeout_seconds),
        ProfilesInteractionSource(profiles, timeout=settings.profiles_timeout_seconds),
        EmbeddingsTextEncoder(embeddings, timeout=settings.embeddings_timeout_seconds),
        on_close=[profiles_channel, embeddings_channel],
        registry=ProfilesModelRegistry(profiles, timeout=settings.profiles_timeout_seconds),
    )
