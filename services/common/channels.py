"""Outbound channels: TLS, bearer token and request-id propagation, in one place."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from services.common.logging import REQUEST_ID_HEADER, request_id_var
from services.common.observability import traced_client_call
from services.common.settings import ClientSettings

_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

Metadata = Sequence[tuple[str, str | bytes]]


class _UnaryUnary:
    """A unary-unary multicallable whose calls carry the request id of the call being served (so
    logs line up across hops), the bearer token and the trace context."""

    def __init__(self, inner: Any, method: str, token: str | None) -> None:
        self._inner = inner
        self._method = method
        self._auth = ("authorization", f"Bearer {token}") if token else None

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        extra: list[tuple[str, str | bytes]] = list(metadata or ())
        request_id = request_id_var.get()
        if request_id:
            extra.append((REQUEST_ID_HEADER, request_id))
        if self._auth is not None:
            extra.append(self._auth)

        def send(final: list[tuple[str, str | bytes]]) -> Any:
            return self._inner(
                request,
                timeout=timeout,
                metadata=final,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )

        return traced_client_call(self._method, extra, send)


class _OutboundChannel(grpc.aio.Channel):
    """A channel that adds the metadata itself instead of through grpc.aio client interceptors,
    whose chain costs an intercepted call object and its callbacks per call (a microbenchmark put
    the saving within noise of 0-15% of a call's ~0.5 ms of client CPU; a bare channel is ~0.45).
    Unary-unary is the only kind the services call; the other kinds go out unchanged."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None) -> None:
        self._channel = channel
        self._token = token

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Any:
        # Generated stubs pass ``_registered_method`` (grpc's type stubs do not know it yet).
        channel: Any = self._channel
        inner = channel.unary_unary(
            method,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer,
            _registered_method=_registered_method,
        )
        return _UnaryUnary(inner, method, self._token)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.stream_stream(*args, **kwargs)

    async def __aenter__(self) -> _OutboundChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()


def open_channel(settings: ClientSettings) -> grpc.aio.Channel:
    """An asyncio channel to ``settings.target`` with TLS and token when configured."""
    options = [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        # Reconnect quickly after a dependency restarts (fallback tests, rolling deploys).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # Spread calls over every address the target resolves to (replicas behind a headless
        # Kubernetes Service, or "ipv4:a:p1,b:p2"); one address behaves as pick_first would.
        ("grpc.lb_policy_name", "round_robin"),
    ]
    if settings.tls_ca_file is not None:
        credentials = grpc.ssl_channel_credentials(settings.tls_ca_file.read_bytes())
        channel = grpc.aio.secure_channel(settings.target, credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(settings.target, options=options)
    return _OutboundChannel(channel, settings.auth_token)


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
