"""RankingService: translates proto <-> domain; the engine does the work."""

from __future__ import annotations

from typing import Any

import grpc

from longtail.common.v1 import common_pb2
from longtail.ranking.v1 import ranking_service_pb2, ranking_service_pb2_grpc
from services.ranking.collaborative import interaction_weight
from services.ranking.engine import RankingEngine, RankRequest, resolve_als_params
from services.ranking.scorer import HistoryItem, ScoredCandidate, VectorSource

Context = grpc.aio.ServicerContext[Any, Any]

_SOURCES = {
    VectorSource.HISTORY: ranking_service_pb2.USER_VECTOR_SOURCE_HISTORY,
    VectorSource.INTERESTS: ranking_service_pb2.USER_VECTOR_SOURCE_INTERESTS,
    VectorSource.NONE: ranking_service_pb2.USER_VECTOR_SOURCE_NONE,
}


def _candidate(candidate: ScoredCandidate) -> common_pb2.Candidate:
    message = common_pb2.Candidate(
        item_id=candidate.item_id,
        score=candidate.score,
        content_score=candidate.content_score,
        collaborative_score=candidate.collaborative_score,
        popularity=candidate.popularity,
        is_tail=candidate.is_tail,
        is_cold=candidate.is_cold,
        categories=candidate.categories,
    )
    if candidate.vector is not None:
        message.vector.extend(candidate.vector.tolist())
    return message


class RankingServicer(ranking_service_pb2_grpc.RankingServiceServicer):
    def __init__(self, engine: RankingEngine) -> None:
        self._engine = engine

    async def RankCandidates(
        self,
        request: ranking_service_pb2.RankCandidatesRequest,
        context: Context,
    ) -> ranking_service_pb2.RankCandidatesResponse:
        outcome = await self._engine.rank(
            RankRequest(
                user_id=request.user_id,
                history=[
                    HistoryItem(entry.item_id, interaction_weight(entry.kind, entry.value))
                    for entry in request.history
                ],
                interests=request.interests,
                candidate_count=request.candidate_count,
                exclude_item_ids=list(request.exclude_item_ids),
                include_vectors=request.include_vectors,
                include_history=request.include_history,
            ),
            context,
        )
        return ranking_service_pb2.RankCandidatesResponse(
            candidates=[_candidate(c) for c in outcome.result.candidates],
            user_vector_source=_SOURCES[outcome.result.source],
            index_version=outcome.index_version,
            collaborative_version=outcome.collaborative_version,
            degraded_causes=[cause.value for cause in outcome.degraded_causes],
        )

    async def TrainModel(
        self,
        request: ranking_service_pb2.TrainModelRequest,
        context: Context,
    ) -> ranking_service_pb2.TrainModelResponse:
        params = resolve_als_params(
            self._engine.default_als_params,
            request.factors,
            request.iterations,
            request.regularization,
        )
        outcome = await self._engine.train(params, context)
        return ranking_service_pb2.TrainModelResponse(
            collaborative_version=outcome.collaborative_version,
            user_count=outcome.user_count,
            item_count=outcome.item_count,
            interaction_count=outcome.interaction_count,
            duration_seconds=outcome.duration_seconds,
        )

    async def ReloadModels(
        self,
        request: ranking_service_pb2.ReloadModelsRequest,
        context: Context,
    ) -> ranking_service_pb2.ReloadModelsResponse:
        state = await self._engine.reload(context)
        return ranking_service_pb2.ReloadModelsResponse(
            index_version=state.snapshot.version,
            collaborative_version=state.collaborative_version,
            indexed_item_count=state.snapshot.size,
        )

    async def GetRankingStatus(
        self,
        request: ranking_service_pb2.GetRankingStatusRequest,
        context: Context,
    ) -> ranking_service_pb2.GetRankingStatusResponse:
        status = self._engine.status()
        return ranking_service_pb2.GetRankingStatusResponse(
            index_version=status.index_version,
            collaborative_version=status.collaborative_version,
            indexed_item_count=status.indexed_item_count,
            index_kind=status.index_kind,
            embedding_model_name=status.embedding_model_name,
            embedding_model_version=status.embedding_model_version,
        )
