"""The in-memory catalogue snapshot and the sources it is loaded from.

A ``CatalogSnapshot`` is immutable: ids, the L2-normalised vector matrix, categories, popularity,
tail/cold flags (as the profiles service computes them with ``services.common.tail``), the ANN
index and the tail/cold pools. Loading builds a new snapshot off the event loop; the engine swaps
the reference, so requests in flight finish on the snapshot they started with.

The dependencies are Protocols (``CatalogSource``, ``InteractionSource``, ``TextEncoder``); the
real implementations at the bottom wrap the generated profiles and embeddings stubs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import grpc
import numpy as np

from longtail.embeddings.v1 import embeddings_service_pb2
from longtail.profiles.v1 import profiles_service_pb2
from services.common.deadlines import HasTimeRemaining, outbound_timeout
from services.common.errors import from_upstream
from services.ranking.collaborative import InteractionBatch, interaction_weight
from services.ranking.index import (
    BoolArray,
    FloatArray,
    IndexParams,
    PoolIndex,
    RowArray,
    VectorIndex,
    normalize_rows,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """The encoder (name, version) that produced a vector."""

    name: str
    version: str


@dataclasses.dataclass
class ItemPage:
    """One page of catalogue items in columns; ``vectors[i]`` is None for an unindexed item."""

    item_ids: list[str]
    categories: list[tuple[str, ...]]
    vectors: list[FloatArray | None]
    models: list[ModelRef | None]


@dataclasses.dataclass(frozen=True)
class ItemStatsRecord:
    item_id: str
    interaction_count: int
    is_tail: bool
    is_cold: bool


@dataclasses.dataclass(frozen=True)
class StatsRead:
    """``CatalogSource.item_stats``' answer: every item's stats, or None when the caller's
    ``known_version`` is still current; ``version`` is what to pass next time ("": none)."""

    records: list[ItemStatsRecord] | None
    version: str = ""


@dataclasses.dataclass(frozen=True)
class EncodedText:
    vector: FloatArray
    model: ModelRef


class CatalogSource(Protocol):
    """Where items, their vectors and their popularity come from (profiles + embeddings)."""

    async def embedding_model(self, deadline: HasTimeRemaining | None) -> ModelRef | None:
        """The encoder the embeddings service runs now; None when unknown or unreachable."""
        ...

    async def count_items(self, model: ModelRef | None, deadline: HasTimeRemaining | None) -> int:
        """Items with a vector from ``model`` (all items when None)."""
        ...

    def item_pages(
        self, model: ModelRef | None, deadline: HasTimeRemaining | None
    ) -> AsyncIterator[ItemPage]:
        """Every item with a vector from ``model`` (every item when None), page by page."""
        ...

    async def item_stats(
        self, deadline: HasTimeRemaining | None, known_version: str = ""
    ) -> StatsRead:
        """Every item's popularity and flags; records None when ``known_version`` (a version of
        an earlier answer) is still current."""
        ...


class InteractionSource(Protocol):
    """The training interactions (profiles.ListInteractions)."""

    def interaction_batches(
        self, deadline: HasTimeRemaining | None
    ) -> AsyncIterator[InteractionBatch]: ...


class TextEncoder(Protocol):
    """Free text to a vector in the catalogue's space (embeddings.EmbedTexts)."""

    async def embed(self, text: str, deadline: HasTimeRemaining | None) -> EncodedText: ...


@dataclasses.dataclass(frozen=True, eq=False)
class CatalogSnapshot:
    """Everything retrieval needs about the catalogue, row-aligned."""

    item_ids: list[str]
    rows: dict[str, int]
    vectors: FloatArray
    categories: list[tuple[str, ...]]
    popularity: RowArray
    is_tail: BoolArray
    is_cold: BoolArray
    model: ModelRef | None
    index: VectorIndex
    tail_pool: PoolIndex
    cold_pool: PoolIndex
    # Rows by popularity, most popular first (all items; tail items only).
    popular_rows: RowArray
    popular_tail_rows: RowArray
    loaded_at: float

    @property
    def size(self) -> int:
        return len(self.item_ids)

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def version(self) -> str:
        return self.index.version

    def rows_of(self, item_ids: Sequence[str]) -> RowArray:
        """Catalogue rows of the ids that are in the snapshot (unknown ids are dropped)."""
        found = [self.rows[i] for i in item_ids if i in self.rows]
        return np.asarray(found, dtype=np.int64)


