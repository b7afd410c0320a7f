"""Recommend through the real services, in-process on port 0.

Profiles on a SQLite file, ranking (``build``: its real profiles and embeddings adapters), exposure
(``build``) and the gateway (``build``). Only the embeddings service is a stand-in: it reports the
encoder's model and fails every EmbedTexts with UNAVAILABLE, as it does when Triton is down (the
fan has a history and needs no embedding; a new user's interests cannot be embedded).

The catalogue is 40 random unit vectors in 64 dimensions, so that items are far apart; the one
user, ``fan``, has a single history item, ``item-007``. The user vector is then that item's own
vector: it is the best content match there can be (cosine 1 against < 0.5 for every other item,
checked below), so with the relevance policy it is the first candidate whenever it is allowed.
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
import sqlalchemy as sa
from google.protobuf import timestamp_pb2

from longtail.common.v1 import common_pb2
from longtail.embeddings.v1 import embeddings_service_pb2 as epb
from longtail.embeddings.v1 import embeddings_service_pb2_grpc
from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2 as ppb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from longtail.ranking.v1 import ranking_service_pb2 as rpb
from longtail.ranking.v1 import ranking_service_pb2_grpc
from services.common.errors import DOMAIN, error_info
from services.common.server import RunningService, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.exposure.app import ExposureSettings
from services.exposure.app import build as build_exposure
from services.gateway.app import build as build_gateway
from services.gateway.app import pipeline_config
from services.gateway.config import GatewaySettings
from services.profiles.app import ProfilesSettings
from services.profiles.app import build as build_profiles
from services.profiles.repository import Repository
from services.profiles.store import Database, create_store_engine
from services.ranking.app import RankingSettings
from services.ranking.app import build as build_ranking
from services.ranking.index import FloatArray, normalize_rows

Context = grpc.aio.ServicerContext[Any, Any]
Request = gateway_service_pb2.RecommendRequest

N_ITEMS = 40
DIMENSION = 64
MODEL = ("stand-in-encoder", "1")
FAN = "fan"
FAVOURITE = "item-007"
# Generous everywhere: these tests are about what is served, not about timing. The caller's
# deadline and every hop ceiling are far above what any call here takes, so that no hop can run
# out of time on a loaded machine and turn an answer into a fallback.
CALL_TIMEOUT = 60.0
GATEWAY = GatewaySettings(
    default_deadline_seconds=CALL_TIMEOUT,
    ranking_timeout_seconds=CALL_TIMEOUT,
    exposure_timeout_seconds=CALL_TIMEOUT,
)
PIPELINE = dataclasses.replace(
    pipeline_config(GATEWAY), profile_timeout=CALL_TIMEOUT, write_timeout=CALL_TIMEOUT
)


def item_id(n: int) -> str:
    return f"item-{n:03d}"


def vectors() -> FloatArray:
    rng = np.random.default_rng(2026)
    return normalize_rows(rng.standard_normal((N_ITEMS, DIMENSION)))


class StandInEmbeddings(embeddings_service_pb2_grpc.EmbeddingsServiceServicer):
    """Says which model made the stored vectors; EmbedTexts fails as with Triton down."""

    async def EmbedTexts(
        self, request: epb.EmbedTextsRequest, context: Context
    ) -> epb.EmbedTextsResponse:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "Triton is down")
        raise AssertionError("abort raises")

    async def GetModelInfo(
        self, request: epb.GetModelInfoRequest, context: Context
    ) -> epb.GetModelInfoResponse:
        return epb.GetModelInfoResponse(
            model_name=MODEL[0], model_version=MODEL[1], dimension=DIMENSION, ready=True
        )


@dataclasses.dataclass
class Suite:
    database_url: str
    servers: list[RunningService] = dataclasses.field(default_factory=list)
    channels: dict[str, grpc.aio.Channel] = dataclasses.field(default_factory=dict)
    targets: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def profiles(self) -> profiles_service_pb2_grpc.ProfilesServiceAsyncStub:
        return profiles_service_pb2_grpc.ProfilesServiceStub(self.channel(self.targets["profiles"]))

    @property
    def gateway(self) -> gateway_service_pb2_grpc.GatewayServiceAsyncStub:
        return gateway_service_pb2_grpc.GatewayServiceStub(self.channel(self.targets["gateway"]))

    async def serve(self, definition: ServiceDefinition) -> str:
        running = await start_service(definition, ServerSettings(port=0))
        self.servers.append(running)
        return f"127.0.0.1:{running.port}"

    def channel(self, target: str) -> grpc.aio.Channel:
        if target not in self.channels:
            self.channels[target] = grpc.aio.insecure_channel(target)
        return self.channels[target]

    async def logged(self, request_id: str) -> list[common_pb2.Impression]:
        answer = await self.profiles.ListImpressions(
            ppb.ListImpressionsRequest(request_id=request_id), timeout=CALL_TIMEOUT
        )
        return list(answer.impressions)


async def load(profiles: profiles_service_pb2_grpc.ProfilesServiceAsyncStub) -> None:
    await profiles.UpsertItems(
        ppb.UpsertItemsRequest(
            items=[
                common_pb2.Item(item_id=item_id(n), title=f"Item {n}", categories=[f"c{n % 4}"])
                for n in range(N_ITEMS)
            ]
        ),
        timeout=CALL_TIMEOUT,
    )
    await profiles.UpdateItemVectors(
        ppb.UpdateItemVectorsRequest(
            updates=[
                ppb.ItemVectorUpdate(
                    item_id=item_id(n),
                    vector=common_pb2.ItemVector(
                        values=vector.tolist(), model_name=MODEL[0], model_version=MODEL[1]
                    ),
                )
                for n, vector in enumerate(vectors())
            ]
        ),
        timeout=CALL_TIMEOUT,
    )
    await profiles.UpsertUsers(
        ppb.UpsertUsersRequest(users=[common_pb2.User(user_id=FAN)]), timeout=CALL_TIMEOUT
    )
    await profiles.RecordInteractions(
        ppb.RecordInteractionsRequest(
            interactions=[
                common_pb2.Interaction(
                    user_id=FAN,
                    item_id=FAVOURITE,
                    kind=common_pb2.INTERACTION_KIND_CLICK,
                    occurred_at=timestamp_pb2.Timestamp(seconds=1_700_000_000),
                )
            ]
        ),
        timeout=CALL_TIMEOUT,
    )


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    made = Suite(f"sqlite:///{tmp_path / 'profiles.db'}")
    targets = made.targets
    try:
        targets["profiles"] = await made.serve(
            await build_profiles(
                ProfilesSettings(database_url=made.database_url, head_min_refresh_seconds=0.0)
            )
        )
        await load(made.profiles)
        targets["embeddings"] = await made.serve(
            ServiceDefinition(
                "embeddings",
                [
                    (
                        embeddings_service_pb2_grpc.add_EmbeddingsServiceServicer_to_server,
                        StandInEmbeddings(),
                        "longtail.embeddings.v1.EmbeddingsService",
                    )
                ],
            )
        )
        targets["ranking"] = await made.serve(
            await build_ranking(
                RankingSettings(
                    profiles_target=targets["profiles"],
                    embeddings_target=targets["embeddings"],
                    artifact_dir=tmp_path / "artifacts",
                    refresh_seconds=0,
                )
            )
        )
        ranking = ranking_service_pb2_grpc.RankingServiceStub(made.channel(targets["ranking"]))
        # Explicit: the catalogue above is what ranking serves from now on.
        reloaded = await ranking.ReloadModels(rpb.ReloadModelsRequest(), timeout=CALL_TIMEOUT)
        assert reloaded.indexed_item_count == N_ITEMS
        targets["exposure"] = await made.serve(
            await build_exposure(ExposureSettings(profiles_target=targets["profiles"]))
        )
        targets["gateway"] = await made.serve(await gateway_for(made, targets["profiles"]))
        yield made
    finally:
        for channel in made.channels.values():
            await channel.close()
        for server in reversed(made.servers):
            await server.stop(0)


async def gateway_for(suite: Suite, profiles_target: str) -> ServiceDefinition:
    """The deployable gateway (``build``) over the suite's ranking and exposure."""
    settings = dataclasses.replace(
        GATEWAY,
        profiles_target=profiles_target,
        ranking_target=suite.targets["ranking"],
        exposure_target=suite.targets["exposure"],
    )
    return await build_gateway(settings, PIPELINE)


