"""LongtailClient retries UNAVAILABLE through its channel's service config, and nothing else.

A real gRPC server on port 0 (the services' own runtime) whose Recommend fails as scripted, then
answers, and records each attempt with the ``grpc-previous-rpc-attempts`` header gRPC puts on a
retry: the attempts counted are the channel's retries of one call, not calls the test made.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longtail_client import client as client_module
from longtail_client.client import LongtailClient
from services.common.errors import InvalidArgument, ServiceError, Unavailable, error_info
from services.common.server import Context, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.gateway.app import SERVICE_NAME

# What the client's service config allows in all (the first attempt included).
MAX_ATTEMPTS = json.loads(client_module._RETRY_SERVICE_CONFIG)["methodConfig"][0]["retryPolicy"][
    "maxAttempts"
]
# A deadline no retry schedule here comes near (backoffs are at most 0.5 s).
DEADLINE = 60.0


class ScriptedGateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    """Recommend raises the scripted errors one per attempt, then answers."""

    def __init__(self, failures: Sequence[ServiceError]) -> None:
        self._failures = list(failures)
        # Per attempt, gRPC's count of earlier attempts of the same call ("" on the first).
        self.attempts: list[str] = []
        self.request_ids: list[str] = []

    async def Recommend(
        self, request: gateway_service_pb2.RecommendRequest, context: Context
    ) -> gateway_service_pb2.RecommendResponse:
        previous = dict(context.invocation_metadata() or ()).get("grpc-previous-rpc-attempts", "")
        self.attempts.append(str(previous))
        self.request_ids.append(request.request_id)
        if self._failures:
            raise self._failures.pop(0)
        return gateway_service_pb2.RecommendResponse(
            request_id=request.request_id, policy_name="scripted"
        )

    async def Feedback(
        self, request: gateway_service_pb2.FeedbackRequest, context: Context
    ) -> gateway_service_pb2.FeedbackResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "only Recommend is scripted")

    async def ExplainRecommendation(
        self, request: gateway_service_pb2.ExplainRecommendationRequest, context: Context
    ) -> gateway_service_pb2.ExplainRecommendationResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "only Recommend is scripted")


@contextlib.asynccontextmanager
async def serve(failures: Sequence[ServiceError]) -> AsyncIterator[tuple[ScriptedGateway, str]]:
    servicer = ScriptedGateway(failures)
    definition = ServiceDefinition(
        name="gateway",
        servicers=[
            (gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server, servicer, SERVICE_NAME)
        ],
    )
    running = await start_service(definition, ServerSettings(port=0))
    try:
        yield servicer, f"127.0.0.1:{running.port}"
    finally:
        await running.stop(0)


def unavailable(n: int) -> list[ServiceError]:
    return [Unavailable("STORE_UNAVAILABLE", f"outage {i}") for i in range(n)]


def expected_headers(n: int) -> list[str]:
    return [""] + [str(i) for i in range(1, n)]


@pytest.mark.parametrize("failures", range(1, MAX_ATTEMPTS))
async def test_unavailable_is_retried_until_the_server_answers(failures: int) -> None:
    async with serve(unavailable(failures)) as (servicer, target):
        async with LongtailClient({"gateway": target}) as client:
            answer = await client.recommend("u1", k=3, request_id="req-1", timeout=DEADLINE)
        assert (answer.request_id, answer.policy_name) == ("req-1", "scripted")
        assert servicer.attempts == expected_headers(failures + 1)


async def test_retries_stop_at_the_configured_maximum() -> None:
    assert MAX_ATTEMPTS == 3  # as longtail_client.client configures it
    async with serve(unavailable(MAX_ATTEMPTS + 5)) as (servicer, target):
        async with LongtailClient({"gateway": target}) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.recommend("u1", k=3, request_id="req-1", timeout=DEADLINE)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # The last attempt's error reaches the caller, with its reason.
        info = error_info(caught.value)
        assert info is not None and info.reason == "STORE_UNAVAILABLE"
        assert caught.value.details() == f"outage {MAX_ATTEMPTS - 1}"
        assert servicer.attempts == expected_headers(MAX_ATTEMPTS)


async def test_invalid_argument_is_not_retried() -> None:
    bad = InvalidArgument("K_OUT_OF_RANGE", "k must be in 1..100")
    async with serve([bad, *unavailable(1)]) as (servicer, target):
        async with LongtailClient({"gateway": target}) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.recommend("u1", k=3, request_id="req-1", timeout=DEADLINE)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info is not None and info.reason == "K_OUT_OF_RANGE"
        assert servicer.attempts == [""]


async def test_a_retried_recommend_without_request_id_carries_one_id_on_every_attempt() -> None:
    # Without an id of the caller's, each attempt would be a new request to the gateway (a second
    # list served and logged when the first attempt had got through); with the client's own id the
    # gateway answers the retry from its impression log.
    async with (
        serve(unavailable(2)) as (servicer, target),
        LongtailClient({"gateway": target}) as client,
    ):
        answer = await client.recommend("u1", k=3, timeout=DEADLINE)
    assert len(servicer.request_ids) == 3
    assert len(set(servicer.request_ids)) == 1 and servicer.request_ids[0]
    assert answer.request_id == servicer.request_ids[0]
