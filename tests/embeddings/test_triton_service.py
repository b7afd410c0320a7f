"""The embeddings service in front of a real Triton (CPU, ONNX runtime)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from longtail.embeddings.v1 import embeddings_service_pb2 as pb
from longtail.embeddings.v1 import embeddings_service_pb2_grpc as pb_grpc
from services.common.errors import error_info
from services.common.server import RunningService
from services.embeddings.triton import TritonEncoderClient
from services.embeddings.tritonserver import TritonServer, free_ports
from tests.conftest import require_triton
from tests.embeddings.conftest import (
    Reference,
    serve_embeddings,
    start_triton,
    vectors,
    wait_for_health,
)

pytestmark = pytest.mark.triton

Service = tuple[RunningService, "pb_grpc.EmbeddingsServiceAsyncStub"]

TEXTS = [
    "Toy Story (1995). Adventure, Animation, Children, Comedy, Fantasy",
    "Amélie (Le fabuleux destin d'Amélie Poulain) (2001)",
    "千と千尋の神隠し — Spirited Away",
    "Ärger im Paradies: ein Film über Ölförderung 🎬🍿",
    "Москва слезам не верит",
    "الرسالة (1976)",
    # Far beyond 256 word pieces: truncated by the encoder, like the reference.
    "a very long description of a film that goes on and on " * 140,
    "   \t\n  ",  # empty after strip -> zero vector
    "",
    "x",
]


async def test_vectors_equal_in_process_transformers(
    embeddings: Service, reference: Reference, triton: TritonServer
) -> None:
    _, stub = embeddings
    response = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=TEXTS), timeout=120)
    got = vectors(response)
    want = reference(TEXTS)
    assert got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert not got[7].any() and not got[8].any()
    norms = np.linalg.norm(got[[0, 1, 2, 3, 4, 5, 6, 9]], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert response.model_name == "text_encoder"
    assert response.dimension == 384
    assert response.model_version == f"1-{triton.fingerprint}"


async def test_concurrent_single_requests_equal_one_batch(
    embeddings: Service, reference: Reference
) -> None:
    """Triton's dynamic batcher merges concurrent requests; the vectors must not change."""
    _, stub = embeddings
    texts = [f"movie {i}: {'a story about ' * (i % 7)}item number {i}" for i in range(48)]
    singles = await asyncio.gather(
        *(stub.EmbedTexts(pb.EmbedTextsRequest(texts=[t]), timeout=120) for t in texts)
    )
    one_batch = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=120)
    got_singles = np.concatenate([vectors(r) for r in singles])
    np.testing.assert_allclose(got_singles, vectors(one_batch), atol=1e-5, rtol=0)
    np.testing.assert_allclose(vectors(one_batch), reference(texts), atol=1e-5, rtol=0)


async def test_batch_larger_than_max_batch_size_is_split(
    embeddings: Service, reference: Reference
) -> None:
    _, stub = embeddings
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
    texts = [
        f"catalogue item {i} with tags drama, {i % 13}" for i in range(info.max_batch_size * 2 + 5)
    ]
    response = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=120)
    np.testing.assert_allclose(vectors(response), reference(texts), atol=1e-5, rtol=0)


async def test_model_info_and_limits(embeddings: Service, triton: TritonServer) -> None:
    _, stub = embeddings
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
    assert info.ready
    assert (info.model_name, info.dimension, info.max_batch_size) == ("text_encoder", 384, 64)
    assert info.model_version == f"1-{triton.fingerprint}"
    assert (info.max_texts_per_request, info.max_text_chars) == (1024, 8192)
    cases = [
        ([], "NO_TEXTS"),
        (["t"] * 1025, "TOO_MANY_TEXTS"),
        (["ok", "x" * 8193], "TEXT_TOO_LONG"),
    ]
    for texts, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        detail = error_info(caught.value)
        assert detail is not None and detail.reason == reason
    # The limits themselves are fine.
    ok = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=["y" * 8192]), timeout=120)
    assert len(ok.embeddings) == 1


async def test_cache_returns_identical_vectors(triton: TritonServer) -> None:
    async with serve_embeddings(triton.grpc_url, cache_size=100) as (_, channel):
        await wait_for_health(channel, serving=True)
        stub: pb_grpc.EmbeddingsServiceAsyncStub = pb_grpc.EmbeddingsServiceStub(channel)
        texts = ["The Godfather (1972)", "Heat (1995)", "The Godfather (1972)"]
        first = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=60)
        second = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=60)
        assert first.cache_hit_count == 0
        assert second.cache_hit_count == 3
        assert np.array_equal(vectors(first), vectors(second))


async def test_dead_triton_gives_unavailable_and_not_serving_then_recovers() -> None:
    """A separate Triton on fixed ports: killed, then started again where the service expects it."""
    http_port, grpc_port, metrics_port = free_ports(3)
    server = await asyncio.to_thread(
        start_triton, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port
    )
    pids: list[int] = []
    try:
        async with serve_embeddings(server.grpc_url, cache_size=0, model_info_ttl_seconds=0.5) as (
            _,
            channel,
        ):
            stub: pb_grpc.EmbeddingsServiceAsyncStub = pb_grpc.EmbeddingsServiceStub(channel)
            await wait_for_health(channel, serving=True)
            texts = ["Blade Runner (1982)", "Alien (1979)"]
            before = vectors(await stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=60))
            assert server.pid is not None
            pids.append(server.pid)

            await asyncio.to_thread(server.kill)
            # A generous deadline: a hang would show as DEADLINE_EXCEEDED, not UNAVAILABLE.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.EmbedTexts(pb.EmbedTextsRequest(texts=["Heat"]), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            await wait_for_health(channel, serving=False, timeout=120)
            info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
            assert not info.ready and info.model_name == "text_encoder"

            await asyncio.to_thread(server.start)
            assert server.grpc_port == grpc_port
            assert server.pid is not None
            pids.append(server.pid)
            await wait_for_health(channel, serving=True, timeout=120)
            after = vectors(await stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=60))
            np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)
    finally:
        run_dir = server.run_dir
        await asyncio.to_thread(server.stop)
    # Nothing left behind: no server process, no run folder.
    assert not server.is_running() and server.run_dir is None
    assert run_dir is not None and not run_dir.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


async def test_standalone_launcher_prints_address_and_stops_on_sigterm() -> None:
    """``python -m services.embeddings.tritonserver``: serves, then SIGTERM leaves nothing."""
    require_triton()  # past this, a launcher that does not start is a defect, never a skip
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.embeddings.tritonserver",
        "--startup-timeout",
        "300",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=320)
        if not line.startswith(b"TRITON_GRPC "):
            stderr = await process.stderr.read() if process.stderr else b""
            raise AssertionError(f"launcher did not start: {line!r} {stderr[-2000:]!r}")
        url = line.split()[1].decode()
        client = TritonEncoderClient(url)
        try:
            assert await client.ready(timeout=60)
        finally:
            await client.close()
        children = _children(process.pid)
        assert children, "tritonserver should run under the launcher"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=120) == 0
        assert all(_gone(pid) for pid in children)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _gone(pid: int) -> bool:
    """No such process, or only its zombie entry."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
