"""The embeddings domain and servicer without Triton: a fake encoder behind the Protocol."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np
import pytest

from longtail.embeddings.v1 import embeddings_service_pb2 as pb
from longtail.embeddings.v1 import embeddings_service_pb2_grpc as pb_grpc
from services.common.errors import DeadlineExceeded, InvalidArgument, Unavailable, error_info
from services.common.server import ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.embeddings.cache import EmbeddingCache, cache_key
from services.embeddings.embedder import Embedder, Limits
from services.embeddings.encoder import ModelInfo, Vectors
from services.embeddings.servicer import FULL_NAME, EmbeddingsServicer
from services.embeddings.triton import TritonEncoderClient
from services.embeddings.tritonserver import free_ports

DIM = 8


class FakeEncoder:
    """Deterministic vectors from (version, text); records what it was asked to encode."""

    def __init__(self) -> None:
        self.version = "1-aaaa"
        self.up = True
        self.calls: list[list[str]] = []

    def info(self) -> ModelInfo:
        return ModelInfo("text_encoder", self.version, DIM, 4, self.version.split("-")[0])

    async def ready(self, timeout: float) -> bool:
        return self.up

    async def model_info(self, timeout: float) -> ModelInfo:
        if not self.up:
            raise Unavailable("TRITON_UNAVAILABLE", "down")
        return self.info()

    async def encode(self, texts: Sequence[str], model: ModelInfo, timeout: float) -> Vectors:
        if not self.up:
            raise Unavailable("TRITON_UNAVAILABLE", "down")
        self.calls.append(list(texts))
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = hashlib.sha256(f"{self.version}|{text}".encode()).digest()
            vector = np.frombuffer(seed[: DIM * 4], dtype=np.uint32).astype(np.float32)
            out[row] = vector / np.linalg.norm(vector)
        return out

    async def close(self) -> None:
        pass


async def test_cache_returns_identical_vectors_and_counts_hits() -> None:
    fake = FakeEncoder()
    embedder = Embedder(fake, EmbeddingCache(100))
    first = await embedder.embed(["a", "b"], timeout=5)
    second = await embedder.embed(["b", "a", "c"], timeout=5)
    assert first.cache_hits == 0 and second.cache_hits == 2
    assert np.array_equal(second.vectors[0], first.vectors[1])
    assert np.array_equal(second.vectors[1], first.vectors[0])
    assert fake.calls == [["a", "b"], ["c"]]


async def test_cache_is_bypassed_after_a_model_change() -> None:
    fake = FakeEncoder()
    embedder = Embedder(fake, EmbeddingCache(100))
    old = await embedder.embed(["a"], timeout=5)
    fake.version = "2-bbbb"
    assert await embedder.ready()  # the readiness probe reads the model's identity again
    new = await embedder.embed(["a"], timeout=5)
    assert new.cache_hits == 0 and new.model.version == "2-bbbb"
    assert not np.array_equal(new.vectors, old.vectors)
    assert fake.calls == [["a"], ["a"]]


async def test_model_identity_expires_after_its_ttl() -> None:
    now = [0.0]
    fake = FakeEncoder()
    embedder = Embedder(fake, EmbeddingCache(100), info_ttl=5.0, clock=lambda: now[0])
    await embedder.embed(["a"], timeout=5)
    fake.version = "2-bbbb"
    assert (await embedder.embed(["a"], timeout=5)).model.version == "1-aaaa"
    now[0] = 6.0
    result = await embedder.embed(["a"], timeout=5)
    assert result.model.version == "2-bbbb" and result.cache_hits == 0


def test_cache_evicts_least_recently_used_and_stores_read_only() -> None:
    cache = EmbeddingCache(2)
    keys = [cache_key("m", "1", text) for text in ("a", "b", "c")]
    cache.put(keys[0], np.ones(DIM, dtype=np.float32))
    cache.put(keys[1], np.ones(DIM, dtype=np.float32))
    assert cache.get(keys[0]) is not None  # a is now the most recent
    cache.put(keys[2], np.ones(DIM, dtype=np.float32))
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None
    stored = cache.get(keys[2])
    assert stored is not None and not stored.flags.writeable
    assert cache_key("m", "1", "a") != cache_key("m", "2", "a")


async def test_empty_texts_are_zero_vectors_without_a_call() -> None:
    fake = FakeEncoder()
    embedder = Embedder(fake)
    result = await embedder.embed(["", "  \n\t", "x", "x"], timeout=5)
    assert not result.vectors[0].any() and not result.vectors[1].any()
    assert np.array_equal(result.vectors[2], result.vectors[3])
    assert fake.calls == [["x"]]  # duplicates are encoded once
    fake.calls.clear()
    await embedder.embed([" "], timeout=5)
    assert fake.calls == []


@pytest.mark.parametrize(
    ("texts", "reason"),
    [([], "NO_TEXTS"), (["t"] * 5, "TOO_MANY_TEXTS"), (["ok", "x" * 11], "TEXT_TOO_LONG")],
)
async def test_limits(texts: list[str], reason: str) -> None:
    embedder = Embedder(FakeEncoder(), limits=Limits(max_texts=4, max_text_chars=10))
    with pytest.raises(InvalidArgument) as caught:
        await embedder.embed(texts, timeout=5)
    assert caught.value.reason == reason


async def test_unavailable_backend_forgets_model_and_describe_keeps_last_known() -> None:
    fake = FakeEncoder()
    embedder = Embedder(fake, info_ttl=3600)
    with pytest.raises(Unavailable):
        fake.up = False
        await embedder.describe(timeout=1)  # never seen: nothing to describe
    fake.up = True
    await embedder.embed(["a"], timeout=5)
    fake.up = False
    with pytest.raises(Unavailable):
        await embedder.embed(["b"], timeout=5)
    info, ready = await embedder.describe(timeout=1)
    assert not ready and info.version == "1-aaaa"
    assert not await embedder.ready()
    fake.version, fake.up = "2-bbbb", True
    assert (await embedder.embed(["a"], timeout=5)).model.version == "2-bbbb"


@pytest.fixture
async def fake_service() -> AsyncIterator[tuple[pb_grpc.EmbeddingsServiceAsyncStub, FakeEncoder]]:
    fake = FakeEncoder()
    embedder = Embedder(fake, EmbeddingCache(10))
    definition = ServiceDefinition(
        name="embeddings",
        servicers=[
            (
                pb_grpc.add_EmbeddingsServiceServicer_to_server,
                EmbeddingsServicer(embedder, default_timeout=5),
                FULL_NAME,
            )
        ],
        readiness=lambda: embedder.ready(1.0),
    )
    running = await start_service(definition, ServerSettings(port=0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield pb_grpc.EmbeddingsServiceStub(channel), fake
    finally:
        await channel.close()
        await running.stop(0)


@pytest.mark.parametrize(
    ("texts", "reason"),
    [([], "NO_TEXTS"), (["t"] * 1025, "TOO_MANY_TEXTS"), (["ok", "é" * 8193], "TEXT_TOO_LONG")],
)
async def test_grpc_limits_are_invalid_argument_with_reason(
    fake_service: tuple[pb_grpc.EmbeddingsServiceAsyncStub, FakeEncoder],
    texts: list[str],
    reason: str,
) -> None:
    stub, fake = fake_service
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_info(caught.value)
    assert detail is not None and detail.reason == reason
    assert fake.calls == []


async def test_grpc_round_trip_and_unavailable(
    fake_service: tuple[pb_grpc.EmbeddingsServiceAsyncStub, FakeEncoder],
) -> None:
    stub, fake = fake_service
    response = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=["a", ""]), timeout=5)
    assert (response.model_name, response.model_version, response.dimension) == (
        "text_encoder",
        "1-aaaa",
        DIM,
    )
    assert len(response.embeddings[0].values) == DIM
    assert list(response.embeddings[1].values) == [0.0] * DIM
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.ready and info.max_texts_per_request == 1024 and info.max_text_chars == 8192
    fake.up = False
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EmbedTexts(pb.EmbedTextsRequest(texts=["new text"]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert not info.ready and info.model_version == "1-aaaa"


async def test_triton_client_without_triton_is_unavailable() -> None:
    """Nothing listens on the port: UNAVAILABLE at once, not a wait for the budget."""
    (port,) = free_ports(1)
    client = TritonEncoderClient(f"127.0.0.1:{port}")
    info = ModelInfo("text_encoder", "1-x", 384, 64, "1")
    try:
        assert not await client.ready(timeout=2.0)
        with pytest.raises(Unavailable):
            await client.model_info(timeout=30.0)
        with pytest.raises(Unavailable):
            await client.encode(["a"] * 130, info, timeout=30.0)
        with pytest.raises(DeadlineExceeded):
            await client.encode(["a"], info, timeout=0.0)
    finally:
        await client.close()
