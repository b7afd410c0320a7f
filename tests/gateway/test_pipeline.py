"""The Recommend pipeline against fakes behind its ports, and through a real gRPC server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from longtail.common.v1 import common_pb2
from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from services.common.errors import DeadlineExceeded, ServiceError, Unavailable, error_info
from services.common.observability import RecommenderMetrics
from services.common.server import RunningService, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.gateway.app import SERVICE_NAME
from services.gateway.config import GatewaySettings
from services.gateway.pipeline import (
    Deadline,
    FallbackList,
    ItemInfoCache,
    KeptProfile,
    PipelineConfig,
    ProfileCache,
    RecommendPipeline,
)
from services.gateway.servicer import GatewayServicer
from services.ranking.scorer import ScorerConfig
from tests.gateway.fakes import FakeExposure, FakeProfiles, FakeRanking

Request = gateway_service_pb2.RecommendRequest


class Suite:
    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.profiles = FakeProfiles()
        self.ranking = FakeRanking(self.profiles)
        self.exposure = FakeExposure()
        self.metrics = RecommenderMetrics()
        self.pipeline = RecommendPipeline(
            self.profiles,
            self.ranking,
            self.exposure,
            config or PipelineConfig(fallback_size=20),
            self.metrics,
        )

    def count(self, metric: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(metric, labels) or 0.0


@pytest.fixture
async def served() -> AsyncIterator[tuple[Suite, gateway_service_pb2_grpc.GatewayServiceStub]]:
    suite = Suite()
    definition = ServiceDefinition(
        name="gateway",
        servicers=[
            (
                gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server,
                GatewayServicer(suite.pipeline, 2.0),
                SERVICE_NAME,
            )
        ],
    )
    running: RunningService = await start_service(definition, ServerSettings(port=0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield suite, gateway_service_pb2_grpc.GatewayServiceStub(channel)
    finally:
        await channel.close()
        await running.stop(0)


async def test_known_user_gets_k_distinct_unseen_items_and_impressions(served) -> None:
    suite, stub = served
    answer = await stub.Recommend(Request(user_id="u1", k=10), timeout=5)
    ids = [item.item_id for item in answer.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert not {"i0", "i9", "i12"} & set(ids)  # seen items excluded by default, however old
    assert [item.position for item in answer.items] == list(range(10))
    assert all(item.title.startswith("Item ") for item in answer.items)
    logged = await suite.profiles.list_impressions(answer.request_id, 1.0)
    assert [i.item_id for i in logged] == ids
    assert not answer.fallback and answer.policy_name == "relevance"


async def test_include_seen_passes_no_exclusions_and_asks_for_history(served) -> None:
    suite, stub = served
    await stub.Recommend(Request(user_id="u1", k=5), timeout=5)
    assert suite.ranking.last is not None and not suite.ranking.last.include_history
    await stub.Recommend(Request(user_id="u1", k=5, include_seen=True), timeout=5)
    assert suite.ranking.last is not None and not suite.ranking.last.exclude_item_ids
    # Ranking drops history items itself unless told not to (see test_real_services.py).
    assert suite.ranking.last.include_history


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (Request(user_id="", k=10), "EMPTY_USER_ID"),
        (Request(user_id="u1", k=0), "K_OUT_OF_RANGE"),
        (Request(user_id="u1", k=101), "K_OUT_OF_RANGE"),
        (Request(user_id="u1", k=5, interests="x" * 9000), "INTERESTS_TOO_LONG"),
        # The store's id limit is 255 characters; the gateway refuses longer ids itself.
        (Request(user_id="u" * 256, k=5), "USER_ID_TOO_LONG"),
        (Request(user_id="u1", k=5, request_id="r" * 256), "REQUEST_ID_TOO_LONG"),
        (Request(user_id="u" * 20_000, k=5), "USER_ID_TOO_LONG"),
    ],
)
async def test_bad_input_is_invalid_argument_with_reason(served, request_, reason) -> None:
    _, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Recommend(request_, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == reason


async def test_bad_policy_parameter_is_reported_not_papered_over(served) -> None:
    _, stub = served
    request = Request(user_id="u1", k=5)
    setattr(request.policy.mmr, "lambda", 3.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Recommend(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("broken", ["ranking", "exposure"])
@pytest.mark.parametrize(
    "error",
    [
        Unavailable("DEPENDENCY_UNAVAILABLE", "down"),
        DeadlineExceeded("DEPENDENCY_DEADLINE", "slow"),
    ],
)
async def test_dependency_down_gives_fallback_with_impressions(served, broken, error) -> None:
    suite, stub = served
    getattr(suite, broken).error = error
    answer = await stub.Recommend(Request(user_id="u1", k=6), timeout=5)
    assert answer.fallback and answer.policy_name == "fallback"
    assert len(answer.items) == 6
    assert all(item.reason == common_pb2.REASON_FALLBACK for item in answer.items)
    # The fallback mixes popular and tail items and still excludes what the user has seen.
    assert any(item.is_tail for item in answer.items)
    assert any(not item.is_tail for item in answer.items)
    assert not {"i0", "i9"} & {item.item_id for item in answer.items}
    assert len(await suite.profiles.list_impressions(answer.request_id, 1.0)) == 6


async def test_store_down_is_unavailable_and_writes_nothing(served) -> None:
    suite, stub = served
    suite.profiles.down = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Recommend(Request(user_id="u1", k=5, request_id="r-down"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(caught.value)
    assert info is not None and info.reason == "STORE_UNAVAILABLE"
    assert suite.profiles.calls["record_impressions"] == 0
    assert suite.profiles.impressions == {}


async def test_store_failing_the_impression_write_leaves_no_partial_log(served) -> None:
    suite, stub = served
    # The outage starts after the profile read: the list is chosen, then its write is refused.
    suite.profiles.failing = {"record_impressions"}
    request = Request(user_id="u1", k=5, request_id="r-outage")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Recommend(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(caught.value)
    assert info is not None and info.reason == "STORE_UNAVAILABLE"
    assert suite.profiles.calls["get_user_profile"] == 1
    assert suite.profiles.calls["record_impressions"] == 1  # the write was reached, and refused
    assert await suite.profiles.list_impressions("r-outage", 1.0) == []

    # The store is back: the retry finds nothing logged under its id, so it is served afresh
    # (not replayed from a partial log) and logged whole, once.
    suite.profiles.failing = set()
    again = await stub.Recommend(request, timeout=5)
    assert suite.profiles.calls["record_impressions"] == 2
    assert not again.fallback and again.policy_name == "relevance"
    logged = await suite.profiles.list_impressions("r-outage", 1.0)
    assert [(i.position, i.item_id) for i in logged] == [
        (item.position, item.item_id) for item in again.items
    ]
    assert [i.position for i in logged] == list(range(5))
    assert len(suite.profiles.impressions) == 5


async def test_replayed_request_id_logs_nothing_twice_and_answers_the_same(served) -> None:
    suite, stub = served
    first = await stub.Recommend(Request(user_id="u1", k=5, request_id="r-1"), timeout=5)
    writes = suite.profiles.impression_writes
    suite.ranking.error = Unavailable("DEPENDENCY_UNAVAILABLE", "down")  # a retry must not need it
    again = await stub.Recommend(Request(user_id="u1", k=5, request_id="r-1"), timeout=5)
    assert [i.item_id for i in again.items] == [i.item_id for i in first.items]
    assert suite.profiles.impression_writes == writes
    assert len(suite.profiles.impressions) == 5
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Recommend(Request(user_id="someone-else", k=5, request_id="r-1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cold_user_interests_are_used_and_remembered(served) -> None:
    suite, stub = served
    answer = await stub.Recommend(Request(user_id="new", k=5, interests="jazz"), timeout=5)
    assert len(answer.items) == 5
    assert suite.ranking.last is not None and suite.ranking.last.interests == "jazz"
    assert suite.profiles.users["new"] == "jazz"


async def test_feedback_is_recorded_once_and_needs_a_served_item(served) -> None:
    suite, stub = served
    answer = await stub.Recommend(Request(user_id="u1", k=3), timeout=5)
    item = answer.items[0].item_id
    feedback = gateway_service_pb2.FeedbackRequest(
        request_id=answer.request_id, item_id=item, kind=common_pb2.INTERACTION_KIND_CLICK
    )
    assert (await stub.Feedback(feedback, timeout=5)).recorded
    assert not (await stub.Feedback(feedback, timeout=5)).recorded
    stored = next(iter(suite.profiles.interactions.values()))
    assert stored.user_id == "u1" and stored.request_id == answer.request_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Feedback(
            gateway_service_pb2.FeedbackRequest(
                request_id=answer.request_id,
                item_id="never-served",
                kind=common_pb2.INTERACTION_KIND_CLICK,
            ),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Feedback(
            gateway_service_pb2.FeedbackRequest(request_id=answer.request_id, item_id=item),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_kept_profile_serves_while_its_version_holds_and_feedback_moves_it(
    served,
) -> None:
    suite, stub = served
    first = await stub.Recommend(Request(user_id="u1", k=3), timeout=5)
    assert suite.ranking.last is not None
    excluded = list(suite.ranking.last.exclude_item_ids)
    assert excluded == ["i0", "i12", "i9"]
    # The second Recommend chooses from the kept copy without asking profiles: its list is
    # logged on condition that the copy's version still holds, and it does.
    again = await stub.Recommend(Request(user_id="u1", k=3), timeout=5)
    assert suite.profiles.calls["get_user_profile"] == 1
    assert suite.profiles.calls["profile_version_moved"] == 0
    assert suite.count("longtail_profile_reads_total", source="kept") == 1
    assert suite.count("longtail_profile_reads_total", source="read") == 1
    assert list(suite.ranking.last.exclude_item_ids) == excluded
    assert [i.item_id for i in again.items] == [i.item_id for i in first.items]
    assert len(await suite.profiles.list_impressions(again.request_id, 1.0)) == 3
    # Feedback moves the profile: the list chosen from the copy is refused (nothing written),
    # and the Recommend chooses again from a read that has the click, and excludes the item.
    clicked = again.items[0].item_id
    await stub.Feedback(
        gateway_service_pb2.FeedbackRequest(
            request_id=again.request_id, item_id=clicked, kind=common_pb2.INTERACTION_KIND_CLICK
        ),
        timeout=5,
    )
    writes = suite.profiles.impression_writes
    after = await stub.Recommend(Request(user_id="u1", k=3), timeout=5)
    assert suite.profiles.calls["profile_version_moved"] == 1
    assert suite.profiles.impression_writes == writes + 2  # the refused one, then the list
    assert suite.count("longtail_profile_reads_total", source="stale") == 1
    assert suite.count("longtail_profile_reads_total", source="read") == 2
    assert suite.profiles.calls["get_user_profile"] == 2
    assert clicked in suite.ranking.last.exclude_item_ids
    assert clicked not in [i.item_id for i in after.items]
    assert suite.ranking.last.history[0].item_id == clicked
    logged = await suite.profiles.list_impressions(after.request_id, 1.0)
    assert [i.item_id for i in logged] == [i.item_id for i in after.items]
    # The fresh read is kept: the next Recommend chooses from it again.
    await stub.Recommend(Request(user_id="u1", k=3), timeout=5)
    assert suite.profiles.calls["get_user_profile"] == 2
    assert suite.count("longtail_profile_reads_total", source="kept") == 2


@pytest.mark.parametrize("ranking_down", [False, True])
async def test_a_retry_at_a_replica_that_keeps_the_profile_is_answered_from_the_log(
    ranking_down: bool,
) -> None:
    """A retried request_id reaching another gateway replica, one that keeps the user's profile
    and never saw the id: the list it chooses from its copy is not logged (the log holds the same
    list: a replay; or another one, here the fallback: a conflict), and the answer is the log's."""
    suite = Suite()
    other = RecommendPipeline(
        suite.profiles,
        suite.ranking,
        suite.exposure,
        PipelineConfig(fallback_size=20),
        RecommenderMetrics(),
    )
    deadline = Deadline(None, 5.0)
    first = await suite.pipeline.recommend(Request(user_id="u1", k=3, request_id="r-1"), deadline)
    await other.recommend(Request(user_id="u1", k=3), deadline)
    assert other.profiles.get("u1") is not None
    reads, writes = suite.profiles.calls["get_user_profile"], suite.profiles.impression_writes
    if ranking_down:
        suite.ranking.error = Unavailable("DEPENDENCY_UNAVAILABLE", "down")
    again = await other.recommend(Request(user_id="u1", k=3, request_id="r-1"), deadline)
    assert [i.item_id for i in again.items] == [i.item_id for i in first.items]
    assert again.policy_name == first.policy_name and not again.fallback
    assert suite.profiles.impression_writes == writes + 1  # the copy's list, not logged
    assert suite.profiles.calls["get_user_profile"] == reads + 1  # then the checked way
    logged = await suite.profiles.list_impressions("r-1", 1.0)
    assert [i.item_id for i in logged] == [i.item_id for i in first.items]