@dataclasses.dataclass
class CatalogItems:
    """Items with vectors of one model, deduplicated, in a stable order."""

    item_ids: list[str]
    categories: list[tuple[str, ...]]
    vectors: FloatArray
    model: ModelRef | None


def empty_items(dimension: int = 0) -> CatalogItems:
    return CatalogItems([], [], np.zeros((0, dimension), dtype=np.float32), None)


def assemble_items(pages: Sequence[ItemPage], model: ModelRef | None) -> CatalogItems:
    """Keep items whose vector is from ``model`` (the most common model when None).

    Duplicates (an item on two pages while the store changed) keep their last version. Vectors of
    another dimension than the model's first one are dropped, never crash the build.
    """
    if model is None:
        counts = collections.Counter(
            m
            for page in pages
            for m, v in zip(page.models, page.vectors, strict=True)
            if m is not None and v is not None and v.shape[0]
        )
        if not counts:
            return empty_items()
        # Most common, ties broken by name/version so that reloads agree.
        model = max(counts, key=lambda m: (counts[m], m.name, m.version))
    latest: dict[str, tuple[tuple[str, ...], FloatArray]] = {}
    for page in pages:
        for item_id, cats, vector, item_model in zip(
            page.item_ids, page.categories, page.vectors, page.models, strict=True
        ):
            if vector is None or item_model != model or vector.shape[0] == 0:
                continue
            latest.pop(item_id, None)  # re-insert: order follows the last occurrence
            latest[item_id] = (cats, vector)
    if not latest:
        return CatalogItems([], [], np.zeros((0, 0), dtype=np.float32), model)
    dimension = collections.Counter(v.shape[0] for _, v in latest.values()).most_common(1)[0][0]
    kept = [(i, c, v) for i, (c, v) in latest.items() if v.shape[0] == dimension]
    if len(kept) < len(latest):
        log.warning(
            "dropped vectors of an unexpected dimension",
            extra={"fields": {"dropped": len(latest) - len(kept), "dimension": dimension}},
        )
    vectors = normalize_rows(np.vstack([v for _, _, v in kept]))
    return CatalogItems([i for i, _, _ in kept], [c for _, c, _ in kept], vectors, model)


def _stats_arrays(
    item_ids: Sequence[str], stats: Sequence[ItemStatsRecord]
) -> tuple[RowArray, BoolArray, BoolArray]:
    by_id = {s.item_id: s for s in stats}
    n = len(item_ids)
    popularity = np.zeros(n, dtype=np.int64)
    # An item the stats do not know has no interactions: tail and cold.
    is_tail = np.ones(n, dtype=np.bool_)
    is_cold = np.ones(n, dtype=np.bool_)
    for row, item_id in enumerate(item_ids):
        record = by_id.get(item_id)
        if record is not None:
            popularity[row] = record.interaction_count
            is_tail[row] = record.is_tail
            is_cold[row] = record.is_cold
    return popularity, is_tail, is_cold


def _popular_order(popularity: RowArray) -> RowArray:
    # Stable: equal popularity keeps catalogue order, so fallbacks are deterministic.
    return np.argsort(-popularity, kind="stable").astype(np.int64)


def build_snapshot(
    items: CatalogItems,
    stats: Sequence[ItemStatsRecord],
    params: IndexParams,
    previous: CatalogSnapshot | None = None,
) -> CatalogSnapshot:
    """A new snapshot (CPU-heavy: run it off the event loop).

    When ``previous`` holds an HNSW index over the same model and every previous item is still
    present with the same vector, the graph is reused and the new items go into the exact delta
    segment (until the delta outgrows its share); otherwise the index is rebuilt.
    """
    reused = _extend_previous(items, params, previous)
    if reused is not None:
        item_ids, categories, vectors, index = reused
    else:
        item_ids, categories, vectors = items.item_ids, items.categories, items.vectors
        if vectors.shape[0] == 0:
            vectors = np.zeros((0, max(vectors.shape[1], 1)), dtype=np.float32)
        index = VectorIndex.build(vectors, params)
    return _with_stats(item_ids, categories, vectors, items.model, index, stats, params)


