"""The ranking service over gRPC (port 0), with fakes behind the profiles/embeddings Protocols."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from longtail.common.v1 import common_pb2
from longtail.ranking.v1 import ranking_service_pb2 as pb
from longtail.ranking.v1 import ranking_service_pb2_grpc
from services.common.errors import error_info
from services.common.server import RunningService, start_service
from services.common.settings import ServerSettings
from services.ranking.app import RankingSettings, build_with_sources
from services.ranking.catalog import ModelRef
from services.ranking.model_registry import InProcessModelRegistry
from tests.ranking.synthetic import FakeCatalog, FakeEncoder, FakeInteractions, World, make_world


@dataclasses.dataclass
class Env:
    world: World
    catalog: FakeCatalog
    interactions: FakeInteractions
    encoder: FakeEncoder
    running: RunningService
    channel: grpc.aio.Channel
    stub: ranking_service_pb2_grpc.RankingServiceAsyncStub
    # The model registry (no profiles here: one held by the test, shared by its replicas).
    registry: InProcessModelRegistry

    async def serving(self) -> bool:
        health: Any = health_pb2_grpc.HealthStub(self.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                if await self.serving():
                    return
                await asyncio.sleep(0.05)

    def category(self, item_id: str) -> str:
        return self.world.item_category[self.world.item_ids.index(item_id)]


async def start(
    tmp_path: Path,
    world: World,
    catalog: FakeCatalog | None = None,
    registry: InProcessModelRegistry | None = None,
    **settings: object,
) -> Env:
    catalog = catalog or FakeCatalog(world)
    registry = registry or InProcessModelRegistry()
    interactions = FakeInteractions(world.interactions())
    encoder = FakeEncoder(world)
    config = RankingSettings(artifact_dir=tmp_path / "artifacts", **settings)  # type: ignore[arg-type]
    definition = await build_with_sources(config, catalog, interactions, encoder, registry=registry)
    running = await start_service(definition, ServerSettings(port=0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    stub = ranking_service_pb2_grpc.RankingServiceStub(channel)
    return Env(world, catalog, interactions, encoder, running, channel, stub, registry)


async def stop(env: Env) -> None:
    await env.channel.close()
    await env.running.stop(0)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    started = await start(tmp_path, make_world(), refresh_seconds=0)
    await started.wait_ready()
    yield started
    await stop(started)


def history(env: Env, user: str) -> list[common_pb2.HistoryEntry]:
    _, items = env.world.users[user]
    return [
        common_pb2.HistoryEntry(item_id=i, kind=common_pb2.INTERACTION_KIND_CLICK)
        for i in reversed(items)
    ]


async def test_history_user_gets_sorted_on_topic_candidates(env: Env) -> None:
    user = "user-0004"
    liked, seen = env.world.users[user]
    excluded = [
        i for i, c in zip(env.world.item_ids, env.world.item_category, strict=True) if c == liked
    ][40:45]
    reply = await env.stub.RankCandidates(
        pb.RankCandidatesRequest(
            user_id=user,
            history=history(env, user),
            candidate_count=40,
            exclude_item_ids=excluded,
        ),
        timeout=5,
    )
    assert reply.user_vector_source == pb.USER_VECTOR_SOURCE_HISTORY
    assert reply.index_version and reply.collaborative_version == ""
    ids = [c.item_id for c in reply.candidates]
    assert len(ids) == 40 == len(set(ids))
    assert not set(ids) & (set(seen) | set(excluded))
    scores = [c.score for c in reply.candidates]
    assert scores == sorted(scores, reverse=True)
    assert sum(env.category(i) == liked for i in ids) >= 36
    assert any(c.is_tail for c in reply.candidates) and any(c.is_cold for c in reply.candidates)
    assert all(list(c.categories) == [env.category(c.item_id)] for c in reply.candidates)
    assert all(len(c.vector) == 0 for c in reply.candidates)


async def test_include_history_returns_history_items_and_exclusions_still_apply(env: Env) -> None:
    user = "user-0004"
    _, seen = env.world.users[user]
    request = pb.RankCandidatesRequest(user_id=user, history=history(env, user), candidate_count=40)
    default = await env.stub.RankCandidates(request, timeout=5)
    assert not {c.item_id for c in default.candidates} & set(seen)
    request.include_history = True
    asked = await env.stub.RankCandidates(request, timeout=5)
    # The user vector is built from these very items: the most recent ones are the best matches.
    assert asked.candidates[0].item_id in seen
    request.exclude_item_ids.append(asked.candidates[0].item_id)
    excluded = await env.stub.RankCandidates(request, timeout=5)
    assert asked.candidates[0].item_id not in {c.item_id for c in excluded.candidates}
    assert {c.item_id for c in excluded.candidates} & set(seen)


@pytest.mark.parametrize("count", [-1, 1001])
async def test_candidate_count_out_of_range_is_invalid(env: Env, count: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.stub.RankCandidates(
            pb.RankCandidatesRequest(user_id="u", candidate_count=count), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == "CANDIDATE_COUNT_OUT_OF_RANGE"


async def test_bad_requests_are_invalid_and_zero_count_means_100(env: Env) -> None:
    for request, reason in (
        (pb.RankCandidatesRequest(user_id=""), "EMPTY_USER_ID"),
        (
            pb.RankCandidatesRequest(user_id="u", history=[common_pb2.HistoryEntry(item_id="")]),
            "EMPTY_ITEM_ID",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.stub.RankCandidates(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info is not None and info.reason == reason
    reply = await env.stub.RankCandidates(
        pb.RankCandidatesRequest(user_id="u", history=history(env, "user-0001")), timeout=5
    )
    assert len(reply.candidates) == 100


async def test_interests_only_user_gets_on_topic_items(env: Env) -> None:
    reply = await env.stub.RankCandidates(
        pb.RankCandidatesRequest(
            user_id="newcomer",
            interests="I read about space exploration",
            candidate_count=25,
            include_vectors=True,
        ),
        timeout=5,
    )
    assert reply.user_vector_source == pb.USER_VECTOR_SOURCE_INTERESTS
    assert env.encoder.calls == 1
    assert len(reply.candidates) == 25
    assert all(env.category(c.item_id) == "space" for c in reply.candidates)
    assert all(len(c.vector) == env.world.dimension for c in reply.candidates)


async def test_embeddings_down_falls_back_to_popular_and_tail_items(env: Env) -> None:
    env.encoder.up = False
    reply = await env.stub.RankCandidates(
        pb.RankCandidatesRequest(user_id="newcomer", interests="jazz", candidate_count=20),
        timeout=5,
    )
    assert reply.user_vector_source == pb.USER_VECTOR_SOURCE_NONE
    assert len(reply.candidates) == 20
    assert sum(c.is_tail for c in reply.candidates) >= 6
    assert reply.candidates[0].popularity == max(env.catalog.counts.values())
    # The interests could not be used: the answer says so (the gateway marks it degraded).
    assert list(reply.degraded_causes) == ["INTERESTS_NOT_EMBEDDED"]


async def test_interests_embedded_by_another_model_are_reported_as_degraded(env: Env) -> None:
    env.encoder.model = ModelRef("another-encoder", "9")
    reply = await env.stub.RankCandidates(
        pb.RankCandidatesRequest(user_id="newcomer", interests="jazz", candidate_count=20),
        timeout=5,
    )
    assert env.encoder.calls == 1
    assert reply.user_vector_source == pb.USER_VECTOR_SOURCE_NONE
    assert list(reply.degraded_causes) == ["INTERESTS_MODEL_MISMATCH"]


async def test_healthy_answers_are_not_degraded(env: Env) -> None:
    interests = await env.stub.RankCandidates(
        pb.RankCandidatesRequest(user_id="newcomer", interests="jazz", candidate_count=20),
        timeout=5,
    )
    assert interests.user_vector_source == pb.USER_VECTOR_SOURCE_INTERESTS
    assert list(interests.degraded_causes) == []
    # With usable history the interests are not needed: embeddings down degrades nothing.
    env.encoder.up = False
    known = await env.stub.RankCandidates(
        pb.RankCandidatesRequest(
            user_id="user-0004",
            history=history(env, "user-0004"),
            interests="jazz",
            candidate_count=20,
        ),
        timeout=5,
    )
    assert known.user_vector_source == pb.USER_VECTOR_SOURCE_HISTORY
    assert list(known.degraded_causes) == []
    # Nothing to embed (no history, no interests): the popular list is all there is; not degraded.
    anonymous = await env.stub.RankCandidates(
        pb.RankCandidatesRequest(user_id="anonymous", candidate_count=20), timeout=5
    )
    assert anonymous.user_vector_source == pb.USER_VECTOR_SOURCE_NONE
    assert list(anonymous.degraded_causes) == []
    assert env.encoder.calls == 1


async def test_new_item_is_retrievable_after_reload_without_restart(env: Env) -> None:
    request = pb.RankCandidatesRequest(user_id="fan", interests="jazz", candidate_count=10)
    before = await env.stub.RankCandidates(request, timeout=5)
    assert "jazz-debut" not in [c.item_id for c in before.candidates]
    env.catalog.add_item("jazz-debut", "jazz", env.world.category_vector("jazz"))
    reloaded = await env.stub.ReloadModels(pb.ReloadModelsRequest(), timeout=10)
    assert reloaded.indexed_item_count == len(env.world.item_ids) + 1
    assert reloaded.index_version != before.index_version
    after = await env.stub.RankCandidates(request, timeout=5)
    assert after.index_version == reloaded.index_version
    top = after.candidates[0]
    assert top.item_id == "jazz-debut" and top.is_cold and top.is_tail


async def test_train_model_serves_and_persists_a_collaborative_version(
    env: Env, tmp_path: Path
) -> None:
    trained = await env.stub.TrainModel(pb.TrainModelRequest(factors=16, iterations=5), timeout=30)
    assert trained.collaborative_version
    assert trained.interaction_count == len(env.world.interactions())
    assert trained.user_count == len(env.world.users)
    # Stored as a bundle and published (the version is the bundle id).
    folder = tmp_path / "artifacts" / "bundles" / trained.collaborative_version
    assert (folder / "manifest.json").is_file()
    active = await env.registry.active("collaborative", None)
    assert active is not None and active.version == trained.collaborative_version
    # The interactions carry times: a learned ranker is fitted and stored with the model.
    assert (folder / "learned_ranker" / "ranker.json").is_file()
    status = await env.stub.GetRankingStatus(pb.GetRankingStatusRequest(), timeout=5)
    assert status.collaborative_version == trained.collaborative_version
    assert status.index_kind == "flat" and status.indexed_item_count == len(env.world.item_ids)
    assert (status.embedding_model_name, status.embedding_model_version) == ("fake-encoder", "1")
    reply = await env.stub.RankCandidates(
        pb.RankCandidatesRequest(user_id="user-0002", history=history(env, "user-0002")),
        timeout=5,
    )
    assert reply.collaborative_version == trained.collaborative_version
    assert any(c.collaborative_score != 0.0 for c in reply.candidates)

    # A new process on the same store and registry serves the same version.
    other = await start(tmp_path, env.world, registry=env.registry, refresh_seconds=0)
    try:
        await other.wait_ready()
        again = await other.stub.GetRankingStatus(pb.GetRankingStatusRequest(), timeout=5)
        assert again.collaborative_version == trained.collaborative_version
    finally:
        await stop(other)


async def test_train_model_validation_and_no_interactions(env: Env) -> None:
    for request, reason in (
        (pb.TrainModelRequest(factors=-1), "FACTORS_OUT_OF_RANGE"),
        (pb.TrainModelRequest(iterations=100_000), "ITERATIONS_OUT_OF_RANGE"),
        (pb.TrainModelRequest(regularization=-0.5), "REGULARIZATION_OUT_OF_RANGE"),
        # Finite but huge: implicit's float32 ALS fitted NaN factors and the call was UNKNOWN.
        (pb.TrainModelRequest(regularization=1e30), "REGULARIZATION_OUT_OF_RANGE"),
        (pb.TrainModelRequest(regularization=1e308), "REGULARIZATION_OUT_OF_RANGE"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.stub.TrainModel(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info is not None and info.reason == reason
    env.interactions.rows = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.stub.TrainModel(pb.TrainModelRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_background_refresh_picks_up_new_items(tmp_path: Path) -> None:
    env = await start(tmp_path, make_world(n_items=200), refresh_seconds=0.1)
    try:
        await env.wait_ready()
        env.catalog.add_item("space-launch", "space", env.world.category_vector("space"))
        request = pb.RankCandidatesRequest(user_id="u", interests="space", candidate_count=5)
        async with asyncio.timeout(10):
            while True:
                reply = await env.stub.RankCandidates(request, timeout=5)
                if reply.candidates[0].item_id == "space-launch":
                    break
                await asyncio.sleep(0.05)
    finally:
        await stop(env)


async def test_not_ready_until_the_catalogue_loads(tmp_path: Path) -> None:
    world = make_world(n_items=100)
    catalog = FakeCatalog(world)
    catalog.profiles_up = False
    env = await start(tmp_path, world, catalog, refresh_seconds=0)
    try:
        await asyncio.sleep(0.3)
        assert not await env.serving()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.stub.RankCandidates(pb.RankCandidatesRequest(user_id="u"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(caught.value)
        assert info is not None and info.reason == "CATALOG_NOT_LOADED"
        catalog.profiles_up = True
        await env.wait_ready()
        status = await env.stub.GetRankingStatus(pb.GetRankingStatusRequest(), timeout=5)
        assert status.indexed_item_count == 100
    finally:
        await stop(env)


async def test_empty_catalogue_is_ready_and_returns_no_candidates(tmp_path: Path) -> None:
    world = make_world(n_items=10)
    catalog = FakeCatalog(world)
    catalog.items.clear()
    env = await start(tmp_path, world, catalog, refresh_seconds=0)
    try:
        await env.wait_ready()
        reply = await env.stub.RankCandidates(
            pb.RankCandidatesRequest(user_id="u", interests="jazz"), timeout=5
        )
        assert list(reply.candidates) == []
        assert reply.user_vector_source == pb.USER_VECTOR_SOURCE_NONE
    finally:
        await stop(env)


async def test_train_model_is_refused_where_training_is_a_job(tmp_path: Path) -> None:
    env = await start(tmp_path, make_world(), refresh_seconds=0, train_in_process=False)
    try:
        await env.wait_ready()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.stub.TrainModel(pb.TrainModelRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(caught.value)
        assert info is not None and info.reason == "TRAINING_IS_A_JOB"
        assert await env.registry.active("collaborative", None) is None
    finally:
        await stop(env)
