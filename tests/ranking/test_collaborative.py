"""ALS training, fold-in, and versioned artefacts on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from services.common.artifacts import LocalFolderStore, list_bundles
from services.ranking.bundle import load_bundle, save_bundle
from services.ranking.collaborative import (
    KIND_CLICK,
    KIND_PURCHASE,
    KIND_RATING,
    KIND_VIEW,
    AlsParams,
    CollaborativeModel,
    InteractionBatch,
    interaction_weight,
    train_als,
)
from tests.ranking.synthetic import CATEGORIES, make_world

PARAMS = AlsParams(factors=16, iterations=8)


def batches(rows: list[tuple[str, str, float]], size: int = 300) -> list[InteractionBatch]:
    return [
        InteractionBatch([r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk])
        for chunk in (rows[i : i + size] for i in range(0, len(rows), size))
    ]


@pytest.fixture(scope="module")
def world_rows() -> list[tuple[str, str, float]]:
    return make_world(n_items=400, n_users=80).interactions()


@pytest.fixture(scope="module")
def model(world_rows: list[tuple[str, str, float]]) -> CollaborativeModel:
    return train_als(batches(world_rows), PARAMS)


def test_interaction_weights_order_signals() -> None:
    assert interaction_weight(KIND_VIEW) < interaction_weight(KIND_CLICK)
    assert interaction_weight(KIND_CLICK) < interaction_weight(KIND_PURCHASE)
    assert interaction_weight(KIND_RATING, 5.0) > interaction_weight(KIND_RATING, 1.0) >= 1.0
    assert interaction_weight(KIND_RATING, -3.0) == 1.0
    assert interaction_weight(0) == 1.0


def test_training_is_deterministic_and_independent_of_paging(
    world_rows: list[tuple[str, str, float]], model: CollaborativeModel
) -> None:
    again = train_als(batches(list(reversed(world_rows)), size=77), PARAMS)
    np.testing.assert_array_equal(again.item_factors, model.item_factors)
    assert again.item_ids == model.item_ids
    assert model.interaction_count == len(world_rows)
    assert model.user_count == 80
    assert model.factors == 16
    counts: dict[str, int] = {}
    for _, item, _ in world_rows:
        counts[item] = counts.get(item, 0) + 1
    assert {i: int(c) for i, c in zip(model.item_ids, model.item_counts, strict=True)} == counts


def test_training_without_interactions_fails() -> None:
    with pytest.raises(ValueError, match="no interactions"):
        train_als([InteractionBatch([], [], [])], PARAMS)


def test_fold_in_matches_implicits_recalculate_user(model: CollaborativeModel) -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    reference = AlternatingLeastSquares(
        factors=16, regularization=PARAMS.regularization, alpha=PARAMS.alpha, iterations=0
    )
    reference.item_factors = model.item_factors
    rows = np.array([3, 10, 3, 42], dtype=np.int64)
    weights = np.array([1.0, 1.5, 0.5, 3.0])
    summed = {3: 1.5, 10: 1.5, 42: 3.0}
    user_items = scipy.sparse.csr_matrix(
        (
            np.array(list(summed.values()), dtype=np.float32),
            (np.zeros(3, dtype=np.int64), np.array(list(summed), dtype=np.int64)),
        ),
        shape=(1, model.item_count),
    )
    expected = reference.recalculate_user(0, user_items)
    folded = model.fold_in(rows, weights)
    assert folded is not None
    np.testing.assert_allclose(folded, expected, atol=1e-4)
    assert model.fold_in(np.empty(0, dtype=np.int64), []) is None


def test_folded_in_user_prefers_their_category(model: CollaborativeModel) -> None:
    world = make_world(n_items=400, n_users=80)
    # A brand-new user with three jazz items (not a training user).
    jazz = [i for i, c in zip(world.item_ids, world.item_category, strict=True) if c == "jazz"]
    rows = np.array([model.item_rows[i] for i in jazz[:3]])
    factor = model.fold_in(rows, np.ones(3))
    assert factor is not None
    scores = model.scores(factor)
    top = np.argsort(-scores)[:20]
    categories = [world.item_category[world.item_ids.index(model.item_ids[r])] for r in top]
    assert categories.count("jazz") >= 16, categories
    assert set(categories) <= set(CATEGORIES)


def test_bundle_round_trip(tmp_path: Path, model: CollaborativeModel) -> None:
    store = LocalFolderStore(tmp_path)
    manifest = save_bundle(store, model, code_version="test")
    assert manifest.bundle_id == model.version and list_bundles(store) == [model.version]
    entry = manifest.models[0]
    assert entry["kind"] == "collaborative" and entry["items"] == model.item_count
    assert entry["users"] == model.user_count
    _, loaded = load_bundle(store, model.version, manifest.sha256)
    assert loaded.version == model.version
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
    np.testing.assert_array_equal(loaded.item_counts, model.item_counts)
    # User factors are not stored: serving folds users in from their history.
    assert loaded.item_ids == model.item_ids and loaded.user_ids == []
    assert loaded.params == model.params
    rows = np.array([1, 2, 5])
    folded, expected = loaded.fold_in(rows, np.ones(3)), model.fold_in(rows, np.ones(3))
    assert folded is not None and expected is not None
    np.testing.assert_allclose(folded, expected)
    with pytest.raises(FileExistsError):
        save_bundle(store, model, code_version="test")


def test_every_version_is_its_own_bundle(
    tmp_path: Path, world_rows: list[tuple[str, str, float]]
) -> None:
    store = LocalFolderStore(tmp_path)
    versions = {}
    for iterations in (2, 3, 4):
        trained = train_als(batches(world_rows), AlsParams(factors=8, iterations=iterations))
        save_bundle(store, trained, code_version="test")
        versions[trained.version] = iterations
    assert sorted(list_bundles(store)) == sorted(versions)
    for version, iterations in versions.items():
        assert load_bundle(store, version)[1].params.iterations == iterations
    with pytest.raises(ValueError, match="bad bundle id"):
        load_bundle(store, "../escape")
