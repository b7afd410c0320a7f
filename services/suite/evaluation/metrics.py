"""Offline metrics, exactly as DESIGN.md defines them (protocol and choices: README.md here).

Per-user accuracy (averaged over users with a non-empty relevant set):
- Recall@K = |top-K ∩ relevant| / |relevant|;
- NDCG@K with binary relevance: DCG = sum over hits at 0-based position p of 1/log2(p + 2),
  divided by the DCG of an ideal list holding min(K, |relevant|) hits;
- tail recall@K / cold recall@K = Recall@K restricted to relevant items that are tail / cold
  (averaged over the users who have at least one such relevant item).
Long-tail and exposure, over the lists of every evaluated user:
- APLT@K = mean over users of (tail items in the top K) / K;
- cold share@K = mean over users of (cold items in the top K) / K (not in DESIGN; shown because
  "recommending cold items at all" is part of the aim);
- coverage@K = distinct items in anyone's top K / catalogue size;
- Gini@K of exposure over the whole catalogue: each item's count of top-K appearances, items
  never shown counting 0; 0 = equal exposure, (n-1)/n = one item takes everything;
- ARP@K = mean over users of the mean training popularity (interaction count) of the top K;
- novelty@K = mean over users of the mean of -log2((pop + 1) / (|train| + 1)) over the top K:
  add-one smoothing keeps items with zero training interactions finite (they score the highest
  novelty, log2(|train| + 1)); for popular items it is within a hair of -log2(pop / |train|);
- ILD@K (intra-list diversity) = mean over lists of 1 - mean pairwise cosine similarity of the
  LLM item vectors; when no vectors are known, 1 - mean pairwise Jaccard similarity of the item
  category sets (two items with no category at all have similarity 0). Lists of fewer than two
  items are left out.
Head / tail / cold come from ``services.common.tail`` over the training interactions.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.tail import head_items

FloatArray = npt.NDArray[np.float64]
KS = (10, 20)

# Metric names, in table order; each appears as "<name>@<k>".
ACCURACY = ("ndcg", "recall", "tail_recall", "cold_recall")
BEYOND = ("aplt", "cold_share", "coverage", "gini", "arp", "novelty", "ild")
METRICS = ACCURACY + BEYOND


@dataclasses.dataclass(frozen=True)
class ItemFacts:
    """What the beyond-accuracy metrics need to know about the catalogue (training window)."""

    catalogue: tuple[str, ...]
    popularity: Mapping[str, int]
    train_size: int
    head: frozenset[str]
    categories: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    # Unit-length item vectors; empty = use categories for ILD.
    vectors: Mapping[str, FloatArray] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_training(
        cls,
        catalogue: Iterable[str],
        train_item_ids: Iterable[str],
        categories: Mapping[str, Iterable[str]] | None = None,
        vectors: Mapping[str, Sequence[float] | npt.NDArray[np.floating[Any]]] | None = None,
    ) -> ItemFacts:
        """Popularity = training interactions per item; head by ``services.common.tail``."""
        items = tuple(dict.fromkeys(catalogue))
        counts = Counter(train_item_ids)
        popularity = {item: counts.get(item, 0) for item in items}
        for item, count in counts.items():
            popularity.setdefault(item, count)
        unit: dict[str, FloatArray] = {}
        for item, raw in (vectors or {}).items():
            vector = np.asarray(raw, dtype=np.float64)
            norm = float(np.linalg.norm(vector))
            if norm > 0:
                unit[item] = vector / norm
        return cls(
            catalogue=items,
            popularity=popularity,
            train_size=sum(counts.values()),
            head=head_items(popularity, items),
            categories={item: frozenset(cats) for item, cats in (categories or {}).items()},
            vectors=unit,
        )

    def is_tail(self, item_id: str) -> bool:
        return item_id not in self.head

    def is_cold(self, item_id: str) -> bool:
        return self.popularity.get(item_id, 0) == 0

    @property
    def ild_space(self) -> str:
        return "vectors" if self.vectors else "categories"


# --------------------------------------------------------------------------- per list


def _top(ranked: Sequence[str], k: int) -> list[str]:
    """The first k distinct items (a repeated item counts once, at its first position)."""
    return list(dict.fromkeys(ranked))[:k]


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float | None:
    """|top-K ∩ relevant| / |relevant|; None when nothing is relevant."""
    wanted = set(relevant)
    if not wanted:
        return None
    return len(set(_top(ranked, k)) & wanted) / len(wanted)


def ndcg_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float | None:
    """Binary-relevance NDCG@K; None when nothing is relevant."""
    wanted = set(relevant)
    if not wanted:
        return None
    dcg = sum(1.0 / math.log2(p + 2) for p, item in enumerate(_top(ranked, k)) if item in wanted)
    ideal = sum(1.0 / math.log2(p + 2) for p in range(min(k, len(wanted))))
    return dcg / ideal


def share_at_k(ranked: Sequence[str], members: Iterable[str] | frozenset[str], k: int) -> float:
    """Items of ``members`` in the top K, divided by K (a short list is not padded)."""
    group = members if isinstance(members, (set, frozenset)) else set(members)
    return sum(1 for item in _top(ranked, k) if item in group) / k


def mean_popularity(ranked: Sequence[str], popularity: Mapping[str, int], k: int) -> float | None:
    top = _top(ranked, k)
    if not top:
        return None
    return sum(popularity.get(item, 0) for item in top) / len(top)


def novelty_of(item_id: str, popularity: Mapping[str, int], train_size: int) -> float:
    """-log2((pop + 1) / (|train| + 1)): finite for cold items (see the module docstring)."""
    return -math.log2((popularity.get(item_id, 0) + 1) / (train_size + 1))


def mean_novelty(
    ranked: Sequence[str], popularity: Mapping[str, int], train_size: int, k: int
) -> float | None:
    top = _top(ranked, k)
    if not top:
        return None
    return sum(novelty_of(item, popularity, train_size) for item in top) / len(top)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def intra_list_diversity(
    ranked: Sequence[str],
    k: int,
    vectors: Mapping[str, FloatArray] | None = None,
    categories: Mapping[str, frozenset[str]] | None = None,
) -> float | None:
    """1 - mean pairwise similarity of the top K (cosine of vectors when given, else category
    Jaccard). With vectors, items lacking one are left out of the pairs. None: under 2 items."""
    top = _top(ranked, k)
    if vectors:
        rows = [vectors[item] for item in top if item in vectors]
        if len(rows) < 2:
            return None
        matrix = np.vstack(rows)
        sims = matrix @ matrix.T
        n = len(rows)
        mean_sim = (float(sims.sum()) - float(np.trace(sims))) / (n * (n - 1))
        return 1.0 - mean_sim
    if len(top) < 2:
        return None
    cats = categories or {}
    empty: frozenset[str] = frozenset()
    pairs = [
        jaccard(cats.get(a, empty), cats.get(b, empty))
        for i, a in enumerate(top)
        for b in top[i + 1 :]
    ]
    return 1.0 - sum(pairs) / len(pairs)


# --------------------------------------------------------------------------- over all lists


def exposure_counts(
    lists: Iterable[Sequence[str]], catalogue: Sequence[str], k: int
) -> npt.NDArray[np.int64]:
    """Top-K appearances per catalogue item, in catalogue order (never shown = 0).

    Items outside the catalogue are ignored."""
    index = {item: position for position, item in enumerate(catalogue)}
    counts = np.zeros(len(catalogue), dtype=np.int64)
    for ranked in lists:
        for item in _top(ranked, k):
            position = index.get(item)
            if position is not None:
                counts[position] += 1
    return counts


def gini(values: Sequence[float] | npt.NDArray[np.generic]) -> float:
    """Gini coefficient of non-negative values: 0 = all equal, (n-1)/n = one holds everything.

    G = sum_i (2i - n - 1) x_(i) / (n sum x) with x sorted ascending and i = 1..n; 0 when the
    total is 0 (nothing was shown: nothing is unequal)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    total = float(x.sum())
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * ranks - n - 1) * x).sum() / (n * total))