def _extend_previous(
    items: CatalogItems, params: IndexParams, previous: CatalogSnapshot | None
) -> tuple[list[str], list[tuple[str, ...]], FloatArray, VectorIndex] | None:
    if (
        previous is None
        or previous.index.kind != "hnsw"
        or previous.model != items.model
        or previous.index.params != params
        or previous.dimension != items.vectors.shape[1]
    ):
        return None
    new_rows = {item_id: row for row, item_id in enumerate(items.item_ids)}
    old_in_new = [new_rows.get(item_id, -1) for item_id in previous.item_ids]
    if min(old_in_new, default=0) < 0:
        return None  # an item disappeared
    positions = np.asarray(old_in_new, dtype=np.int64)
    if not np.array_equal(items.vectors[positions], previous.vectors):
        return None  # some vector changed (re-embedded)
    is_old = np.zeros(len(items.item_ids), dtype=np.bool_)
    is_old[positions] = True
    added = np.flatnonzero(~is_old)
    index = previous.index.extended(items.vectors[added])
    if index.needs_rebuild():
        return None
    order = np.concatenate([positions, added])
    item_ids = [items.item_ids[i] for i in order]
    categories = [items.categories[i] for i in order]
    return item_ids, categories, items.vectors[order], index


def _with_stats(
    item_ids: list[str],
    categories: list[tuple[str, ...]],
    vectors: FloatArray,
    model: ModelRef | None,
    index: VectorIndex,
    stats: Sequence[ItemStatsRecord],
    params: IndexParams,
) -> CatalogSnapshot:
    popularity, is_tail, is_cold = _stats_arrays(item_ids, stats)
    popular = _popular_order(popularity)
    return CatalogSnapshot(
        item_ids=item_ids,
        rows={item_id: row for row, item_id in enumerate(item_ids)},
        vectors=vectors,
        categories=categories,
        popularity=popularity,
        is_tail=is_tail,
        is_cold=is_cold,
        model=model,
        index=index,
        tail_pool=PoolIndex.build(index, vectors, is_tail, params),
        cold_pool=PoolIndex.build(index, vectors, is_cold, params),
        popular_rows=popular,
        popular_tail_rows=popular[is_tail[popular]],
        loaded_at=time.time(),
    )


def restat_snapshot(
    snapshot: CatalogSnapshot, stats: Sequence[ItemStatsRecord], params: IndexParams
) -> CatalogSnapshot | None:
    """The snapshot with fresh popularity and flags; None when nothing changed."""
    popularity, is_tail, is_cold = _stats_arrays(snapshot.item_ids, stats)
    if (
        np.array_equal(popularity, snapshot.popularity)
        and np.array_equal(is_tail, snapshot.is_tail)
        and np.array_equal(is_cold, snapshot.is_cold)
    ):
        return None
    return _with_stats(
        snapshot.item_ids,
        snapshot.categories,
        snapshot.vectors,
        snapshot.model,
        snapshot.index,
        stats,
        params,
    )


def empty_snapshot(params: IndexParams) -> CatalogSnapshot:
    return build_snapshot(empty_items(1), [], params)


