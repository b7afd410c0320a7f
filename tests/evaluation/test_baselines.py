"""Baselines on a tiny synthetic data set, plus the xQuAD and top-k rules by hand."""

from __future__ import annotations

import numpy as np
import pytest

from services.suite.evaluation.baselines import (
    Als,
    AlsParams,
    ContentOnly,
    MostPopular,
    RandomItems,
    TrainMatrix,
    recommend,
    scored_lists,
    top_k,
    xquad_lists,
    xquad_order,
)

ITEMS = [f"i{n}" for n in range(12)]


def two_groups() -> TrainMatrix:
    """Users a0..a5 like items i0..i5, users b0..b5 like i6..i11; each user misses one item of
    their group, and the popularity within each group falls with the index."""
    pairs: list[tuple[str, str]] = []
    for group, offset in (("a", 0), ("b", 6)):
        for u in range(6):
            for n in range(6):
                if n != u:
                    pairs.append((f"{group}{u}", f"i{offset + n}"))
    pairs += [("a0", "i1"), ("a1", "i0")]  # a repeated pair counts once
    return TrainMatrix.build(pairs, ITEMS, users=["nobody"])


def test_train_matrix_is_binary_and_keeps_empty_users() -> None:
    train = two_groups()
    assert train.matrix.max() == 1.0
    assert train.popularity.tolist() == [5.0] * 12
    assert len(train.seen(train.user_index["nobody"])) == 0


def test_top_k_breaks_ties_by_index_and_drops_excluded() -> None:
    scores = np.array([1.0, 3.0, 3.0, 2.0, -np.inf])
    assert top_k(scores, 3).tolist() == [1, 2, 3]
    assert top_k(scores, 10).tolist() == [1, 2, 3, 0]
    assert top_k(np.array([-np.inf]), 2).tolist() == []


def test_most_popular_excludes_seen_items() -> None:
    train = TrainMatrix.build(
        [("u", "i0"), ("v", "i0"), ("w", "i0"), ("v", "i1"), ("w", "i1"), ("w", "i2")], ITEMS
    )
    model = MostPopular()
    model.fit(train)
    lists = recommend(model, train, ["u", "w"], 3)
    assert lists["u"] == ["i1", "i2", "i3"]  # i0 seen; ties (0 interactions) in catalogue order
    assert lists["w"] == ["i3", "i4", "i5"]


def test_random_is_seeded_and_excludes_seen() -> None:
    train = two_groups()
    users = ["a0", "b3"]
    lists = []
    for seed in (7, 7, 8):
        model = RandomItems(seed)
        model.fit(train)
        lists.append(recommend(model, train, users, 6))
    assert lists[0] == lists[1]
    assert lists[0] != lists[2]
    assert set(lists[0]["a0"]) <= {"i0"} | set(ITEMS[6:])  # a0 saw i1..i5


def test_als_recovers_the_missing_item_of_the_users_group() -> None:
    train = two_groups()
    lists_by_run = []
    for _ in range(2):
        model = Als(AlsParams(factors=4, regularization=0.01, iterations=15), seed=3)
        model.fit(train)
        lists_by_run.append(recommend(model, train, ["a2", "b4", "nobody"], 1))
    assert lists_by_run[0] == lists_by_run[1]  # same seed, same factors
    assert lists_by_run[0]["a2"] == ["i2"]
    assert lists_by_run[0]["b4"] == ["i10"]
    # a user without history gets the most-popular list (all tie here: catalogue order)
    assert lists_by_run[0]["nobody"] == ["i0"]


def test_content_only_ranks_by_similarity_to_the_mean_history_vector() -> None:
    # i0..i5 point along x, i6..i11 along y; i5 leans a bit towards y
    vectors = {f"i{n}": np.array([1.0, 0.0]) for n in range(5)}
    vectors |= {f"i{n}": np.array([0.0, 1.0]) for n in range(6, 12)}
    vectors["i5"] = np.array([1.0, 0.3])
    train = TrainMatrix.build([("u", "i0"), ("u", "i1"), ("v", "i6")], ITEMS)
    model = ContentOnly(vectors)
    model.fit(train)
    lists = recommend(model, train, ["u", "v"], 4)
    assert lists["u"] == ["i2", "i3", "i4", "i5"]
    assert lists["v"][:3] == ["i7", "i8", "i9"]


@pytest.mark.parametrize(
    ("lam", "p_tail", "expected"),
    [
        # rel = [1, 0.889, 0.444, 0]; gains step 1: 0.75, 0.694, 0.472, 0.25 -> item 0 (head);
        # head covered: 0.444, 0.472 (tail bonus 0.25), 0.25 -> item 2; then relevance
        (0.5, 0.5, [0, 2, 1, 3]),
        (0.0, 0.5, [0, 1, 2, 3]),
        # only the tail aspect counts: the first tail item, then relevance
        (1.0, 1.0, [2, 0, 1, 3]),
    ],
)
def test_xquad_order_by_hand(lam: float, p_tail: float, expected: list[int]) -> None:
    order = xquad_order([1.0, 0.9, 0.5, 0.1], [False, False, True, True], p_tail, lam, 4)
    assert order == expected


def test_xquad_over_a_pool_raises_the_tail_share_with_lambda() -> None:
    train = TrainMatrix.build(
        [(f"u{n}", "i0") for n in range(5)] + [(f"u{n}", "i1") for n in range(4)] + [("v", "i9")],
        ITEMS,
    )
    model = MostPopular()
    model.fit(train)
    pools = scored_lists(model, train, ["v"], 10)
    head = frozenset({"i0", "i1", "i2"})
    plain = xquad_lists(pools, train, head, 0.0, 3)["v"]
    assert plain == ["i0", "i1", "i2"]
    # v's history is all tail (P(tail|v) = 1): with lambda 1 a tail item comes first
    boosted = xquad_lists(pools, train, head, 1.0, 3)["v"]
    assert boosted == ["i3", "i0", "i1"]
