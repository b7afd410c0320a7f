"""The ranker's slice with simulated cold items: cold items that turn out relevant, seen in
training, so that serving does not rank every cold item as never relevant."""

from __future__ import annotations

import numpy as np

from services.ranking.catalog import build_snapshot
from services.ranking.collaborative import AlsParams, train_als
from services.ranking.index import IndexParams
from services.ranking.learned import LearnedRanker
from services.ranking.scorer import (
    CollaborativeView,
    HistoryItem,
    RankQuery,
    ScorerConfig,
    candidate_pool,
)
from services.ranking.training import (
    RankerTrainingParams,
    simulated_cold_items,
    train_ranker,
)
from tests.ranking.synthetic import World, make_world

ALS = AlsParams(factors=16, iterations=8)
# Cold candidates reserved in every pool, as serving does (min_cold_share).
CONFIG = ScorerConfig(min_tail_share=0.0, min_cold_share=0.2)


def test_the_simulated_cold_items_depend_on_the_seed_and_the_set_only() -> None:
    items = [f"item-{i}" for i in range(101)]
    chosen = simulated_cold_items(items, 0.1, seed=3)
    assert len(chosen) == 10
    assert simulated_cold_items(list(reversed(items)) + items[:5], 0.1, seed=3) == chosen
    assert simulated_cold_items(items, 0.1, seed=4) != chosen
    assert simulated_cold_items(items, 0.0, seed=3) == frozenset()


def _fit(world: World, share: float) -> LearnedRanker:
    snapshot = build_snapshot(world.items(), world.stats(), IndexParams())
    ranker = train_ranker(
        snapshot,
        [world.timed_batch()],
        ALS,
        CONFIG,
        IndexParams(),
        RankerTrainingParams(cold_item_share=share),
    )
    assert ranker is not None
    return ranker


def test_cold_positives_reach_the_ranker_only_with_simulated_cold_items() -> None:
    world = make_world(n_items=400, n_users=160, per_user=20, active_share=0.6)
    without = _fit(world, 0.0)
    with_cold = _fit(world, 0.2)
    assert without.info["simulated_cold_items"] == 0 and without.info["cold_positives"] == 0
    assert with_cold.info["simulated_cold_items"] > 0 and with_cold.info["cold_positives"] > 0
    # Deterministic: the same data and seed give the same ranker.
    assert np.array_equal(_fit(world, 0.2).weights, with_cold.weights)


def test_relevant_cold_items_rank_higher_when_the_ranker_saw_cold_positives() -> None:
    """Serving on a catalogue with real cold items (never interacted with): among each user's
    pool, the cold items of the user's own category (the relevant ones in this world) rank
    better with the ranker that trained on simulated cold items."""
    world = make_world(n_items=400, n_users=160, per_user=20, active_share=0.6)
    without = _fit(world, 0.0)
    with_cold = _fit(world, 0.2)
    snapshot = build_snapshot(world.items(), world.stats(), IndexParams())
    model = train_als([world.timed_batch()], ALS)
    view = CollaborativeView.build(model, snapshot)
    category = dict(zip(world.item_ids, world.item_category, strict=True))
    counts = world.counts()

    def mean_cold_rank(ranker: LearnedRanker) -> float:
        ranks: list[float] = []
        for liked, items in list(world.users.values())[:60]:
            query = RankQuery([HistoryItem(i) for i in reversed(items)], 100)
            pool = candidate_pool(snapshot, view, query, CONFIG)
            order = np.argsort(-ranker.score(pool.features), kind="stable")
            position = np.empty_like(order)
            position[order] = np.arange(order.size)
            for row, where in zip(pool.rows, position, strict=True):
                item = snapshot.item_ids[row]
                if counts[item] == 0 and category[item] == liked:
                    ranks.append(where / max(1, order.size - 1))
        assert ranks, "the pools held no relevant cold item"
        return float(np.mean(ranks))

    assert mean_cold_rank(with_cold) < mean_cold_rank(without)
