"""The real profiles/embeddings adapters and ``build``, against minimal in-test gRPC servers.

The servers below are fakes of the two contracts (the real services are separate deployables);
they page, filter and fail the way the contracts say, so that the adapters' paging, filters,
deadlines and error mapping run for real over gRPC.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from longtail.common.v1 import common_pb2
from longtail.embeddings.v1 import embeddings_service_pb2 as epb
from longtail.embeddings.v1 import embeddings_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2 as ppb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from longtail.ranking.v1 import ranking_service_pb2 as rpb
from longtail.ranking.v1 import ranking_service_pb2_grpc
from services.common.server import RunningService, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.ranking.app import RankingSettings, build
from services.ranking.catalog import ProfilesCatalogSource
from tests.ranking.synthetic import CATEGORIES, MODEL, FakeCatalog, World, make_world

Context = grpc.aio.ServicerContext[Any, Any]


class FakeProfiles(profiles_service_pb2_grpc.ProfilesServiceServicer):
    """ListItems / ListItemStats / ListInteractions over a ``FakeCatalog`` (offset page tokens)."""

    def __init__(self, catalog: FakeCatalog, interactions: list[tuple[str, str, float]]) -> None:
        self.catalog = catalog
        self.interactions = interactions
        self.list_items_calls = 0
        self.publications: list[ppb.ModelPublication] = []

    async def PublishModel(
        self, request: ppb.PublishModelRequest, context: Context
    ) -> ppb.PublishModelResponse:
        publication = ppb.ModelPublication(
            publication_id=len(self.publications) + 1,
            model_kind=request.model_kind,
            version=request.version,
            manifest_sha256=request.manifest_sha256,
        )
        self.publications.append(publication)
        return ppb.PublishModelResponse(publication=publication)

    async def GetActiveModel(
        self, request: ppb.GetActiveModelRequest, context: Context
    ) -> ppb.GetActiveModelResponse:
        mine = [p for p in self.publications if p.model_kind == request.model_kind]
        return ppb.GetActiveModelResponse(publication=mine[-1] if mine else None)

    async def ListItems(
        self, request: ppb.ListItemsRequest, context: Context
    ) -> ppb.ListItemsResponse:
        self.list_items_calls += 1
        wanted = (request.vector_model_name, request.vector_model_version)
        rows = [
            (item_id, cats, vector, model)
            for item_id, (cats, vector, model) in self.catalog.items.items()
            if not request.vector_model_name
            or (model is not None and (model.name, model.version) == wanted)
        ]
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = rows[start : start + size]
        items = []
        for item_id, cats, vector, model in page:
            item = common_pb2.Item(item_id=item_id, title=item_id, categories=list(cats))
            if request.include_vectors and vector is not None and model is not None:
                item.vector.CopyFrom(
                    common_pb2.ItemVector(
                        values=vector.tolist(), model_name=model.name, model_version=model.version
                    )
                )
            items.append(item)
        following = start + size
        return ppb.ListItemsResponse(
            items=items,
            next_page_token=str(following) if following < len(rows) else "",
            total_size=len(rows),
        )

    async def ListItemStats(
        self, request: ppb.ListItemStatsRequest, context: Context
    ) -> ppb.ListItemStatsResponse:
        read = await self.catalog.item_stats(
            None, "" if request.page_token else request.if_popularity_version_differs
        )
        if read.records is None:
            return ppb.ListItemStatsResponse(unchanged=True, popularity_version=read.version)
        stats = read.records
        start = int(request.page_token or 0)
        size = request.page_size or 1000
        following = start + size
        return ppb.ListItemStatsResponse(
            popularity_version="" if request.page_token else read.version,
            stats=[
                common_pb2.ItemStats(
                    item_id=s.item_id,
                    interaction_count=s.interaction_count,
                    is_tail=s.is_tail,
                    is_cold=s.is_cold,
                )
                for s in stats[start:following]
            ],
            next_page_token=str(following) if following < len(stats) else "",
        )

    async def ListInteractions(
        self, request: ppb.ListInteractionsRequest, context: Context
    ) -> ppb.ListInteractionsResponse:
        start = int(request.page_token or 0)
        size = request.page_size or 1000
        following = start + size
        return ppb.ListInteractionsResponse(
            interactions=[
                common_pb2.Interaction(
                    user_id=u, item_id=i, kind=common_pb2.INTERACTION_KIND_RATING, value=4.0
                )
                for u, i, _ in self.interactions[start:following]
            ],
            next_page_token=str(following) if following < len(self.interactions) else "",
        )


class FakeEmbeddings(embeddings_service_pb2_grpc.EmbeddingsServiceServicer):
    """A text embeds to the mean centroid of the categories it names; with ``hang`` set, EmbedTexts
    accepts the call and answers only once ``release`` is set (the fixture sets it at teardown)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.hang = False
        self.release = asyncio.Event()
        self.hung_calls = 0

    async def GetModelInfo(
        self, request: epb.GetModelInfoRequest, context: Context
    ) -> epb.GetModelInfoResponse:
        return epb.GetModelInfoResponse(
            model_name=MODEL.name,
            model_version=MODEL.version,
            dimension=self.world.dimension,
            ready=True,
        )

    async def EmbedTexts(
        self, request: epb.EmbedTextsRequest, context: Context
    ) -> epb.EmbedTextsResponse:
        if self.hang:
            self.hung_calls += 1
            await self.release.wait()
        embeddings = []
        for text in request.texts:
            named = [c for c in CATEGORIES if c in text]
            values = (
                np.sum([self.world.category_vector(c) for c in named], axis=0).tolist()
                if named
                else []
            )
            embeddings.append(epb.Embedding(values=values))
        return epb.EmbedTextsResponse(
            embeddings=embeddings,
            model_name=MODEL.name,
            model_version=MODEL.version,
            dimension=self.world.dimension,
        )


