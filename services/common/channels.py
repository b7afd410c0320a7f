"""Outbound channels: TLS, bearer token and request-id propagation, in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from services.common.logging import REQUEST_ID_HEADER, request_id_var
from services.common.observability import tracing_client_interceptor
from services.common.settings import ClientSettings

_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class _RequestIdInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Forward the request id of the call being served, so logs line up across hops."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
        request_id = request_id_var.get()
        if request_id:
            metadata.add(REQUEST_ID_HEADER, request_id)
        if self._token:
            metadata.add("authorization", f"Bearer {self._token}")
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def open_channel(settings: ClientSettings) -> grpc.aio.Channel:
    """An asyncio channel to ``settings.target`` with TLS and token when configured."""
    options = [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        # Reconnect quickly after a dependency restarts (fallback tests, rolling deploys).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    interceptors = [tracing_client_interceptor(), _RequestIdInterceptor(settings.auth_token)]
    if settings.tls_ca_file is not None:
        credentials = grpc.ssl_channel_credentials(settings.tls_ca_file.read_bytes())
        return grpc.aio.secure_channel(
            settings.target, credentials, options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(settings.target, options=options, interceptors=interceptors)


async def check_health(channel: grpc.aio.Channel, service: str = "", timeout: float = 1.0) -> int:
    """The grpc.health.v1 status of ``service`` (``""`` = the whole server) as the enum value.

    Unreachable servers count as NOT_SERVING rather than raising, so callers can poll.
    """
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    try:
        response: health_pb2.HealthCheckResponse = await check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    except grpc.aio.AioRpcError:
        return int(health_pb2.HealthCheckResponse.NOT_SERVING)
    return int(response.status)
