"""The time splits: what is test, the <5 rule, ties, and that nothing leaks out of test."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from services.suite.datasets import InteractionRecord
from services.suite.evaluation.split import (
    Split,
    global_time_split,
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