async def test_with_no_profile_cache_every_recommend_reads_the_profile() -> None:
    suite = Suite(PipelineConfig(fallback_size=20, profile_cache_size=0))
    for _ in range(3):
        await suite.pipeline.recommend(Request(user_id="u1", k=3), Deadline(None, 5.0))
    assert suite.profiles.calls["get_user_profile"] == 3
    assert suite.profiles.calls["profile_unchanged"] == 0 and len(suite.pipeline.profiles) == 0


async def test_an_unknown_user_is_not_kept_and_a_user_gone_unknown_is_dropped() -> None:
    suite = Suite()
    deadline = Deadline(None, 5.0)
    await suite.pipeline.recommend(Request(user_id="nobody", k=3, interests="jazz"), deadline)
    assert suite.pipeline.profiles.get("nobody") is None
    assert suite.count("longtail_profile_reads_total", source="unknown") == 1
    await suite.pipeline.recommend(Request(user_id="u1", k=3), deadline)
    assert suite.pipeline.profiles.get("u1") is not None
    # The store no longer knows the user (e.g. another store behind the same gateway): the copy
    # is dropped, never served under an empty version.
    del suite.profiles.profiles["u1"]
    await suite.pipeline.recommend(Request(user_id="u1", k=3), deadline)
    assert suite.pipeline.profiles.get("u1") is None
    assert suite.ranking.last is not None and list(suite.ranking.last.exclude_item_ids) == []