class CatalogLoader:
    """Loads snapshots from a ``CatalogSource``: full loads and cheap periodic refreshes."""

    def __init__(self, source: CatalogSource, params: IndexParams) -> None:
        self.source = source
        self.params = params
        # The stats version the last snapshot this loader made was built from: a refresh of that
        # snapshot asks for the stats only if they changed (at 100k items a full read costs
        # profiles tens of CPU-ms, and restating the snapshot ours).
        self._stats_seen: tuple[weakref.ref[CatalogSnapshot], str] | None = None

    def _known_version(self, snapshot: CatalogSnapshot) -> str:
        if self._stats_seen is None or self._stats_seen[0]() is not snapshot:
            return ""
        return self._stats_seen[1]

    def _remember(self, snapshot: CatalogSnapshot, version: str) -> None:
        self._stats_seen = (weakref.ref(snapshot), version) if version else None

    async def _target_model(self, deadline: HasTimeRemaining | None) -> ModelRef | None:
        """The embeddings service's model when the store holds its vectors, else None."""
        model = await self.source.embedding_model(deadline)
        if model is not None and await self.source.count_items(model, deadline) == 0:
            log.warning(
                "no item has a vector from the current embedding model; using the store's",
                extra={"fields": {"model": model.name, "version": model.version}},
            )
            return None
        return model

    async def _fetch_items(
        self, model: ModelRef | None, deadline: HasTimeRemaining | None
    ) -> CatalogItems:
        pages = [page async for page in self.source.item_pages(model, deadline)]
        return await asyncio.to_thread(assemble_items, pages, model)

    async def load(
        self, previous: CatalogSnapshot | None, deadline: HasTimeRemaining | None = None
    ) -> CatalogSnapshot:
        """A full load (items, vectors, stats); reuses ``previous``'s graph where valid."""
        model = await self._target_model(deadline)
        items = await self._fetch_items(model, deadline)
        stats = await self.source.item_stats(deadline)
        snapshot = await asyncio.to_thread(
            build_snapshot, items, stats.records or [], self.params, previous
        )
        self._remember(snapshot, stats.version)
        return snapshot

    async def refresh(
        self, current: CatalogSnapshot, deadline: HasTimeRemaining | None = None
    ) -> CatalogSnapshot | None:
        """A new snapshot when the catalogue changed since ``current``, else None.

        Probes first (model, item count) so that an unchanged catalogue costs three small calls:
        items are fetched only when their count changed, the stats pages only when their version
        moved.
        """
        model = await self.source.embedding_model(deadline)
        if (
            model is not None
            and model != current.model
            and await self.source.count_items(model, deadline) > 0
        ):
            log.info(
                "embedding model changed: full reload",
                extra={"fields": {"model": model.name, "version": model.version}},
            )
            return await self.load(current, deadline)
        count = await self.source.count_items(current.model, deadline)
        if count != current.size:
            return await self.load(current, deadline)
        stats = await self.source.item_stats(deadline, self._known_version(current))
        if stats.records is None:
            return None
        restated = await asyncio.to_thread(restat_snapshot, current, stats.records, self.params)
        self._remember(restated or current, stats.version)
        return restated


# --- real sources over gRPC ------------------------------------------------------------------


def _vector(values: Sequence[float]) -> FloatArray | None:
    if not len(values):
        return None
    return np.fromiter(values, dtype=np.float32, count=len(values))


def _page_from_proto(response: profiles_service_pb2.ListItemsResponse) -> ItemPage:
    page = ItemPage([], [], [], [])
    for item in response.items:
        page.item_ids.append(item.item_id)
        page.categories.append(tuple(item.categories))
        has_vector = item.HasField("vector") and len(item.vector.values) > 0
        page.vectors.append(_vector(item.vector.values) if has_vector else None)
        page.models.append(
            ModelRef(item.vector.model_name, item.vector.model_version) if has_vector else None
        )
    return page


