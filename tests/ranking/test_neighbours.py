"""Item-item neighbours by co-consumption (services/ranking/neighbours.py)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from services.ranking.neighbours import ItemNeighbours, fit_item_neighbours

# Users and what they consumed; "u1" consumed item "a" twice (one audience member all the same).
CONSUMED = {
    "u1": ["a", "b", "a"],
    "u2": ["a", "b", "c"],
    "u3": ["c", "d"],
    "u4": ["b", "c"],
}
ROWS = {"a": 0, "b": 1, "c": 2, "d": 3}


def _pairs(order_seed: int | None = None) -> tuple[list[str], list[str]]:
    pairs = [(u, i) for u, items in CONSUMED.items() for i in items]
    if order_seed is not None:
        random.Random(order_seed).shuffle(pairs)
    return [u for u, _ in pairs], [i for _, i in pairs]


def _as_dict(neighbours: ItemNeighbours) -> dict[int, dict[int, float]]:
    out: dict[int, dict[int, float]] = {}
    for row in range(neighbours.item_count):
        lo, hi = neighbours.indptr[row], neighbours.indptr[row + 1]
        out[row] = {
            int(j): float(s)
            for j, s in zip(neighbours.indices[lo:hi], neighbours.similarity[lo:hi], strict=True)
        }
    return out


def test_similarity_is_the_shrunk_cosine_of_the_audiences() -> None:
    users, items = _pairs()
    got = _as_dict(fit_item_neighbours(users, items, ROWS, k=10, shrink=1.0))
    # Audiences: a {u1, u2}, b {u1, u2, u4}, c {u2, u3, u4}, d {u3}.
    expected = {
        (0, 1): 2 / (math.sqrt(2 * 3) + 1),
        (0, 2): 1 / (math.sqrt(2 * 3) + 1),
        (1, 2): 2 / (math.sqrt(3 * 3) + 1),
        (2, 3): 1 / (math.sqrt(3 * 1) + 1),
    }
    for (i, j), value in expected.items():
        assert got[i][j] == pytest.approx(value, rel=1e-6)
        assert got[j][i] == pytest.approx(value, rel=1e-6)
    assert 0 not in got[0]  # never its own neighbour
    assert 3 not in got[0] and 3 not in got[1]  # no shared audience, no entry
    assert got[3] == {2: pytest.approx(expected[(2, 3)], rel=1e-6)}


def test_each_item_keeps_its_k_most_similar_and_the_result_ignores_input_order() -> None:
    users, items = _pairs()
    kept = _as_dict(fit_item_neighbours(users, items, ROWS, k=1, shrink=1.0))
    assert kept[2] == {1: pytest.approx(2 / 4)}  # c: b (2 shared) beats a and d (1 each)
    assert list(kept[0]) == [1]
    first = fit_item_neighbours(users, items, ROWS, k=2)
    shuffled = fit_item_neighbours(*_pairs(order_seed=7), ROWS, k=2)
    for name in ("indptr", "indices", "similarity"):
        assert np.array_equal(getattr(first, name), getattr(shuffled, name))


def test_items_outside_the_model_are_ignored_and_bad_parameters_refused() -> None:
    users, items = _pairs()
    neighbours = fit_item_neighbours([*users, "u9"], [*items, "zz"], ROWS, k=3)
    assert neighbours.item_count == 4
    with pytest.raises(ValueError):
        fit_item_neighbours(users, items, ROWS, k=0)
    with pytest.raises(ValueError):
        fit_item_neighbours(users, items, ROWS, shrink=-1.0)


def test_features_weigh_the_history_and_skip_what_the_model_lacks() -> None:
    users, items = _pairs()
    neighbours = fit_item_neighbours(users, items, ROWS, k=10, shrink=1.0)
    sim = _as_dict(neighbours)
    history = np.asarray([1, 3], dtype=np.int64)  # b (most recent), then d
    weights = np.asarray([0.75, 0.25], dtype=np.float32)
    around = neighbours.around(history, weights, recent=1)
    assert around.rows.tolist() == [0, 2]  # b reaches a and c, d reaches c
    pool = np.asarray([2, -1, 0, 1], dtype=np.int64)  # c, an item the model lacks, a, b
    mean, recent_max, log_sum = around.features(pool)
    c_mean = 0.75 * sim[1][2] + 0.25 * sim[3][2]
    assert mean == pytest.approx([c_mean, 0.0, 0.75 * sim[1][0], 0.0], rel=1e-6)
    # recent = 1: only b counts for the max.
    assert recent_max == pytest.approx([sim[1][2], 0.0, sim[1][0], 0.0], rel=1e-6)
    assert log_sum == pytest.approx(
        [math.log1p(sim[1][2] + sim[3][2]), 0.0, math.log1p(sim[1][0]), 0.0], rel=1e-6
    )
    # The source: best weighted similarity first, exclusions left out.
    assert around.best(5, np.zeros(0, dtype=np.int64)).tolist() == (
        [2, 0] if c_mean > 0.75 * sim[1][0] else [0, 2]
    )
    assert around.best(5, np.asarray([2])).tolist() == [0]
    assert around.best(1, np.zeros(0, dtype=np.int64)).shape == (1,)
    empty = neighbours.around(np.zeros(0, dtype=np.int64), np.zeros(0, np.float32), 5)
    assert all(np.all(part == 0) for part in empty.features(pool))
    assert empty.best(3, np.zeros(0, dtype=np.int64)).shape == (0,)


def test_neighbours_survive_bytes_and_refuse_another_models_items() -> None:
    users, items = _pairs()
    neighbours = fit_item_neighbours(users, items, ROWS, k=2)
    again = ItemNeighbours.from_bytes(neighbours.to_bytes(), item_count=4)
    assert (again.k, again.shrink) == (2, neighbours.shrink)
    for name in ("indptr", "indices", "similarity"):
        assert np.array_equal(getattr(again, name), getattr(neighbours, name))
    with pytest.raises(ValueError, match="do not match"):
        ItemNeighbours.from_bytes(neighbours.to_bytes(), item_count=3)
