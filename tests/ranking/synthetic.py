"""Synthetic catalogues and fakes behind the ranking service's Protocols (no other service)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator

import numpy as np

from services.common.deadlines import HasTimeRemaining
from services.common.errors import Unavailable
from services.common.tail import head_items
from services.ranking.catalog import (
    CatalogItems,
    EncodedText,
    ItemPage,
    ItemStatsRecord,
    ModelRef,
    StatsRead,
)
from services.ranking.collaborative import InteractionBatch
from services.ranking.index import FloatArray, normalize_rows

CATEGORIES = ("jazz", "rock", "cooking", "travel", "chess", "gardening", "space", "poetry")
MODEL = ModelRef("fake-encoder", "1")


@dataclasses.dataclass
class World:
    """Items clustered by category; users who each like one category; skewed popularity."""

    dimension: int
    centroids: FloatArray
    item_ids: list[str]
    item_category: list[str]
    vectors: FloatArray
    # user -> (category, items interacted with, oldest first)
    users: dict[str, tuple[str, list[str]]]

    def interactions(self) -> list[tuple[str, str, float]]:
        return [(u, i, 1.0) for u, (_, items) in self.users.items() for i in items]

    def timed_batch(self) -> InteractionBatch:
        """Every interaction, one per (user, position), timestamped by its position in the
        user's history (the learned ranker's time split needs times)."""
        rows = [
            (user, item, float(t))
            for user, (_, items) in self.users.items()
            for t, item in enumerate(items)
        ]
        return InteractionBatch(
            [r[0] for r in rows], [r[1] for r in rows], [1.0] * len(rows), [r[2] for r in rows]
        )

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.item_ids, 0)
        for _, item, _ in self.interactions():
            counts[item] += 1
        return counts

    def stats(self) -> list[ItemStatsRecord]:
        counts = self.counts()
        head = head_items(counts, self.item_ids)
        return [ItemStatsRecord(i, counts[i], i not in head, counts[i] == 0) for i in self.item_ids]

    def items(self) -> CatalogItems:
        return CatalogItems(
            list(self.item_ids),
            [(c,) for c in self.item_category],
            self.vectors.copy(),
            MODEL,
        )

    def category_vector(self, category: str) -> FloatArray:
        vector: FloatArray = self.centroids[CATEGORIES.index(category)]
        return vector


def make_world(
    n_items: int = 800,
    n_users: int = 120,
    dimension: int = 32,
    active_share: float = 0.5,
    per_user: int = 15,
    seed: int = 7,
) -> World:
    """A deterministic world; only ``active_share`` of each category's items get interactions."""
    rng = np.random.default_rng(seed)
    centroids = normalize_rows(rng.standard_normal((len(CATEGORIES), dimension)))
    item_ids = [f"item-{i:05d}" for i in range(n_items)]
    item_category = [CATEGORIES[i % len(CATEGORIES)] for i in range(n_items)]
    noise = rng.standard_normal((n_items, dimension)) * 0.15
    vectors = normalize_rows(centroids[[i % len(CATEGORIES) for i in range(n_items)]] + noise)
    by_category: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    for item, category in zip(item_ids, item_category, strict=True):
        by_category[category].append(item)
    users: dict[str, tuple[str, list[str]]] = {}
    for u in range(n_users):
        category = CATEGORIES[u % len(CATEGORIES)]
        pool = by_category[category][: max(1, int(len(by_category[category]) * active_share))]
        # Zipf-like: the first items of a category are much more popular.
        weights = 1.0 / np.arange(1, len(pool) + 1) ** 1.1
        picks = rng.choice(
            len(pool), size=min(per_user, len(pool)), replace=False, p=weights / weights.sum()
        )
        users[f"user-{u:04d}"] = (category, [pool[p] for p in picks])
    return World(dimension, centroids, item_ids, item_category, vectors, users)


