"""Contract fuzz of the embeddings service in front of the session's real Triton.

The same payloads and rule as tests/fuzz (``tests/fuzz/contract.py``): never INTERNAL or UNKNOWN,
and afterwards the service is SERVING and embeds a valid text as before. Texts that pass
validation really go through Triton (the cache is off), control characters, NUL, 8,192-character
and 1,001-text requests included. ``LONGTAIL_FUZZ_EXAMPLES`` sets the examples per RPC here too.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import message
from grpc_health.v1 import health_pb2
from hypothesis import given

from longtail.embeddings.v1 import embeddings_service_pb2 as epb
from services.common.server import RunningService, start_service
from services.common.settings import ServerSettings
from services.embeddings.app import build
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.tritonserver import TritonServer
from tests.embeddings.conftest import READY_TIMEOUT
from tests.fuzz.contract import (
    LoopRunner,
    Payload,
    call,
    check_answer,
    fuzz_settings,
    health_status,
    payloads,
    wait_serving,
)

pytestmark = pytest.mark.triton

E = "/longtail.embeddings.v1.EmbeddingsService/"
KNOWN = ("space and rockets", "jazz and blues records")
BASES: dict[str, message.Message] = {
    E + "EmbedTexts": epb.EmbedTextsRequest(texts=["space and rockets"]),
    E + "GetModelInfo": epb.GetModelInfoRequest(),
}


class Served:
    def __init__(self, runner: LoopRunner, running: RunningService) -> None:
        self.runner = runner
        self.running = running
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")


@pytest.fixture(scope="module")
def served(triton: TritonServer) -> Iterator[Served]:
    runner = LoopRunner()

    async def start() -> Served:
        definition = await build(
            EmbeddingsSettings(
                triton_url=triton.grpc_url, cache_size=0, ready_timeout_seconds=READY_TIMEOUT
            )
        )
        running = await start_service(definition, ServerSettings(port=0, grace_seconds=0.0))
        served = Served(runner, running)
        await wait_serving(served.channel)
        return served

    served = runner.run(start())
    try:
        yield served
    finally:
        runner.run(served.channel.close())
        runner.run(served.running.stop(0))
        runner.close()


async def embeds_a_valid_text(served: Served) -> None:
    answer = await call(
        served.channel, E + "EmbedTexts", BASES[E + "EmbedTexts"].SerializeToString()
    )
    assert answer.code == grpc.StatusCode.OK, answer
    reply = epb.EmbedTextsResponse.FromString(answer.body)
    assert reply.dimension == 384 and len(reply.embeddings[0].values) == 384


@pytest.mark.parametrize("method", list(BASES), ids=lambda method: method.rsplit("/", 1)[1])
def test_embeddings_in_front_of_triton_never_fails_internally(served: Served, method: str) -> None:
    base = BASES[method]

    @fuzz_settings()
    @given(payloads(method, base, KNOWN))
    def fuzz(payload: Payload) -> None:
        answer = served.runner.run(call(served.channel, method, payload.data))
        check_answer(method, payload.data, answer)

    fuzz()
    assert served.runner.run(health_status(served.channel)) == (
        health_pb2.HealthCheckResponse.SERVING
    )
    served.runner.run(embeds_a_valid_text(served))
    answer = served.runner.run(call(served.channel, method, base.SerializeToString()))
    assert answer.code == grpc.StatusCode.OK, answer
