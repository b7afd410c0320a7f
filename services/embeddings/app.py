"""Wiring of the embeddings service: Triton client, cache, embedder, servicer, readiness, and
the follower that pins the published encoder version (services/embeddings/versions.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from pathlib import Path

from longtail.embeddings.v1 import embeddings_service_pb2_grpc as pb_grpc
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.artifacts import open_store
from services.common.channels import open_channel
from services.common.registry import ProfilesModelRegistry
from services.common.server import ServiceDefinition
from services.common.settings import ClientSettings
from services.embeddings.cache import EmbeddingCache
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.embedder import Embedder
from services.embeddings.servicer import FULL_NAME, EmbeddingsServicer
from services.embeddings.triton import TritonEncoderClient
from services.embeddings.versions import EncoderVersionFollower, FollowerMetrics

log = logging.getLogger(__name__)

# How long the start waits for the first answer about the published encoder before serving
# (the base version meanwhile would label vectors with the wrong encoder for a moment).
FIRST_PIN_TIMEOUT_SECONDS = 60.0


class EncoderPinning:
    """Keeps the Triton client pinned to the published encoder: one ``follow`` per poll."""

    def __init__(
        self, follower: EncoderVersionFollower, client: TritonEncoderClient, embedder: Embedder
    ) -> None:
        self.follower = follower
        self.client = client
        self.embedder = embedder

    async def follow(self) -> None:
        """Ask the registry once; errors keep the current pin (logged, retried next poll)."""
        try:
            version = await self.follower.resolve(self.client.pinned)
        except Exception as error:
            log.warning(
                "encoder registry poll failed; keeping the current version",
                extra={"fields": {"error": type(error).__name__, "detail": str(error)}},
            )
            return
        if version != self.client.pinned:
            self.client.pin(version)
            self.embedder.forget_model_info()  # the next call reads the new identity

    async def follow_forever(self, poll_seconds: float, jitter: float = 0.2) -> None:
        rng = random.Random()
        while True:
            await asyncio.sleep(poll_seconds * (1.0 + rng.uniform(-jitter, jitter)))
            await self.follow()


async def build(settings: EmbeddingsSettings) -> ServiceDefinition:
    """The service; health follows Triton (server and model ready), NOT_SERVING while not."""
    triton_url = settings.triton_url
    repository = settings.triton_repository
    managed = None
    if settings.manage_triton:
        from services.embeddings.tritonserver import TritonServer

        managed = TritonServer(
            encoder_path=settings.triton_encoder_path,
            startup_timeout=settings.triton_startup_timeout_seconds,
            repository_dir=repository,
        )
        await asyncio.to_thread(managed.start)
        triton_url = managed.grpc_url
        repository = managed.prepared.path if managed.prepared else repository
    client = TritonEncoderClient(triton_url, settings.model_name)
    embedder = Embedder(
        client,
        EmbeddingCache(settings.cache_size),
        info_ttl=settings.model_info_ttl_seconds,
    )
    servicer = EmbeddingsServicer(
        embedder, settings.request_timeout_seconds, settings.ready_timeout_seconds
    )
    metrics = FollowerMetrics()
    profiles_channel = None
    follower_task: asyncio.Task[None] | None = None
    if settings.profiles_target:
        profiles_channel = open_channel(
            ClientSettings(
                target=settings.profiles_target,
                tls_ca_file=settings.client_tls_ca_file,
                auth_token=settings.client_auth_token,
            )
        )
        pinning = EncoderPinning(
            EncoderVersionFollower(
                ProfilesModelRegistry(
                    profiles_service_pb2_grpc.ProfilesServiceStub(profiles_channel)
                ),
                open_store(settings.store_settings()),
                client,
                _model_dir(repository, settings.model_name),
                metrics,
                versions_kept=settings.encoder_versions_kept,
            ),
            client,
            embedder,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_PIN_TIMEOUT_SECONDS):
                await pinning.follow()
        if settings.encoder_poll_seconds > 0:
            follower_task = asyncio.create_task(
                pinning.follow_forever(settings.encoder_poll_seconds)
            )

    async def readiness() -> bool:
        return await embedder.ready(settings.ready_timeout_seconds)

    async def shutdown() -> None:
        if follower_task is not None:
            follower_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower_task
        with contextlib.suppress(Exception):
            await client.close()
        if profiles_channel is not None:
            await profiles_channel.close()
        if managed is not None:
            await asyncio.to_thread(managed.stop)

    return ServiceDefinition(
        name="embeddings",
        servicers=[(pb_grpc.add_EmbeddingsServiceServicer_to_server, servicer, FULL_NAME)],
        readiness=readiness,
        on_shutdown=shutdown,
        registries=[metrics.registry],
    )


def _model_dir(repository: Path | None, model_name: str) -> Path | None:
    return None if repository is None else repository / model_name
