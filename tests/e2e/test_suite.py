"""End to end: Triton and the five services as separate processes, SQLite, the demo catalogue.

One suite per module (starting Triton is the slow part); the tests that stop services run last.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2
from longtail.ranking.v1 import ranking_service_pb2
from longtail_client import datasets
from longtail_client.client import LongtailClient, policy_spec
from longtail_client.indexing import index_catalogue
from longtail_client.suite import LocalSuite, SuiteConfig
from tests.conftest import missing

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

N_ITEMS = 800
N_USERS = 150


class Running:
    def __init__(self, suite: LocalSuite, client: LongtailClient, data: datasets.Dataset) -> None:
        self.suite = suite
        self.client = client
        self.data = data


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    workdir: Path = tmp_path_factory.mktemp("suite")
    suite = LocalSuite(SuiteConfig(workdir=workdir))
    try:
        await suite.start()
    except Exception as error:
        await suite.stop()
        missing("triton", f"the suite did not start: {error}")
    client = LongtailClient(suite.targets, timeout_seconds=60)
    try:
        data = datasets.make_demo_catalogue(N_ITEMS, N_USERS, seed=3)
        await datasets.upload(data, client.profiles, progress=False)
        await index_catalogue(client.profiles, client.embeddings, progress=False)
        await client.ranking.TrainModel(ranking_service_pb2.TrainModelRequest(), timeout=300)
        await client.ranking.ReloadModels(ranking_service_pb2.ReloadModelsRequest(), timeout=120)
        yield Running(suite, client, data)
    finally:
        await client.close()
        await suite.stop()


def _seen(data: datasets.Dataset, user_id: str) -> set[str]:
    return {i.item_id for i in data.interactions if i.user_id == user_id}


def _active_user(data: datasets.Dataset) -> str:
    return Counter(i.user_id for i in data.interactions).most_common(1)[0][0]


async def test_known_user_gets_k_distinct_unseen_items(running: Running) -> None:
    user = _active_user(running.data)
    answer = await running.client.recommend(user, 10, policy=policy_spec("relevance"))
    ids = [item.item_id for item in answer.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert not set(ids) & _seen(running.data, user)
    assert not answer.fallback
    assert answer.policy_name == "relevance"
    assert all(item.title for item in answer.items)


async def test_default_policy_gives_the_tail_a_share_with_reasons(running: Running) -> None:
    user = _active_user(running.data)
    answer = await running.client.recommend(user, 10)
    assert not answer.fallback
    # The default (from the evaluation): tail_quota 0.1 plus one explore slot at the last place.
    assert answer.policy_name == "tail_quota"
    assert sum(item.is_tail for item in answer.items) >= 1
    assert answer.items[9].reason == common_pb2.REASON_EXPLORE and answer.items[9].is_tail
    assert all(item.reason != common_pb2.REASON_UNSPECIFIED for item in answer.items)
    # A larger quota holds at every prefix of the served list.
    spec = policy_spec("tail_quota", {"min_tail_share": 0.3})
    quota = await running.client.recommend(user, 10, policy=spec)
    for p in range(1, 11):
        assert sum(item.is_tail for item in quota.items[:p]) >= int(0.3 * p)


async def test_cold_user_with_interests_gets_on_topic_items(running: Running) -> None:
    topic = datasets.DEMO_CATEGORIES[0]
    answer = await running.client.recommend(
        f"cold-{uuid.uuid4().hex[:6]}",
        10,
        interests=datasets.demo_interests(topic),
        policy=policy_spec("relevance"),
    )
    assert len(answer.items) == 10 and not answer.fallback
    on_topic = sum(topic in item.categories for item in answer.items)
    assert on_topic >= 7, [list(item.categories) for item in answer.items]


async def test_brand_new_item_is_recommended_without_retraining(running: Running) -> None:
    topic = datasets.DEMO_CATEGORIES[1]
    new_item = common_pb2.Item(
        item_id="brand-new-1",
        title=datasets.demo_interests(topic),
        description=datasets.demo_interests(topic),
        categories=[topic],
    )
    await running.client.profiles.UpsertItems(
        profiles_service_pb2.UpsertItemsRequest(items=[new_item]), timeout=30
    )
    report = await index_catalogue(
        running.client.profiles, running.client.embeddings, progress=False
    )
    assert report["embedded"] == 1
    await running.client.ranking.ReloadModels(ranking_service_pb2.ReloadModelsRequest(), timeout=60)
    answer = await running.client.recommend(
        f"fan-{uuid.uuid4().hex[:6]}",
        10,
        interests=datasets.demo_interests(topic),
        policy=policy_spec("relevance"),
    )
    served = {item.item_id: item for item in answer.items}
    assert "brand-new-1" in served
    assert served["brand-new-1"].is_cold and served["brand-new-1"].is_tail


async def test_replayed_request_id_writes_no_duplicate_impressions(running: Running) -> None:
    user = _active_user(running.data)
    request_id = f"replay-{uuid.uuid4().hex}"
    first = await running.client.recommend(user, 8, request_id=request_id)
    second = await running.client.recommend(user, 8, request_id=request_id)
    assert [i.item_id for i in second.items] == [i.item_id for i in first.items]
    logged = await running.client.profiles.ListImpressions(
        profiles_service_pb2.ListImpressionsRequest(request_id=request_id), timeout=30
    )
    assert len(logged.impressions) == 8


async def test_feedback_then_explain(running: Running) -> None:
    user = _active_user(running.data)
    answer = await running.client.recommend(user, 5)
    item = answer.items[0].item_id
    assert (await running.client.feedback(answer.request_id, item)).recorded
    assert not (await running.client.feedback(answer.request_id, item)).recorded
    explained = await running.client.explain(answer.request_id)
    assert [e.impression.item_id for e in explained.items] == [i.item_id for i in answer.items]
    stats = await running.client.profiles.GetItemStats(
        profiles_service_pb2.GetItemStatsRequest(item_ids=[item]), timeout=30
    )
    assert stats.stats[0].feedback_count >= 1


async def test_bad_input_is_invalid_argument_end_to_end(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.client.recommend("u", 0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    spec = policy_spec("tail_quota", {"min_tail_share": 2.0})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.client.recommend("u", 5, policy=spec)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_ranking_down_gives_fallback_then_recovers(running: Running) -> None:
    user = _active_user(running.data)
    await running.suite.stop_service("ranking", kill=True)
    try:
        answer = await running.client.recommend(user, 10, timeout=5)
        assert answer.fallback
        assert len(answer.items) == 10
        assert all(item.reason == common_pb2.REASON_FALLBACK for item in answer.items)
        assert not {i.item_id for i in answer.items} & _seen(running.data, user)
    finally:
        await running.suite.start_service("ranking")
        await running.suite.wait_healthy(["ranking"])
    # The gateway's channel reconnects with backoff and a fresh ranking warms up: recovery is
    # expected within seconds, not on the very first call.
    for _ in range(30):
        answer = await running.client.recommend(user, 10, timeout=10)
        if not answer.fallback:
            break
        await asyncio.sleep(1)
    assert not answer.fallback


async def test_triton_down_still_answers_cold_users(running: Running) -> None:
    await running.suite.stop_triton()
    try:
        answer = await running.client.recommend(
            f"cold-{uuid.uuid4().hex[:6]}", 10, interests="anything at all", timeout=5
        )
        assert len(answer.items) == 10
        assert len({i.item_id for i in answer.items}) == 10
    finally:
        await running.suite.start_triton()
