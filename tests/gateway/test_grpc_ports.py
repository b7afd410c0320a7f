"""The gateway's gRPC ports against in-test servers that hang or fail in chosen ways.

The servers accept RankCandidates / Rerank and then never answer (until teardown), or abort with
a crafted status; everything else behind the gateway is an in-memory fake, so the hop under test
is the only one that waits on anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from longtail.common.v1 import common_pb2
from longtail.exposure.v1 import exposure_service_pb2, exposure_service_pb2_grpc
from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longtail.ranking.v1 import ranking_service_pb2, ranking_service_pb2_grpc
from services.common.errors import (
    DOMAIN,
    MAX_UPSTREAM_MESSAGE_CHARS,
    MAX_UPSTREAM_METADATA_ENTRIES,
    MAX_UPSTREAM_METADATA_VALUE_CHARS,
    DeadlineExceeded,
    InvalidArgument,
    ServiceError,
    Unavailable,
    to_status,
)
from services.common.server import RunningService, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.gateway.app import build_with
from services.gateway.config import GatewaySettings
from services.gateway.ports import ExposurePort, GrpcExposure, GrpcRanking, RankingPort
from tests.gateway.fakes import FakeExposure, FakeProfiles, FakeRanking

Context = grpc.aio.ServicerContext[Any, Any]
Request = gateway_service_pb2.RecommendRequest


class Upstream(
    ranking_service_pb2_grpc.RankingServiceServicer,
    exposure_service_pb2_grpc.ExposureServiceServicer,
):
    """RankCandidates and Rerank: hang until ``release`` is set, or abort with ``status``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: Counter[str] = Counter()
        self.status: grpc.Status | None = None

    async def _answer(self, method: str, context: Context) -> None:
        self.calls[method] += 1
        if self.status is not None:
            await context.abort_with_status(self.status)
        await self.release.wait()  # set only at teardown: the call is accepted, never answered
        await context.abort(grpc.StatusCode.UNAVAILABLE, "released at teardown")

    async def RankCandidates(
        self, request: ranking_service_pb2.RankCandidatesRequest, context: Context
    ) -> ranking_service_pb2.RankCandidatesResponse:
        await self._answer("RankCandidates", context)
        raise AssertionError("unreachable")

    async def Rerank(
        self, request: exposure_service_pb2.RerankRequest, context: Context
    ) -> exposure_service_pb2.RerankResponse:
        await self._answer("Rerank", context)
        raise AssertionError("unreachable")


