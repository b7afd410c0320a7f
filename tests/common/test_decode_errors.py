"""Undecodable request bytes get INVALID_ARGUMENT / MALFORMED_REQUEST from the shared runtime.

Raw bytes go through generic channel calls (no serializer), so the server receives exactly them:
invalid UTF-8 in a proto3 string field, a truncated varint, ``ffffffff``. Before the runtime
guarded its deserializers, each came back UNKNOWN "Unexpected DecodeError" and grpc logged it at
ERROR with a traceback. The services are real: exposure (``build_with`` over a counters source
that knows nothing) and profiles on a SQLite file; health and reflection are the runtime's own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from longtail.common.v1 import common_pb2
from longtail.exposure.v1 import exposure_service_pb2 as xpb
from longtail.profiles.v1 import profiles_service_pb2 as ppb
from services.common.errors import DOMAIN, error_info
from services.common.server import RunningService, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.exposure.app import ExposureSettings, build_with
from services.exposure.policies import ItemCounts
from services.profiles.app import ProfilesSettings
from services.profiles.app import build as build_profiles
from services.profiles.store import migrate

TIMEOUT = 30.0
RERANK = "/longtail.exposure.v1.ExposureService/Rerank"
LIST_POLICIES = "/longtail.exposure.v1.ExposureService/ListPolicies"
UPSERT_USERS = "/longtail.profiles.v1.ProfilesService/UpsertUsers"
GET_PROFILE = "/longtail.profiles.v1.ProfilesService/GetUserProfile"
CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

# Field 1 (a string: request_id, user_id) holding two bytes that are not UTF-8.
INVALID_UTF8 = b"\x0a\x02\xff\xfe"
# UpsertUsersRequest.users[0].user_id holding the same bytes.
INVALID_UTF8_NESTED = b"\x0a\x04" + INVALID_UTF8
# Field 4 (a varint: Rerank's k; unknown elsewhere, where it must still parse) that never ends.
TRUNCATED_VARINT = b"\x20\xff"
RAW_FF = b"\xff\xff\xff\xff"


class NoCounters:
    async def item_stats(self, ids: Any, timeout: float) -> dict[str, ItemCounts]:
        return {}


async def _exposure(tmp_path: Path) -> ServiceDefinition:
    return build_with(ExposureSettings(), NoCounters())


async def _profiles(tmp_path: Path) -> ServiceDefinition:
    url = f"sqlite:///{tmp_path / 'profiles.db'}"
    migrate(url)
    return await build_profiles(
        ProfilesSettings(database_url=url, migrate_on_start=False, head_min_refresh_seconds=0.0)
    )


@pytest.fixture
async def exposure(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    running = await start_service(await _exposure(tmp_path), ServerSettings(port=0))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel
    await running.stop(0)


Metadata = tuple[tuple[str, str], ...]


async def raw_call(
    channel: grpc.aio.Channel, method: str, payload: bytes, metadata: Metadata = ()
) -> bytes:
    call: Any = channel.unary_unary(method)  # no serializers: bytes in, bytes out
    answer: bytes = await call(payload, timeout=TIMEOUT, metadata=metadata)
    return answer


async def refused(
    channel: grpc.aio.Channel, method: str, payload: bytes, metadata: Metadata = ()
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_call(channel, method, payload, metadata)
    return caught.value


def assert_malformed(error: grpc.aio.AioRpcError, method: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    info = error_info(error)
    assert info is not None
    assert (info.reason, info.domain) == ("MALFORMED_REQUEST", DOMAIN)
    assert info.metadata["method"] == method


def assert_nothing_logged_above_info(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno > logging.INFO]
    assert loud == [], [(r.name, r.levelname, r.getMessage()) for r in loud]
    infos = [r for r in caplog.records if r.getMessage() == "call failed"]
    assert infos, "the refusal is logged (at INFO)"
    assert all(r.fields["reason"] == "MALFORMED_REQUEST" for r in infos)  # type: ignore[attr-defined]


async def valid_rerank(channel: grpc.aio.Channel) -> None:
    request = xpb.RerankRequest(
        request_id="r1", k=1, candidates=[common_pb2.Candidate(item_id="a", score=1.0)]
    )
    answer = xpb.RerankResponse.FromString(
        await raw_call(channel, RERANK, request.SerializeToString())
    )
    assert [item.item_id for item in answer.items] == ["a"]


async def valid_list_policies(channel: grpc.aio.Channel) -> None:
    request = xpb.ListPoliciesRequest()
    answer = xpb.ListPoliciesResponse.FromString(
        await raw_call(channel, LIST_POLICIES, request.SerializeToString())
    )
    assert "relevance" in [policy.name for policy in answer.policies]


async def valid_upsert_then_profile(channel: grpc.aio.Channel) -> None:
    upsert = ppb.UpsertUsersRequest(users=[common_pb2.User(user_id="u1", interests="jazz")])
    answer = ppb.UpsertUsersResponse.FromString(
        await raw_call(channel, UPSERT_USERS, upsert.SerializeToString())
    )
    assert answer.upserted_count == 1
    profile = ppb.GetUserProfileResponse.FromString(
        await raw_call(
            channel, GET_PROFILE, ppb.GetUserProfileRequest(user_id="u1").SerializeToString()
        )
    )
    assert profile.profile.interests == "jazz"


CASES = {
    "exposure.Rerank-invalid_utf8": (_exposure, RERANK, INVALID_UTF8, valid_rerank),
    "exposure.Rerank-truncated_varint": (_exposure, RERANK, TRUNCATED_VARINT, valid_rerank),
    "exposure.Rerank-ffffffff": (_exposure, RERANK, RAW_FF, valid_rerank),
    # ListPoliciesRequest has no fields: invalid UTF-8 there is a valid unknown field.
    "exposure.ListPolicies-truncated_varint": (
        _exposure,
        LIST_POLICIES,
        TRUNCATED_VARINT,
        valid_list_policies,
    ),
    "exposure.ListPolicies-ffffffff": (_exposure, LIST_POLICIES, RAW_FF, valid_list_policies),
    "profiles.UpsertUsers-invalid_utf8": (
        _profiles,
        UPSERT_USERS,
        INVALID_UTF8_NESTED,
        valid_upsert_then_profile,
    ),
    "profiles.UpsertUsers-ffffffff": (_profiles, UPSERT_USERS, RAW_FF, valid_upsert_then_profile),
    "profiles.GetUserProfile-invalid_utf8": (
        _profiles,
        GET_PROFILE,
        INVALID_UTF8,
        valid_upsert_then_profile,
    ),
    "profiles.GetUserProfile-truncated_varint": (
        _profiles,
        GET_PROFILE,
        TRUNCATED_VARINT,
        valid_upsert_then_profile,
    ),
}


@pytest.mark.parametrize(("build", "method", "payload", "valid_call"), CASES.values(), ids=CASES)
async def test_undecodable_bytes_are_invalid_argument_and_the_service_keeps_serving(
    build: Callable[[Path], Awaitable[ServiceDefinition]],
    method: str,
    valid_call: Callable[[grpc.aio.Channel], Awaitable[None]],
    payload: bytes,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    running: RunningService = await start_service(await build(tmp_path), ServerSettings(port=0))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            assert_malformed(await refused(channel, method, payload), method)
            # The same connection still serves well-formed calls.
            await valid_call(channel)
    finally:
        await running.stop(0)
    assert_nothing_logged_above_info(caplog)


async def test_health_check_and_watch_refuse_undecodable_bytes_and_keep_working(
    exposure: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert_malformed(await refused(exposure, CHECK, RAW_FF), CHECK)
    watch_raw: Any = exposure.unary_stream(WATCH)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in watch_raw(RAW_FF, timeout=TIMEOUT):
            pass
    assert_malformed(caught.value, WATCH)

    check = health_pb2.HealthCheckRequest(service="")
    reply = health_pb2.HealthCheckResponse.FromString(
        await raw_call(exposure, CHECK, check.SerializeToString())
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    watch = watch_raw(check.SerializeToString(), timeout=TIMEOUT)
    async for raw in watch:
        first = health_pb2.HealthCheckResponse.FromString(raw)
        break
    watch.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    assert_nothing_logged_above_info(caplog)


async def test_reflection_refuses_undecodable_bytes_and_keeps_working(
    exposure: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def stream(*payloads: bytes) -> Iterator[bytes]:
        yield from payloads

    reflect: Any = exposure.stream_stream(REFLECTION)
    list_services = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in reflect(stream(list_services, RAW_FF), timeout=TIMEOUT):
            pass
    assert_malformed(caught.value, REFLECTION)

    names: list[str] = []
    async for raw in reflect(stream(list_services), timeout=TIMEOUT):
        answer = reflection_pb2.ServerReflectionResponse.FromString(raw)
        names += [service.name for service in answer.list_services_response.service]
    assert "longtail.exposure.v1.ExposureService" in names
    assert_nothing_logged_above_info(caplog)


async def test_a_missing_token_is_told_before_the_bytes_are_judged(tmp_path: Path) -> None:
    running = await start_service(
        await _exposure(tmp_path), ServerSettings(port=0, auth_token="s3cret")
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            error = await refused(channel, RERANK, RAW_FF)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            token = (("authorization", "Bearer s3cret"),)
            assert_malformed(await refused(channel, RERANK, RAW_FF, token), RERANK)
    finally:
        await running.stop(0)


# A streaming service of each remaining shape (the suite's own services are all unary): requests
# and answers are HealthCheckRequest / HealthCheckResponse, whose field 1 is a string.
STREAMS = "/longtail.test.Streams/"


async def _count(requests: AsyncIterator[Any], context: Any) -> health_pb2.HealthCheckResponse:
    """stream-unary, coroutine."""
    seen = [request.service async for request in requests]
    return health_pb2.HealthCheckResponse(status=len(seen))


async def _echo_writer(requests: AsyncIterator[Any], context: Any) -> None:
    """stream-stream, coroutine writing through the context."""
    async for request in requests:
        await context.write(health_pb2.HealthCheckResponse(status=len(request.service)))


async def _repeat(request: Any, context: Any) -> AsyncIterator[health_pb2.HealthCheckResponse]:
    """unary-stream, async generator."""
    for _ in range(2):
        yield health_pb2.HealthCheckResponse(status=len(request.service))


def _add_streams(servicer: object, server: grpc.aio.Server) -> None:
    decode = health_pb2.HealthCheckRequest.FromString
    encode = health_pb2.HealthCheckResponse.SerializeToString
    handlers = {
        "Count": grpc.stream_unary_rpc_method_handler(
            _count, request_deserializer=decode, response_serializer=encode
        ),
        "Echo": grpc.stream_stream_rpc_method_handler(
            _echo_writer, request_deserializer=decode, response_serializer=encode
        ),
        "Repeat": grpc.unary_stream_rpc_method_handler(
            _repeat, request_deserializer=decode, response_serializer=encode
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("longtail.test.Streams", handlers),)
    )


async def test_every_streaming_shape_refuses_undecodable_bytes_and_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    definition = ServiceDefinition("streams", [(_add_streams, object(), "longtail.test.Streams")])
    running = await start_service(definition, ServerSettings(port=0))
    one = health_pb2.HealthCheckRequest(service="abc").SerializeToString()

    def stream(*payloads: bytes) -> Iterator[bytes]:
        yield from payloads

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            count: Any = channel.stream_unary(STREAMS + "Count")
            echo: Any = channel.stream_stream(STREAMS + "Echo")
            repeat: Any = channel.unary_stream(STREAMS + "Repeat")

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await count(stream(one, INVALID_UTF8), timeout=TIMEOUT)
            assert_malformed(caught.value, STREAMS + "Count")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in echo(stream(one, TRUNCATED_VARINT), timeout=TIMEOUT):
                    pass
            assert_malformed(caught.value, STREAMS + "Echo")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in repeat(RAW_FF, timeout=TIMEOUT):
                    pass
            assert_malformed(caught.value, STREAMS + "Repeat")

            counted = await count(stream(one, one), timeout=TIMEOUT)
            assert health_pb2.HealthCheckResponse.FromString(counted).status == 2
            echoed = [raw async for raw in echo(stream(one, one), timeout=TIMEOUT)]
            assert [health_pb2.HealthCheckResponse.FromString(r).status for r in echoed] == [3, 3]
            repeated = [raw async for raw in repeat(one, timeout=TIMEOUT)]
            assert [health_pb2.HealthCheckResponse.FromString(r).status for r in repeated] == [3, 3]
    finally:
        await running.stop(0)
    assert_nothing_logged_above_info(caplog)