def relevance(**fields: Any) -> Request:
    request = Request(user_id=FAN, **fields)
    request.policy.relevance.SetInParent()
    return request


def test_the_favourite_is_the_unique_best_match_by_construction() -> None:
    found = vectors()
    cosines = found @ found[int(FAVOURITE.removeprefix("item-"))]
    others = np.delete(cosines, int(FAVOURITE.removeprefix("item-")))
    assert float(others.max()) < 0.5


async def test_include_seen_serves_history_items_and_nothing_else_does(suite: Suite) -> None:
    # Without include_seen the history item is never served, even when nearly the whole
    # catalogue is asked for.
    everything_else = await suite.gateway.Recommend(relevance(k=N_ITEMS - 1), timeout=CALL_TIMEOUT)
    served = [item.item_id for item in everything_else.items]
    assert not everything_else.fallback and everything_else.policy_name == "relevance"
    assert len(served) == N_ITEMS - 1 == len(set(served))
    assert FAVOURITE not in served

    # With it, the best match of the user's own history comes first.
    again = await suite.gateway.Recommend(relevance(k=5, include_seen=True), timeout=CALL_TIMEOUT)
    assert not again.fallback and again.policy_name == "relevance"
    assert again.items[0].item_id == FAVOURITE
    assert again.items[0].reason == common_pb2.REASON_RELEVANCE
    logged = await suite.logged(again.request_id)
    assert [i.item_id for i in logged] == [item.item_id for item in again.items]


