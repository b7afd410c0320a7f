"""A service that holds a call until the test lets it go, for the SIGTERM drain test.

``python -m tests.common.drain_service`` serves it through ``services.common.server.run_service``,
the entry point behind every ``python -m services.<name>``: settings from ``LONGTAIL_DRAINTEST_*``,
``LISTENING host:port`` on stdout, and on SIGTERM health NOT_SERVING, then a drain of
``LONGTAIL_DRAINTEST_GRACE_SECONDS``.

``GatewayService.Recommend`` is the held call: it prints ``STARTED <user_id>`` on stdout, waits for
one line on stdin and answers with that line as its ``request_id``. The test owns both pipes, so it
knows when a call is inside the handler and decides when it ends, with no timing involved. stdin is
read through the event loop (not a thread), so a call cut off at the end of the grace leaves no
blocked thread that would keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Callable

import grpc

from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from services.common.server import Context, ServiceDefinition, run_service

PREFIX = "LONGTAIL_DRAINTEST_"
SERVICE_NAME = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


@dataclasses.dataclass(frozen=True)
class DrainTestSettings:
    """Nothing to configure beyond the server part that ``run_service`` reads itself."""


def _announce_on_stdout(user_id: str) -> None:
    print(f"STARTED {user_id}", flush=True)


class HoldingGateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    """Recommend tells ``announce`` it has started, then answers once ``release`` yields a line
    (in-process tests feed the reader themselves)."""

    def __init__(
        self,
        release: asyncio.StreamReader,
        announce: Callable[[str], None] = _announce_on_stdout,
    ) -> None:
        self._release = release
        self._announce = announce

    async def Recommend(
        self, request: gateway_service_pb2.RecommendRequest, context: Context
    ) -> gateway_service_pb2.RecommendResponse:
        self._announce(request.user_id)
        line = await self._release.readline()
        return gateway_service_pb2.RecommendResponse(
            request_id=line.decode().strip(), policy_name="held"
        )

    async def Feedback(
        self, request: gateway_service_pb2.FeedbackRequest, context: Context
    ) -> gateway_service_pb2.FeedbackResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "only Recommend is held")

    async def ExplainRecommendation(
        self, request: gateway_service_pb2.ExplainRecommendationRequest, context: Context
    ) -> gateway_service_pb2.ExplainRecommendationResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "only Recommend is held")


def definition(servicer: HoldingGateway) -> ServiceDefinition:
    return ServiceDefinition(
        name="draintest",
        servicers=[
            (
                gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server,
                servicer,
                SERVICE_NAME,
            )
        ],
    )


async def build(settings: DrainTestSettings) -> ServiceDefinition:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return definition(HoldingGateway(reader))


if __name__ == "__main__":
    run_service(PREFIX, DrainTestSettings, build)
