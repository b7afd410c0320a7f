"""Every metric against small cases computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.suite.evaluation.metrics import (
    ItemFacts,
    coverage_at_k,
    evaluate,
    exposure_counts,
    gini,
    intra_list_diversity,
    lorenz_curve,
    mean_novelty,
    mean_popularity,
    ndcg_at_k,
    novelty_of,
    recall_at_k,
    share_at_k,
)

LOG2_3 = math.log2(3)


def test_recall_counts_hits_in_the_top_k_over_all_relevant() -> None:
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"b", "d", "e"}, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, {"b", "d", "e"}, 4) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, {"z"}, 4) == 0.0
    assert recall_at_k(ranked, set(), 4) is None  # users without test items are left out


def test_ndcg_binary_relevance() -> None:
    # hits at positions 1 and 2 (0-based): DCG = 1/log2(3) + 1/log2(4) = 0.63093 + 0.5
    # ideal with 2 relevant: 1 + 1/log2(3) = 1.63093 -> 1.13093 / 1.63093 = 0.69343
    assert ndcg_at_k(["a", "b", "c"], {"b", "c"}, 3) == pytest.approx(
        (1 / LOG2_3 + 0.5) / (1 + 1 / LOG2_3)
    )
    assert ndcg_at_k(["a", "b", "c"], {"b", "c"}, 3) == pytest.approx(0.693426, abs=1e-6)
    # ideal list is capped at K: 3 relevant, K = 2, one hit at position 1
    assert ndcg_at_k(["x", "r1"], {"r1", "r2", "r3"}, 2) == pytest.approx(
        (1 / LOG2_3) / (1 + 1 / LOG2_3)
    )
    assert ndcg_at_k(["a"], {"a"}, 1) == 1.0
    assert ndcg_at_k(["a", "b"], {"z"}, 2) == 0.0
    assert ndcg_at_k(["a"], set(), 2) is None
    # a repeated item counts once
    assert ndcg_at_k(["a", "a", "b"], {"a", "b"}, 2) == 1.0


def test_tail_share_divides_by_k_even_for_short_lists() -> None:
    assert share_at_k(["h1", "t1", "t2"], {"t1", "t2", "t3"}, 10) == pytest.approx(0.2)
    assert share_at_k(["t1", "h1"], {"t1"}, 1) == 1.0


def test_coverage_is_distinct_items_over_catalogue() -> None:
    assert coverage_at_k([["a", "b"], ["b", "c"]], 10, 2) == pytest.approx(0.3)
    assert coverage_at_k([["a", "b"], ["b", "c"]], 10, 1) == pytest.approx(0.2)


def test_gini_of_exposure() -> None:
    assert gini([1, 1, 1, 1]) == 0.0
    # (2i - n - 1) x: -3*1 - 1*2 + 1*3 + 3*4 = 10; / (4 * 10) = 0.25
    assert gini([4, 3, 2, 1]) == pytest.approx(0.25)
    # one item takes everything: (n - 1) / n
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert gini([0, 0, 0]) == 0.0
    # never-shown catalogue items count with 0: exposures [2, 0] -> 0.5
    counts = exposure_counts([["a"], ["a"]], ["a", "b"], 10)
    assert counts.tolist() == [2, 0]
    assert gini(counts) == pytest.approx(0.5)


def test_lorenz_curve() -> None:
    x, y = lorenz_curve([3, 0, 1])
    assert x.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert y.tolist() == pytest.approx([0, 0, 0.25, 1.0])
    x, y = lorenz_curve([0, 0])
    assert y.tolist() == pytest.approx(x.tolist())


def test_arp_and_novelty() -> None:
    popularity = {"a": 7, "b": 0, "c": 5}
    assert mean_popularity(["a", "b"], popularity, 10) == pytest.approx(3.5)
    assert mean_popularity([], popularity, 10) is None
    # |train| = 15: -log2((7+1)/16) = 1; cold: -log2(1/16) = 4
    assert novelty_of("a", popularity, 15) == pytest.approx(1.0)
    assert novelty_of("b", popularity, 15) == pytest.approx(4.0)
    assert mean_novelty(["a", "b"], popularity, 15, 10) == pytest.approx(2.5)


def test_intra_list_diversity_with_vectors_and_with_categories() -> None:
    r = 1 / math.sqrt(2)
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "c": np.array([r, r])}
    # cosines: ab 0, ac 0.7071, bc 0.7071 -> mean 0.4714 -> 0.5286
    assert intra_list_diversity(["a", "b", "c"], 3, vectors) == pytest.approx(1 - 2 * r / 3)
    assert intra_list_diversity(["a", "b"], 3, vectors) == pytest.approx(1.0)
    assert intra_list_diversity(["a"], 3, vectors) is None
    categories = {"a": frozenset({"x"}), "b": frozenset({"x", "y"}), "c": frozenset()}
    # Jaccard: ab 1/2, ac 0, bc 0 -> mean 1/6 -> 5/6
    assert intra_list_diversity(["a", "b", "c"], 3, None, categories) == pytest.approx(5 / 6)


def _facts() -> ItemFacts:
    # 10 items; training counts i0:5 i1:4 i2:3 i3:1 -> |train| = 13; head = ceil(0.2*10) = 2 items
    catalogue = [f"i{n}" for n in range(10)]
    train = ["i0"] * 5 + ["i1"] * 4 + ["i2"] * 3 + ["i3"]
    categories = {f"i{n}": ["x"] if n % 2 else ["y"] for n in range(10)}
    return ItemFacts.from_training(catalogue, train, categories)


def test_item_facts_use_the_shared_head_definition() -> None:
    facts = _facts()
    assert facts.head == {"i0", "i1"}
    assert facts.train_size == 13
    assert facts.is_tail("i2") and not facts.is_cold("i2")
    assert facts.is_cold("i5") and facts.is_tail("i5")
    assert facts.ild_space == "categories"


def test_evaluate_over_two_users() -> None:
    facts = _facts()
    relevant = {"u1": frozenset({"i0", "i2", "i5"}), "u2": frozenset({"i1"}), "u3": frozenset()}
    lists = {"u1": ["i0", "i5", "i3"], "u2": ["i1", "i0"]}
    got = evaluate(lists, relevant, facts, ks=(2,))
    # u1 top-2 [i0, i5]: recall 2/3; u2 [i1, i0]: recall 1 -> 5/6 (u3 has nothing relevant)
    assert got["recall@2"] == pytest.approx((2 / 3 + 1) / 2)
    # u1: DCG 1 + 1/log2(3), ideal (2 of 3 relevant fit in K=2) the same -> 1; u2: 1
    assert got["ndcg@2"] == pytest.approx(1.0)
    # tail recall: only u1 has tail relevant {i2, i5}, hit i5 -> 1/2; cold: {i5} -> 1
    assert got["tail_recall@2"] == pytest.approx(0.5)
    assert got["cold_recall@2"] == pytest.approx(1.0)
    # APLT: u1 1 tail of 2, u2 0 -> 0.25; cold share the same here
    assert got["aplt@2"] == pytest.approx(0.25)
    assert got["cold_share@2"] == pytest.approx(0.25)
    # distinct {i0, i5, i1} of 10
    assert got["coverage@2"] == pytest.approx(0.3)
    # exposures: i0 2, i1 1, i5 1, seven zeros; sorted x = [0]*7 + [1, 1, 2], n = 10, sum 4
    # sum (2i - 11) x_i = (16-11)*1 + (18-11)*1 + (20-11)*2 = 5 + 7 + 18 = 30 -> 30/40 = 0.75
    assert got["gini@2"] == pytest.approx(0.75)
    # ARP: u1 (5 + 0)/2 = 2.5, u2 (4 + 5)/2 = 4.5 -> 3.5
    assert got["arp@2"] == pytest.approx(3.5)
    nov = {c: -math.log2((c + 1) / 14) for c in (0, 4, 5)}
    assert got["novelty@2"] == pytest.approx(((nov[5] + nov[0]) / 2 + (nov[4] + nov[5]) / 2) / 2)
    # categories: i0 y, i5 x -> Jaccard 0 -> ILD 1; i1 x, i0 y -> 1
    assert got["ild@2"] == pytest.approx(1.0)


def test_a_user_without_a_list_counts_as_an_empty_list() -> None:
    facts = _facts()
    got = evaluate({}, {"u1": frozenset({"i0"})}, facts, ks=(10,))
    assert got["recall@10"] == 0.0 and got["aplt@10"] == 0.0 and got["coverage@10"] == 0.0