async def test_bad_policy_parameter_reaches_the_caller_with_exposures_reason(
    suite: Suite,
) -> None:
    request = Request(user_id=FAN, k=5, request_id="r-bad-share")
    request.policy.tail_quota.min_tail_share = 2.0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.gateway.Recommend(request, timeout=CALL_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.domain == DOMAIN
    assert info.reason == "PARAMETER_OUT_OF_RANGE"
    assert info.metadata["param"] == "min_tail_share"
    assert info.metadata["policy"] == "tail_quota"
    assert info.metadata["dependency"] == "exposure"
    assert await suite.logged("r-bad-share") == []


async def test_store_down_reaches_the_caller_as_store_unavailable(suite: Suite) -> None:
    # A profiles service whose PostgreSQL store refuses every connection (nothing listens on
    # port 1), behind a real gateway; ranking and exposure are the suite's, up and never reached.
    down = await suite.serve(
        await build_profiles(
            ProfilesSettings(
                database_url="postgresql+psycopg://postgres@127.0.0.1:1/none",
                migrate_on_start=False,
            )
        )
    )
    target = await suite.serve(await gateway_for(suite, down))
    gateway = gateway_service_pb2_grpc.GatewayServiceStub(suite.channel(target))
    # A new request (profile read) and a retried one (impression log read) alike.
    for request in (Request(user_id=FAN, k=5), Request(user_id=FAN, k=5, request_id="r-1")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.Recommend(request, timeout=CALL_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(caught.value)
        assert info is not None and info.reason == "STORE_UNAVAILABLE"
        assert info.metadata["dependency"] == "profiles"


async def test_an_impression_write_failing_midway_leaves_no_partial_log(suite: Suite) -> None:
    # The store refuses the third impression of the batch: the transaction must take the first
    # two back with it, so that a retry is served afresh and not replayed from a partial log.
    engine = sa.create_engine(suite.database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "CREATE TRIGGER boom BEFORE INSERT ON impressions "
                "WHEN NEW.position = 2 BEGIN SELECT RAISE(ABORT, 'boom'); END"
            )
        request = relevance(k=5, request_id="r-midway")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await suite.gateway.Recommend(request, timeout=CALL_TIMEOUT)
        # A refused statement (not an outage): INTERNAL with the store's own reason.
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        info = error_info(caught.value)
        assert info is not None and info.reason == "STORE_ERROR"
        assert info.metadata["dependency"] == "profiles"
        assert await suite.logged("r-midway") == []
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER boom")
    finally:
        engine.dispose()
    again = await suite.gateway.Recommend(request, timeout=CALL_TIMEOUT)
    assert len(again.items) == 5 and not again.fallback
    logged = await suite.logged("r-midway")
    assert [(i.position, i.item_id) for i in logged] == [
        (item.position, item.item_id) for item in again.items
    ]


async def test_interests_that_cannot_be_embedded_give_a_visibly_degraded_answer(
    suite: Suite,
) -> None:
    healthy = await suite.gateway.Recommend(relevance(k=5), timeout=CALL_TIMEOUT)
    assert not healthy.fallback and not healthy.degraded and not healthy.degraded_causes
    # Triton down: ranking cannot embed the interests, serves the generic popularity-and-tail
    # candidates and says so; the gateway serves them through the policy, marked degraded.
    answer = await suite.gateway.Recommend(
        Request(user_id="newcomer", k=5, interests="space exploration documentaries"),
        timeout=CALL_TIMEOUT,
    )
    assert not answer.fallback and answer.policy_name == "tail_quota"
    assert len(answer.items) == 5
    assert answer.degraded and list(answer.degraded_causes) == ["INTERESTS_NOT_EMBEDDED"]


async def test_200_concurrent_recommends_are_each_logged_whole_before_they_answer(
    suite: Suite,
) -> None:
    # Every answered list is in the impression log, row for row, and nothing else is: 200
    # Recommends at once (the fan and 19 new users), each under its own request_id.
    users = [FAN, *(f"new-{n}" for n in range(19))]
    requests = [
        Request(user_id=users[n % len(users)], k=5, request_id=f"c-{n}") for n in range(200)
    ]
    answers = await asyncio.gather(
        *(suite.gateway.Recommend(request, timeout=CALL_TIMEOUT) for request in requests)
    )
    assert all(len(answer.items) == 5 for answer in answers)
    for request, answer in zip(requests, answers, strict=True):
        assert answer.request_id == request.request_id
        logged = await suite.logged(answer.request_id)
        assert [(i.position, i.item_id, i.user_id) for i in logged] == [
            (item.position, item.item_id, request.user_id) for item in answer.items
        ]
    database = Database(create_store_engine(suite.database_url, pool_size=1))
    try:
        rows, counted = database.call(Repository().impression_totals, write=False)
    finally:
        database.dispose()
    assert rows == counted == 200 * 5


async def test_feedback_then_recommend_does_not_serve_the_item_again(suite: Suite) -> None:
    first = await suite.gateway.Recommend(relevance(k=5, request_id="fb-1"), timeout=CALL_TIMEOUT)
    clicked = first.items[0].item_id
    recorded = await suite.gateway.Feedback(
        gateway_service_pb2.FeedbackRequest(
            request_id="fb-1", item_id=clicked, kind=common_pb2.INTERACTION_KIND_CLICK
        ),
        timeout=CALL_TIMEOUT,
    )
    assert recorded.recorded
    # The relevance policy is deterministic: the same list, but for the item now in the history.
    again = await suite.gateway.Recommend(relevance(k=5, request_id="fb-2"), timeout=CALL_TIMEOUT)
    served = [item.item_id for item in again.items]
    assert clicked not in served and len(served) == 5
    assert not again.fallback and again.policy_name == "relevance"


async def test_a_kept_profile_never_hides_feedback(suite: Suite) -> None:
    """The gateway keeps the user's profile between Recommends (its version held in between);
    Feedback moves the version in its transaction, so the next Recommend reads it again."""

    async def recommend(request_id: str) -> list[str]:
        answer = await suite.gateway.Recommend(
            relevance(k=5, request_id=request_id), timeout=CALL_TIMEOUT
        )
        assert len(answer.items) == 5 and not answer.fallback
        return [item.item_id for item in answer.items]

    clicked: list[str] = []
    served = await recommend("kp-0")
    for round_ in range(1, 3):
        # Served from the kept copy: nothing was recorded since it was read.
        assert await recommend(f"kp-{round_}-kept") == served
        clicked.append(served[0])
        recorded = await suite.gateway.Feedback(
            gateway_service_pb2.FeedbackRequest(
                request_id=f"kp-{round_}-kept",
                item_id=served[0],
                kind=common_pb2.INTERACTION_KIND_CLICK,
            ),
            timeout=CALL_TIMEOUT,
        )
        assert recorded.recorded
        served = await recommend(f"kp-{round_}-after")
        assert not set(clicked) & set(served)
