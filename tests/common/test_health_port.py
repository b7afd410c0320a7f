"""The plaintext health-only port (``ServerSettings.health_port``) next to a TLS main port.

Real servers with a certificate made by openssl: the kubelet's native gRPC probe is a plaintext
``grpc.health.v1.Health/Check``, which the TLS port refuses and the health port answers, with the
main port's status. Drain is driven, not waited for: a call held open on the main port keeps
``stop()`` draining while the health port is asked, and a Watch stream observes the change.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from services.common.server import RunningService, ServiceDefinition, start_service
from services.common.settings import ServerSettings, load_settings
from tests.conftest import missing

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
HOLD_SERVICE = "test.Hold"
HOLD = f"/{HOLD_SERVICE}/Wait"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TIMEOUT = 30.0


def _self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        missing("openssl", "openssl is not installed (make setup installs it)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class Hold:
    """A method that answers only when the test says so: an in-flight call that keeps the
    main server draining for exactly as long as the test needs."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def wait(self, request: bytes, context: Any) -> bytes:
        self.started.set()
        await self.release.wait()
        return request


def _add_hold(hold: Hold, server: grpc.aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        HOLD_SERVICE, {"Wait": grpc.unary_unary_rpc_method_handler(hold.wait)}
    )
    server.add_generic_rpc_handlers((handler,))


def _definition(hold: Hold, **options: Any) -> ServiceDefinition:
    return ServiceDefinition(name="t", servicers=[(_add_hold, hold, HOLD_SERVICE)], **options)


def _settings(tmp_path: Path, **options: Any) -> ServerSettings:
    cert, key = _self_signed(tmp_path)
    return ServerSettings(port=0, health_port=0, tls_cert_file=cert, tls_key_file=key, **options)


@pytest.fixture
async def channels() -> AsyncIterator[list[grpc.aio.Channel]]:
    """Channels to close at the end, whatever the test's outcome."""
    opened: list[grpc.aio.Channel] = []
    yield opened
    for channel in opened:
        await channel.close()


def _plaintext(channels: list[grpc.aio.Channel], port: int | None) -> grpc.aio.Channel:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    channels.append(channel)
    return channel


def _tls(channels: list[grpc.aio.Channel], port: int, cert: Path) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(cert.read_bytes())
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)
    channels.append(channel)
    return channel


async def _check(channel: grpc.aio.Channel, service: str = "") -> int:
    """The status Check answers; raises AioRpcError when the call itself fails."""
    check = channel.unary_unary(
        CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    answer: health_pb2.HealthCheckResponse = await check(
        health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
    )
    return int(answer.status)


def _watch(channel: grpc.aio.Channel) -> Any:
    watch = channel.unary_stream(
        WATCH,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    return watch(health_pb2.HealthCheckRequest())


async def _code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code: grpc.StatusCode = caught.value.code()
    return code


async def test_health_port_answers_health_alone_in_plaintext_while_the_main_port_wants_tls(
    tmp_path: Path, channels: list[grpc.aio.Channel]
) -> None:
    settings = _settings(tmp_path, auth_token="s3cret")
    assert settings.tls_cert_file is not None
    running = await start_service(_definition(Hold()), settings)
    try:
        assert running.health_port not in (None, 0, running.port)
        health = _plaintext(channels, running.health_port)
        # The kubelet's probe: plaintext, no token, whole server or one service.
        assert await _check(health) == SERVING
        assert await _check(health, HOLD_SERVICE) == SERVING
        # Nothing else is served there: not the service, not reflection.
        hold: Any = health.unary_unary(HOLD)  # no serializers: bytes in, bytes out
        assert await _code_of(hold(b"x", timeout=TIMEOUT)) == grpc.StatusCode.UNIMPLEMENTED
        reflection: Any = health.stream_stream(REFLECTION)

        async def reflect() -> None:
            async for _ in reflection(iter([b""]), timeout=TIMEOUT):
                pass

        assert await _code_of(reflect()) == grpc.StatusCode.UNIMPLEMENTED
        # The main port still refuses plaintext, and answers over TLS.
        main_plaintext = _plaintext(channels, running.port)
        assert await _code_of(_check(main_plaintext)) == grpc.StatusCode.UNAVAILABLE
        main = _tls(channels, running.port, settings.tls_cert_file)
        assert await _check(main) == SERVING
    finally:
        await running.stop(0)


async def test_health_port_turns_not_serving_as_the_drain_begins_and_closes_after_it(
    tmp_path: Path, channels: list[grpc.aio.Channel]
) -> None:
    settings = _settings(tmp_path)
    assert settings.tls_cert_file is not None
    hold = Hold()
    running = await start_service(_definition(hold), settings)
    stopping: asyncio.Task[None] | None = None
    try:
        health = _plaintext(channels, running.health_port)
        watch = _watch(health)
        assert (await watch.read()).status == SERVING
        main = _tls(channels, running.port, settings.tls_cert_file)
        hold_call: Any = main.unary_unary(HOLD)  # no serializers: bytes in, bytes out
        held = asyncio.ensure_future(hold_call(b"in flight", timeout=TIMEOUT))
        await hold.started.wait()  # the call is on the server: stop() must wait for it

        # A long grace that the test ends itself, by releasing the held call.
        stopping = asyncio.create_task(running.stop(grace=TIMEOUT))
        assert (await watch.read()).status == NOT_SERVING
        # Still draining (the held call has not answered): the health port is up and says so.
        assert not held.done()
        assert await _check(health) == NOT_SERVING
        assert await _check(health, HOLD_SERVICE) == NOT_SERVING
        watch.cancel()

        hold.release.set()
        assert await held == b"in flight"
        await stopping
        # The health port closed with the server.
        assert await _code_of(_check(health)) == grpc.StatusCode.UNAVAILABLE
    finally:
        hold.release.set()
        if stopping is None:
            await running.stop(0)
        else:
            await stopping


async def test_health_port_follows_the_readiness_probe(
    tmp_path: Path, channels: list[grpc.aio.Channel]
) -> None:
    ready = asyncio.Event()

    async def readiness() -> bool:
        await ready.wait()
        return True

    running = await start_service(_definition(Hold(), readiness=readiness), _settings(tmp_path))
    try:
        watch = _watch(_plaintext(channels, running.health_port))
        # Set before the port listened: no probe ever sees the servicer's initial SERVING.
        assert (await watch.read()).status == NOT_SERVING
        ready.set()
        assert (await watch.read()).status == SERVING
        watch.cancel()
    finally:
        await running.stop(0)


async def test_no_health_port_unless_configured() -> None:
    running: RunningService = await start_service(_definition(Hold()), ServerSettings(port=0))
    try:
        assert running.health_port is None and running.health_server is None
    finally:
        await running.stop(0)
    prefix = "LONGTAIL_T_"
    assert load_settings(ServerSettings, prefix, {}).health_port is None
    assert load_settings(ServerSettings, prefix, {f"{prefix}HEALTH_PORT": ""}).health_port is None
    assert load_settings(ServerSettings, prefix, {f"{prefix}HEALTH_PORT": "9465"}).health_port == (
        9465
    )
