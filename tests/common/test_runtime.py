"""The shared runtime: settings, error mapping, auth, health on shutdown, reflection, deadlines."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from services.common.channels import check_health, open_channel
from services.common.deadlines import outbound_timeout
from services.common.errors import DeadlineExceeded, error_info
from services.common.server import ServiceDefinition, start_service
from services.common.settings import ClientSettings, ServerSettings, SettingsError, load_settings
from services.common.tail import head_items
from services.gateway.app import SERVICE_NAME
from services.gateway.pipeline import PipelineConfig, RecommendPipeline
from services.gateway.servicer import GatewayServicer
from tests.gateway.fakes import FakeExposure, FakeProfiles, FakeRanking


@dataclasses.dataclass(frozen=True)
class ExampleSettings:
    database_url: str
    ranking_target: str
    port: int = 1
    ratio: float = 0.5
    verbose: bool = False
    path: Path | None = None


def test_settings_name_every_missing_variable_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(ExampleSettings, "LT_", {"LT_PORT": "x"})
    message = str(caught.value)
    assert "LT_DATABASE_URL is required" in message
    assert "LT_RANKING_TARGET is required" in message
    assert "LT_PORT" in message


def test_settings_convert_types() -> None:
    settings = load_settings(
        ExampleSettings,
        "LT_",
        {
            "LT_DATABASE_URL": "sqlite://",
            "LT_RANKING_TARGET": "h:1",
            "LT_RATIO": "0.25",
            "LT_VERBOSE": "true",
            "LT_PATH": "/tmp/x",
        },
    )
    assert settings == ExampleSettings("sqlite://", "h:1", 1, 0.25, True, Path("/tmp/x"))


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def test_outbound_timeout_follows_the_callers_deadline() -> None:
    assert outbound_timeout(_Context(None), 3.0) == 3.0
    assert outbound_timeout(_Context(10.0), 3.0) == 3.0
    assert 0.4 < outbound_timeout(_Context(0.5), 3.0) < 0.5
    with pytest.raises(DeadlineExceeded):
        outbound_timeout(_Context(0.0), 3.0)


def test_head_is_top_fifth_by_interactions_and_never_cold() -> None:
    counts = {f"i{n}": 10 - n for n in range(10)}  # i0: 10 … i9: 1
    assert head_items(counts) == {"i0", "i1"}
    # Items nobody touched count in the catalogue size but are never head.
    assert head_items({"a": 3}, catalogue=[f"x{n}" for n in range(9)]) == {"a"}
    assert head_items({}, catalogue=["a", "b"]) == frozenset()


def _definition() -> ServiceDefinition:
    profiles = FakeProfiles()
    pipeline = RecommendPipeline(
        profiles, FakeRanking(profiles), FakeExposure(), PipelineConfig(fallback_size=10)
    )
    return ServiceDefinition(
        name="gateway",
        servicers=[
            (
                gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server,
                GatewayServicer(pipeline, 2.0),
                SERVICE_NAME,
            )
        ],
    )


async def test_auth_token_required_except_for_health() -> None:
    running = await start_service(_definition(), ServerSettings(port=0, auth_token="s3cret"))
    target = f"127.0.0.1:{running.port}"
    try:
        request = gateway_service_pb2.RecommendRequest(user_id="u1", k=3)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Recommend(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await check_health(channel) == health_pb2.HealthCheckResponse.SERVING
        wrong = open_channel(ClientSettings(target=target, auth_token="wrong"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway_service_pb2_grpc.GatewayServiceStub(wrong).Recommend(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await wrong.close()
        right = open_channel(ClientSettings(target=target, auth_token="s3cret"))
        answer = await gateway_service_pb2_grpc.GatewayServiceStub(right).Recommend(
            request, timeout=5
        )
        assert len(answer.items) == 3
        await right.close()
    finally:
        await running.stop(0)


async def test_errors_carry_error_info_and_reflection_lists_services() -> None:
    running = await start_service(_definition(), ServerSettings(port=0))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Recommend(gateway_service_pb2.RecommendRequest(k=3), timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            info = error_info(caught.value)
            assert info is not None
            assert (info.reason, info.domain) == ("EMPTY_USER_ID", "longtail.dev")

            # The reflection stubs are typed for sync channels only.
            reflect: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]

            async def ask() -> list[str]:
                call = reflect.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                )
                async for response in call:
                    return [s.name for s in response.list_services_response.service]
                return []

            services = await ask()
            assert SERVICE_NAME in services and "grpc.health.v1.Health" in services
    finally:
        await running.stop(0)


async def test_health_goes_not_serving_when_stop_begins() -> None:
    running = await start_service(_definition(), ServerSettings(port=0, grace_seconds=1.0))
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        assert await check_health(channel, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(running.stop(1.0))
    await asyncio.sleep(0)  # stop() flips health before the server stops taking calls
    # Asked of the servicer itself, so an unreachable server cannot pass for NOT_SERVING.
    status = (await running.health.Check(request, None)).status  # type: ignore[arg-type]
    await stopping
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
