"""End to end: Triton and the five services as separate processes, SQLite, the demo catalogue.

One suite per module (starting Triton is the slow part); the tests that stop services run last.
The suite runs with generous hop ceilings (``suite_env``): a test that expects the healthy answer
must not see a fallback because the machine is busy. The fallback tests pass short deadlines.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from longtail.common.v1 import common_pb2
from longtail.embeddings.v1 import embeddings_service_pb2
from longtail.profiles.v1 import profiles_service_pb2
from longtail.ranking.v1 import ranking_service_pb2
from longtail_client.client import LongtailClient, policy_spec
from services.suite import datasets
from services.suite.indexing import index_catalogue
from services.suite.local import LocalSuite, SuiteConfig
from tests.conftest import require_triton
from tests.e2e.suite_env import CALL_TIMEOUT, GENEROUS_ENV, START_TIMEOUT

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
    require_triton()
    workdir: Path = tmp_path_factory.mktemp("suite")
    config = SuiteConfig(
        workdir=workdir, extra_env=GENEROUS_ENV, start_timeout_seconds=START_TIMEOUT
    )
    # Past require_triton(), a suite that does not start is a defect: it raises, never skips
    # (LocalSuite stops whatever it had started).
    async with (
        LocalSuite(config) as suite,
        LongtailClient(suite.targets, timeout_seconds=CALL_TIMEOUT) as client,
    ):
        data = datasets.make_demo_catalogue(N_ITEMS, N_USERS, seed=3)
        await datasets.upload(data, client.profiles, progress=False)
        await index_catalogue(client.profiles, client.embeddings, progress=False)
        await client.ranking.TrainModel(ranking_service_pb2.TrainModelRequest(), timeout=300)
        await client.ranking.ReloadModels(ranking_service_pb2.ReloadModelsRequest(), timeout=120)
        yield Running(suite, client, data)


def _seen(data: datasets.Dataset, user_id: str) -> set[str]:
    return {i.item_id for i in data.interactions if i.user_id == user_id}


def _active_user(data: datasets.Dataset) -> str:
    return Counter(i.user_id for i in data.interactions).most_common(1)[0][0]


async def _all_item_stats(client: LongtailClient) -> dict[str, common_pb2.ItemStats]:
    stats: dict[str, common_pb2.ItemStats] = {}
    token = ""
    while True:
        page = await client.profiles.ListItemStats(
            profiles_service_pb2.ListItemStatsRequest(page_size=10_000, page_token=token),
            timeout=CALL_TIMEOUT,
        )
        stats.update((entry.item_id, entry) for entry in page.stats)
        token = page.next_page_token
        if not token:
            return stats


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
    assert not quota.fallback and quota.policy_name == "tail_quota"
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
        profiles_service_pb2.UpsertItemsRequest(items=[new_item]), timeout=CALL_TIMEOUT
    )
    report = await index_catalogue(
        running.client.profiles, running.client.embeddings, progress=False
    )
    assert report["embedded"] == 1
    await running.client.ranking.ReloadModels(
        ranking_service_pb2.ReloadModelsRequest(), timeout=CALL_TIMEOUT
    )
    answer = await running.client.recommend(
        f"fan-{uuid.uuid4().hex[:6]}",
        10,
        interests=datasets.demo_interests(topic),
        policy=policy_spec("relevance"),
    )
    assert not answer.fallback
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
        profiles_service_pb2.ListImpressionsRequest(request_id=request_id), timeout=CALL_TIMEOUT
    )
    assert len(logged.impressions) == 8


async def test_feedback_then_explain(running: Running) -> None:
    user = _active_user(running.data)
    answer = await running.client.recommend(user, 5)
    item = answer.items[0].item_id
    request = profiles_service_pb2.GetItemStatsRequest(item_ids=[item])
    before = await running.client.profiles.GetItemStats(request, timeout=CALL_TIMEOUT)
    assert (await running.client.feedback(answer.request_id, item)).recorded
    assert not (await running.client.feedback(answer.request_id, item)).recorded
    explained = await running.client.explain(answer.request_id)
    assert [e.impression.item_id for e in explained.items] == [i.item_id for i in answer.items]
    after = await running.client.profiles.GetItemStats(request, timeout=CALL_TIMEOUT)
    # Recorded once, counted once: the replayed feedback added nothing.
    assert after.stats[0].feedback_count == before.stats[0].feedback_count + 1


async def test_feedback_on_an_explored_item_reaches_its_counters(running: Running) -> None:
    """Serve → impressions counted per served item; click the explored item → its feedback
    counter (what the explore slot's Thompson draw reads) rises by exactly one."""
    user = _active_user(running.data)
    before = await _all_item_stats(running.client)
    answer = await running.client.recommend(user, 10)  # the default: one explore slot
    assert not answer.fallback
    explored = [item.item_id for item in answer.items if item.reason == common_pb2.REASON_EXPLORE]
    assert len(explored) == 1, [(i.item_id, i.reason) for i in answer.items]
    served = Counter(item.item_id for item in answer.items)
    after_serving = await _all_item_stats(running.client)
    # Nothing else runs meanwhile: every item's impression counter moved by exactly the times
    # this list served it (once each for the served items, not at all for the others).
    assert after_serving.keys() == before.keys()
    moved = {
        item_id: stats.impression_count - before[item_id].impression_count
        for item_id, stats in after_serving.items()
        if stats.impression_count != before[item_id].impression_count
    }
    assert moved == dict(served)

    item = explored[0]
    assert (await running.client.feedback(answer.request_id, item)).recorded
    after_feedback = await _all_item_stats(running.client)
    assert after_feedback[item].feedback_count == after_serving[item].feedback_count + 1
    assert after_feedback[item].impression_count == after_serving[item].impression_count
    # Only the clicked item's feedback counter moved.
    changed = {
        item_id
        for item_id, stats in after_feedback.items()
        if stats.feedback_count != after_serving[item_id].feedback_count
    }
    assert changed == {item}


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
        # Short on purpose: the claim is an answer within the caller's deadline.
        answer = await running.client.recommend(user, 10, timeout=5)
        assert answer.fallback
        assert len(answer.items) == 10
        assert all(item.reason == common_pb2.REASON_FALLBACK for item in answer.items)
        assert not {i.item_id for i in answer.items} & _seen(running.data, user)
    finally:
        await running.suite.start_service("ranking")
        await running.suite.wait_healthy(["ranking"])
    # The gateway's channel reconnects with backoff (at most 1 s) and a fresh ranking warms up:
    # recovery comes within seconds, not necessarily on the very first call. Bounded by time.
    deadline = time.monotonic() + 120
    while (answer := await running.client.recommend(user, 10)).fallback:
        assert time.monotonic() < deadline, "the gateway still serves its fallback"
        await asyncio.sleep(1)


async def test_triton_down_still_answers_cold_users(running: Running) -> None:
    """Triton down: a user whom only their stated interests could place gets a full list."""
    # Their one interaction is with an item the index does not hold (no vector), so ranking
    # has no usable history and needs the interests embedded; the item is still "seen".
    user = f"cold-{uuid.uuid4().hex[:6]}"
    seen_item = f"unindexed-{uuid.uuid4().hex[:6]}"
    await running.client.profiles.UpsertItems(
        profiles_service_pb2.UpsertItemsRequest(
            items=[common_pb2.Item(item_id=seen_item, title="An item with no vector yet")]
        ),
        timeout=CALL_TIMEOUT,
    )
    interaction = common_pb2.Interaction(
        user_id=user, item_id=seen_item, kind=common_pb2.INTERACTION_KIND_CLICK
    )
    interaction.occurred_at.GetCurrentTime()
    await running.client.profiles.RecordInteractions(
        profiles_service_pb2.RecordInteractionsRequest(
            interactions=[interaction], create_missing_users=True
        ),
        timeout=CALL_TIMEOUT,
    )
    # Unique text: no cache entry of the embeddings service can stand in for Triton.
    interests = f"{datasets.demo_interests(datasets.DEMO_CATEGORIES[2])} {uuid.uuid4().hex}"
    await running.suite.stop_triton()
    try:
        # The premise: these interests cannot be embedded now (a generous deadline, so that
        # a hang would show as DEADLINE_EXCEEDED rather than pass as "unavailable").
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.client.embeddings.EmbedTexts(
                embeddings_service_pb2.EmbedTextsRequest(texts=[interests]), timeout=CALL_TIMEOUT
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # Short on purpose: the claim is an answer within the caller's deadline.
        answer = await running.client.recommend(user, 10, interests=interests, timeout=5)
        ids = [item.item_id for item in answer.items]
        assert len(ids) == 10 and len(set(ids)) == 10
        assert seen_item not in ids
        assert all(item.reason != common_pb2.REASON_UNSPECIFIED for item in answer.items)
        # The served list is in the impression log, exactly once per position.
        logged = await running.client.profiles.ListImpressions(
            profiles_service_pb2.ListImpressionsRequest(request_id=answer.request_id),
            timeout=CALL_TIMEOUT,
        )
        assert [(i.position, i.item_id) for i in logged.impressions] == list(enumerate(ids))
        assert all(i.user_id == user for i in logged.impressions)
    finally:
        await running.suite.start_triton()
