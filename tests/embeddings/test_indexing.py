"""index_catalogue against the real profiles service (SQLite) and embeddings service + Triton."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from longtail.common.v1 import common_pb2
from longtail.embeddings.v1 import embeddings_service_pb2 as embeddings_pb
from longtail.embeddings.v1 import embeddings_service_pb2_grpc as embeddings_grpc
from longtail.profiles.v1 import profiles_service_pb2 as profiles_pb
from longtail.profiles.v1 import profiles_service_pb2_grpc as profiles_grpc
from services.common.server import start_service
from services.common.settings import ServerSettings
from services.embeddings.tritonserver import TritonServer
from services.profiles.app import build as build_profiles
from services.profiles.config import ProfilesSettings
from services.suite.indexing import index_catalogue, item_text
from tests.embeddings.conftest import Reference, serve_embeddings, wait_for_health

pytestmark = pytest.mark.triton


class CountingEmbeddings:
    """The real embeddings stub, counting texts sent; optionally posing as another version."""

    def __init__(self, stub: Any, version_suffix: str = "") -> None:
        self.stub = stub
        self.suffix = version_suffix
        self.texts = 0

    async def GetModelInfo(self, request: Any, timeout: float) -> Any:
        info = await self.stub.GetModelInfo(request, timeout=timeout)
        info.model_version += self.suffix
        return info

    async def EmbedTexts(self, request: Any, timeout: float) -> Any:
        self.texts += len(request.texts)
        response = await self.stub.EmbedTexts(request, timeout=timeout)
        response.model_version += self.suffix
        return response


def catalogue(start: int, count: int) -> list[common_pb2.Item]:
    genres = ["Drama", "Comedy", "Sci-Fi", "Documentary"]
    return [
        common_pb2.Item(
            item_id=f"m{i:04d}",
            title=f"Film number {i} ({1950 + i % 70})",
            description="A quiet story about a lighthouse keeper." if i % 3 == 0 else "",
            categories=[genres[i % 4]],
            tags=["café", "niche"] if i % 5 == 0 else [],
        )
        for i in range(start, start + count)
    ]


@pytest.fixture
async def profiles(tmp_path: Path) -> AsyncIterator[profiles_grpc.ProfilesServiceAsyncStub]:
    definition = await build_profiles(
        ProfilesSettings(database_url=f"sqlite:///{tmp_path / 'profiles.db'}")
    )
    running = await start_service(definition, ServerSettings(port=0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        stub: profiles_grpc.ProfilesServiceAsyncStub = profiles_grpc.ProfilesServiceStub(channel)
        yield stub
    finally:
        await channel.close()
        await running.stop(0)


async def test_indexing_twice_embeds_once_and_vectors_match(
    triton: TritonServer, profiles: profiles_grpc.ProfilesServiceAsyncStub, reference: Reference
) -> None:
    items = catalogue(0, 30)
    await profiles.UpsertItems(profiles_pb.UpsertItemsRequest(items=items), timeout=30)
    async with serve_embeddings(triton.grpc_url, cache_size=0) as (_, channel):
        await wait_for_health(channel, serving=True)
        embeddings = CountingEmbeddings(embeddings_grpc.EmbeddingsServiceStub(channel))
        first = await index_catalogue(profiles, embeddings, batch_size=8, progress=False)
        assert (first["embedded"], first["skipped"], first["batches"]) == (30, 0, 4)
        assert embeddings.texts == 30

        stored = await profiles.GetItems(
            profiles_pb.GetItemsRequest(item_ids=[i.item_id for i in items], include_vectors=True),
            timeout=30,
        )
        info = await embeddings.GetModelInfo(embeddings_pb.GetModelInfoRequest(), timeout=10)
        assert {(i.vector.model_name, i.vector.model_version) for i in stored.items} == {
            (info.model_name, info.model_version)
        }
        got = np.array([list(i.vector.values) for i in stored.items], dtype=np.float32)
        want = reference([item_text(i) for i in items])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

        # Nothing is stale any more: the second run embeds nothing.
        second = await index_catalogue(profiles, embeddings, batch_size=8, progress=False)
        assert (second["embedded"], second["skipped"]) == (0, 30)
        assert embeddings.texts == 30

        # New items only.
        await profiles.UpsertItems(
            profiles_pb.UpsertItemsRequest(items=catalogue(30, 5)), timeout=30
        )
        third = await index_catalogue(profiles, embeddings, batch_size=8, progress=False)
        assert (third["embedded"], third["skipped"]) == (5, 30)
        assert embeddings.texts == 35

        # Another model version: everything is stale again.
        other = CountingEmbeddings(embeddings.stub, version_suffix="-next")
        fourth = await index_catalogue(profiles, other, batch_size=500, progress=False)
        assert (fourth["embedded"], fourth["skipped"], other.texts) == (35, 0, 35)
        assert fourth["model_version"] == info.model_version + "-next"