class ProfilesCatalogSource:
    """``CatalogSource`` over profiles.ListItems / ListItemStats and embeddings.GetModelInfo."""

    def __init__(
        self,
        profiles: Any,
        embeddings: Any,
        timeout: float = 10.0,
        page_size: int = 1000,
        stats_page_size: int = 10_000,
    ) -> None:
        self._profiles = profiles
        self._embeddings = embeddings
        self._timeout = timeout
        self._page_size = page_size
        self._stats_page_size = stats_page_size

    async def embedding_model(self, deadline: HasTimeRemaining | None) -> ModelRef | None:
        try:
            info = await self._embeddings.GetModelInfo(
                embeddings_service_pb2.GetModelInfoRequest(),
                timeout=outbound_timeout(deadline, self._timeout),
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "embeddings model info unavailable", extra={"fields": {"code": error.code().name}}
            )
            return None
        if not info.model_name:
            return None
        return ModelRef(info.model_name, info.model_version)

    def _list_request(
        self, model: ModelRef | None, page_size: int, token: str, vectors: bool
    ) -> profiles_service_pb2.ListItemsRequest:
        return profiles_service_pb2.ListItemsRequest(
            page_size=page_size,
            page_token=token,
            include_vectors=vectors,
            vector_model_name=model.name if model else "",
            vector_model_version=model.version if model else "",
        )

    async def count_items(self, model: ModelRef | None, deadline: HasTimeRemaining | None) -> int:
        try:
            response = await self._profiles.ListItems(
                self._list_request(model, 1, "", False),
                timeout=outbound_timeout(deadline, self._timeout),
            )
        except grpc.aio.AioRpcError as error:
            raise from_upstream(error, "profiles") from error
        return int(response.total_size)

    async def item_pages(
        self, model: ModelRef | None, deadline: HasTimeRemaining | None
    ) -> AsyncIterator[ItemPage]:
        token = ""
        while True:
            try:
                response = await self._profiles.ListItems(
                    self._list_request(model, self._page_size, token, True),
                    timeout=outbound_timeout(deadline, self._timeout),
                )
            except grpc.aio.AioRpcError as error:
                raise from_upstream(error, "profiles") from error
            # Decoding 1000 vectors takes ~15 ms: not on the event loop.
            yield await asyncio.to_thread(_page_from_proto, response)
            token = response.next_page_token
            if not token:
                return

    async def item_stats(
        self, deadline: HasTimeRemaining | None, known_version: str = ""
    ) -> StatsRead:
        records: list[ItemStatsRecord] = []
        token = ""
        version = ""
        while True:
            try:
                response = await self._profiles.ListItemStats(
                    profiles_service_pb2.ListItemStatsRequest(
                        page_size=self._stats_page_size,
                        page_token=token,
                        if_popularity_version_differs="" if token else known_version,
                    ),
                    timeout=outbound_timeout(deadline, self._timeout),
                )
            except grpc.aio.AioRpcError as error:
                raise from_upstream(error, "profiles") from error
            if not token:
                # The first page's version was read before any page's counters.
                version = response.popularity_version
                if response.unchanged:
                    return StatsRead(None, version)
            records.extend(
                ItemStatsRecord(s.item_id, int(s.interaction_count), s.is_tail, s.is_cold)
                for s in response.stats
            )
            token = response.next_page_token
            if not token:
                return StatsRead(records, version)


class ProfilesInteractionSource:
    """``InteractionSource`` over profiles.ListInteractions."""

    def __init__(self, profiles: Any, timeout: float = 30.0, page_size: int = 10_000) -> None:
        self._profiles = profiles
        self._timeout = timeout
        self._page_size = page_size

    async def interaction_batches(
        self, deadline: HasTimeRemaining | None
    ) -> AsyncIterator[InteractionBatch]:
        token = ""
        while True:
            try:
                response = await self._profiles.ListInteractions(
                    profiles_service_pb2.ListInteractionsRequest(
                        page_size=self._page_size, page_token=token
                    ),
                    timeout=outbound_timeout(deadline, self._timeout),
                )
            except grpc.aio.AioRpcError as error:
                raise from_upstream(error, "profiles") from error
            rows = response.interactions
            yield InteractionBatch(
                [i.user_id for i in rows],
                [i.item_id for i in rows],
                np.asarray([interaction_weight(i.kind, i.value) for i in rows], dtype=np.float64),
                np.asarray(
                    [i.occurred_at.seconds + i.occurred_at.nanos * 1e-9 for i in rows],
                    dtype=np.float64,
                ),
            )
            token = response.next_page_token
            if not token:
                return


class EmbeddingsTextEncoder:
    """``TextEncoder`` over embeddings.EmbedTexts.

    Takes at most ``share`` of the caller's remaining time, so that a slow encoder still leaves
    time to answer from the popularity-and-tail fallback.
    """

    def __init__(self, embeddings: Any, timeout: float = 2.0, share: float = 0.5) -> None:
        self._embeddings = embeddings
        self._timeout = timeout
        self._share = share

    async def embed(self, text: str, deadline: HasTimeRemaining | None) -> EncodedText:
        try:
            response = await self._embeddings.EmbedTexts(
                embeddings_service_pb2.EmbedTextsRequest(texts=[text]),
                timeout=outbound_timeout(deadline, self._timeout, self._share),
            )
        except grpc.aio.AioRpcError as error:
            raise from_upstream(error, "embeddings") from error
        values = response.embeddings[0].values if response.embeddings else []
        vector = np.asarray(values, dtype=np.float32)
        return EncodedText(vector, ModelRef(response.model_name, response.model_version))
