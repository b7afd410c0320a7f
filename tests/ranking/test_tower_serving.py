"""The user tower in ranking: fitted with the ranker, carried by the bundle, used by the scorer."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.common.artifacts import LocalFolderStore
from services.ranking import index as index_module
from services.ranking import scorer
from services.ranking.bundle import TOWER_KIND, load_bundle, save_bundle
from services.ranking.catalog import CatalogSnapshot, build_snapshot
from services.ranking.collaborative import AlsParams
from services.ranking.index import IndexParams
from services.ranking.learned import FEATURE_NAMES
from services.ranking.scorer import (
    CollaborativeView,
    HistoryItem,
    RankQuery,
    ScorerConfig,
    candidate_pool,
    fit_content_map,
)
from services.ranking.training import MAP_RIDGES, FittedModels, RankerTrainingParams, fit_models
from tests.ranking.synthetic import World, make_world

ALS = AlsParams(factors=16, iterations=8)
CONFIG = ScorerConfig()
TOWER = FEATURE_NAMES.index("tower_user")


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.fixture(scope="module")
def snapshot(world: World) -> CatalogSnapshot:
    return build_snapshot(world.items(), world.stats(), IndexParams())


@pytest.fixture(scope="module")
def fitted(world: World, snapshot: CatalogSnapshot) -> FittedModels:
    return fit_models(
        snapshot, [world.timed_batch()], ALS, CONFIG, IndexParams(), RankerTrainingParams()
    )


def test_the_tower_is_fitted_with_the_ranker(fitted: FittedModels) -> None:
    assert fitted.model.ranker is not None and fitted.model.tower is not None
    assert fitted.model.ranker.info["tower"] is True
    assert fitted.model.tower.dimension == 32


def test_without_the_tower_its_features_are_zero(world: World, snapshot: CatalogSnapshot) -> None:
    off = fit_models(
        snapshot,
        [world.timed_batch()],
        ALS,
        CONFIG,
        IndexParams(),
        RankerTrainingParams(tower=False),
    )
    assert off.model.tower is None and off.model.ranker is not None
    assert off.model.ranker.info["tower"] is False
    view = CollaborativeView.build(off.model, snapshot)
    _, items = world.users["user-0003"]
    pool = candidate_pool(snapshot, view, RankQuery([HistoryItem(i) for i in items], 50), CONFIG)
    assert not pool.features[:, TOWER].any()


def test_the_tower_scores_the_pool_and_serves_interests(
    world: World, snapshot: CatalogSnapshot, fitted: FittedModels
) -> None:
    view = CollaborativeView.build(fitted.model, snapshot)
    liked, items = world.users["user-0003"]
    pool = candidate_pool(snapshot, view, RankQuery([HistoryItem(i) for i in items], 50), CONFIG)
    assert np.abs(pool.features[:, TOWER]).max() > 0.1
    # A user with stated interests and no history goes through the same tower.
    interests = world.category_vector(liked)
    only_interests = candidate_pool(
        snapshot, view, RankQuery([], 50, interests_vector=interests), CONFIG
    )
    assert np.abs(only_interests.features[:, TOWER]).max() > 0.1


def test_the_bundle_carries_the_tower(
    tmp_path: Path, world: World, snapshot: CatalogSnapshot, fitted: FittedModels
) -> None:
    store = LocalFolderStore(tmp_path)
    manifest = save_bundle(store, fitted.model, code_version="test")
    assert TOWER_KIND in manifest.kinds
    _, loaded = load_bundle(store, manifest.bundle_id, manifest.sha256)
    assert loaded.tower is not None and fitted.model.tower is not None
    history = snapshot.vectors[:7]
    original = fitted.model.tower.vector(history)
    again = loaded.tower.vector(history)
    assert original is not None and again is not None
    np.testing.assert_array_equal(original, again)


def test_the_tower_can_replace_the_content_vector_in_retrieval(
    world: World,
    snapshot: CatalogSnapshot,
    fitted: FittedModels,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    searched: list[list[tuple[int, int, int]]] = []
    real = index_module.multi_search

    def spy(index: Any, queries: Any, requests: Any, **kwargs: Any) -> Any:
        searched.append([(r.query, r.k, id(r.pool)) for r in requests])
        return real(index, queries, requests, **kwargs)

    monkeypatch.setattr(scorer, "multi_search", spy)
    view = CollaborativeView.build(fitted.model, snapshot)
    _, items = world.users["user-0003"]
    query = RankQuery([HistoryItem(i) for i in items], 40)
    assert CONFIG.tower_replaces_content  # the default (evaluation in the README)
    both = candidate_pool(
        snapshot, view, query, dataclasses.replace(CONFIG, tower_replaces_content=False)
    )
    replaced = candidate_pool(snapshot, view, query, CONFIG)
    tail, cold = id(snapshot.tail_pool), id(snapshot.cold_pool)
    everything = id(None)
    # Content (query 0): all 40, tail 20, cold 20; tower (1): all 40, cold 20; short term (2).
    content = [(0, 40, everything), (0, 20, tail), (0, 20, cold)]
    tower = [(1, 40, everything), (1, 20, cold)]
    assert sorted(searched[0]) == sorted([*content, *tower, (2, 20, everything)])
    # The tower's vector takes every content source, each pool once.
    assert sorted(searched[1]) == sorted(
        [(1, 40, everything), (1, 20, tail), (1, 20, cold), (2, 20, everything)]
    )
    # The candidates are still scored by the history's mean vector as well as by the tower.
    similarity = FEATURE_NAMES.index("content_user")
    assert np.abs(replaced.features[:, similarity]).max() > 0.1
    assert np.abs(replaced.features[:, TOWER]).max() > 0.1
    assert len(replaced.rows) and len(both.rows)


def test_the_map_strength_is_chosen_on_the_slice_and_served(
    snapshot: CatalogSnapshot, fitted: FittedModels
) -> None:
    ranker = fitted.model.ranker
    assert ranker is not None
    recalls = ranker.info["content_map_cold_recall@20"]
    assert set(recalls) == {f"{r:g}" for r in MAP_RIDGES}
    chosen = ranker.info["content_map_ridge"]
    assert recalls[f"{chosen:g}"] == max(recalls.values())
    # Serving builds its map with the chosen strength, whatever the fallback says.
    view = CollaborativeView.build(fitted.model, snapshot, ridge=123.0)
    known = view.catalog_rows >= 0
    expected = fit_content_map(
        snapshot.vectors[view.catalog_rows[known]], fitted.model.item_factors[known], chosen
    )
    assert view.content_map is not None and expected is not None
    np.testing.assert_allclose(view.content_map, expected, rtol=1e-5, atol=1e-6)