def test_profile_cache_keeps_the_most_recently_used_users() -> None:
    profile = FakeProfiles().profiles["u1"]
    kept = [KeptProfile(f"v{n}", profile.SerializeToString()) for n in range(3)]
    cache = ProfileCache(2)
    cache.put("a", kept[0])
    cache.put("b", kept[1])
    assert cache.get("a") is kept[0]  # a is now the most recent
    cache.put("c", kept[2])
    assert cache.get("b") is None and cache.get("a") is kept[0] and len(cache) == 2
    assert kept[0].profile() == profile
    cache.drop("a")
    assert cache.get("a") is None and len(cache) == 1


async def test_explain_lists_what_was_served_and_why(served) -> None:
    _, stub = served
    answer = await stub.Recommend(Request(user_id="u1", k=4), timeout=5)
    explained = await stub.ExplainRecommendation(
        gateway_service_pb2.ExplainRecommendationRequest(request_id=answer.request_id), timeout=5
    )
    assert explained.user_id == "u1"
    assert [e.impression.item_id for e in explained.items] == [i.item_id for i in answer.items]
    assert all(e.impression.reason == common_pb2.REASON_RELEVANCE for e in explained.items)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ExplainRecommendation(
            gateway_service_pb2.ExplainRecommendationRequest(request_id="nope"), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_metrics_count_served_tail_items_fallbacks_and_impressions() -> None:
    from services.common.observability import RecommenderMetrics

    profiles = FakeProfiles()
    ranking = FakeRanking(profiles)
    metrics = RecommenderMetrics()
    pipeline = RecommendPipeline(
        profiles, ranking, FakeExposure(), PipelineConfig(fallback_size=20), metrics
    )
    answer = await pipeline.recommend(Request(user_id="u1", k=10), Deadline(None, 2.0))
    sample = metrics.registry.get_sample_value
    assert sample("longtail_impressions_written_total") == 10
    served_tail = sample("longtail_tail_items_served_total", {"policy": "relevance"})
    assert served_tail == sum(i.is_tail for i in answer.items) > 0
    ranking.error = Unavailable("DEPENDENCY_UNAVAILABLE", "down")
    await pipeline.recommend(Request(user_id="u1", k=4), Deadline(None, 2.0))
    assert sample("longtail_fallback_responses_total", {"cause": "DEPENDENCY_UNAVAILABLE"}) == 1
    assert sample("longtail_impressions_written_total") == 14


async def test_ids_of_255_characters_are_accepted(served) -> None:
    suite, stub = served
    user, request_id = "u" * 255, "r" * 255
    answer = await stub.Recommend(Request(user_id=user, k=3, request_id=request_id), timeout=5)
    assert answer.request_id == request_id and len(answer.items) == 3
    logged = await suite.profiles.list_impressions(request_id, 1.0)
    assert [i.user_id for i in logged] == [user] * 3
    feedback = gateway_service_pb2.FeedbackRequest(
        request_id=request_id,
        item_id=answer.items[0].item_id,
        kind=common_pb2.INTERACTION_KIND_CLICK,
    )
    assert (await stub.Feedback(feedback, timeout=5)).recorded
    # An item id of 255 characters, served under that request_id, takes feedback too.
    long_item = "x" * 255
    suite.profiles.impressions[(request_id, 3)] = common_pb2.Impression(
        request_id=request_id, position=3, user_id=user, item_id=long_item
    )
    feedback.item_id = long_item
    assert (await stub.Feedback(feedback, timeout=5)).recorded
    assert f"feedback:{request_id}:{long_item}:{feedback.kind}" in suite.profiles.interactions


@pytest.mark.parametrize(
    ("request_id", "item_id", "reason"),
    [
        ("r-1", "i" * 20_000, "ITEM_ID_TOO_LONG"),
        ("r-1", "i" * 256, "ITEM_ID_TOO_LONG"),
        ("r" * 256, "i1", "REQUEST_ID_TOO_LONG"),
        ("r" * 20_000, "i" * 20_000, "REQUEST_ID_TOO_LONG"),
    ],
)
async def test_feedback_with_over_long_ids_is_invalid_argument(
    served, request_id, item_id, reason
) -> None:
    suite, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Feedback(
            gateway_service_pb2.FeedbackRequest(
                request_id=request_id, item_id=item_id, kind=common_pb2.INTERACTION_KIND_CLICK
            ),
            timeout=5,
        )
    # Not RESOURCE_EXHAUSTED (an echoed 20,000-character id) nor NOT_FOUND from the store.
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == reason
    assert info.metadata["limit"] == "255"
    assert suite.profiles.calls["list_impressions"] == 0


async def test_explain_with_an_over_long_request_id_is_invalid_argument(served) -> None:
    suite, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ExplainRecommendation(
            gateway_service_pb2.ExplainRecommendationRequest(request_id="r" * 256), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == "REQUEST_ID_TOO_LONG"
    assert suite.profiles.calls["list_impressions"] == 0


async def test_a_request_id_holding_another_list_fails_and_answers_only_the_logged_one(
    served,
) -> None:
    suite, stub = served
    # A concurrent request under the same id writes its list after our replay check found
    # nothing: the store refuses ours with ALREADY_EXISTS / REQUEST_ID_CONFLICT.
    theirs = [
        common_pb2.Impression(
            request_id="r-race", position=p, user_id="u1", item_id=f"i{30 + p}", policy_name="x"
        )
        for p in range(3)
    ]
    suite.profiles.racing_writes["r-race"] = theirs
    request = Request(user_id="u1", k=3, request_id="r-race")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Recommend(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(caught.value)
    assert info is not None and info.reason == "REQUEST_ID_CONFLICT"
    assert suite.profiles.calls["record_impressions"] == 1  # our write was reached and refused
    logged = await suite.profiles.list_impressions("r-race", 1.0)
    assert [i.item_id for i in logged] == ["i30", "i31", "i32"]  # theirs, untouched
    # Nothing was lost (the log holds a list): not an impression write failure, not an answer.
    assert suite.count("longtail_impression_write_failures_total") == 0
    assert suite.count("longtail_impressions_written_total") == 0
    assert (
        suite.count("longtail_recommend_responses_total", policy="relevance", fallback="false") == 0
    )
    # A retry is answered from the log: the list that is in it.
    again = await stub.Recommend(request, timeout=5)
    assert [i.item_id for i in again.items] == ["i30", "i31", "i32"]
    assert suite.profiles.calls["record_impressions"] == 1


async def test_ranking_reporting_degraded_candidates_marks_the_answer_and_counts_it(
    served,
) -> None:
    suite, stub = served
    healthy = await stub.Recommend(Request(user_id="new", k=5, interests="jazz"), timeout=5)
    assert not healthy.degraded and list(healthy.degraded_causes) == []
    assert not healthy.fallback
    # Embeddings (or Triton) down: ranking serves popularity-and-tail candidates and says why.
    suite.ranking.degraded_causes = ["INTERESTS_NOT_EMBEDDED"]
    answer = await stub.Recommend(Request(user_id="new", k=5, interests="jazz"), timeout=5)
    assert answer.degraded and list(answer.degraded_causes) == ["INTERESTS_NOT_EMBEDDED"]
    assert not answer.fallback and answer.policy_name == "relevance" and len(answer.items) == 5
    cause = "longtail_degraded_responses_total"
    assert suite.count(cause, cause="INTERESTS_NOT_EMBEDDED") == 1
    assert suite.count(cause, cause="FALLBACK") == 0
    # A fallback answer is degraded too, with its own cause (and fallback stays set).
    suite.ranking.error = Unavailable("DEPENDENCY_UNAVAILABLE", "down")
    fallback = await stub.Recommend(Request(user_id="new", k=5, request_id="r-fb"), timeout=5)
    assert fallback.fallback and fallback.degraded
    assert list(fallback.degraded_causes) == ["FALLBACK"]
    assert suite.count(cause, cause="FALLBACK") == 1
    assert suite.count(cause, cause="INTERESTS_NOT_EMBEDDED") == 1
    # A replay says what the log knows: the fallback (and counts nothing again).
    replay = await stub.Recommend(Request(user_id="new", k=5, request_id="r-fb"), timeout=5)
    assert replay.fallback and replay.degraded and list(replay.degraded_causes) == ["FALLBACK"]
    assert suite.count(cause, cause="FALLBACK") == 1


async def test_item_info_fill_reads_only_what_is_missing_up_to_capacity() -> None:
    profiles = FakeProfiles(n_items=40)
    full = ItemInfoCache(profiles, capacity=100)
    await full.lookup(["i3"], timeout=1.0)  # one item read on the request path
    assert profiles.calls["get_items"] == 1
    ids = sorted(profiles.items)
    assert await full.fill(ids, timeout=1.0, batch=7) == 39  # the 39 others, six batches
    assert profiles.calls["get_items"] == 7
    info = await full.lookup(["i3", "i39"], timeout=1.0)
    assert info["i39"].title == profiles.items["i39"].title
    assert profiles.calls["get_items"] == 7  # answered from the cache
    assert await full.fill(ids, timeout=1.0) == 0 and profiles.calls["get_items"] == 7
    # A cache smaller than the catalogue stops reading once full.
    small = ItemInfoCache(FakeProfiles(n_items=40), capacity=10)
    assert await small.fill(ids, timeout=1.0, batch=4) == 10
    assert len(small) == 10


async def test_catalogue_refresh_caches_new_items_and_redoes_a_fill_cut_short() -> None:
    # The gateway started on an empty store (as the benchmarks start it): nothing to cache yet.
    profiles = FakeProfiles(n_items=0)
    pipeline = RecommendPipeline(profiles, FakeRanking(profiles), FakeExposure(), PipelineConfig())
    assert await pipeline.refresh_catalogue() == 0
    # The catalogue is loaded: the next refresh sees the version move and caches every item.
    loaded = FakeProfiles(n_items=30)
    profiles.items, profiles.stats = loaded.items, loaded.stats
    assert await pipeline.refresh_catalogue() == 30
    info = await pipeline.items.lookup(["i0", "i29"], timeout=1.0)
    assert info["i29"].title == "Item 29" and profiles.calls["get_items"] == 1
    # A new item whose fill fails (store down for that read) is cached by the next refresh,
    # although the stats' version has not moved since.
    profiles.items["new"] = common_pb2.Item(item_id="new", title="New")
    profiles.stats["new"] = common_pb2.ItemStats(item_id="new", is_tail=True, is_cold=True)
    profiles.failing.add("get_items")
    with pytest.raises(ServiceError):
        await pipeline.refresh_catalogue()
    profiles.failing.clear()
    assert await pipeline.refresh_catalogue() == 1
    reads = profiles.calls["get_items"]
    assert (await pipeline.items.lookup(["new"], timeout=1.0))["new"].title == "New"
    assert profiles.calls["get_items"] == reads
    assert await pipeline.refresh_catalogue() == 0 and profiles.calls["get_items"] == reads


async def test_fallback_refresh_rereads_the_stats_only_when_their_version_moved() -> None:
    profiles = FakeProfiles(n_items=40)
    fallback = FallbackList(profiles, size=6)
    await fallback.refresh()
    assert profiles.calls["list_item_stats"] == 1
    assert [s.item_id for s in fallback.head] == ["i0", "i1", "i2"]
    await fallback.refresh()  # nothing changed: one "unchanged" call, the lists stay
    assert profiles.calls["list_item_stats"] == 2
    assert [s.item_id for s in fallback.head] == ["i0", "i1", "i2"]
    # i5 overtakes the head (its version moves): read in full, the lists follow.
    profiles.stats["i5"] = common_pb2.ItemStats(item_id="i5", interaction_count=100)
    await fallback.refresh()
    assert [s.item_id for s in fallback.head] == ["i5", "i0", "i1"]
    assert profiles.calls["list_item_stats"] == 3


async def test_fallback_refresh_pages_through_the_catalogue() -> None:
    profiles = FakeProfiles(n_items=25_000)
    fallback = FallbackList(profiles, size=4)
    await fallback.refresh()
    assert profiles.calls["list_item_stats"] == 3  # pages of 10,000
    assert [s.item_id for s in fallback.head] == ["i0", "i1"]
    assert len(fallback.tail) == 2 and all(s.is_tail for s in fallback.tail)


def test_the_gateway_fetches_the_history_ranking_reads_and_no_more() -> None:
    # Ranking's scorer reads the most recent max_history entries; the gateway asks profiles for
    # exactly those (fewer would change the lists, more would be read and sent to be dropped).
    assert GatewaySettings().history_limit == ScorerConfig().max_history
    assert PipelineConfig().history_limit == GatewaySettings().history_limit
