"""The splits: what is test, the <5 rule, ties, and that nothing leaks out of test; the
cold-items split holds its items out of everything the suite trains on."""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ranking.collaborative import InteractionBatch
from services.ranking.training import RankerTrainingParams, _user_events, split_by_time
from services.suite.datasets import InteractionRecord
from services.suite.evaluation.split import (
    Split,
    cold_item_split,
    global_time_split,
    held_out_items,
    holdout_count,
    user_time_split,
    validation_split,
)

EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def event(user: str, item: str, second: int) -> InteractionRecord:
    return InteractionRecord(user, item, "rating", 4.0, EPOCH + dt.timedelta(seconds=second))


def test_last_twenty_percent_of_each_user_by_time_is_test() -> None:
    # u1: 10 interactions given out of time order; the two latest (t=9, 10) are test
    u1 = [event("u1", f"m{t}", t) for t in (5, 10, 1, 9, 3, 2, 8, 4, 7, 6)]
    # u2: 5 interactions -> 1 test (the latest); u3: 4 -> train only
    u2 = [event("u2", f"m{t}", t) for t in range(5)]
    u3 = [event("u3", f"m{t}", t) for t in range(4)]
    parts = user_time_split(u1 + u2 + u3)
    test = {(e.user_id, e.item_id) for e in parts.test}
    assert test == {("u1", "m9"), ("u1", "m10"), ("u2", "m4")}
    assert len(parts.train) == 8 + 4 + 4
    assert "u3" not in parts.relevant_items()


def test_holdout_counts() -> None:
    assert [holdout_count(n) for n in (5, 9, 10, 14, 15, 21)] == [1, 1, 2, 2, 3, 4]


def test_ties_in_time_split_by_item_id() -> None:
    events = [event("u", item, 0) for item in ("e", "b", "d", "a", "c")]
    assert [e.item_id for e in user_time_split(events).test] == ["e"]
    assert [e.item_id for e in user_time_split(list(reversed(events))).test] == ["e"]


def test_relevant_items_leave_out_items_already_in_training() -> None:
    events = [event("u", "a", 0), event("u", "b", 1), event("u", "c", 2), event("u", "d", 3)]
    events += [event("u", "a", 4)]  # a repeat of a training item lands in test
    parts = user_time_split(events)
    assert [e.item_id for e in parts.test] == ["a"]
    assert parts.relevant_items() == {}


def test_global_split_uses_one_cut_off_and_the_minimum() -> None:
    events = [event("u1", f"m{t}", t) for t in range(10)]  # t 0..9
    events += [event("u2", f"n{t}", t + 5) for t in range(4)]  # t 5..8, only 4 interactions
    events += [event("u3", f"o{t}", 100 + t) for t in range(6)]  # t 100..105, all late
    parts = global_time_split(events)
    # 20 events -> 4 test by time: cut-off = the 17th smallest time = 102
    test = sorted((e.user_id, e.item_id) for e in parts.test)
    assert test == [("u3", "o2"), ("u3", "o3"), ("u3", "o4"), ("u3", "o5")]
    assert all(e.user_id != "u2" for e in parts.test)


def _assert_no_leak(events: list[InteractionRecord], parts: Split[InteractionRecord]) -> None:
    # A partition of the input: every event exactly once.
    assert sorted(map(id, parts.train + parts.test)) == sorted(map(id, events))
    by_user: dict[str, list[InteractionRecord]] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    test_ids = {id(e) for e in parts.test}
    for user, mine in by_user.items():
        test = [e for e in mine if id(e) in test_ids]
        train = [e for e in mine if id(e) not in test_ids]
        if len(mine) < 5:
            assert not test, f"{user} has fewer than 5 interactions but got test ones"
            continue
        assert len(test) == holdout_count(len(mine))
        # everything in test is at or after everything in train
        assert max(e.occurred_at for e in train) <= min(e.occurred_at for e in test)


