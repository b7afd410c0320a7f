"""The learned ranker: fitting, training on a time split, artefact round trip, fallback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from services.common.artifacts import BundleIncompatible, LocalFolderStore
from services.ranking.bundle import load_bundle, save_bundle
from services.ranking.catalog import CatalogSnapshot, build_snapshot
from services.ranking.collaborative import (
    AlsParams,
    CollaborativeModel,
    train_als,
)
from services.ranking.index import IndexParams
from services.ranking.learned import FEATURE_NAMES, LearnedRanker, fit_ranker
from services.ranking.scorer import (
    CollaborativeView,
    HistoryItem,
    RankQuery,
    ScorerConfig,
    blend,
    candidate_pool,
    rank,
)
from services.ranking.training import (
    RankerTrainingParams,
    SlicePool,
    _pool_scores,
    choose_cold_weight,
    train_ranker,
)
from tests.ranking.synthetic import World, make_world

ALS = AlsParams(factors=16, iterations=8)
NO_RESERVES = ScorerConfig(min_tail_share=0.0, min_cold_share=0.0)


def synthetic_rows(
    seed: int = 3, n: int = 4000
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(FEATURE_NAMES))).astype(np.float32)
    # Only content_recent_max carries the label.
    column = FEATURE_NAMES.index("content_recent_max")
    y = (x[:, column] + 0.3 * rng.standard_normal(n) > 1.0).astype(np.float64)
    return x, y


def test_fitting_is_deterministic() -> None:
    x, y = synthetic_rows()
    first, second = fit_ranker(x, y), fit_ranker(x, y)
    assert np.array_equal(first.weights, second.weights)
    assert first.bias == second.bias


def test_a_predictive_feature_gets_the_largest_weight() -> None:
    x, y = synthetic_rows()
    ranker = fit_ranker(x, y)
    column = FEATURE_NAMES.index("content_recent_max")
    assert int(np.argmax(np.abs(ranker.weights))) == column
    assert ranker.weights[column] > 0
    scores = ranker.score(x)
    assert scores[y == 1].mean() > scores[y == 0].mean()


def test_row_weights_count_a_row_as_that_many_copies() -> None:
    x, y = synthetic_rows(n=600)
    twice = np.vstack([x, x[:100]]), np.concatenate([y, y[:100]])
    weights = np.ones(600)
    weights[:100] = 2.0
    # Without the ridge term (whose standardisation differs) the two fits are one model.
    weighted = fit_ranker(x, y, l2=1e-9, weights=weights)
    copied = fit_ranker(*twice, l2=1e-9)
    np.testing.assert_allclose(weighted.score(x), copied.score(x), rtol=1e-3, atol=1e-3)
    assert not np.allclose(weighted.score(x), fit_ranker(x, y, l2=1e-9).score(x), atol=1e-2)
    unweighted = fit_ranker(x, y, weights=np.ones(600))
    assert np.array_equal(unweighted.weights, fit_ranker(x, y).weights)
    for bad in (np.ones(5), -weights, np.zeros(600), np.full(600, np.nan)):
        with pytest.raises(ValueError, match="weights"):
            fit_ranker(x, y, weights=bad)


def _cold_pools(seed: int, users: int = 60) -> list[SlicePool]:
    """Pools of 40 candidates, 10 of them cold. Warm labels follow feature 0 and cold ones
    feature 1; cold items are consumed about as often as warm ones: the more weight the cold
    positives get, the more the ranker lifts cold items, at some cost to warm NDCG."""
    rng = np.random.default_rng(seed)
    cold_column = FEATURE_NAMES.index("is_cold")
    pools = []
    for _ in range(users):
        x = rng.standard_normal((40, len(FEATURE_NAMES))).astype(np.float32)
        cold = np.zeros(40, dtype=bool)
        cold[:10] = True
        x[:, cold_column] = cold
        signal = np.where(cold, x[:, 1], x[:, 0]) + 0.5 * rng.standard_normal(40)
        labels = (signal > np.where(cold, 1.2, 1.0)).astype(np.float64)
        pools.append(SlicePool(x, labels, cold))
    return pools


def test_the_cold_weight_is_the_best_cold_rank_within_the_warm_tolerance() -> None:
    pools = _cold_pools(seed=5)
    strict = RankerTrainingParams(cold_weights=(0.1, 1.0, 10.0), warm_tolerance=0.0)
    loose = dataclasses.replace(strict, warm_tolerance=1.0)
    chosen_strict, scores = choose_cold_weight(pools, strict)
    chosen_loose, again = choose_cold_weight(pools, loose)
    assert scores == again and set(scores) == {"0.1", "1", "10"}
    warm = {w: scores[w][0] for w in scores}
    cold = {w: scores[w][1] for w in scores}
    # No tolerance: the best warm NDCG decides; any tolerance: the best cold MRR among those.
    assert chosen_strict == float(max(warm, key=lambda w: warm[w]))
    assert chosen_loose == float(max(cold, key=lambda w: (cold[w], float(w))))
    assert cold["10"] > cold["0.1"]  # more weight on cold positives ranks them higher
    # One candidate, or no held-out users: that candidate / the largest, without scoring.
    assert choose_cold_weight(pools, dataclasses.replace(strict, cold_weights=(0.5,))) == (0.5, {})
    assert choose_cold_weight(pools[:1], strict) == (10.0, {})


def test_a_cold_label_below_the_top_20_still_moves_the_cold_score() -> None:
    # The ranker scores by feature 0; two pools of 100, one cold positive each: 1st and 40th.
    n = len(FEATURE_NAMES)
    ranker = LearnedRanker(
        FEATURE_NAMES, np.zeros(n, np.float32), np.ones(n, np.float32), np.eye(n)[0], 0.0
    )
    pools = []
    for place in (0, 39):
        x = np.zeros((100, n), dtype=np.float32)
        x[:, 0] = -np.arange(100)  # candidate i ranks (i + 1)th
        labels = np.zeros(100)
        labels[[place, 50]] = 1.0  # the cold positive, and a warm one at 51st
        cold = np.zeros(100, dtype=bool)
        cold[place] = True
        pools.append(SlicePool(x, labels, cold))
    warm, cold_mrr = _pool_scores(ranker, pools)
    assert cold_mrr == pytest.approx((1 / 1 + 1 / 40) / 2)
    assert warm == 0.0  # the warm positive is outside every top 10


def test_the_hidden_layer_learns_an_interaction_and_round_trips() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, len(FEATURE_NAMES))).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0.3).astype(np.float64)  # no linear model separates this

    def auc(scores: npt.NDArray[np.float32]) -> float:
        ranks = np.empty(len(scores))
        ranks[np.argsort(scores)] = np.arange(len(scores))
        positive = y == 1
        return float((ranks[positive].mean() - (positive.sum() - 1) / 2) / (~positive).sum())

    linear, mlp = fit_ranker(x, y), fit_ranker(x, y, hidden=8)
    assert auc(mlp.score(x)) > 0.9 > auc(linear.score(x))
    again = LearnedRanker.from_json(mlp.to_json())
    assert np.allclose(again.score(x), mlp.score(x))
    assert np.array_equal(fit_ranker(x, y, hidden=8).weights, mlp.weights)


def test_one_class_labels_are_rejected() -> None:
    x, _ = synthetic_rows()
    with pytest.raises(ValueError):
        fit_ranker(x, np.zeros(x.shape[0]))


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.fixture(scope="module")
def snapshot(world: World) -> CatalogSnapshot:
    return build_snapshot(world.items(), world.stats(), IndexParams())


@pytest.fixture(scope="module")
def ranker(world: World, snapshot: CatalogSnapshot) -> LearnedRanker:
    fitted = train_ranker(snapshot, [world.timed_batch()], ALS, ScorerConfig(), IndexParams())
    assert fitted is not None
    return fitted


def test_training_on_the_time_split_is_deterministic(
    world: World, snapshot: CatalogSnapshot, ranker: LearnedRanker
) -> None:
    again = train_ranker(snapshot, [world.timed_batch()], ALS, ScorerConfig(), IndexParams())
    assert again is not None
    assert np.array_equal(again.weights, ranker.weights)
    assert ranker.info["users"] > 0 and ranker.info["positives"] > 0
    # The cold positives' weight was chosen among the candidates, each scored on held-out users.
    params = RankerTrainingParams()
    assert ranker.info["cold_weight"] in params.cold_weights
    assert len(ranker.info["cold_weight_scores"]) == len(params.cold_weights)


def test_no_timestamps_means_no_ranker(world: World, snapshot: CatalogSnapshot) -> None:
    batch = dataclasses.replace(world.timed_batch(), timestamps=None)
    assert train_ranker(snapshot, [batch], ALS, ScorerConfig(), IndexParams()) is None


def test_too_few_interactions_per_user_means_no_ranker(
    world: World, snapshot: CatalogSnapshot
) -> None:
    params = RankerTrainingParams(min_interactions=1000)
    batches = [world.timed_batch()]
    assert train_ranker(snapshot, batches, ALS, ScorerConfig(), IndexParams(), params) is None


def test_the_ranker_orders_the_candidates(
    world: World, snapshot: CatalogSnapshot, ranker: LearnedRanker
) -> None:
    batch = world.timed_batch()
    model = train_als([batch], ALS)
    view = CollaborativeView.build(model, snapshot)
    _, items = world.users["user-0003"]
    query = RankQuery([HistoryItem(i) for i in reversed(items)], 30)
    result = rank(snapshot, view, query, NO_RESERVES, ranker)
    scores = [c.score for c in result.candidates]
    assert len(scores) == 30
    assert scores == sorted(scores, reverse=True)
    pool = candidate_pool(snapshot, view, query, NO_RESERVES)
    expected = ranker.score(pool.features)
    assert scores[0] == pytest.approx(float(expected.max()))
    assert not {c.item_id for c in result.candidates} & set(items)


def test_the_ranker_is_stored_and_loaded_with_the_model(
    tmp_path: Path, world: World, ranker: LearnedRanker
) -> None:
    model = train_als([world.timed_batch()], ALS, version="with-ranker")
    model.ranker = ranker
    store = LocalFolderStore(tmp_path)
    save_bundle(store, model, code_version="test")
    manifest, loaded = load_bundle(store, "with-ranker")
    assert manifest.kinds == ["collaborative", "learned_ranker"]
    assert loaded.ranker is not None
    x, _ = synthetic_rows(n=50)
    assert np.allclose(loaded.ranker.score(x), ranker.score(x))


def test_without_a_ranker_artefact_serving_falls_back_to_the_blend(
    tmp_path: Path, world: World, snapshot: CatalogSnapshot
) -> None:
    model = train_als([world.timed_batch()], ALS, version="plain")
    store = LocalFolderStore(tmp_path)
    save_bundle(store, model, code_version="test")
    loaded: CollaborativeModel = load_bundle(store, "plain")[1]
    assert loaded.ranker is None
    view = CollaborativeView.build(loaded, snapshot)
    _, items = world.users["user-0005"]
    query = RankQuery([HistoryItem(i) for i in reversed(items)], 20)
    result = rank(snapshot, view, query, NO_RESERVES, loaded.ranker)
    pool = candidate_pool(snapshot, view, query, NO_RESERVES)
    blended = blend(pool.content_norm, pool.collaborative_norm, pool.evidence, NO_RESERVES.kappa)
    assert result.candidates[0].score == pytest.approx(float(blended.max()))


def test_a_ranker_fitted_on_other_features_makes_the_bundle_incompatible(
    tmp_path: Path, world: World, ranker: LearnedRanker
) -> None:
    """Refused whole (the replica keeps its previous model) rather than served half."""
    model = train_als([world.timed_batch()], ALS, version="other-features")
    model.ranker = dataclasses.replace(
        ranker, feature_names=tuple(f"old_{name}" for name in ranker.feature_names)
    )
    store = LocalFolderStore(tmp_path)
    save_bundle(store, model, code_version="test")
    with pytest.raises(BundleIncompatible, match="other features"):
        load_bundle(store, "other-features")
