"""Wiring of the embeddings service: Triton client, cache, embedder, servicer, readiness."""

from __future__ import annotations

import asyncio
import contextlib

from longtail.embeddings.v1 import embeddings_service_pb2_grpc as pb_grpc
from services.common.server import ServiceDefinition
from services.embeddings.cache import EmbeddingCache
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.embedder import Embedder
from services.embeddings.servicer import FULL_NAME, EmbeddingsServicer
from services.embeddings.triton import TritonEncoderClient


async def build(settings: EmbeddingsSettings) -> ServiceDefinition:
    """The service; health follows Triton (server and model ready), NOT_SERVING while not."""
    triton_url = settings.triton_url
    managed = None
    if settings.manage_triton:
        from services.embeddings.tritonserver import TritonServer

        managed = TritonServer(
            encoder_path=settings.triton_encoder_path,
            startup_timeout=settings.triton_startup_timeout_seconds,
        )
        await asyncio.to_thread(managed.start)
        triton_url = managed.grpc_url
    client = TritonEncoderClient(triton_url, settings.model_name)
    embedder = Embedder(
        client,
        EmbeddingCache(settings.cache_size),
        info_ttl=settings.model_info_ttl_seconds,
    )
    servicer = EmbeddingsServicer(
        embedder, settings.request_timeout_seconds, settings.ready_timeout_seconds
    )

    async def readiness() -> bool:
        return await embedder.ready(settings.ready_timeout_seconds)

    async def shutdown() -> None:
        with contextlib.suppress(Exception):
            await client.close()
        if managed is not None:
            await asyncio.to_thread(managed.stop)

    return ServiceDefinition(
        name="embeddings",
        servicers=[(pb_grpc.add_EmbeddingsServiceServicer_to_server, servicer, FULL_NAME)],
        readiness=readiness,
        on_shutdown=shutdown,
    )