@dataclasses.dataclass
class Served:
    upstream: Upstream
    channel: grpc.aio.Channel
    servers: list[RunningService]
    channels: list[grpc.aio.Channel]

    async def gateway(
        self, hanging: str, hop_ceiling: float
    ) -> tuple[FakeProfiles, gateway_service_pb2_grpc.GatewayServiceAsyncStub]:
        """A real gateway whose ``hanging`` port ("ranking" or "exposure") is the upstream."""
        profiles = FakeProfiles()
        ranking: RankingPort = FakeRanking(profiles)
        exposure: ExposurePort = FakeExposure()
        if hanging == "ranking":
            ranking = GrpcRanking(self.channel)
        else:
            exposure = GrpcExposure(self.channel)
        settings = GatewaySettings(
            ranking_timeout_seconds=hop_ceiling,
            exposure_timeout_seconds=hop_ceiling,
            fallback_size=20,
        )
        definition = build_with(settings, profiles, ranking, exposure)
        running = await start_service(definition, ServerSettings(port=0))
        self.servers.append(running)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        self.channels.append(channel)
        return profiles, gateway_service_pb2_grpc.GatewayServiceStub(channel)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    # The other RPCs stay UNIMPLEMENTED (the generated base classes answer them).
    upstream = Upstream()  # type: ignore[abstract]
    definition = ServiceDefinition(
        "upstream",
        [
            (
                ranking_service_pb2_grpc.add_RankingServiceServicer_to_server,
                upstream,
                "longtail.ranking.v1.RankingService",
            ),
            (
                exposure_service_pb2_grpc.add_ExposureServiceServicer_to_server,
                upstream,
                "longtail.exposure.v1.ExposureService",
            ),
        ],
    )
    running = await start_service(definition, ServerSettings(port=0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    made = Served(upstream, channel, [running], [channel])
    try:
        yield made
    finally:
        upstream.release.set()
        for each in made.channels:
            await each.close()
        for server in reversed(made.servers):
            await server.stop(0)


# The caller's deadline. No test below measures elapsed time: the answer arriving at all is the
# proof that it came within this deadline (the call fails with DEADLINE_EXCEEDED otherwise), while
# the upstream never answers.
DEADLINE = 5.0


@pytest.mark.parametrize("hanging", ["ranking", "exposure"])
@pytest.mark.parametrize(
    "hop_ceiling",
    [
        # The hop ceiling binds: the gateway gives up on the hop after 0.5 s; profiles, the
        # fallback list and the impression log are in memory, so the answer is due about 0.5 s
        # into the call, 4.5 s before the deadline.
        pytest.param(0.5, id="hop-ceiling-binds"),
        # The caller's deadline binds (ceilings far beyond it): ranking may use 0.6 * 0.7 of the
        # time left (2.1 s of 5), exposure 0.6 of what is left then (at most 3 s of 5); the other
        # 40% or more (2 s) is kept for the in-memory fallback and impressions.
        pytest.param(600.0, id="callers-deadline-binds"),
    ],
)
async def test_hanging_dependency_gives_the_fallback_within_the_callers_deadline(
    served: Served, hanging: str, hop_ceiling: float
) -> None:
    profiles, gateway = await served.gateway(hanging, hop_ceiling)
    answer = await gateway.Recommend(Request(user_id="u1", k=6), timeout=DEADLINE)
    method = "RankCandidates" if hanging == "ranking" else "Rerank"
    assert served.upstream.calls == Counter({method: 1})  # the hanging hop was really reached
    assert answer.fallback and answer.policy_name == "fallback"
    assert len(answer.items) == 6
    assert all(item.reason == common_pb2.REASON_FALLBACK for item in answer.items)
    assert not {"i0", "i9", "i12"} & {item.item_id for item in answer.items}  # seen: excluded
    logged = await profiles.list_impressions(answer.request_id, 1.0)
    assert [(i.position, i.item_id) for i in logged] == [
        (item.position, item.item_id) for item in answer.items
    ]
    assert all(i.policy_name == "fallback" for i in logged)


def crafted(
    code: grpc.StatusCode, message: str, info: error_details_pb2.ErrorInfo | None
) -> grpc.Status:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if info is not None:
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
    return rpc_status.to_status(status)


async def rank_error(served: Served, status: grpc.Status) -> ServiceError:
    served.upstream.status = status
    with pytest.raises(ServiceError) as caught:
        await GrpcRanking(served.channel).rank(
            ranking_service_pb2.RankCandidatesRequest(user_id="u1"), timeout=30
        )
    return caught.value


async def test_upstream_reason_and_metadata_are_kept_with_the_dependency(served: Served) -> None:
    info = error_details_pb2.ErrorInfo(
        reason="PARAMETER_OUT_OF_RANGE",
        domain=DOMAIN,
        # Keys that are also the constructor's parameter names must not get in the way.
        metadata={"param": "min_tail_share", "reason": "r", "message": "m"},
    )
    error = await rank_error(served, crafted(grpc.StatusCode.INVALID_ARGUMENT, "bad", info))
    assert isinstance(error, InvalidArgument)
    assert error.reason == "PARAMETER_OUT_OF_RANGE"
    assert error.metadata == {
        "param": "min_tail_share",
        "reason": "r",
        "message": "m",
        "dependency": "ranking",
    }
    assert error.message == "ranking: bad"


async def test_a_relayed_error_names_the_whole_path(served: Served) -> None:
    info = error_details_pb2.ErrorInfo(
        reason="STORE_UNAVAILABLE", domain=DOMAIN, metadata={"dependency": "profiles"}
    )
    error = await rank_error(served, crafted(grpc.StatusCode.UNAVAILABLE, "down", info))
    assert isinstance(error, Unavailable)
    assert (error.reason, error.metadata) == (
        "STORE_UNAVAILABLE",
        {"dependency": "ranking/profiles"},
    )


@pytest.mark.parametrize(
    ("code", "info", "kind", "reason"),
    [
        (grpc.StatusCode.UNAVAILABLE, None, Unavailable, "DEPENDENCY_UNAVAILABLE"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, DeadlineExceeded, "DEPENDENCY_DEADLINE_EXCEEDED"),
        # A reason from another domain is not one our callers know.
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            error_details_pb2.ErrorInfo(reason="BAD_THING", domain="example.com"),
            InvalidArgument,
            "DEPENDENCY_REJECTED_ARGUMENT",
        ),
    ],
)
async def test_without_a_reason_of_ours_the_dependency_reason_is_used(
    served: Served,
    code: grpc.StatusCode,
    info: error_details_pb2.ErrorInfo | None,
    kind: type[ServiceError],
    reason: str,
) -> None:
    error = await rank_error(served, crafted(code, "no", info))
    assert type(error) is kind
    assert (error.reason, error.metadata) == (reason, {"dependency": "ranking"})


async def test_other_codes_stay_internal_with_the_upstream_code_and_reason(served: Served) -> None:
    info = error_details_pb2.ErrorInfo(reason="QUOTA_SPENT", domain=DOMAIN)
    error = await rank_error(served, crafted(grpc.StatusCode.RESOURCE_EXHAUSTED, "none", info))
    assert error.code == grpc.StatusCode.INTERNAL
    assert error.reason == "QUOTA_SPENT"
    assert error.metadata == {"dependency": "ranking", "code": "RESOURCE_EXHAUSTED"}


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, "NO_INTERACTIONS"),
        (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_CONFLICT"),
    ],
)
async def test_conflicts_and_preconditions_keep_their_code_and_reason(
    served: Served, code: grpc.StatusCode, reason: str
) -> None:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)
    error = await rank_error(served, crafted(code, "no", info))
    assert (error.code, error.reason) == (code, reason)
    assert error.metadata == {"dependency": "ranking"}


async def test_a_large_upstream_error_is_clipped_to_fit_our_trailers(served: Served) -> None:
    info = error_details_pb2.ErrorInfo(
        reason="PARAMETER_OUT_OF_RANGE",
        domain=DOMAIN,
        metadata={f"key{n:02d}": "v" * 200 for n in range(12)},
    )
    error = await rank_error(served, crafted(grpc.StatusCode.INVALID_ARGUMENT, "x" * 800, info))
    assert len(error.message) == MAX_UPSTREAM_MESSAGE_CHARS
    assert len(error.metadata) == MAX_UPSTREAM_METADATA_ENTRIES + 1  # and the dependency
    assert all(len(v) <= MAX_UPSTREAM_METADATA_VALUE_CHARS for v in error.metadata.values())
    trailers = to_status(error).trailing_metadata
    assert sum(len(value) for _, value in trailers) < 3 * 1024
