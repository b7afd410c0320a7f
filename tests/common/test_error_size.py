"""An error that echoes a huge input still reaches the caller with its own code and reason.

The status travels in trailers (gRPC caps them); before the runtime clipped it, a 20,000-character
id echoed into the ErrorInfo metadata reached the caller as RESOURCE_EXHAUSTED instead.
"""

from __future__ import annotations

import grpc
import pytest

from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from services.common.errors import (
    MAX_STATUS_MESSAGE_CHARS,
    MAX_STATUS_METADATA_ENTRIES,
    MAX_STATUS_METADATA_VALUE_CHARS,
    InvalidArgument,
    error_info,
)
from services.common.server import Context, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.gateway.app import SERVICE_NAME

HUGE = "x" * 20_000


class EchoingGateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    async def Recommend(
        self, request: gateway_service_pb2.RecommendRequest, context: Context
    ) -> gateway_service_pb2.RecommendResponse:
        raise InvalidArgument(
            "USER_ID_TOO_LONG",
            f"user_id {request.user_id!r} is too long",
            user_id=request.user_id,
            **{f"extra{n:02d}": request.user_id for n in range(40)},
        )


async def test_a_huge_echoed_input_is_clipped_and_the_reason_arrives() -> None:
    definition = ServiceDefinition(
        name="gateway",
        servicers=[
            (
                gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server,
                EchoingGateway(),  # type: ignore[abstract]  # serves Recommend only
                SERVICE_NAME,
            )
        ],
    )
    running = await start_service(definition, ServerSettings(port=0))
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{running.port}",
            options=[("grpc.max_send_message_length", 1 << 20)],
        ) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Recommend(
                    gateway_service_pb2.RecommendRequest(user_id=HUGE, k=3), timeout=60
                )
    finally:
        await running.stop(0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(caught.value.details() or "") <= MAX_STATUS_MESSAGE_CHARS
    info = error_info(caught.value)
    assert info is not None and info.reason == "USER_ID_TOO_LONG"
    assert len(info.metadata) == MAX_STATUS_METADATA_ENTRIES
    assert all(len(value) <= MAX_STATUS_METADATA_VALUE_CHARS for value in info.metadata.values())
