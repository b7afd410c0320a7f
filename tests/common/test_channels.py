"""``open_channel``: what every outbound call carries (request id, token, trace context), added
without grpc.aio client interceptors, and errors passed through unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from longtail.gateway.v1 import gateway_service_pb2
from services.common.channels import open_channel
from services.common.logging import REQUEST_ID_HEADER, request_id_var
from services.common.observability import traced_client_call
from services.common.settings import ClientSettings

Request = gateway_service_pb2.RecommendRequest
Response = gateway_service_pb2.RecommendResponse
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def call(request: Request, context: Any) -> Response:
        seen.append({k: v for k, v in context.invocation_metadata() or ()})
        if request.user_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such user")
        return Response(policy_name=f"hello {request.user_id}")

    handler = grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=Request.FromString,
        response_serializer=Response.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.S", {"M": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port, seen
    finally:
        await server.stop(0)


def _method(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        "/t.S/M",
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )


async def test_calls_carry_the_request_id_token_trace_context_and_the_callers_metadata(
    server: tuple[int, list[dict[str, str]]],
) -> None:
    port, seen = server
    parent = SpanContext(TRACE_ID, 0xB7AD6B7169203331, is_remote=False, trace_flags=TraceFlags(1))
    channel = open_channel(ClientSettings(target=f"127.0.0.1:{port}", auth_token="s3cret"))
    request_token = request_id_var.set("req-42")
    trace_token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        answer = await _method(channel)(
            Request(user_id="u1"), timeout=5, metadata=(("x-extra", "kept"),)
        )
    finally:
        otel_context.detach(trace_token)
        request_id_var.reset(request_token)
        await channel.close()
    assert answer.policy_name == "hello u1"
    metadata = seen[0]
    assert metadata[REQUEST_ID_HEADER] == "req-42"
    assert metadata["authorization"] == "Bearer s3cret"
    assert metadata["x-extra"] == "kept"
    assert metadata["traceparent"].split("-")[1] == f"{TRACE_ID:032x}"


async def test_without_a_request_id_or_token_nothing_is_invented_and_errors_pass_through(
    server: tuple[int, list[dict[str, str]]],
) -> None:
    port, seen = server
    async with open_channel(ClientSettings(target=f"127.0.0.1:{port}")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _method(channel)(Request(user_id="missing"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no such user"
    assert REQUEST_ID_HEADER not in seen[0] and "authorization" not in seen[0]


async def test_a_recording_provider_gets_a_client_span_with_the_status_code(
    server: tuple[int, list[dict[str, str]]],
) -> None:
    port, seen = server
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = _method(channel)

        def send(user: str) -> Any:
            return lambda metadata: method(Request(user_id=user), timeout=5, metadata=metadata)

        await traced_client_call("/t.S/M", [], send("u1"), tracer_provider=provider)
        with pytest.raises(grpc.aio.AioRpcError):
            await traced_client_call("/t.S/M", [], send("missing"), tracer_provider=provider)
    ok, failed = exporter.get_finished_spans()
    assert ok.kind == SpanKind.CLIENT and ok.name == "t.S/M"
    assert ok.attributes is not None and ok.attributes["rpc.grpc.status_code"] == 0
    assert failed.attributes is not None and failed.attributes["rpc.grpc.status_code"] == 5
    # Each call's traceparent names its own CLIENT span.
    assert seen[0]["traceparent"].split("-")[2] == f"{ok.context.span_id:016x}"