@dataclasses.dataclass
class Stack:
    world: World
    profiles: FakeProfiles
    embeddings: FakeEmbeddings
    servers: list[RunningService]
    embeddings_server: RunningService
    channel: grpc.aio.Channel
    stub: ranking_service_pb2_grpc.RankingServiceAsyncStub


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    world = make_world(n_items=300, n_users=40)
    # The other RPCs stay UNIMPLEMENTED (the generated base class answers them).
    profiles = FakeProfiles(FakeCatalog(world), world.interactions())  # type: ignore[abstract]
    embeddings = FakeEmbeddings(world)
    profiles_server = await start_service(
        ServiceDefinition(
            "profiles",
            [
                (
                    profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server,
                    profiles,
                    "longtail.profiles.v1.ProfilesService",
                )
            ],
        ),
        ServerSettings(port=0),
    )
    embeddings_server = await start_service(
        ServiceDefinition(
            "embeddings",
            [
                (
                    embeddings_service_pb2_grpc.add_EmbeddingsServiceServicer_to_server,
                    embeddings,
                    "longtail.embeddings.v1.EmbeddingsService",
                )
            ],
        ),
        ServerSettings(port=0),
    )
    definition = await build(
        RankingSettings(
            profiles_target=f"127.0.0.1:{profiles_server.port}",
            embeddings_target=f"127.0.0.1:{embeddings_server.port}",
            artifact_dir=tmp_path,
            refresh_seconds=0,
        )
    )
    ranking = await start_service(definition, ServerSettings(port=0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ranking.port}")
    stub = ranking_service_pb2_grpc.RankingServiceStub(channel)
    async with asyncio.timeout(10):
        while True:
            status = await stub.GetRankingStatus(rpb.GetRankingStatusRequest(), timeout=2)
            if status.index_version:
                break
            await asyncio.sleep(0.05)
    yield Stack(
        world,
        profiles,
        embeddings,
        [ranking, profiles_server, embeddings_server],
        embeddings_server,
        channel,
        stub,
    )
    embeddings.release.set()
    await channel.close()
    for server in [ranking, profiles_server, embeddings_server]:
        await server.stop(0)


async def test_catalogue_is_paged_in_with_the_encoders_model(stack: Stack) -> None:
    status = await stack.stub.GetRankingStatus(rpb.GetRankingStatusRequest(), timeout=5)
    assert status.indexed_item_count == 300
    assert (status.embedding_model_name, status.embedding_model_version) == (
        MODEL.name,
        MODEL.version,
    )
    assert stack.profiles.list_items_calls >= 1 + 300 // 1000


async def test_interests_are_embedded_and_training_pages_interactions(stack: Stack) -> None:
    reply = await stack.stub.RankCandidates(
        rpb.RankCandidatesRequest(user_id="new", interests="poetry", candidate_count=10), timeout=5
    )
    assert reply.user_vector_source == rpb.USER_VECTOR_SOURCE_INTERESTS
    assert all(list(c.categories) == ["poetry"] for c in reply.candidates)
    trained = await stack.stub.TrainModel(
        rpb.TrainModelRequest(factors=8, iterations=3), timeout=30
    )
    assert trained.interaction_count == len(stack.world.interactions())
    assert trained.item_count == len({i for _, i, _ in stack.world.interactions()})


async def test_slow_or_dead_embeddings_fall_back_within_the_callers_deadline(stack: Stack) -> None:
    request = rpb.RankCandidatesRequest(user_id="new", interests="chess", candidate_count=10)
    stack.embeddings.hang = True
    # The embeddings call gets min(embeddings_timeout_seconds = 2 s, half of what the caller has
    # left); the caller allows 30 s, so about 28 s remain for the popularity-and-tail fallback
    # after the encoder's 2 s. An answer at all (not DEADLINE_EXCEEDED) is the proof: the
    # encoder never answers.
    reply = await stack.stub.RankCandidates(request, timeout=30.0)
    assert stack.embeddings.hung_calls == 1
    assert reply.user_vector_source == rpb.USER_VECTOR_SOURCE_NONE
    assert len(reply.candidates) == 10
    await stack.embeddings_server.stop(0)
    reply = await stack.stub.RankCandidates(request, timeout=30.0)
    assert reply.user_vector_source == rpb.USER_VECTOR_SOURCE_NONE
    assert len(reply.candidates) == 10


async def test_stats_are_read_in_full_only_when_their_version_moved(stack: Stack) -> None:
    port = stack.servers[1].port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        source = ProfilesCatalogSource(
            profiles_service_pb2_grpc.ProfilesServiceStub(channel), None, stats_page_size=128
        )
        catalog = stack.profiles.catalog
        first = await source.item_stats(None)
        assert first.records is not None and len(first.records) == 300 and first.version
        reads = catalog.stats_reads
        same = await source.item_stats(None, first.version)
        assert same.records is None and same.version == first.version
        assert catalog.stats_reads == reads  # the fake answered "unchanged" without its read

        catalog.counts["item-00002"] = catalog.counts.get("item-00002", 0) + 40
        moved = await source.item_stats(None, first.version)
        assert moved.records is not None and len(moved.records) == 300
        assert moved.version != first.version
        assert {s.item_id: s.interaction_count for s in moved.records}[
            "item-00002"
        ] == catalog.counts["item-00002"]