def lorenz_curve(
    values: Sequence[float] | npt.NDArray[np.generic],
) -> tuple[FloatArray, FloatArray]:
    """(cumulative share of items, cumulative share of exposure), items sorted by exposure
    ascending, both starting at 0 and ending at 1 (the diagonal when nothing was shown)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    shares = np.linspace(0.0, 1.0, n + 1)
    total = float(x.sum())
    if total <= 0:
        return shares, shares.copy()
    return shares, np.concatenate(([0.0], np.cumsum(x) / total))


def coverage_at_k(lists: Iterable[Sequence[str]], catalogue_size: int, k: int) -> float:
    shown: set[str] = set()
    for ranked in lists:
        shown.update(_top(ranked, k))
    return len(shown) / catalogue_size if catalogue_size else 0.0


def _mean(values: Iterable[float | None]) -> float:
    kept = [value for value in values if value is not None]
    return sum(kept) / len(kept) if kept else 0.0


def evaluate(
    lists: Mapping[str, Sequence[str]],
    relevant: Mapping[str, frozenset[str]],
    facts: ItemFacts,
    ks: Sequence[int] = KS,
) -> dict[str, float]:
    """Every metric at every K, as ``{"ndcg@10": ..., ...}``, over the users of ``relevant``.

    A user without a list counts as an empty list (zero hits, zero tail share)."""
    users = sorted(user for user, items in relevant.items() if items)
    served = [list(lists.get(user, ())) for user in users]
    tail = frozenset(item for item in facts.catalogue if facts.is_tail(item))
    cold = frozenset(item for item in facts.catalogue if facts.is_cold(item))
    results: dict[str, float] = {}
    for k in ks:
        rel = [relevant[user] for user in users]
        results[f"ndcg@{k}"] = _mean(ndcg_at_k(r, w, k) for r, w in zip(served, rel, strict=True))
        results[f"recall@{k}"] = _mean(
            recall_at_k(r, w, k) for r, w in zip(served, rel, strict=True)
        )
        results[f"tail_recall@{k}"] = _mean(
            recall_at_k(r, w & tail, k) for r, w in zip(served, rel, strict=True)
        )
        results[f"cold_recall@{k}"] = _mean(
            recall_at_k(r, w & cold, k) for r, w in zip(served, rel, strict=True)
        )
        results[f"aplt@{k}"] = _mean(share_at_k(r, tail, k) for r in served)
        results[f"cold_share@{k}"] = _mean(share_at_k(r, cold, k) for r in served)
        results[f"coverage@{k}"] = coverage_at_k(served, len(facts.catalogue), k)
        results[f"gini@{k}"] = gini(exposure_counts(served, facts.catalogue, k))
        results[f"arp@{k}"] = _mean(mean_popularity(r, facts.popularity, k) for r in served)
        results[f"novelty@{k}"] = _mean(
            mean_novelty(r, facts.popularity, facts.train_size, k) for r in served
        )
        results[f"ild@{k}"] = _mean(
            intra_list_diversity(r, k, facts.vectors, facts.categories) for r in served
        )
    return results
