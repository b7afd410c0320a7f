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

With a ``CounterMirror`` (the service's default), a Rerank makes no profiles call at all: the
mirror holds every item's non-zero counters (an item it lacks has never been shown nor clicked)
and reads, about once a second, only the items whose exposure counters moved since its last read
(``ListItemStats`` with ``exposure_changed_since``: the previous read's time at profiles, less a
margin for writes still committing, since a write stamps its change inside its transaction).
Every few minutes it re-reads them all, so that a write that took longer than the margin to
commit is counted by then. While its last complete read is older than the max staleness (profiles
slow or down), lookups fall back to the per-id cache above. A Rerank thus no longer pays a
profiles call for candidates that were not read in the last seconds, which at 100k items was
nearly every one of them.
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
from google.protobuf import timestamp_pb2

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


# A change stamped this long before the previous read's time is read again: the margin for a
# write that took its time inside its transaction and committed after that read.
MIRROR_OVERLAP_SECONDS = 2.0
# Every counter is re-read this often anyway (a write slower to commit than the overlap).
MIRROR_FULL_READ_SECONDS = 300.0
# Items per page of the mirror's reads (profiles' ListItemStats allows up to 10000).
MIRROR_PAGE = 5000
# Deadline of one page of the mirror's reads.
MIRROR_PAGE_TIMEOUT_SECONDS = 5.0


class StatsUnavailable(Exception):
    """The counters could not be read (profiles down, slow or refusing)."""


class MirrorUnsupported(Exception):
    """Profiles cannot list exposure changes: the mirror stays off."""


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


class CounterMirror:
    """Every item's non-zero exposure counters, kept current by reading what changed.

    ``sync`` is one read (all pages); ``run`` repeats it. Used from the event loop only.
    """

    def __init__(
        self,
        stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub,
        max_stale_seconds: float = DEFAULT_CACHE_MAX_STALE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        overlap_seconds: float = MIRROR_OVERLAP_SECONDS,
        full_read_seconds: float = MIRROR_FULL_READ_SECONDS,
        page_size: int = MIRROR_PAGE,
    ) -> None:
        self._stub = stub
        self._max_stale = max_stale_seconds
        self._clock = clock
        self._overlap = overlap_seconds
        self._full_read = full_read_seconds
        self._page_size = page_size
        self._counts: dict[str, ItemCounts] = {}
        # Profiles' time, less the overlap, to read changes from (None: read everything).
        self._since: timestamp_pb2.Timestamp | None = None
        # Our clock when the last complete read started (its counters are at least that new).
        self._synced_at: float | None = None
        self._full_read_at: float | None = None

    def __len__(self) -> int:
        return len(self._counts)

    @property
    def fresh(self) -> bool:
        """The last complete read started within the max staleness."""
        return self._synced_at is not None and self._clock() - self._synced_at <= self._max_stale

    def lookup(self, ids: Sequence[str]) -> dict[str, ItemCounts]:
        counts = self._counts
        return {item_id: counts[item_id] for item_id in ids if item_id in counts}

    async def sync(self) -> int:
        """Reads what changed since the last read (everything, the first time and every
        ``full_read_seconds``); returns how many items it read. Raises ``StatsUnavailable``
        (and keeps the previous state) when profiles does not answer every page."""
        started = self._clock()
        full = self._full_read_at is None or started - self._full_read_at >= self._full_read
        since = timestamp_pb2.Timestamp() if full or self._since is None else self._since
        read: dict[str, ItemCounts] = {}
        read_at: timestamp_pb2.Timestamp | None = None
        token = ""
        while True:
            request = profiles_service_pb2.ListItemStatsRequest(
                page_size=self._page_size, page_token=token, exposure_changed_since=since
            )
            try:
                response = await self._stub.ListItemStats(
                    request, timeout=MIRROR_PAGE_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as error:
                raise StatsUnavailable(f"{error.code().name}: {error.details()}") from error
            if read_at is None:
                if not response.HasField("exposure_read_at"):
                    # A profiles release before exposure_changed_since listed every item.
                    raise MirrorUnsupported("profiles does not list exposure changes")
                read_at = response.exposure_read_at
            for stats in response.stats:
                read[stats.item_id] = ItemCounts(stats.impression_count, stats.feedback_count)
            token = response.next_page_token
            if not token:
                break
        if full:
            self._counts = read
            self._full_read_at = started
        else:
            self._counts.update(read)
        assert read_at is not None  # the first page set it
        next_since = timestamp_pb2.Timestamp()
        next_since.FromNanoseconds(
            max(0, read_at.ToNanoseconds() - int(self._overlap * 1_000_000_000))
        )
        self._since = next_since
        self._synced_at = started
        return len(read)

    async def run(self, refresh_seconds: float) -> None:
        """Reads every ``refresh_seconds`` until cancelled; a failed read is logged and retried."""
        while True:
            try:
                await self.sync()
            except StatsUnavailable as error:
                log.info(
                    "exposure counter mirror: read failed", extra={"fields": {"error": str(error)}}
                )
            except MirrorUnsupported as error:
                log.warning(
                    "exposure counter mirror off: counters are read per request",
                    extra={"fields": {"error": str(error)}},
                )
                return
            await asyncio.sleep(refresh_seconds)


class ProfilesStatsSource:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        cache_ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS,
        cache_max_stale_seconds: float = DEFAULT_CACHE_MAX_STALE_SECONDS,
        cache_max_items: int = DEFAULT_CACHE_MAX_ITEMS,
        clock: Callable[[], float] = time.monotonic,
        refresh_delay_seconds: float = DEFAULT_REFRESH_DELAY_SECONDS,
        mirror_refresh_seconds: float = 0.0,
    ) -> None:
        self._refresh_delay = refresh_delay_seconds
        self._stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)
        # The mirror, where the cache is on (with a zero TTL every Rerank reads profiles, so that
        # lists do not depend on timing, which a mirror would bring back).
        self.mirror: CounterMirror | None = None
        self._mirror_task: asyncio.Task[None] | None = None
        self._mirror_refresh = mirror_refresh_seconds
        if mirror_refresh_seconds > 0 and cache_ttl_seconds > 0:
            self.mirror = CounterMirror(self._stub, cache_max_stale_seconds, clock)
        self._cache = CountsCache(
            cache_ttl_seconds, cache_max_stale_seconds, cache_max_items, clock
        )
        # Stale ids waiting for the background refresh (insertion-ordered set).
        self._to_refresh: dict[str, None] = {}
        # Ids the running refresh call is reading (not queued again while it runs).
        self._refreshing: set[str] = set()
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the mirror's reads (when there is a mirror); ``close`` stops them."""
        if self.mirror is not None and self._mirror_task is None:
            self._mirror_task = asyncio.get_running_loop().create_task(
                self.mirror.run(self._mirror_refresh)
            )

    async def item_stats(self, ids: Sequence[str], timeout: float) -> dict[str, ItemCounts]:
        mirror = self.mirror
        if mirror is not None and mirror.fresh:
            return mirror.lookup(ids)
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
        for task in (self._refresher, self._mirror_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

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