class FakeCatalog:
    """``CatalogSource`` over in-memory items; tests add items and flip availability."""

    def __init__(self, world: World, page_size: int = 97) -> None:
        self.world = world
        self.page_size = page_size
        self.items: dict[str, tuple[tuple[str, ...], FloatArray | None, ModelRef | None]] = {
            i: ((c,), v, MODEL)
            for i, c, v in zip(world.item_ids, world.item_category, world.vectors, strict=True)
        }
        self.counts = world.counts()
        self.model: ModelRef | None = MODEL
        self.embeddings_up = True
        self.profiles_up = True
        self.item_fetches = 0
        self.stats_reads = 0  # full answers of item_stats (not the "unchanged" ones)

    def add_item(self, item_id: str, category: str, vector: FloatArray) -> None:
        self.items[item_id] = ((category,), vector, MODEL)

    def _check(self) -> None:
        if not self.profiles_up:
            raise Unavailable("DEPENDENCY_UNAVAILABLE", "profiles is down")

    def _matching(self, model: ModelRef | None) -> list[str]:
        return [
            i
            for i, (_, v, m) in self.items.items()
            if model is None or (v is not None and m == model)
        ]

    async def embedding_model(self, deadline: HasTimeRemaining | None) -> ModelRef | None:
        return self.model if self.embeddings_up else None

    async def count_items(self, model: ModelRef | None, deadline: HasTimeRemaining | None) -> int:
        self._check()
        return len(self._matching(model))

    async def item_pages(
        self, model: ModelRef | None, deadline: HasTimeRemaining | None
    ) -> AsyncIterator[ItemPage]:
        self._check()
        self.item_fetches += 1
        ids = self._matching(model)
        for start in range(0, len(ids), self.page_size):
            chunk = ids[start : start + self.page_size]
            yield ItemPage(
                list(chunk),
                [self.items[i][0] for i in chunk],
                [self.items[i][1] for i in chunk],
                [self.items[i][2] for i in chunk],
            )

    async def item_stats(
        self, deadline: HasTimeRemaining | None, known_version: str = ""
    ) -> StatsRead:
        """Versioned like profiles' ListItemStats: a digest of the records."""
        self._check()
        catalogue = list(self.items)
        head = head_items(self.counts, catalogue)
        records = [
            ItemStatsRecord(i, self.counts.get(i, 0), i not in head, self.counts.get(i, 0) == 0)
            for i in catalogue
        ]
        version = hashlib.sha256(repr(records).encode()).hexdigest()[:16]
        if version == known_version:
            return StatsRead(None, version)
        self.stats_reads += 1
        return StatsRead(records, version)


class FakeInteractions:
    """``InteractionSource`` paging an in-memory list."""

    def __init__(self, rows: list[tuple[str, str, float]], page_size: int = 500) -> None:
        self.rows = rows
        self.page_size = page_size

    async def interaction_batches(
        self, deadline: HasTimeRemaining | None
    ) -> AsyncIterator[InteractionBatch]:
        for start in range(0, len(self.rows), self.page_size):
            chunk = self.rows[start : start + self.page_size]
            # A user's rows are oldest first, so the row number serves as the time.
            yield InteractionBatch(
                [r[0] for r in chunk],
                [r[1] for r in chunk],
                [r[2] for r in chunk],
                [float(start + n) for n in range(len(chunk))],
            )


class FakeEncoder:
    """``TextEncoder``: a text maps to the mean of the centroids of the categories it names."""

    def __init__(self, world: World, model: ModelRef = MODEL) -> None:
        self.world = world
        self.model = model
        self.up = True
        self.calls = 0

    async def embed(self, text: str, deadline: HasTimeRemaining | None) -> EncodedText:
        self.calls += 1
        if not self.up:
            raise Unavailable("DEPENDENCY_UNAVAILABLE", "embeddings is down")
        named = [c for c in CATEGORIES if c in text.lower()]
        if not named:
            return EncodedText(np.zeros(self.world.dimension, dtype=np.float32), self.model)
        vector = normalize_rows(np.mean([self.world.category_vector(c) for c in named], axis=0))
        return EncodedText(vector[0], self.model)
