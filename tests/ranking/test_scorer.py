"""The scorer: sources, evidence-weighted blend, exclusions, tail/cold pool, fallbacks."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from services.common.settings import SettingsError, load_settings
from services.ranking import index as index_module
from services.ranking import scorer
from services.ranking.catalog import CatalogSnapshot, build_snapshot
from services.ranking.collaborative import AlsParams, InteractionBatch, train_als
from services.ranking.config import RankingSettings
from services.ranking.index import IndexParams
from services.ranking.learned import FEATURE_NAMES
from services.ranking.scorer import (
    CollaborativeView,
    HistoryItem,
    RankQuery,
    ScorerConfig,
    VectorSource,
    blend,
    evidence_weight,
    fit_content_map,
    min_max,
    rank,
    recency_weights,
    select_with_reserves,
    user_vector,
)
from tests.ranking.synthetic import World, make_world

CONFIG = ScorerConfig()


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.fixture(scope="module")
def snapshot(world: World) -> CatalogSnapshot:
    return build_snapshot(world.items(), world.stats(), IndexParams())


@pytest.fixture(scope="module")
def view(world: World, snapshot: CatalogSnapshot) -> CollaborativeView:
    rows = world.interactions()
    model = train_als(
        [InteractionBatch([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])],
        AlsParams(factors=16, iterations=8),
    )
    return CollaborativeView.build(model, snapshot)


def history_of(world: World, user: str) -> list[HistoryItem]:
    _, items = world.users[user]
    return [HistoryItem(i) for i in reversed(items)]  # most recent first


def category(world: World, item_id: str) -> str:
    return world.item_category[world.item_ids.index(item_id)]


def test_blend_is_pure_content_for_cold_items_and_mostly_collaborative_for_head_items() -> None:
    content = np.array([0.9, 0.1, 0.4], dtype=np.float32)
    collaborative = np.array([0.2, 0.95, 0.7], dtype=np.float32)
    evidence = np.array([0.0, 1000.0, 20.0], dtype=np.float32)
    score = blend(content, collaborative, evidence, kappa=20.0)
    assert score[0] == pytest.approx(0.9)  # cold: content only
    assert abs(score[1] - 0.95) < abs(score[1] - 0.1)  # head: collaborative dominates
    assert score[1] == pytest.approx(0.95 * 1000 / 1020 + 0.1 * 20 / 1020, rel=1e-5)
    assert score[2] == pytest.approx(0.55)  # n = kappa: half and half


def test_evidence_weight_grows_with_interactions() -> None:
    weights = evidence_weight([0, 1, 20, 1000], kappa=20.0)
    assert weights[0] == 0.0 and weights[2] == pytest.approx(0.5)
    assert np.all(np.diff(weights) > 0) and weights[-1] < 1.0


def test_min_max_and_recency_weights() -> None:
    np.testing.assert_allclose(min_max(np.array([2.0, 4.0, 3.0], dtype=np.float32)), [0, 1, 0.5])
    np.testing.assert_array_equal(min_max(np.array([5.0, 5.0], dtype=np.float32)), [1, 1])
    valid = np.array([True, False, True])
    np.testing.assert_allclose(
        min_max(np.array([1.0, 9.0, 3.0], dtype=np.float32), valid), [0, 0, 1]
    )
    weights = recency_weights(21, half_life=10)
    assert (
        weights[0] == 1.0
        and weights[10] == pytest.approx(0.5)
        and weights[20] == pytest.approx(0.25)
    )


def test_user_vector_leans_to_the_most_weighted_items() -> None:
    vectors = np.eye(3, dtype=np.float32)
    vector = user_vector(vectors, np.array([0, 1]), np.array([3.0, 1.0]))
    assert vector is not None
    assert np.linalg.norm(vector) == pytest.approx(1.0)
    assert vector[0] > vector[1] > vector[2] == 0
    assert user_vector(vectors, np.empty(0, dtype=np.int64), []) is None


def test_select_with_reserves_keeps_minimum_tail_and_cold_shares_in_score_order() -> None:
    order = np.arange(10, dtype=np.int64)  # best first
    is_tail = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    is_cold = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)
    chosen = select_with_reserves(order, is_tail, is_cold, 5, 0.4, 0.2)
    assert chosen.tolist() == [0, 1, 2, 6, 8]
    # Without tail items in the pool nothing is forced.
    assert select_with_reserves(order[:6], is_tail, is_cold, 5, 0.4, 0.2).tolist() == [
        0,
        1,
        2,
        3,
        4,
    ]


def test_history_user_gets_distinct_sorted_on_topic_candidates_with_tail_and_cold(
    world: World, snapshot: CatalogSnapshot, view: CollaborativeView
) -> None:
    user = "user-0003"
    liked, items = world.users[user]
    # 50 of the 85 unseen items of the user's category (100 would have to leave the topic).
    result = rank(snapshot, view, RankQuery(history_of(world, user), 50), CONFIG)
    assert result.source is VectorSource.HISTORY
    ids = [c.item_id for c in result.candidates]
    assert len(ids) == 50 and len(set(ids)) == 50
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True)
    assert not set(ids) & set(items)  # seen items are not recommended again
    tail = [c for c in result.candidates if c.is_tail]
    cold = [c for c in result.candidates if c.is_cold]
    assert len(tail) >= 15 and len(cold) >= 5
    # The tail and cold candidates come from the content pool: on the user's topic.
    assert sum(category(world, c.item_id) == liked for c in tail) >= 0.8 * len(tail)
    assert all(category(world, c.item_id) == liked for c in cold)
    assert sum(category(world, i) == liked for i in ids[:20]) >= 18
    for candidate in result.candidates:
        assert candidate.categories == (category(world, candidate.item_id),)
        assert candidate.vector is None
        row = snapshot.rows[candidate.item_id]
        assert candidate.popularity == snapshot.popularity[row]


def test_cold_items_score_by_content_alone(
    world: World, snapshot: CatalogSnapshot, view: CollaborativeView
) -> None:
    result = rank(snapshot, view, RankQuery(history_of(world, "user-0010"), 100), CONFIG)
    cold = [c for c in result.candidates if c.is_cold]
    assert cold and all(c.collaborative_score == 0.0 for c in cold)
    # score = min-max(content) for a = 0: same order as the content score.
    by_score = sorted(cold, key=lambda c: -c.score)
    by_content = sorted(cold, key=lambda c: -c.content_score)
    assert [c.item_id for c in by_score] == [c.item_id for c in by_content]


def test_kappa_moves_the_blend_between_content_and_collaborative(
    world: World, snapshot: CatalogSnapshot, view: CollaborativeView
) -> None:
    history = history_of(world, "user-0005")
    content_only = dataclasses.replace(CONFIG, kappa=1e12, min_tail_share=0, min_cold_share=0)
    result = rank(snapshot, view, RankQuery(history, 60), content_only)
    contents = [c.content_score for c in result.candidates]
    assert contents == sorted(contents, reverse=True)
    collaborative_only = dataclasses.replace(content_only, kappa=1e-9)
    result = rank(snapshot, view, RankQuery(history, 60), collaborative_only)
    trained = [c for c in result.candidates if view.evidence[snapshot.rows[c.item_id]] > 0]
    assert len(trained) >= 15
    collaborative = [c.collaborative_score for c in trained]
    assert collaborative == sorted(collaborative, reverse=True)


def test_exclusions_are_honoured(
    world: World, snapshot: CatalogSnapshot, view: CollaborativeView
) -> None:
    history = history_of(world, "user-0001")
    first = rank(snapshot, view, RankQuery(history, 50), CONFIG)
    excluded = [c.item_id for c in first.candidates[:25]]
    second = rank(snapshot, view, RankQuery(history, 50, exclude_item_ids=excluded), CONFIG)
    assert len(second.candidates) == 50
    assert not {c.item_id for c in second.candidates} & set(excluded)
    keep_history = dataclasses.replace(CONFIG, exclude_history=False)
    third = rank(snapshot, view, RankQuery(history, 100), keep_history)
    assert {c.item_id for c in third.candidates} & {h.item_id for h in history}


def test_a_query_can_ask_for_its_history_items_but_not_for_excluded_ones(
    world: World, snapshot: CatalogSnapshot, view: CollaborativeView
) -> None:
    history = history_of(world, "user-0001")
    history_ids = {h.item_id for h in history}
    default = rank(snapshot, view, RankQuery(history, 100), CONFIG)
    assert not {c.item_id for c in default.candidates} & history_ids
    asked = rank(snapshot, view, RankQuery(history, 100, include_history=True), CONFIG)
    returned = {c.item_id for c in asked.candidates} & history_ids
    assert returned
    # The request's own exclusions still apply to history items.
    dropped = sorted(returned)[0]
    query = RankQuery(history, 100, exclude_item_ids=[dropped], include_history=True)
    again = rank(snapshot, view, query, CONFIG)
    assert dropped not in {c.item_id for c in again.candidates}
    assert {c.item_id for c in again.candidates} & history_ids


def test_user_unseen_at_training_gets_collaborative_scores_by_fold_in(
    world: World, snapshot: CatalogSnapshot, view: CollaborativeView
) -> None:
    items = [i for i, c in zip(world.item_ids, world.item_category, strict=True) if c == "chess"]
    history = [HistoryItem(i) for i in items[:4]]
    result = rank(snapshot, view, RankQuery(history, 40), CONFIG)
    assert result.source is VectorSource.HISTORY
    assert any(c.collaborative_score != 0.0 for c in result.candidates)
    assert sum(category(world, c.item_id) == "chess" for c in result.candidates) >= 36


def test_interests_only_user_gets_on_topic_items(
    world: World, snapshot: CatalogSnapshot, view: CollaborativeView
) -> None:
    query = RankQuery([], 30, interests_vector=world.category_vector("space"), include_vectors=True)
    result = rank(snapshot, view, query, CONFIG)
    assert result.source is VectorSource.INTERESTS
    assert len(result.candidates) == 30
    assert all(category(world, c.item_id) == "space" for c in result.candidates)
    assert any(c.is_cold for c in result.candidates)
    for candidate in result.candidates:
        assert candidate.vector is not None and candidate.vector.shape == (world.dimension,)


def test_no_signal_falls_back_to_popular_and_tail_items(
    world: World, snapshot: CatalogSnapshot, view: CollaborativeView
) -> None:
    unknown = [HistoryItem("not-in-catalogue")]
    for query in (RankQuery([], 20), RankQuery(unknown, 20)):
        result = rank(snapshot, view, query, CONFIG)
        assert result.source is VectorSource.NONE
        assert len(result.candidates) == 20
        top = result.candidates[0]
        assert top.popularity == snapshot.popularity.max()
        assert sum(c.is_tail for c in result.candidates) >= 6
        scores = [c.score for c in result.candidates]
        assert scores == sorted(scores, reverse=True)
    wrong_dimension = RankQuery([], 5, interests_vector=np.ones(world.dimension + 1, np.float32))
    assert rank(snapshot, view, wrong_dimension, CONFIG).source is VectorSource.NONE


def test_without_a_collaborative_model_scores_are_content(
    world: World, snapshot: CatalogSnapshot
) -> None:
    result = rank(snapshot, None, RankQuery(history_of(world, "user-0002"), 50), CONFIG)
    assert result.source is VectorSource.HISTORY
    assert all(c.collaborative_score == 0.0 for c in result.candidates)
    assert len({c.item_id for c in result.candidates}) == 50


def test_empty_catalogue_gives_no_candidates(world: World) -> None:
    empty = build_snapshot(
        dataclasses.replace(
            world.items(), item_ids=[], categories=[], vectors=np.zeros((0, 32), np.float32)
        ),
        [],
        IndexParams(),
    )
    result = rank(empty, None, RankQuery([HistoryItem("x")], 10), CONFIG)
    assert result.candidates == [] and result.source is VectorSource.NONE


def test_hnsw_snapshot_gives_the_same_kind_of_answer(world: World, view: CollaborativeView) -> None:
    snapshot = build_snapshot(world.items(), world.stats(), IndexParams(exact_max_items=100))
    assert snapshot.index.kind == "hnsw"
    aligned = CollaborativeView.build(view.model, snapshot)
    user = "user-0007"
    liked, items = world.users[user]
    result = rank(snapshot, aligned, RankQuery(history_of(world, user), 60), CONFIG)
    ids = [c.item_id for c in result.candidates]
    assert len(ids) == 60 == len(set(ids)) and not set(ids) & set(items)
    assert sum(category(world, i) == liked for i in ids) >= 54
    assert sum(c.is_tail for c in result.candidates) >= 18


def test_a_source_sized_zero_walks_no_index(
    world: World,
    snapshot: CatalogSnapshot,
    view: CollaborativeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    searched: list[list[int]] = []
    real = index_module.multi_search

    def spy(index: Any, queries: Any, requests: Any, **kwargs: Any) -> Any:
        searched.append([request.k for request in requests])
        return real(index, queries, requests, **kwargs)

    monkeypatch.setattr(scorer, "multi_search", spy)
    query = RankQuery(history_of(world, "user-0003"), 50)
    default = rank(snapshot, view, query, CONFIG)
    # content 1 x 50, tail pool 0.5 x 50, cold pool max(20, 0.25 x 50), short term 0.5 x 50.
    assert searched == [[50, 25, 20, 25]]
    searched.clear()
    lean = dataclasses.replace(CONFIG, cold_pool=0.0, short_term_pool=0.0)
    result = rank(snapshot, view, query, lean)
    assert searched == [[50, 25]]
    # Fewer sources, still a full answer of the user's unseen items.
    ids = [c.item_id for c in result.candidates]
    assert len(ids) == 50 and not set(ids) & set(world.users["user-0003"][1])
    assert len(default.candidates) == 50


def test_source_sizes_are_settings_and_must_be_non_negative() -> None:
    settings = load_settings(
        RankingSettings,
        "LONGTAIL_RANKING_",
        {"LONGTAIL_RANKING_SHORT_TERM_POOL": "0", "LONGTAIL_RANKING_CONTENT_POOL": "0.5"},
    )
    config = settings.scorer_config()
    assert config.short_term_pool == 0.0 and config.content_pool == 0.5
    assert config.tower_pool == ScorerConfig().tower_pool
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(SettingsError, match="tail_pool"):
            load_settings(RankingSettings, "LONGTAIL_RANKING_", {"LONGTAIL_RANKING_TAIL_POOL": bad})


def test_the_content_map_recovers_a_linear_relation() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 12)).astype(np.float32)
    truth = rng.standard_normal((12, 4)).astype(np.float32)
    mapped = fit_content_map(vectors, vectors @ truth, ridge=1e-4)
    assert mapped is not None and mapped.shape == (12, 4)
    np.testing.assert_allclose(mapped, truth, atol=1e-2)
    assert fit_content_map(vectors[:1], (vectors @ truth)[:1], 0.1) is None


def test_cold_items_reach_the_pool_through_their_mapped_factors(
    world: World, snapshot: CatalogSnapshot, view: CollaborativeView
) -> None:
    # The map is fitted on the model's (warm) items; every cold item gets a mapped factor.
    assert view.content_map is not None and view.cold_mapped is not None
    assert len(view.cold_rows) == int(snapshot.is_cold.sum()) > 0
    user = "user-0003"
    liked, _ = world.users[user]
    # Every content source off: cold items can only come from the mapped source.
    only_mapped = dataclasses.replace(
        CONFIG, content_pool=0.0, tail_pool=0.0, cold_pool=0.0, short_term_pool=0.0
    )
    pool = scorer.candidate_pool(
        snapshot, view, RankQuery(history_of(world, user), 40), only_mapped
    )
    cold = [snapshot.item_ids[r] for r in pool.rows if snapshot.is_cold[r]]
    assert len(cold) == 20  # max(min_source, 0.25 x 40)
    # Mapped from text to the collaborative space, they are the user's kind of items.
    assert sum(category(world, item) == liked for item in cold) >= 18
    mapped = FEATURE_NAMES.index("mapped_collaborative")
    rows_cold = snapshot.is_cold[pool.rows]
    assert np.all(pool.features[rows_cold, mapped] != 0.0)
    off = dataclasses.replace(only_mapped, mapped_cold_pool=0.0)
    pool_off = scorer.candidate_pool(snapshot, view, RankQuery(history_of(world, user), 40), off)
    assert not snapshot.is_cold[pool_off.rows].any()
