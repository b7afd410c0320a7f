"""The cold-start part of ``longtail eval --split cold-items``: its metrics, the cold baselines,
the catalogue the suite is given, the tables and the command line."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from services.ranking.engine import MAX_EXCLUSIONS
from services.suite.datasets import InteractionRecord, ItemRecord
from services.suite.evaluation import cold
from services.suite.evaluation.baselines import ContentOnly, TrainMatrix, recommend
from services.suite.evaluation.command import add_eval_arguments
from services.suite.evaluation.runner import catalogue_to_serve
from services.suite.evaluation.split import ColdItemSplit

ITEMS = [f"i{n}" for n in range(8)]
# i0..i3 warm (in training); i4..i7 held out.
HELD_OUT = frozenset({"i4", "i5", "i6", "i7"})


def test_the_exclusion_limit_is_the_ranking_services() -> None:
    assert cold.RANK_MAX_EXCLUSIONS == MAX_EXCLUSIONS


def test_accuracy_is_recall_and_ndcg_over_the_relevant_users() -> None:
    relevant = {"u": frozenset({"i4", "i6"}), "v": frozenset({"i5"}), "w": frozenset()}
    lists = {"u": ["i6", "i0", "i4"], "v": ["i0"]}
    got = cold.accuracy(lists, relevant, (1, 3))
    # u: one of two at K=1; both at K=3. v: none. w has nothing relevant: not counted.
    assert got["recall@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert got["recall@3"] == pytest.approx((1.0 + 0.0) / 2)
    ideal = 1 + 1 / math.log2(3)
    assert got["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / ideal / 2)
    assert cold.accuracy({}, relevant, (3,)) == {"recall@3": 0.0, "ndcg@3": 0.0}


def test_placement_counts_the_places_given_to_held_out_items_and_their_hits() -> None:
    relevant = {"u": frozenset({"i4", "i6"}), "v": frozenset({"i5"}), "w": frozenset()}
    # u: two held-out items in its top 3 (i6 a hit, i7 not); v: none in its top 3 (i5 at 4th).
    lists = {"u": ["i6", "i0", "i7", "i4"], "v": ["i0", "i1", "i2", "i5"], "w": ["i4"]}
    got = cold.placement(lists, relevant, HELD_OUT, (3, 4))
    # w has nothing relevant: not counted, as in accuracy.
    assert got["places@3"] == pytest.approx((2 + 0) / 2)
    assert got["hits_per_place@3"] == pytest.approx(1 / 2)
    # K = 4: u shows i6, i7, i4 (two hits), v shows i5 (a hit): 4 places, 3 hits.
    assert got["places@4"] == pytest.approx((3 + 1) / 2)
    assert got["hits_per_place@4"] == pytest.approx(3 / 4)
    # No held-out item shown anywhere: no places, and 0 hits per place (not a division by 0).
    none = cold.placement({"u": ["i0"], "v": ["i1"]}, relevant, HELD_OUT, (3,))
    assert none == {"places@3": 0.0, "hits_per_place@3": 0.0}


def two_tastes() -> tuple[TrainMatrix, dict[str, npt.NDArray[np.float32]]]:
    """Users a* watch the 'x' items, b* the 'y' items; every item has a unit vector along its
    taste axis (plus a little of the other, so cosines differ within a taste)."""
    x_items = {"i0", "i1", "i4", "i5"}
    vectors = {
        item: np.array([1.0, 0.1 * n] if item in x_items else [0.1 * n, 1.0], dtype=np.float32)
        for n, item in enumerate(ITEMS)
    }
    pairs = [("a0", "i0"), ("a0", "i1"), ("a1", "i0"), ("b0", "i2"), ("b0", "i3"), ("b1", "i3")]
    return TrainMatrix.build(pairs, ITEMS), vectors


def test_restricted_ranks_only_the_allowed_items() -> None:
    train, vectors = two_tastes()
    model = cold.Restricted(ContentOnly(vectors), HELD_OUT)
    model.fit(train)
    lists = recommend(model, train, ["a0", "b1"], 10)
    assert set(lists["a0"]) == set(HELD_OUT) and set(lists["b1"]) == set(HELD_OUT)
    # content order among the held-out items: the user's taste first
    assert set(lists["a0"][:2]) == {"i4", "i5"}
    assert set(lists["b1"][:2]) == {"i6", "i7"}


def test_cold_baselines() -> None:
    train, vectors = two_tastes()
    relevant = {"a1": frozenset({"i5"}), "b0": frozenset({"i6", "i7"})}
    rows = cold.baseline_rows(
        train, ["a1", "b0"], relevant, HELD_OUT, {"frozen encoder": vectors}, 0, (2, 4)
    )
    by_method = {row.method: row for row in rows}
    assert set(by_method) == {"content", "random among cold items"}
    content = by_method["content"]
    # Among cold candidates content puts each user's taste first: i4, i5 for a1; i6, i7 for b0.
    assert content.value(cold.AMONG_COLD, "recall", 2) == 1.0
    # Among all items a1 (who saw i0) gets the warm i1 first, then i4: i5 misses the top 2.
    assert content.value(cold.AMONG_ALL, "recall", 2) == 0.5
    assert content.value(cold.AMONG_ALL, "recall", 4) == 1.0
    random = by_method["random among cold items"]
    # All four held-out items fit in K = 4: recall 1 whatever the order; same list both ways.
    assert random.value(cold.AMONG_COLD, "recall", 4) == 1.0
    assert random.among_cold == random.among_all
    # Placement over all items: random's lists hold held-out items only (every place is one);
    # content gives a1 one held-out place in its top 2 (i4, not relevant) and b0 two (i6, i7).
    assert random.value(cold.AMONG_ALL, "places", 2) == 2.0
    assert content.value(cold.AMONG_ALL, "places", 2) == pytest.approx((1 + 2) / 2)
    assert content.value(cold.AMONG_ALL, "hits_per_place", 2) == pytest.approx(2 / 3)
    assert content.value(cold.AMONG_COLD, "places", 2) is None  # all items only
    # no vectors: no content row
    rows = cold.baseline_rows(train, ["a1"], relevant, HELD_OUT, {}, 0, (2,))
    assert [row.method for row in rows] == ["random among cold items"]


def test_the_suite_gets_every_item_and_no_user_tags_on_held_out_ones() -> None:
    items = [ItemRecord("i0", "Warm", tags=["great"]), ItemRecord("i4", "Cold", tags=["seen"])]
    split: ColdItemSplit[InteractionRecord] = ColdItemSplit(frozenset({"i4"}), [], [], [], [])
    served = catalogue_to_serve(items, split)
    assert [(i.item_id, i.title, i.tags) for i in served] == [
        ("i0", "Warm", ["great"]),
        ("i4", "Cold", []),
    ]
    assert items[1].tags == ["seen"]  # the input is left alone
    assert catalogue_to_serve(items, None) == items


def test_tables_and_csv(tmp_path: Path) -> None:
    rows = [
        cold.ColdRow("suite:ranking", "pre-policy", {"recall@10": 0.5, "ndcg@10": 0.25}, None),
        cold.ColdRow("gateway:relevance", "defaults", None, {"recall@10": 0.1, "ndcg@10": 0.05}),
    ]
    text = cold.markdown(rows, (10,))
    assert "| Recall@10 cold cands | NDCG@10 cold cands | Recall@10 all items |" in text
    assert "| suite:ranking | pre-policy | 0.5000 | 0.2500 | - | - |" in text
    assert "| gateway:relevance | defaults | - | - | 0.1000 | 0.0500 |" in text
    path = tmp_path / "cold.csv"
    cold.write_csv(rows, (10,), path)
    with path.open() as handle:
        lines = list(csv.reader(handle))
    assert lines[0][2:] == [
        "cold_candidates_recall@10",
        "cold_candidates_ndcg@10",
        "all_items_recall@10",
        "all_items_ndcg@10",
        "all_items_places@10",
        "all_items_hits_per_place@10",
    ]
    assert lines[2] == ["gateway:relevance", "defaults", "", "", "0.100000", "0.050000", "", ""]
    placed = cold.ColdRow(
        "gateway:default",
        "x",
        None,
        {"recall@10": 0.1, "ndcg@10": 0.05},
        {"places@10": 1.5, "hits_per_place@10": 0.25},
    )
    assert "| gateway:default | x | - | - | 0.1000 | 0.0500 | 1.5000 | 0.2500 |" in cold.markdown(
        [placed], (10,)
    )


def test_command_line() -> None:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(["data", "--split", "cold-items", "--cold-share", "0.3"])
    assert (args.split, args.cold_share) == ("cold-items", 0.3)
    defaults = parser.parse_args(["data"])
    assert (defaults.split, defaults.cold_share) == ("user", 0.2)