events_strategy = st.lists(
    st.builds(
        event,
        st.sampled_from([f"u{n}" for n in range(6)]),
        st.sampled_from([f"m{n}" for n in range(30)]),
        st.integers(0, 50),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(events_strategy)
def test_no_test_interaction_leaks_into_training_or_validation(
    events: list[InteractionRecord],
) -> None:
    parts = user_time_split(events)
    _assert_no_leak(events, parts)
    validation = validation_split(parts.train)
    _assert_no_leak(parts.train, validation)
    test_ids = {id(e) for e in parts.test}
    # validation is carved from train only: none of its events (either side) is a test event
    assert not test_ids & {id(e) for e in validation.train + validation.test}


@settings(max_examples=100, deadline=None)
@given(events_strategy)
def test_global_split_never_puts_test_before_train(events: list[InteractionRecord]) -> None:
    parts = global_time_split(events)
    assert len(parts.train) + len(parts.test) == len(events)
    if parts.test and parts.train:
        cutoff = min(e.occurred_at for e in parts.test)
        counts: dict[str, int] = defaultdict(int)
        for e in events:
            counts[e.user_id] += 1
        # every eligible user's train is strictly before the cut-off
        assert all(e.occurred_at < cutoff for e in parts.train if counts[e.user_id] >= 5)
    assert all(len([x for x in events if x.user_id == e.user_id]) >= 5 for e in parts.test)


# --------------------------------------------------------------------------- cold items


def _items(events: list[InteractionRecord]) -> set[str]:
    return {e.item_id for e in events}


def _ranker_slice(events: list[InteractionRecord]) -> set[str]:
    """Every item in the learned ranker's training slice (history and labels) when the ranking
    service trains on these stored interactions (the path TrainModel takes)."""
    batch = InteractionBatch(
        [e.user_id for e in events],
        [e.item_id for e in events],
        [e.value for e in events],
        [e.occurred_at.timestamp() for e in events],
    )
    by_user = _user_events([batch])
    assert by_user is not None
    history, labels = split_by_time(by_user, RankerTrainingParams())
    items = {e.item_id for user_events in history.values() for e in user_events}
    return items | {item for wanted in labels.values() for item in wanted}


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.integers(0, 2**32 - 1), st.sampled_from([0.1, 0.2, 0.5]))
def test_the_cold_items_split_leaks_nothing(
    events: list[InteractionRecord], seed: int, share: float
) -> None:
    parts = cold_item_split(events, share, seed)
    held = parts.held_out
    interacted = _items(events)
    assert held <= interacted
    assert len(held) == math.floor(share * len(interacted) + 0.5)
    # A partition of the input: every event in exactly one part.
    every = parts.train + parts.warm_test + parts.cold_test + parts.dropped
    assert sorted(map(id, every)) == sorted(map(id, events))

    # No held-out item in training, in validation (either side), in the ranker's slice.
    validation = validation_split(parts.train)
    assert not held & _items(parts.train)
    assert not held & _items(validation.train + validation.test)
    assert not held & _ranker_slice(parts.train)
    # ... nor in the warm test; every held-out interaction is cold test or dropped.
    assert not held & _items(parts.warm_test)
    assert _items(parts.cold_test + parts.dropped) <= held
    assert len(parts.cold_test) + len(parts.dropped) == sum(e.item_id in held for e in events)
    # The cold test is exactly the held-out interactions of users with training history.
    trained = {e.user_id for e in parts.train}
    assert all(e.user_id in trained for e in parts.cold_test)
    assert all(e.user_id not in trained for e in parts.dropped)
    assert set(parts.cold.relevant_items()) == {e.user_id for e in parts.cold_test}

    # The warm part is the per-user time split of the other items' interactions.
    warm = user_time_split([e for e in events if e.item_id not in held])
    assert list(map(id, parts.train)) == list(map(id, warm.train))
    assert list(map(id, parts.warm_test)) == list(map(id, warm.test))


def test_held_out_items_depend_on_the_seed_and_the_set_only() -> None:
    items = [f"m{n}" for n in range(100)]
    chosen = held_out_items(items, 0.2, seed=7)
    assert len(chosen) == 20
    assert held_out_items(reversed(items + items), 0.2, seed=7) == chosen
    assert held_out_items(items, 0.2, seed=8) != chosen
    assert len(held_out_items(items[:7], 0.2, seed=0)) == 1  # round(1.4)
    assert held_out_items([], 0.2, seed=0) == frozenset()


def test_cold_items_split_by_hand() -> None:
    events = [event("u1", item, t) for t, item in enumerate("abcdefg")]
    events += [event("u2", "a", 10), event("u2", "b", 11)]
    events += [event("u3", "a", 12)]  # u3 only touches a
    # One of 7 items held out; seed 4 holds out "a" (a fixed hash: the same on every run).
    parts = cold_item_split(events, 0.2, seed=4)
    assert parts.held_out == {"a"}
    # Users with training history keep their "a" as cold test; u3 has none: dropped.
    assert [(e.user_id, e.item_id) for e in parts.cold_test] == [("u1", "a"), ("u2", "a")]
    assert [(e.user_id, e.item_id) for e in parts.dropped] == [("u3", "a")]
    # u1's 6 warm interactions split by time (1 test: the latest, g); u2's 1 stays train.
    assert [(e.user_id, e.item_id) for e in parts.warm_test] == [("u1", "g")]
    assert [(e.user_id, e.item_id) for e in parts.train] == [
        ("u1", "b"),
        ("u1", "c"),
        ("u1", "d"),
        ("u1", "e"),
        ("u1", "f"),
        ("u2", "b"),
    ]
    assert parts.cold.relevant_items() == {"u1": {"a"}, "u2": {"a"}}
