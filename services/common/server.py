"""Serving a service: grpc.aio server, interceptors, health, reflection, graceful SIGTERM.

A service module builds a ``ServiceDefinition`` (its servicers and, optionally, a readiness probe);
``start_service`` serves it (tests use this, on port 0), and ``run_service`` is the process entry
point (``python -m services.<name>``): settings from the environment, JSON logs, signals.

With ``ServerSettings.health_port`` set, a second, plaintext server answers ``grpc.health.v1``
only, from the same health servicer as the main port: the kubelet's native gRPC probes speak
plaintext, so with TLS on the main port they need this one. It stays up while the main server
drains (answering NOT_SERVING) and stops after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from services.common.errors import InvalidArgument, ServiceError, from_upstream, to_status
from services.common.logging import REQUEST_ID_HEADER, configure_logging, request_id_var
from services.common.observability import Observability, ObservabilitySettings
from services.common.settings import ServerSettings, SettingsError, env_name, load_settings

log = logging.getLogger(__name__)

S = TypeVar("S")

# Calls that never need a token: probes and discovery.
_OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

AddServicer = Callable[[Any, grpc.aio.Server], None]


@dataclasses.dataclass
class ServiceDefinition:
    """What a service contributes to the runtime."""

    name: str
    # (add_XServicer_to_server, servicer, full service name) per gRPC service.
    servicers: Sequence[tuple[AddServicer, object, str]]
    # Polled every ``readiness_interval`` seconds; health follows it (e.g. Triton ready).
    readiness: Callable[[], Awaitable[bool]] | None = None
    readiness_interval: float = 1.0
    # Closes what the service opened (engines, channels), after the server has drained.
    on_shutdown: Callable[[], Awaitable[None]] | None = None
    # Extra Prometheus registries served on /metrics next to the runtime's (e.g. the gateway's
    # RecommenderMetrics().registry).
    registries: Sequence[CollectorRegistry] = ()


Context = grpc.aio.ServicerContext[Any, Any]


def _metadata_value(context: Context, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode()
    return ""


@dataclasses.dataclass(frozen=True)
class _Undecodable:
    """What a request deserializer yields for bytes it cannot parse (invalid UTF-8 in a string
    field, a truncated varint, random bytes): the behaviour then answers INVALID_ARGUMENT with
    ``MALFORMED_REQUEST`` instead of gRPC's own UNKNOWN "Unexpected DecodeError", logged at ERROR
    with a traceback, which a client could trigger at will."""

    error: str


MALFORMED_REQUEST = "MALFORMED_REQUEST"


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # any bytes that do not parse are the caller's fault
            return _Undecodable(f"{type(error).__name__}: {error}")

    return decode


def _malformed(method: str, request: _Undecodable) -> InvalidArgument:
    return InvalidArgument(
        MALFORMED_REQUEST,
        f"the request message could not be decoded ({request.error})",
        method=method,
    )


def _log_failure(method: str, error: ServiceError) -> None:
    log.info(
        "call failed",
        extra={
            "fields": {
                "method": method,
                "code": error.code.name,
                "reason": error.reason,
                "detail": error.message,
            }
        },
    )


async def _abort_malformed(context: Context, method: str, request: _Undecodable) -> None:
    error = _malformed(method, request)
    _log_failure(method, error)
    await context.abort_with_status(to_status(error))


def _guard_streaming(
    handler: grpc.RpcMethodHandler[Any, Any], method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A streaming handler (health Watch, reflection) whose undecodable requests are refused
    with INVALID_ARGUMENT / MALFORMED_REQUEST; the behaviour is otherwise unchanged. Handlers
    of a kind this cannot wrap faithfully (synchronous generators) are returned as they are, and
    a streaming servicer must iterate its request iterator (``context.read()`` bypasses the
    check; no servicer here reads that way)."""
    if handler.request_deserializer is None:
        return handler
    decode = _tolerant(handler.request_deserializer)
    serialize = handler.response_serializer

    async def checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Undecodable):
                await _abort_malformed(context, method, request)
            yield request

    if handler.unary_stream is not None:
        unary_stream: Any = handler.unary_stream
        if inspect.isasyncgenfunction(unary_stream):

            async def unary_stream_generator(request: Any, context: Context) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await _abort_malformed(context, method, request)
                async for response in unary_stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                unary_stream_generator, request_deserializer=decode, response_serializer=serialize
            )
        if inspect.iscoroutinefunction(unary_stream):

            async def unary_stream_writer(request: Any, context: Context) -> None:
                if isinstance(request, _Undecodable):
                    await _abort_malformed(context, method, request)
                await unary_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream_writer, request_deserializer=decode, response_serializer=serialize
            )
        return handler
    if handler.stream_stream is not None:
        stream_stream: Any = handler.stream_stream
        if inspect.isasyncgenfunction(stream_stream):

            async def stream_stream_generator(
                requests: AsyncIterator[Any], context: Context
            ) -> AsyncIterator[Any]:
                async for response in stream_stream(checked(requests, context), context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                stream_stream_generator, request_deserializer=decode, response_serializer=serialize
            )
        if inspect.iscoroutinefunction(stream_stream):

            async def stream_stream_writer(requests: AsyncIterator[Any], context: Context) -> None:
                await stream_stream(checked(requests, context), context)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream_writer, request_deserializer=decode, response_serializer=serialize
            )
        return handler
    if handler.stream_unary is not None and inspect.iscoroutinefunction(handler.stream_unary):
        stream_unary: Any = handler.stream_unary

        async def stream_unary_behaviour(requests: AsyncIterator[Any], context: Context) -> Any:
            return await stream_unary(checked(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary_behaviour, request_deserializer=decode, response_serializer=serialize
        )
    return handler


class _ErrorAndContextInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to statuses (one place), binds the request id, checks the token, and
    refuses undecodable request bytes with INVALID_ARGUMENT / ``MALFORMED_REQUEST`` (streaming
    methods too: health Watch, reflection)."""

    def __init__(self, auth_token: str | None) -> None:
        self._auth_token = auth_token

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        if handler.unary_unary is None:
            return _guard_streaming(handler, method)
        inner = handler.unary_unary
        needs_token = self._auth_token is not None and not method.startswith(_OPEN_METHOD_PREFIXES)
        expected = f"Bearer {self._auth_token}"

        async def behaviour(request: Any, context: Context) -> Any:
            token = request_id_var.set(_metadata_value(context, REQUEST_ID_HEADER))
            try:
                if needs_token and _metadata_value(context, "authorization") != expected:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or bad token")
                if isinstance(request, _Undecodable):
                    raise _malformed(method, request)
                return await inner(request, context)  # type: ignore[arg-type]
            except ServiceError as error:
                _log_failure(method, error)
                await context.abort_with_status(to_status(error))
            except grpc.aio.AioRpcError as error:
                mapped = from_upstream(error, dependency=method)
                await context.abort_with_status(to_status(mapped))
            finally:
                request_id_var.reset(token)

        deserializer = handler.request_deserializer
        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=None if deserializer is None else _tolerant(deserializer),
            response_serializer=handler.response_serializer,
        )


class RunningService:
    """A started server; ``stop`` turns health NOT_SERVING, then drains."""

    def __init__(
        self,
        definition: ServiceDefinition,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        port: int,
        grace_seconds: float,
        health_server: grpc.aio.Server | None = None,
        health_port: int | None = None,
    ) -> None:
        self.definition = definition
        self.server = server
        self.health = health_servicer
        self.port = port
        self.grace_seconds = grace_seconds
        # The plaintext health-only server (``ServerSettings.health_port``), if any.
        self.health_server = health_server
        self.health_port = health_port
        self._readiness_task: asyncio.Task[None] | None = None
        self.observability: Observability | None = None
        self._stopped = False

    @property
    def names(self) -> list[str]:
        return ["", *(name for _, _, name in self.definition.servicers)]

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self.names:
            await self.health.set(name, status)

    async def _follow_readiness(self, probe: Callable[[], Awaitable[bool]]) -> None:
        while True:
            try:
                ready = await probe()
            except Exception:  # a probe that throws means "not ready", never a dead loop
                log.exception("readiness probe failed")
                ready = False
            await self.set_serving(ready)
            await asyncio.sleep(self.definition.readiness_interval)

    def start_readiness(self) -> None:
        if self.definition.readiness is not None:
            self._readiness_task = asyncio.create_task(
                self._follow_readiness(self.definition.readiness)
            )

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._readiness_task is not None:
            self._readiness_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness_task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_seconds if grace is None else grace)
        # Probes see NOT_SERVING (not a refused connection) for as long as the drain lasts.
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.definition.on_shutdown is not None:
            await self.definition.on_shutdown()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def _health_only_server(
    health_servicer: health.aio.HealthServicer, settings: ServerSettings
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with ``grpc.health.v1.Health`` alone: every other method, reflection
    included, is UNIMPLEMENTED there, so the port reveals nothing but serving status."""
    assert settings.health_port is not None
    server = grpc.aio.server(
        # Health needs no token; undecodable requests get the same INVALID_ARGUMENT as elsewhere.
        interceptors=[_ErrorAndContextInterceptor(auth_token=None)],
        options=[("grpc.so_reuseport", 0)],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.health_port}")
    return server, port


async def start_service(
    definition: ServiceDefinition,
    settings: ServerSettings,
    observability: Observability | None = None,
) -> RunningService:
    """Serve ``definition`` on ``settings.host:settings.port`` (0 = a free port), and health
    alone on ``settings.health_port`` when it is set."""
    # Per server by default (tests start several per process); run_service passes the process's.
    observability = observability or Observability(definition.name)
    server = grpc.aio.server(
        interceptors=[
            *observability.server_interceptors(),  # outermost: sees the final status code
            _ErrorAndContextInterceptor(settings.auth_token),
        ],
        options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    for add, servicer, _ in definition.servicers:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [name for _, _, name in definition.servicers]
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    health_server, health_port = (
        _health_only_server(health_servicer, settings)
        if settings.health_port is not None
        else (None, None)
    )
    running = RunningService(
        definition,
        server,
        health_servicer,
        port,
        settings.grace_seconds,
        health_server=health_server,
        health_port=health_port,
    )
    running.observability = observability
    # Without a probe the service is ready once it listens; with one, the probe decides. Set
    # before either port listens, so that no probe sees the servicer's initial SERVING.
    await running.set_serving(definition.readiness is None)
    await server.start()
    if health_server is not None:
        await health_server.start()
    running.start_readiness()
    return running


def run_service(
    prefix: str,
    settings_class: type[S],
    build: Callable[[S], Awaitable[ServiceDefinition]],
    default_port: int = 0,
) -> None:
    """Process entry point: settings from ``<prefix>*`` variables, serve until SIGTERM/SIGINT.

    ``settings_class`` is the service's frozen settings dataclass; its ``server`` part is read
    from the same prefix, with ``default_port`` when ``<prefix>PORT`` is unset (0 = a free port).
    Prints ``LISTENING host:port`` on stdout once serving (for launchers).
    """
    try:
        server_settings = load_settings(ServerSettings, prefix)
        if env_name(prefix, "port") not in os.environ:
            server_settings = dataclasses.replace(server_settings, port=default_port)
        service_settings = load_settings(settings_class, prefix)
        observability_settings = load_settings(ObservabilitySettings, prefix)
    except SettingsError as error:
        print(str(error), file=sys.stderr)
        raise SystemExit(2) from error
    configure_logging(prefix.strip("_").lower(), server_settings.log_level)

    async def main() -> None:
        name = prefix.strip("_").lower().removeprefix("longtail_")
        observability = Observability.from_settings(name, observability_settings)
        definition = await build(service_settings)
        running = await start_service(definition, server_settings, observability)
        if observability_settings.metrics_port is not None:
            observability.start_metrics_server(
                observability_settings.metrics_port, server_settings.host, definition.registries
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "serving",
            extra={
                "fields": {
                    "host": server_settings.host,
                    "port": running.port,
                    "health_port": running.health_port,
                }
            },
        )
        print(f"LISTENING {server_settings.host}:{running.port}", flush=True)
        await stop.wait()
        log.info("draining", extra={"fields": {"grace_seconds": server_settings.grace_seconds}})
        await running.stop()
        observability.shutdown()

    asyncio.run(main())
