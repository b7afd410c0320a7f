"""gRPC EmbeddingsService: translates proto <-> the Embedder, nothing else."""

from __future__ import annotations

import grpc

from longtail.embeddings.v1 import embeddings_service_pb2 as pb
from longtail.embeddings.v1 import embeddings_service_pb2_grpc as pb_grpc
from services.common.deadlines import outbound_timeout
from services.embeddings.embedder import Embedder

FULL_NAME = pb.DESCRIPTOR.services_by_name["EmbeddingsService"].full_name


class EmbeddingsServicer(pb_grpc.EmbeddingsServiceServicer):
    def __init__(
        self, embedder: Embedder, default_timeout: float, ready_timeout: float = 1.0
    ) -> None:
        self._embedder = embedder
        self._default_timeout = default_timeout
        self._ready_timeout = ready_timeout

    async def EmbedTexts(
        self,
        request: pb.EmbedTextsRequest,
        context: grpc.aio.ServicerContext[pb.EmbedTextsRequest, pb.EmbedTextsResponse],
    ) -> pb.EmbedTextsResponse:
        texts = list(request.texts)
        self._embedder.validate(texts)  # cheap checks before any budget is spent
        result = await self._embedder.embed(texts, outbound_timeout(context, self._default_timeout))
        return pb.EmbedTextsResponse(
            embeddings=[pb.Embedding(values=row) for row in result.vectors.tolist()],
            model_name=result.model.name,
            model_version=result.model.version,
            dimension=result.model.dimension,
            cache_hit_count=result.cache_hits,
        )

    async def GetModelInfo(
        self,
        request: pb.GetModelInfoRequest,
        context: grpc.aio.ServicerContext[pb.GetModelInfoRequest, pb.GetModelInfoResponse],
    ) -> pb.GetModelInfoResponse:
        timeout = outbound_timeout(context, self._ready_timeout)
        info, ready = await self._embedder.describe(timeout)
        return pb.GetModelInfoResponse(
            model_name=info.name,
            model_version=info.version,
            dimension=info.dimension,
            max_batch_size=info.max_batch_size,
            max_texts_per_request=self._embedder.limits.max_texts,
            max_text_chars=self._embedder.limits.max_text_chars,
            ready=ready,
        )
