"""GatewayService: translates calls into the pipeline, nothing more."""

from __future__ import annotations

from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from services.common.server import Context
from services.gateway.pipeline import Deadline, RecommendPipeline


class GatewayServicer(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, pipeline: RecommendPipeline, default_deadline: float) -> None:
        self._pipeline = pipeline
        self._default_deadline = default_deadline

    def _deadline(self, context: Context) -> Deadline:
        return Deadline(context.time_remaining(), self._default_deadline)

    async def Recommend(
        self, request: gateway_service_pb2.RecommendRequest, context: Context
    ) -> gateway_service_pb2.RecommendResponse:
        return await self._pipeline.recommend(request, self._deadline(context))

    async def Feedback(
        self, request: gateway_service_pb2.FeedbackRequest, context: Context
    ) -> gateway_service_pb2.FeedbackResponse:
        return await self._pipeline.feedback(request, self._deadline(context))

    async def ExplainRecommendation(
        self,
        request: gateway_service_pb2.ExplainRecommendationRequest,
        context: Context,
    ) -> gateway_service_pb2.ExplainRecommendationResponse:
        return await self._pipeline.explain(request, self._deadline(context))
