"""The offline evaluation's time splits (see README.md in this folder for the protocol).

- ``user_time_split``: per user, the last ``test_share`` (20%) of that user's interactions by
  time are test; users with fewer than ``min_interactions`` (5) interactions stay in train only.
- ``global_time_split``: one cut-off time for everyone; interactions at or after the time at the
  ``1 - test_share`` quantile are test (again only for users with at least ``min_interactions``).
- ``validation_split``: the same rule applied to the training part, for tuning; test is never
  looked at while tuning.
- ``cold_item_split`` (the item cold-start protocol of DropoutNet / ALDI / ColdRec): a seeded
  ``cold_share`` (20%) of the items that have interactions is held out with *all* their
  interactions; the remaining (warm) interactions get the per-user time split; the cold test is
  the held-out items' interactions of users who have training history.

Order within a user is (time, item id, input position), so ties in time split the same way on
every run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Generic, Protocol, TypeVar

TEST_SHARE = 0.2
MIN_INTERACTIONS = 5
COLD_ITEM_SHARE = 0.2


class Event(Protocol):
    """What a split needs of an interaction (``datasets.InteractionRecord`` is one)."""

    @property
    def user_id(self) -> str: ...

    @property
    def item_id(self) -> str: ...

    @property
    def occurred_at(self) -> dt.datetime: ...


E = TypeVar("E", bound=Event)


@dataclasses.dataclass(frozen=True)
class Split(Generic[E]):
    train: list[E]
    test: list[E]

    def relevant_items(self) -> dict[str, frozenset[str]]:
        """Per user, the test items that are not among the user's training items.

        Recommendations exclude training items, so a test interaction with an item the user
        already had in training could never be hit; it is left out of the relevant set.
        """
        seen: dict[str, set[str]] = defaultdict(set)
        for event in self.train:
            seen[event.user_id].add(event.item_id)
        relevant: dict[str, set[str]] = defaultdict(set)
        for event in self.test:
            if event.item_id not in seen[event.user_id]:
                relevant[event.user_id].add(event.item_id)
        return {user: frozenset(items) for user, items in relevant.items() if items}


def holdout_count(n: int, test_share: float = TEST_SHARE) -> int:
    """Test interactions of a user with ``n`` (>= the minimum): floor(share * n), at least 1."""
    return max(1, math.floor(n * test_share + 1e-9))


def _by_user(events: Sequence[E]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for position, event in enumerate(events):
        groups[event.user_id].append(position)
    return groups


def _time(event: Event) -> float:
    return event.occurred_at.timestamp()


def user_time_split(
    events: Sequence[E],
    test_share: float = TEST_SHARE,
    min_interactions: int = MIN_INTERACTIONS,
) -> Split[E]:
    """Each user's last ``test_share`` of interactions by time are test (users with at least
    ``min_interactions``); everything else is train. The input order is kept in both parts."""
    _check(test_share, min_interactions)
    is_test = [False] * len(events)
    for positions in _by_user(events).values():
        if len(positions) < min_interactions:
            continue
        ordered = sorted(positions, key=lambda p: (_time(events[p]), events[p].item_id, p))
        for position in ordered[len(ordered) - holdout_count(len(ordered), test_share) :]:
            is_test[position] = True
    return _partition(events, is_test)


def global_time_split(
    events: Sequence[E],
    test_share: float = TEST_SHARE,
    min_interactions: int = MIN_INTERACTIONS,
) -> Split[E]:
    """One cut-off for everyone: the last ``test_share`` of all interactions by time are test,
    for users with at least ``min_interactions`` interactions in total (others stay train).

    The cut-off is a time, so interactions sharing the boundary time all fall on the same side
    (test); a user may end up with no training interactions (a cold user at test time).
    """
    _check(test_share, min_interactions)
    if not events:
        return Split([], [])
    times = sorted(_time(event) for event in events)
    cutoff = times[len(times) - holdout_count(len(times), test_share)]
    counts = {user: len(positions) for user, positions in _by_user(events).items()}
    is_test = [
        counts[event.user_id] >= min_interactions and _time(event) >= cutoff for event in events
    ]
    return _partition(events, is_test)


def held_out_items(item_ids: Iterable[str], share: float, seed: int) -> frozenset[str]:
    """``round(share * n)`` of the ``n`` distinct items: those with the smallest
    blake2b(seed, item id). Depends only on the seed and the set of ids (not their order, not
    the platform or the Python version)."""
    if not 0.0 < share < 1.0:
        raise ValueError("the cold item share must be in (0, 1)")
    items = sorted(set(item_ids))
    count = math.floor(share * len(items) + 0.5)

    def key(item: str) -> tuple[bytes, str]:
        digest = hashlib.blake2b(f"{seed}\x00{item}".encode(), digest_size=8).digest()
        return digest, item

    return frozenset(sorted(items, key=key)[:count])


@dataclasses.dataclass(frozen=True)
class ColdItemSplit(Generic[E]):
    """The item cold-start split: ``train`` holds no interaction with a ``held_out`` item."""

    held_out: frozenset[str]
    train: list[E]
    # The per-user time split's test part of the warm interactions (the usual metrics).
    warm_test: list[E]
    # Held-out items' interactions of users who have training history.
    cold_test: list[E]
    # Held-out items' interactions of users without training history: in no part (there is no
    # history to recommend from, and serving them would be the cold-user problem).
    dropped: list[E]

    @property
    def warm(self) -> Split[E]:
        return Split(self.train, self.warm_test)

    @property
    def cold(self) -> Split[E]:
        return Split(self.train, self.cold_test)


def cold_item_split(
    events: Sequence[E],
    cold_share: float = COLD_ITEM_SHARE,
    seed: int = 0,
    test_share: float = TEST_SHARE,
    min_interactions: int = MIN_INTERACTIONS,
) -> ColdItemSplit[E]:
    """Hold out a seeded ``cold_share`` of the interacted items with all their interactions;
    split the rest per user by time (``user_time_split``). The input order is kept in every
    part."""
    held = held_out_items((event.item_id for event in events), cold_share, seed)
    warm_events = [event for event in events if event.item_id not in held]
    warm = user_time_split(warm_events, test_share, min_interactions)
    trained_users = {event.user_id for event in warm.train}
    cold_test: list[E] = []
    dropped: list[E] = []
    for event in events:
        if event.item_id in held:
            (cold_test if event.user_id in trained_users else dropped).append(event)
    return ColdItemSplit(held, warm.train, warm.test, cold_test, dropped)


def validation_split(
    train: Sequence[E],
    mode: str = "user",
    test_share: float = TEST_SHARE,
    min_interactions: int = MIN_INTERACTIONS,
) -> Split[E]:
    """A validation slice carved from the training part by the same rule as the test split."""
    return split(train, mode, test_share, min_interactions)


def split(
    events: Sequence[E],
    mode: str = "user",
    test_share: float = TEST_SHARE,
    min_interactions: int = MIN_INTERACTIONS,
) -> Split[E]:
    if mode == "user":
        return user_time_split(events, test_share, min_interactions)
    if mode == "global":
        return global_time_split(events, test_share, min_interactions)
    raise ValueError(f"split mode must be 'user' or 'global', got {mode!r}")


def _check(test_share: float, min_interactions: int) -> None:
    if not 0.0 < test_share < 1.0:
        raise ValueError("test_share must be in (0, 1)")
    if min_interactions < 2:
        raise ValueError("min_interactions must be at least 2 (one train, one test)")


def _partition(events: Sequence[E], is_test: Iterable[bool]) -> Split[E]:
    train: list[E] = []
    test: list[E] = []
    for event, flag in zip(events, is_test, strict=True):
        (test if flag else train).append(event)
    return Split(train, test)
