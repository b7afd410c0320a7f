"""Exposure counters (impressions, feedback per item) for fair_exposure and explore.

The reranker sees only the ``ExposureStatsSource`` Protocol; ``ProfilesStatsSource`` is the real
one, over ``profiles.GetItemStats``. A failing call raises ``StatsUnavailable``, which the reranker
turns into zero counts (logged), so that exposure counters never take a request down with them.

``ProfilesStatsSource`` keeps the counters it read in a bounded ``CountsCache`` so that most
Reranks make no profiles call at all:
- an entry is fresh for ``cache_ttl_seconds`` (2 s by default) after profiles answered;
- after that, and up to ``cache_max_stale_seconds`` (10 s), it is still served while a background
  call refreshes it (one call at a time, a quarter second after the first stale read, batching
  every id that went stale meanwhile);
- ids never read, or older than that, are fetched inline (only those: hits are not asked again).
Staleness: a served count lags the impression log by about the TTL (at most the max staleness,
when profiles is slow or down), i.e. misses the impressions of the last few seconds. The counters
are cumulative over the whole log and the policies read them as amortised exposure
(fair_exposure's penalty, explore's Beta posteriors), so such a lag changes no decision that
matters; an item may be explored a little more often within one window, which is what a bandit
does with delayed feedback anyway. Items profiles does not know are cached as unknown (zero).
When profiles is down, ids that must be fetched inline raise ``StatsUnavailable`` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.exposure.policies import ItemCounts

log = logging.getLogger(__name__)

# profiles' batch limit.
STATS_BATCH = 1000
# Counters served from memory without asking profiles for this long (0 = no cache).
DEFAULT_CACHE_TTL_SECONDS = 2.0
# Older counters are still served (and refreshed in the background) up to this age.
DEFAULT_CACHE_MAX_STALE_SECONDS = 10.0
# Bound on cached items (a 100k catalogue fits); the least recently read go first.
DEFAULT_CACHE_MAX_ITEMS = 200_000
# Deadline of a background refresh (no caller waits on it).
REFRESH_TIMEOUT_SECONDS = 1.0
# A refresh waits this long first, so that the stale ids of many requests share one call
# (at most a few refresh calls per second instead of one after nearly every request).
DEFAULT_REFRESH_DELAY_SECONDS = 0.25


class StatsUnavailable(Exception):
    """The counters could not be read (profiles down, slow or refusing)."""


class ExposureStatsSource(Protocol):
    async def item_stats(self, ids: Sequence[str], timeout: float) -> dict[str, ItemCounts]:
        """Counters of the known items among ``ids``; unknown items are left out."""
        ...


class CountsCache:
    """Item -> counters (None: unknown to profiles) with the time they were read, LRU-bounded.

    Used from the event loop only (no lock needed).
    """

    def __init__(
        self,
        ttl: float,
        max_stale: float,
        max_items: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_stale = max(ttl, max_stale)
        self._max_items = max(0, max_items)
        self._clock = clock
        # item -> (read at, counters or None)
        self._entries: OrderedDict[str, tuple[float, ItemCounts | None]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._ttl > 0 and self._max_items > 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[str]) -> tuple[dict[str, ItemCounts], list[str], list[str]]:
        """(usable known counters, ids to fetch now, stale ids to refresh), in first-seen order."""
        found: dict[str, ItemCounts] = {}
        missing: list[str] = []
        stale: list[str] = []
        if not self.enabled:
            return found, list(dict.fromkeys(ids)), stale
        now = self._clock()
        fresh_after = now - self._ttl
        usable_after = now - self._max_stale
        entries = self._entries
        for item_id in dict.fromkeys(ids):
            entry = entries.get(item_id)
            if entry is None or entry[0] < usable_after:
                missing.append(item_id)
                continue
            if entry[0] < fresh_after:
                stale.append(item_id)
            entries.move_to_end(item_id)
            if entry[1] is not None:
                found[item_id] = entry[1]
        return found, missing, stale

    def store(self, asked: Sequence[str], counts: dict[str, ItemCounts], read_at: float) -> None:
        """Remember what profiles answered for ``asked`` (ids it left out are unknown)."""
        if not self.enabled:
            return
        entries = self._entries
        for item_id in asked:
            entries[item_id] = (read_at, counts.get(item_id))
            entries.move_to_end(item_id)
        while len(entries) > self._max_items:
            entries.popitem(last=False)

    def now(self) -> float:
        return self._clock()


class ProfilesStatsSource:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        cache_ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS,
        cache_max_stale_seconds: float = DEFAULT_CACHE_MAX_STALE_SECONDS,
        cache_max_items: int = DEFAULT_CACHE_MAX_ITEMS,
        clock: Callable[[], float] = time.monotonic,
        refresh_delay_seconds: float = DEFAULT_REFRESH_DELAY_SECONDS,
    ) -> None:
        self._refresh_delay = refresh_delay_seconds
        self._stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)
        self._cache = CountsCache(
            cache_ttl_seconds, cache_max_stale_seconds, cache_max_items, clock
        )
        # Stale ids waiting for the background refresh (insertion-ordered set).
        self._to_refresh: dict[str, None] = {}
        # Ids the running refresh call is reading (not queued again while it runs).
        self._refreshing: set[str] = set()
        self._refresher: asyncio.Task[None] | None = None

    async def item_stats(self, ids: Sequence[str], timeout: float) -> dict[str, ItemCounts]:
        counts, missing, stale = self._cache.lookup(ids)
        if stale:
            self._schedule_refresh(stale)
        if missing:
            read_at = self._cache.now()
            fetched = await self._fetch(missing, timeout)
            # Only a complete answer is cached: a failure above raised and cached nothing.
            self._cache.store(missing, fetched, read_at)
            counts.update(fetched)
        return counts

    async def wait_refreshed(self) -> None:
        """Returns once no background refresh is pending (tests and orderly shutdown)."""
        while self._refresher is not None and not self._refresher.done():
            await asyncio.shield(self._refresher)

    async def close(self) -> None:
        """Stops a pending background refresh: called before the channel closes, so that no
        refresh wakes up to a closed channel."""
        refresher = self._refresher
        if refresher is not None and not refresher.done():
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher

    def _schedule_refresh(self, ids: Sequence[str]) -> None:
        refreshing = self._refreshing
        self._to_refresh.update(dict.fromkeys(i for i in ids if i not in refreshing))
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        if self._refresh_delay > 0:
            await asyncio.sleep(self._refresh_delay)
        while self._to_refresh:
            batch = list(self._to_refresh)[:STATS_BATCH]
            for item_id in batch:
                del self._to_refresh[item_id]
            self._refreshing.update(batch)
            read_at = self._cache.now()
            try:
                fetched = await self._fetch(batch, REFRESH_TIMEOUT_SECONDS)
            except StatsUnavailable as error:
                # The entries age out (max staleness) and are then fetched inline, or fail there.
                log.info(
                    "exposure counters refresh failed", extra={"fields": {"error": str(error)}}
                )
                self._to_refresh.clear()
                return
            finally:
                self._refreshing.clear()
            self._cache.store(batch, fetched, read_at)

    async def _fetch(self, ids: Sequence[str], timeout: float) -> dict[str, ItemCounts]:
        counts: dict[str, ItemCounts] = {}
        for start in range(0, len(ids), STATS_BATCH):
            request = profiles_service_pb2.GetItemStatsRequest(
                item_ids=list(ids[start : start + STATS_BATCH])
            )
            try:
                response = await self._stub.GetItemStats(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                raise StatsUnavailable(f"{error.code().name}: {error.details()}") from error
            for stats in response.stats:
                counts[stats.item_id] = ItemCounts(stats.impression_count, stats.feedback_count)
        return counts
