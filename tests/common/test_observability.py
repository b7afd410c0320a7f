"""Observability: RPC and domain metrics on a real /metrics endpoint, spans across gRPC hops.

The servers here are built the way the runtime is to wire them: the observability interceptor
first (outermost), then the runtime's own error/context interceptor.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from longtail.common.v1 import common_pb2
from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from services.common.channels import check_health
from services.common.logging import JsonFormatter
from services.common.observability import (
    ExposureWindow,
    MetricsServer,
    Observability,
    ObservabilitySettings,
    RecommenderMetrics,
    TraceContextLogFilter,
    configure_tracing,
    current_trace_fields,
    gini,
    start_metrics_server,
)
from services.common.server import _ErrorAndContextInterceptor
from services.common.settings import load_settings
from services.gateway.pipeline import PipelineConfig, RecommendPipeline
from services.gateway.servicer import GatewayServicer
from services.suite.evaluation.metrics import gini as offline_gini
from tests.gateway.fakes import FakeExposure, FakeProfiles, FakeRanking

GATEWAY = "longtail.gateway.v1.GatewayService"
Request = gateway_service_pb2.RecommendRequest
Response = gateway_service_pb2.RecommendResponse


@dataclass
class Stack:
    observability: Observability
    exporter: InMemorySpanExporter
    domain: RecommenderMetrics
    metrics: MetricsServer
    gateway: gateway_service_pb2_grpc.GatewayServiceAsyncStub
    gateway_target: str
    relay_target: str
    health: grpc.aio.Channel
    channels: list[grpc.aio.Channel]

    def client_channel(self, target: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(
            target, interceptors=self.observability.client_interceptors()
        )
        self.channels.append(channel)
        return channel

    def scrape(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        return {family.name: family for family in text_string_to_metric_families(text)}

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


def sample(families: dict[str, Any], metric: str, sample_name: str, **labels: str) -> float:
    family = families[metric]
    for entry in family.samples:
        if entry.name == sample_name and all(entry.labels.get(k) == v for k, v in labels.items()):
            return float(entry.value)
    return 0.0


async def _serve(observability: Observability, add: Any) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        interceptors=[*observability.server_interceptors(), _ErrorAndContextInterceptor(None)]
    )
    add(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observability = Observability("gateway", tracer_provider=provider)
    domain = RecommenderMetrics()

    profiles = FakeProfiles()
    pipeline = RecommendPipeline(
        profiles, FakeRanking(profiles), FakeExposure(), PipelineConfig(fallback_size=20)
    )

    def add_gateway(server: grpc.aio.Server) -> None:
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(pipeline, 2.0), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)

    gateway_server, gateway_port = await _serve(observability, add_gateway)
    gateway_channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}")
    channels: list[grpc.aio.Channel] = [gateway_channel]
    stack = Stack(
        observability=observability,
        exporter=exporter,
        domain=domain,
        metrics=start_metrics_server(0, "127.0.0.1", [observability.registry, domain.registry]),
        gateway=gateway_service_pb2_grpc.GatewayServiceStub(gateway_channel),
        gateway_target=f"127.0.0.1:{gateway_port}",
        relay_target="",
        health=gateway_channel,
        channels=channels,
    )
    # A relay: a second service whose handler calls the gateway, as the gateway calls ranking.
    downstream = gateway_service_pb2_grpc.GatewayServiceStub(
        stack.client_channel(f"127.0.0.1:{gateway_port}")
    )

    async def relay(request: Request, context: Any) -> Response:
        answer: Response = await downstream.Recommend(request, timeout=5)
        return answer

    def add_relay(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            relay,
            request_deserializer=Request.FromString,
            response_serializer=Response.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Relay", {"Call": handler})]
        )

    relay_server, relay_port = await _serve(observability, add_relay)
    stack.relay_target = f"127.0.0.1:{relay_port}"
    try:
        yield stack
    finally:
        for channel in channels:
            await channel.close()
        await relay_server.stop(0)
        await gateway_server.stop(0)
        stack.metrics.stop()
        provider.shutdown()


async def test_metrics_endpoint_serves_rpc_latency_and_errors_by_code(stack: Stack) -> None:
    for _ in range(3):
        await stack.gateway.Recommend(Request(user_id="u1", k=5), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.gateway.Recommend(Request(user_id="u1", k=0), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await check_health(stack.health) == health_pb2.HealthCheckResponse.SERVING

    families = await asyncio.to_thread(stack.scrape)
    duration = "longtail_rpc_server_duration_seconds"
    ok = {"service": GATEWAY, "method": "Recommend", "code": "OK"}
    bad = {**ok, "code": "INVALID_ARGUMENT"}
    assert sample(families, duration, f"{duration}_count", **ok) == 3
    assert sample(families, duration, f"{duration}_count", **bad) == 1
    # Every call lands in the +Inf bucket; the 20 ms bucket exists for the p99 budget.
    assert sample(families, duration, f"{duration}_bucket", le="+Inf", **ok) == 3
    assert any(s.labels.get("le") == "0.02" for s in families[duration].samples)
    errors = "longtail_rpc_server_errors"
    assert sample(families, errors, f"{errors}_total", **bad) == 1
    assert sample(families, errors, f"{errors}_total", **ok) == 0
    health_labels = {"service": "grpc.health.v1.Health", "method": "Check", "code": "OK"}
    assert sample(families, duration, f"{duration}_count", **health_labels) == 1
    assert sample(families, "longtail_rpc_server_in_flight", "longtail_rpc_server_in_flight") == 0


async def test_domain_series_are_served_from_the_same_endpoint(stack: Stack) -> None:
    answer = await stack.gateway.Recommend(Request(user_id="u1", k=10), timeout=5)
    stack.domain.observe_response(answer)
    stack.domain.observe_impressions(len(answer.items))
    fallback = Response(
        policy_name="relevance",
        fallback=True,
        items=[
            gateway_service_pb2.RecommendedItem(
                item_id="i31", reason=common_pb2.REASON_FALLBACK, is_tail=True, is_cold=True
            )
        ],
    )
    stack.domain.observe_response(fallback, fallback_cause="ranking")
    # The gateway's own answer above was healthy: it counted no degraded cause.
    degraded = Response(
        policy_name="tail_quota",
        degraded=True,
        degraded_causes=["INTERESTS_NOT_EMBEDDED", "FALLBACK", "INTERESTS_NOT_EMBEDDED"],
    )
    stack.domain.observe_response(degraded)
    stack.domain.window.set_catalogue_size(40)

    families = await asyncio.to_thread(stack.scrape)
    tail = sum(item.is_tail for item in answer.items)
    assert tail > 0  # FakeRanking's pool is mostly tail: the test must see some
    assert (
        sample(families, "longtail_tail_items_served", "longtail_tail_items_served_total")
        == tail + 1
    )
    assert (
        sample(families, "longtail_cold_items_served", "longtail_cold_items_served_total")
        == sum(item.is_cold for item in answer.items) + 1
    )
    assert (
        sample(
            families,
            "longtail_items_served",
            "longtail_items_served_total",
            policy="relevance",
            reason="relevance",
        )
        == 10
    )
    assert (
        sample(
            families,
            "longtail_fallback_responses",
            "longtail_fallback_responses_total",
            cause="ranking",
        )
        == 1
    )
    assert (
        sample(
            families,
            "longtail_recommend_responses",
            "longtail_recommend_responses_total",
            policy="relevance",
            fallback="false",
        )
        == 1
    )
    assert (
        sample(families, "longtail_impressions_written", "longtail_impressions_written_total") == 10
    )
    # Once per cause an answer names (a repeated cause counts once).
    degraded_family = "longtail_degraded_responses"
    assert {
        s.labels["cause"]: s.value
        for s in families[degraded_family].samples
        if s.name == f"{degraded_family}_total"
    } == {"INTERESTS_NOT_EMBEDDED": 1, "FALLBACK": 1}
    # 11 items shown once each out of 40: the Gini of (29 zeros, 11 ones).
    expected = offline_gini([1.0] * 11 + [0.0] * 29)
    served_gini = sample(families, "longtail_exposure_gini", "longtail_exposure_gini")
    assert served_gini == pytest.approx(expected)
    assert sample(
        families, "longtail_exposure_coverage", "longtail_exposure_coverage"
    ) == pytest.approx(11 / 40)


async def test_spans_link_parent_and_child_across_two_hops(stack: Stack) -> None:
    relay = stack.client_channel(stack.relay_target).unary_unary(
        "/test.Relay/Call",
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )
    tracer = stack.observability.tracer
    with tracer.start_as_current_span("caller") as root:
        answer = await relay(Request(user_id="u1", k=3), timeout=5)
    assert len(answer.items) == 3

    spans = {(span.name, span.kind): span for span in stack.spans()}
    caller = spans[("caller", SpanKind.INTERNAL)]
    relay_client = spans[("test.Relay/Call", SpanKind.CLIENT)]
    relay_server = spans[("test.Relay/Call", SpanKind.SERVER)]
    gateway_client = spans[(f"{GATEWAY}/Recommend", SpanKind.CLIENT)]
    gateway_server = spans[(f"{GATEWAY}/Recommend", SpanKind.SERVER)]
    chain = [caller, relay_client, relay_server, gateway_client, gateway_server]
    trace_id = root.get_span_context().trace_id
    assert {span.context.trace_id for span in chain if span.context} == {trace_id}
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and parent.context is not None
        assert child.parent.span_id == parent.context.span_id, (parent.name, child.name)
    assert gateway_server.parent is not None and gateway_server.parent.is_remote
    assert gateway_server.attributes is not None
    assert gateway_server.attributes["rpc.method"] == "Recommend"
    assert gateway_server.attributes["rpc.grpc.status_code"] == 0


async def test_failed_call_marks_both_spans_as_errors_and_health_is_not_traced(
    stack: Stack,
) -> None:
    gateway: gateway_service_pb2_grpc.GatewayServiceAsyncStub = (
        gateway_service_pb2_grpc.GatewayServiceStub(stack.client_channel(stack.gateway_target))
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await gateway.Recommend(Request(user_id="", k=5), timeout=5)
    assert await check_health(stack.health) == health_pb2.HealthCheckResponse.SERVING
    spans = stack.spans()
    assert len(spans) == 2  # client and server of the failed Recommend; no health span
    for span in spans:
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_trace_id_reaches_the_json_logs() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    formatter = JsonFormatter("gateway")
    log_filter = TraceContextLogFilter()
    assert current_trace_fields() == {}

    def render(message: str, **fields: str) -> dict[str, Any]:
        record = logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None)
        if fields:
            record.fields = fields
        assert log_filter.filter(record)
        parsed: dict[str, Any] = json.loads(formatter.format(record))
        return parsed

    assert "trace_id" not in render("outside")
    with tracer.start_as_current_span("work") as span:
        entry = render("inside", reason="X")
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")
    assert entry["reason"] == "X"


def test_settings_and_tracing_configuration_from_the_environment() -> None:
    settings = load_settings(
        ObservabilitySettings,
        "LONGTAIL_GATEWAY_",
        {"LONGTAIL_GATEWAY_METRICS_PORT": "9464", "LONGTAIL_GATEWAY_TRACE_SAMPLE_RATIO": "0.5"},
    )
    assert settings == ObservabilitySettings(metrics_port=9464, trace_sample_ratio=0.5)
    exporter = InMemorySpanExporter()
    provider = configure_tracing("gateway", settings, exporter=exporter, set_global=False)
    assert provider.resource.attributes["service.name"] == "longtail-gateway"
    provider.shutdown()


def test_exposure_window_gini_matches_the_offline_definition_and_rolls() -> None:
    window = ExposureWindow(size=6)
    window.observe_catalogue(["a", "b", "c", "d"])
    assert window.gini() == 0.0  # nothing shown: nothing unequal
    window.add(["a", "a", "a", "b"])
    assert window.gini() == pytest.approx(offline_gini([3, 1, 0, 0]))
    assert window.coverage() == pytest.approx(2 / 4)
    window.add(["c", "d", "c", "d"])  # the window keeps the last 6: a, b, c, d, c, d
    assert len(window) == 6
    assert window.counts() == {"a": 1, "b": 1, "c": 2, "d": 2}
    assert window.gini() == pytest.approx(offline_gini([1, 1, 2, 2]))
    window.set_catalogue_size(10)  # items never seen count with 0
    assert window.gini() == pytest.approx(offline_gini([1, 1, 2, 2] + [0] * 6))
    window.add(["e"] * 6)
    assert window.counts() == {"e": 6}
    assert window.gini() == pytest.approx(0.9)  # one of 10 holds everything: (n-1)/n


@pytest.mark.parametrize("counts", [[5.0], [1.0, 1.0], [0.0, 2.0, 7.0, 1.0], [3.0, 0.0]])
def test_gini_with_padding_equals_gini_of_padded_values(counts: list[float]) -> None:
    assert gini(counts, population=9) == pytest.approx(
        offline_gini(counts + [0.0] * (9 - len(counts)))
    )


def test_the_process_entry_points_instance_serves_process_and_rpc_series() -> None:
    """What run_service is to do, in a fresh process (one tracer provider per process)."""
    code = (
        "import urllib.request\n"
        "from opentelemetry import trace\n"
        "from services.common.observability import Observability, ObservabilitySettings\n"
        "obs = Observability.from_settings('gateway', ObservabilitySettings(metrics_port=0))\n"
        "assert trace.get_tracer_provider() is obs.tracer_provider\n"
        "server = obs.start_metrics_server(0, '127.0.0.1')\n"
        "url = f'http://127.0.0.1:{server.port}/metrics'\n"
        "print(urllib.request.urlopen(url, timeout=5).read().decode())\n"
        "obs.shutdown()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert "process_cpu_seconds_total" in result.stdout
    assert "# TYPE longtail_rpc_server_duration_seconds histogram" in result.stdout


async def test_without_an_exporter_trace_ids_still_reach_logs_and_the_next_hop() -> None:
    # No span processor: spans would be dropped, so none are recorded, but the ids still travel.
    observability = Observability("gateway", tracer_provider=TracerProvider())
    seen: dict[str, Any] = {}

    async def downstream_call(request: Request, context: Any) -> Response:
        seen["downstream"] = current_trace_fields()
        metadata = dict(context.invocation_metadata() or ())
        seen["traceparent"] = metadata.get("traceparent", "")
        return Response(policy_name="ok")

    def add(name: str, behaviour: Any) -> Any:
        def add_to(server: grpc.aio.Server) -> None:
            handler = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=Request.FromString,
                response_serializer=Response.SerializeToString,
            )
            server.add_generic_rpc_handlers(
                [grpc.method_handlers_generic_handler(name, {"Call": handler})]
            )

        return add_to

    downstream_server, downstream_port = await _serve(
        observability, add("test.Downstream", downstream_call)
    )
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{downstream_port}", interceptors=observability.client_interceptors()
    )
    call_downstream = channel.unary_unary(
        "/test.Downstream/Call",
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )

    async def relay_call(request: Request, context: Any) -> Response:
        seen.setdefault("relay", []).append(current_trace_fields())
        answer: Response = await call_downstream(request, timeout=5)
        return answer

    relay_server, relay_port = await _serve(observability, add("test.Relay", relay_call))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{relay_port}") as client:
            call = client.unary_unary(
                "/test.Relay/Call",
                request_serializer=Request.SerializeToString,
                response_deserializer=Response.FromString,
            )
            await call(Request(user_id="u1", k=1), timeout=5)
            relay = seen["relay"][0]
            assert len(relay["trace_id"]) == 32 and relay["trace_id"] != "0" * 32
            # The next hop continues the trace, as a child of the relay's span.
            assert seen["downstream"]["trace_id"] == relay["trace_id"]
            assert seen["downstream"]["span_id"] != relay["span_id"]
            assert seen["traceparent"].split("-")[1:3] == [relay["trace_id"], relay["span_id"]]
            # A caller's trace is continued, with the caller's sampling decision.
            parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            await call(Request(user_id="u1", k=1), timeout=5, metadata=(("traceparent", parent),))
            assert seen["relay"][1]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
            assert seen["traceparent"].endswith("-01")
    finally:
        await channel.close()
        await relay_server.stop(0)
        await downstream_server.stop(0)
