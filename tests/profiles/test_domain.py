"""Pure parts of the profiles domain: head cache, category mix, page tokens, idempotency keys."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from services.common.errors import InvalidArgument
from services.profiles.profiles import (
    FULL_HEAD_REFRESH_SECONDS,
    BackgroundRefresh,
    HeadCache,
    HeadSnapshot,
    category_mix,
    decode_page_token,
    derive_idempotency_key,
    encode_page_token,
)
from services.profiles.repository import _categories


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_head_cache_refreshes_on_change_and_age_but_not_more() -> None:
    clock = Clock()
    counts = {f"i{n}": n for n in range(10)}
    loads = 0

    def load() -> dict[str, int]:
        nonlocal loads
        loads += 1
        return dict(counts)

    cache = HeadCache(max_age_seconds=5.0, min_refresh_seconds=1.0, clock=clock)
    assert cache.get(load).head == {"i9", "i8"}
    assert loads == 1
    counts["i0"] = 100
    assert cache.get(load).head == {"i9", "i8"}  # nothing said it changed, not old yet
    cache.mark_changed()
    clock.now = 0.5
    assert cache.get(load).head == {"i9", "i8"}  # changed, but refreshed less than 1 s ago
    clock.now = 1.0
    assert cache.get(load).head == {"i0", "i9"}
    assert loads == 2
    counts["i1"] = 200
    clock.now = 6.1  # old enough without any change mark (another replica wrote)
    assert cache.get(load).head == {"i1", "i0"}
    assert cache.get(load, force=True).cold_count == 0
    assert loads == 4


def test_head_cache_refreshes_in_the_background_and_serves_the_previous_set_meanwhile() -> None:
    clock = Clock()
    counts = {f"i{n}": n for n in range(10)}
    pending: list[Callable[[], None]] = []
    inline_loads = 0

    def inline() -> dict[str, int]:
        nonlocal inline_loads
        inline_loads += 1
        return dict(counts)

    background = BackgroundRefresh(load=lambda: dict(counts), run=pending.append)
    cache = HeadCache(max_age_seconds=5.0, min_refresh_seconds=1.0, clock=clock)
    assert cache.get(inline, background=background).head == {"i9", "i8"}  # first: inline
    assert inline_loads == 1 and pending == []
    counts["i0"] = 100
    clock.now = 6.0  # due: the refresh is handed off, the caller keeps the previous set
    assert cache.get(inline, background=background).head == {"i9", "i8"}
    assert len(pending) == 1
    assert cache.get(inline, background=background).head == {"i9", "i8"}
    assert len(pending) == 1  # one refresh at a time
    pending.pop()()
    assert cache.get(inline, background=background).head == {"i0", "i9"}
    assert inline_loads == 1
    counts["i1"] = 200  # force (CatalogStats) still reads inline
    assert cache.get(inline, force=True, background=background).head == {"i1", "i0"}
    assert inline_loads == 2


def test_head_cache_skips_the_full_read_while_the_version_token_is_unchanged() -> None:
    clock = Clock()
    counts = {f"i{n}": n for n in range(10)}
    version = [1]
    loads = 0

    def load() -> dict[str, int]:
        nonlocal loads
        loads += 1
        return dict(counts)

    cache = HeadCache(max_age_seconds=5.0, min_refresh_seconds=1.0, clock=clock)
    assert cache.get(load, version=lambda: version[0]).head == {"i9", "i8"}
    assert loads == 1
    clock.now = 6.0  # due, but nothing the counters depend on changed: no full read
    assert cache.get(load, version=lambda: version[0]).head == {"i9", "i8"}
    assert loads == 1
    clock.now = 8.0  # the token was re-checked at 6.0: not due again yet
    counts["i0"] = 100
    version[0] = 2
    assert cache.get(load, version=lambda: version[0]).head == {"i9", "i8"}
    clock.now = 11.0  # due and the token moved: a full read
    assert cache.get(load, version=lambda: version[0]).head == {"i0", "i9"}
    assert loads == 2
    # A change the token cannot show (a PostgreSQL commit under an older id) is still read
    # within FULL_HEAD_REFRESH_SECONDS.
    counts["i1"] = 200
    clock.now = 11.0 + FULL_HEAD_REFRESH_SECONDS - 1
    assert cache.get(load, version=lambda: version[0]).head == {"i0", "i9"}
    clock.now = 11.0 + FULL_HEAD_REFRESH_SECONDS + 5
    assert cache.get(load, version=lambda: version[0]).head == {"i1", "i0"}
    assert loads == 3
    # force (CatalogStats) always reads.
    assert cache.get(load, force=True, version=lambda: version[0]).head == {"i1", "i0"}
    assert loads == 4


def test_a_failed_background_refresh_keeps_the_set_and_tries_again() -> None:
    clock = Clock()
    pending: list[Callable[[], None]] = []

    def broken() -> dict[str, int]:
        raise RuntimeError("store down")

    cache = HeadCache(max_age_seconds=5.0, clock=clock)
    assert cache.get(lambda: {"a": 5, "b": 0}).head == {"a"}
    clock.now = 6.0
    background = BackgroundRefresh(load=broken, run=pending.append)
    assert cache.get(broken, background=background).head == {"a"}
    pending.pop()()  # fails, logged; the lock is released
    assert cache.get(broken, background=background).head == {"a"}
    assert len(pending) == 1  # still due: handed off again


def test_head_snapshot_counts_cold_items_and_the_head_threshold() -> None:
    cache = HeadCache()
    snapshot = cache.get(lambda: {"a": 5, "b": 3, "c": 0, "d": 0, "e": 1, "f": 1, "g": 0})
    assert snapshot.head == {"a", "b"}  # ceil(0.2 * 7) = 2
    assert (snapshot.cold_count, snapshot.head_min_interactions, snapshot.catalogue_size) == (
        3,
        3,
        7,
    )


def test_head_digest_follows_the_head_set_not_the_counts() -> None:
    """Profile versions carry the head digest (tail_propensity reads the set): counts that move
    without changing the set keep it, so feedback does not invalidate every kept profile."""
    counts = {"a": 5, "b": 3, "c": 0, "d": 0, "e": 1, "f": 1, "g": 0}
    first = HeadSnapshot.from_counts(counts)
    busier = HeadSnapshot.from_counts({**counts, "a": 9, "e": 2})
    assert busier.head == first.head and busier.head_digest == first.head_digest
    assert busier.counts_digest != first.counts_digest
    moved = HeadSnapshot.from_counts({**counts, "e": 4})
    assert moved.head == {"a", "e"} and moved.head_digest != first.head_digest


def test_category_mix_splits_multi_category_items_and_sums_to_one() -> None:
    mix = category_mix([(["a", "b"], 2), (["a"], 1), ([], 5), (["c", "c"], 1)])
    assert mix == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25})
    assert category_mix([]) == {}
    assert category_mix([([], 3)]) == {}


def test_page_tokens_round_trip_and_are_bound_to_kind_and_filters() -> None:
    token = encode_page_token("items", "item-9", "f1")
    assert decode_page_token(token, "items", "f1") == "item-9"
    assert decode_page_token("", "items", "f1") is None
    for kind, fingerprint, bad in [
        ("items", "f2", token),
        ("interactions", "f1", token),
        ("items", "f1", "%%%"),
        ("items", "f1", "bm90IGpzb24"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            decode_page_token(bad, kind, fingerprint)
        assert caught.value.reason == "INVALID_PAGE_TOKEN"


def test_derived_idempotency_key_is_stable_and_field_sensitive() -> None:
    when = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    key = derive_idempotency_key("u", "i", "click", 0.0, when, "")
    assert key == derive_idempotency_key("u", "i", "click", 0.0, when, "")
    assert key == derive_idempotency_key(
        "u", "i", "click", 0.0, when.astimezone(dt.timezone(dt.timedelta(hours=2))), ""
    )
    others = {
        derive_idempotency_key("u2", "i", "click", 0.0, when, ""),
        derive_idempotency_key("u", "i2", "click", 0.0, when, ""),
        derive_idempotency_key("u", "i", "view", 0.0, when, ""),
        derive_idempotency_key("u", "i", "click", 1.0, when, ""),
        derive_idempotency_key("u", "i", "click", 0.0, when + dt.timedelta(microseconds=1), ""),
        derive_idempotency_key("u", "i", "click", 0.0, None, ""),
        derive_idempotency_key("u", "i", "click", 0.0, when, "req"),
    }
    assert key not in others and len(others) == 7
    assert len(key) <= 128


def test_stored_categories_decode_from_their_json_text() -> None:
    assert _categories('["a", "b"]') == ("a", "b")
    assert _categories("[]") == _categories(None) == _categories("") == ()
    assert _categories('{"a": 1}') == ()  # not a list: no categories, not a crash
    assert _categories('["a", "b"]') is _categories('["a", "b"]')  # decoded once
