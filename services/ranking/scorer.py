"""Candidate generation and the evidence-weighted blend (pure functions over a snapshot).

Stages (LensKit style): candidate sources -> features -> blend -> selection.

Sources, each excluding the request's exclusions:
- collaborative top-N (ALS, user folded in from the history) and its tail-only top-N;
- content ANN top-N against the user vector (history, recency-weighted; or stated interests);
- the tail pool and the cold pool, scored by exact/filtered content similarity — a re-ranker can
  only expose what the pool holds, so relevant tail and cold items must be in it;
- a short-term source: neighbours of the mean vector of the last few history items;
- with a sequential user tower in the model (``tower.py``): neighbours of the tower's user vector
  over all items and over the cold pool (stated interests go through it as a one-item history);
- without any user signal: the most popular items and the most popular tail items.
Source sizes are settings (``LONGTAIL_RANKING_*_POOL``; 0 switches a source off). On HNSW a pool
source costs no walk of its own when the all-items answer to its query already holds enough pool
members (``index.multi_search``); with a tower whose vector takes the content sources
(``tower_replaces_content``) a request walks the graph twice (tower, short term) where tail and
cold items are common.

Scoring. With a learned ranker (``learned.py``, fitted by ``training.py`` with every TrainModel)
the score is its logit over per-candidate features: the collaborative score (fold-in), cosine to
the user vector, max and mean cosine to the most recent history items (LLM vectors and item
factors), log popularity, tail / cold flags, the user's tail share and history length, and the
cosine to the user tower's vector. Measured on
MovieLens (per-user time split, K=10): NDCG@10 0.151 against ALS's 0.114; the similarity-to-
recent-items features carried most of the gain (0.119 without the item-factor ones).

Without a ranker (none trained yet, or no timestamps to split by) the fallback is the blend by
evidence: ``a_i = n_i / (n_i + kappa)`` with ``n_i`` the item's training interaction count,
``score = a_i * collab_norm + (1 - a_i) * content_norm``, each source min-max normalised over the
pool. It puts cold items on the same scale as the best collaborative scores (NDCG@10 0.051 there).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from services.ranking.catalog import CatalogSnapshot
from services.ranking.collaborative import CollaborativeModel
from services.ranking.index import (
    BoolArray,
    FloatArray,
    IndexParams,
    RowArray,
    SearchRequest,
    VectorIndex,
    multi_search,
)
from services.ranking.learned import FEATURE_NAMES, LearnedRanker

_EMPTY_ROWS = np.empty(0, dtype=np.int64)


class VectorSource(enum.Enum):
    HISTORY = "history"
    INTERESTS = "interests"
    NONE = "none"


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    # Evidence prior of the blend: an item needs kappa training interactions for a 50/50 blend.
    kappa: float = 20.0
    # Source sizes as multiples of the requested candidate count (each at least ``min_source``).
    collaborative_pool: float = 1.0
    collaborative_tail_pool: float = 0.25
    content_pool: float = 1.0
    tail_pool: float = 0.5
    cold_pool: float = 0.25
    min_source: int = 20
    # Max and mean similarity to the last ``recent_items`` history items are content features.
    recent_items: int = 5
    # A short-term source: neighbours of the mean of the last ``short_term_items`` items.
    short_term_items: int = 3
    short_term_pool: float = 0.5
    # Sources from the sequential user tower's vector (when the model has a tower): over all
    # items, and over the cold pool (among cold items it ranked 1.7x better than the mean of
    # history on MovieLens' cold-items split).
    tower_pool: float = 1.0
    tower_cold_pool: float = 0.25
    # With a tower vector, the content vector's sources (all items, tail pool, cold pool) search
    # with the tower's vector instead (same sizes; a pool asked twice is searched once, with the
    # larger size). The content vector still scores every candidate (features).
    tower_replaces_content: bool = True
    # Cold items by their text mapped into the collaborative space (ALDI / DropoutNet's idea in
    # closed form: a ridge map from item vectors to the ALS item factors, fitted on the warm
    # items of the served model), scored against the user's folded-in factor: a candidate source
    # over the cold pool, and two ranker features. Ridge strength relative to items / dimension,
    # used only where the model's ranker does not carry the one chosen on its validation slice.
    mapped_cold_pool: float = 0.25
    content_map_ridge: float = 0.1
    # Recency weighting of the user vector: weight halves every ``history_half_life`` entries.
    history_half_life: float = 10.0
    max_history: int = 200
    # content = (user * cos(user) + max * max_recent + mean * mean_recent) / sum of weights.
    user_weight: float = 0.6
    recent_max_weight: float = 0.3
    recent_mean_weight: float = 0.1
    # The returned candidates hold at least these shares of tail / cold items when the pool has
    # them, so that exposure policies have tail items to promote.
    min_tail_share: float = 0.3
    min_cold_share: float = 0.1
    # History items are not returned unless a query sets ``include_history`` (the request's
    # exclusions always apply).
    exclude_history: bool = True


@dataclasses.dataclass(frozen=True)
class HistoryItem:
    """One history entry, most recent first; ``weight`` from ``interaction_weight``."""

    item_id: str
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class RankQuery:
    history: Sequence[HistoryItem]
    candidate_count: int
    exclude_item_ids: Collection[str] = ()
    # Already in the catalogue's space (same encoder), for users without usable history.
    interests_vector: FloatArray | None = None
    include_vectors: bool = False
    # The caller asked for already-seen items too (Recommend's include_seen): the history still
    # builds the user vector, but its items may come back.
    include_history: bool = False


@dataclasses.dataclass(frozen=True)
class ScoredCandidate:
    item_id: str
    score: float
    content_score: float
    collaborative_score: float
    popularity: int
    is_tail: bool
    is_cold: bool
    categories: tuple[str, ...]
    vector: FloatArray | None = None


@dataclasses.dataclass(frozen=True)
class RankResult:
    candidates: list[ScoredCandidate]
    source: VectorSource
    pool_size: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class CandidatePool:
    """The pooled candidates of one request (catalogue rows) and their features."""

    source: VectorSource
    rows: RowArray
    # One row per candidate, columns as ``learned.FEATURE_NAMES``.
    features: FloatArray
    content_raw: FloatArray
    content_norm: FloatArray
    collaborative_raw: FloatArray
    collaborative_norm: FloatArray
    evidence: FloatArray

    @classmethod
    def empty(cls, source: VectorSource) -> CandidatePool:
        none = np.zeros(0, dtype=np.float32)
        return cls(
            source,
            _EMPTY_ROWS,
            np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32),
            none,
            none,
            none,
            none,
            none,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class CollaborativeView:
    """A collaborative model aligned with one catalogue snapshot."""

    model: CollaborativeModel
    # Per catalogue row: the model row, or -1 when the model has not seen the item.
    model_rows: RowArray
    # Per model row: the catalogue row, or -1 when the item is not in the snapshot.
    catalog_rows: RowArray
    # Per model row: whether the item is a catalogue tail item.
    model_is_tail: BoolArray
    # Per catalogue row: training interactions (the blend's evidence n_i).
    evidence: FloatArray
    # Per model row: the item factor scaled to unit length (item-item cosines).
    unit_factors: FloatArray
    # Item vector -> item factor (dimension x factors), fitted on the model's items; None when
    # there are too few of them or the catalogue has no vectors.
    content_map: FloatArray | None = None
    # The snapshot's cold rows and an exact inner-product index over their mapped factors
    # (content_map applied; index row i is cold_rows[i]).
    cold_rows: RowArray = dataclasses.field(default_factory=lambda: _EMPTY_ROWS)
    cold_mapped: VectorIndex | None = None
    # Per catalogue row: its position in ``cold_rows``, or -1 (exclusions in O(excluded)).
    cold_position: RowArray = dataclasses.field(default_factory=lambda: _EMPTY_ROWS)

    @classmethod
    def build(
        cls,
        model: CollaborativeModel,
        snapshot: CatalogSnapshot,
        ridge: float = ScorerConfig.content_map_ridge,
    ) -> CollaborativeView:
        """``ridge`` is the map's strength unless the model's ranker carries the one chosen on
        its validation slice (``training.choose_map_ridge``)."""
        if model.ranker is not None:
            chosen = model.ranker.info.get("content_map_ridge")
            if isinstance(chosen, int | float) and math.isfinite(chosen) and chosen > 0:
                ridge = float(chosen)
        catalog_rows = np.asarray(
            [snapshot.rows.get(item_id, -1) for item_id in model.item_ids], dtype=np.int64
        )
        model_rows = np.full(snapshot.size, -1, dtype=np.int64)
        known = catalog_rows >= 0
        model_rows[catalog_rows[known]] = np.flatnonzero(known)
        model_is_tail = np.zeros(model.item_count, dtype=np.bool_)
        model_is_tail[known] = snapshot.is_tail[catalog_rows[known]]
        evidence = np.zeros(snapshot.size, dtype=np.float32)
        evidence[catalog_rows[known]] = model.item_counts[known]
        norms = np.linalg.norm(model.item_factors, axis=1, keepdims=True)
        unit = (model.item_factors / np.maximum(norms, 1e-12)).astype(np.float32)
        content_map = fit_content_map(
            snapshot.vectors[catalog_rows[known]], model.item_factors[known], ridge
        )
        cold_rows = np.flatnonzero(snapshot.is_cold & (model_rows < 0)).astype(np.int64)
        cold_mapped = None
        if content_map is not None and cold_rows.shape[0]:
            # FAISS's exact scan: half the CPU of numpy's product + argpartition at 80k rows.
            cold_mapped = VectorIndex.build(
                snapshot.vectors[cold_rows] @ content_map,
                IndexParams(exact_max_items=cold_rows.shape[0]),
                "mapped-cold",
            )
        cold_position = np.full(snapshot.size, -1, dtype=np.int64)
        cold_position[cold_rows] = np.arange(cold_rows.shape[0])
        return cls(
            model,
            model_rows,
            catalog_rows,
            model_is_tail,
            evidence,
            unit,
            content_map,
            cold_rows,
            cold_mapped,
            cold_position,
        )


def fit_content_map(vectors: FloatArray, factors: FloatArray, ridge: float) -> FloatArray | None:
    """Ridge regression ``W = (X'X + lambda I)^-1 X'Y`` from item vectors to item factors.

    ``lambda = ridge * items / dimension`` keeps the strength comparable across catalogue sizes.
    None with fewer items than dimensions' worth of evidence (or no vectors).
    """
    if vectors.ndim != 2 or vectors.shape[0] < 2 or vectors.shape[1] == 0:
        return None
    x = vectors.astype(np.float64)
    y = factors.astype(np.float64)
    dimension = x.shape[1]
    strength = max(ridge, 1e-6) * x.shape[0] / dimension
    gram = x.T @ x + strength * np.eye(dimension)
    try:
        solution = np.linalg.solve(gram, x.T @ y)
    except np.linalg.LinAlgError:
        return None
    mapped: FloatArray = solution.astype(np.float32)
    return mapped


def recency_weights(count: int, half_life: float) -> FloatArray:
    """Exponential decay by rank: 1 for the most recent entry, 1/2 after ``half_life`` entries."""
    decay = 0.5 ** (1.0 / max(half_life, 1e-6))
    weights: FloatArray = (decay ** np.arange(count)).astype(np.float32)
    return weights


def user_vector(vectors: FloatArray, rows: RowArray, weights: npt.ArrayLike) -> FloatArray | None:
    """The ``weights``-weighted mean of the item vectors at ``rows``, L2-normalised.

    None when there are no rows (or their vectors cancel out).
    """
    if rows.shape[0] == 0:
        return None
    mean = np.asarray(weights, dtype=np.float32) @ vectors[rows]
    norm = float(np.linalg.norm(mean))
    if not math.isfinite(norm) or norm <= 1e-12:
        return None
    result: FloatArray = (mean / norm).astype(np.float32)
    return result


def evidence_weight(counts: npt.ArrayLike, kappa: float) -> FloatArray:
    """``a_i = n_i / (n_i + kappa)``: 0 for cold items, towards 1 for well-observed ones."""
    n = np.maximum(np.asarray(counts, dtype=np.float32), 0.0)
    if kappa <= 0:
        return (n > 0).astype(np.float32)
    result: FloatArray = (n / (n + np.float32(kappa))).astype(np.float32)
    return result


def blend(
    content_norm: FloatArray,
    collaborative_norm: FloatArray,
    evidence: FloatArray,
    kappa: float,
) -> FloatArray:
    """``a_i * collab_norm + (1 - a_i) * content_norm`` with ``a_i = n_i / (n_i + kappa)``.

    ``evidence`` is 0 where the item has no collaborative factor (the score is pure content).
    """
    alpha = evidence_weight(evidence, kappa)
    score: FloatArray = (alpha * collaborative_norm + (1.0 - alpha) * content_norm).astype(
        np.float32
    )
    return score


def min_max(values: FloatArray, valid: BoolArray | None = None) -> FloatArray:
    """Scale ``values[valid]`` to [0, 1] (all 1 when equal); invalid entries become 0."""
    out = np.zeros(values.shape[0], dtype=np.float32)
    mask = np.ones(values.shape[0], dtype=np.bool_) if valid is None else valid
    if not mask.any():
        return out
    chosen = values[mask]
    low, high = float(chosen.min()), float(chosen.max())
    if high - low <= 1e-12:
        out[mask] = 1.0
    else:
        out[mask] = (chosen - low) / (high - low)
    return out


def _top_rows(scores: FloatArray, k: int) -> RowArray:
    """Positions of the ``k`` highest finite scores, best first."""
    finite = np.isfinite(scores)
    available = int(finite.sum())
    k = min(k, available)
    if k <= 0:
        return _EMPTY_ROWS
    if k < scores.shape[0]:
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(scores.shape[0])
    part = part[np.isfinite(scores[part])]
    best: RowArray = part[np.argsort(-scores[part], kind="stable")].astype(np.int64)
    return best


def _first_not_excluded(rows: RowArray, excluded: RowArray, k: int) -> RowArray:
    head = rows[: k + excluded.shape[0]]
    return head[~np.isin(head, excluded)][:k]


def _onto_query(requests: list[SearchRequest], query: int) -> list[SearchRequest]:
    """Every request on ``query``; one per pool, the largest ``k`` of those asked."""
    merged: dict[int, SearchRequest] = {}
    for request in requests:
        key = id(request.pool)
        if key not in merged or request.k > merged[key].k:
            merged[key] = SearchRequest(query, request.k, request.pool)
    return list(merged.values())


def _source_size(count: int, share: float, config: ScorerConfig) -> int:
    return 0 if share <= 0 else max(config.min_source, math.ceil(count * share))


def select_with_reserves(
    order: RowArray,
    is_tail: BoolArray,
    is_cold: BoolArray,
    count: int,
    min_tail_share: float,
    min_cold_share: float,
) -> RowArray:
    """The best ``count`` positions of ``order`` (best first), holding minimum tail/cold shares.

    Missing cold (then tail) items replace the lowest-ranked chosen items that are not needed for
    the other quota; the result keeps score order.
    """
    chosen = list(order[:count])
    rest = list(order[count:])
    for share, wanted, protect in (
        (min_cold_share, is_cold, None),
        (min_tail_share, is_tail, is_cold),
    ):
        need = math.ceil(share * count) - int(sum(bool(wanted[p]) for p in chosen))
        if need <= 0:
            continue
        additions = [p for p in rest if wanted[p]][:need]
        removable = [
            p for p in reversed(chosen) if not wanted[p] and (protect is None or not protect[p])
        ][: len(additions)]
        additions = additions[: len(removable)]
        if not additions:
            continue
        gone = set(removable)
        added = set(additions)
        chosen = [p for p in chosen if p not in gone] + additions
        rest = [p for p in rest if p not in added] + removable
    rank = {p: i for i, p in enumerate(order)}
    chosen.sort(key=rank.__getitem__)
    return np.asarray(chosen, dtype=np.int64)


def candidate_pool(
    snapshot: CatalogSnapshot,
    collaborative: CollaborativeView | None,
    query: RankQuery,
    config: ScorerConfig,
) -> CandidatePool:
    """The union of the candidate sources for one user, with every candidate's features."""
    count = query.candidate_count
    if snapshot.size == 0 or count <= 0:
        return CandidatePool.empty(VectorSource.NONE)

    history = list(query.history[: config.max_history])
    history_rows_all = np.asarray(
        [snapshot.rows.get(h.item_id, -1) for h in history], dtype=np.int64
    )
    history_weights_all = np.asarray([max(h.weight, 0.0) for h in history], dtype=np.float32)
    in_catalogue = history_rows_all >= 0
    # Keep each entry's rank in the history for recency, dropping unknown items.
    history_rows = history_rows_all[in_catalogue]
    history_weights = history_weights_all[in_catalogue]
    history_ranks = np.flatnonzero(in_catalogue)

    excluded = snapshot.rows_of(list(query.exclude_item_ids))
    if config.exclude_history and not query.include_history:
        excluded = np.concatenate([excluded, history_rows])
    excluded = np.unique(excluded)

    # --- user representations
    content_vector: FloatArray | None = None
    if history_rows.shape[0]:
        # Recency by the entry's rank in the full history, times the interaction's weight.
        decay = recency_weights(history_rows_all.shape[0], config.history_half_life)
        content_vector = user_vector(
            snapshot.vectors, history_rows, decay[history_ranks] * history_weights
        )
    user_factor: FloatArray | None = None
    if collaborative is not None and history:
        model = collaborative.model
        model_rows = np.asarray([model.item_rows.get(h.item_id, -1) for h in history])
        known = model_rows >= 0
        if known.any():
            user_factor = model.fold_in(model_rows[known], history_weights_all[known])
    if content_vector is not None or user_factor is not None:
        source = VectorSource.HISTORY
    elif (
        query.interests_vector is not None
        and query.interests_vector.shape[0] == snapshot.dimension
        and float(np.linalg.norm(query.interests_vector)) > 1e-12
    ):
        interests = np.asarray(query.interests_vector, dtype=np.float32)
        content_vector = interests / np.float32(np.linalg.norm(interests))
        source = VectorSource.INTERESTS
    else:
        source = VectorSource.NONE
    recent_rows = history_rows[: config.recent_items]
    tower = collaborative.model.tower if collaborative is not None else None
    tower_vector: FloatArray | None = None
    if tower is not None and tower.dimension == snapshot.dimension:
        if history_rows.shape[0]:
            tower_vector = tower.vector(snapshot.vectors[history_rows])
        elif content_vector is not None:  # stated interests: a one-vector history
            tower_vector = tower.vector(content_vector[None, :])

    # --- candidate sources
    parts: list[RowArray] = []
    if content_vector is not None:
        queries = [content_vector[None, :]]
        requests = [
            SearchRequest(0, _source_size(count, config.content_pool, config)),
            SearchRequest(0, _source_size(count, config.tail_pool, config), snapshot.tail_pool),
            SearchRequest(0, _source_size(count, config.cold_pool, config), snapshot.cold_pool),
        ]
        if tower_vector is not None:
            queries.append(tower_vector[None, :])
            at = len(queries) - 1
            requests.append(SearchRequest(at, _source_size(count, config.tower_pool, config)))
            requests.append(
                SearchRequest(
                    at,
                    _source_size(count, config.tower_cold_pool, config),
                    snapshot.cold_pool,
                )
            )
            if config.tower_replaces_content:
                requests = _onto_query(requests, at)
        short_term = (
            user_vector(
                snapshot.vectors,
                recent_rows[: config.short_term_items],
                np.ones(min(config.short_term_items, recent_rows.shape[0]), dtype=np.float32),
            )
            if config.short_term_items > 0
            and config.short_term_pool > 0
            and recent_rows.shape[0] > 1
            else None
        )
        if short_term is not None:
            queries.append(short_term[None, :])
            requests.append(
                SearchRequest(len(queries) - 1, _source_size(count, config.short_term_pool, config))
            )
        # A source sized 0 is switched off (settings): no walk of the index for it.
        requests = [request for request in requests if request.k > 0]
        found = multi_search(snapshot.index, np.vstack(queries), requests, exclude=excluded)
        parts.extend(result.rows for result in found)
    if user_factor is not None and collaborative is not None:
        all_scores = collaborative.model.scores(user_factor).astype(np.float32, copy=True)
        all_scores[collaborative.catalog_rows < 0] = -np.inf
        excluded_model = collaborative.model_rows[excluded]
        all_scores[excluded_model[excluded_model >= 0]] = -np.inf
        top = _top_rows(all_scores, _source_size(count, config.collaborative_pool, config))
        parts.append(collaborative.catalog_rows[top])
        tail_scores = np.where(collaborative.model_is_tail, all_scores, -np.inf).astype(np.float32)
        top_tail = _top_rows(
            tail_scores, _source_size(count, config.collaborative_tail_pool, config)
        )
        parts.append(collaborative.catalog_rows[top_tail])
        mapped_size = _source_size(count, config.mapped_cold_pool, config)
        if collaborative.cold_mapped is not None and mapped_size:
            positions = collaborative.cold_position[excluded]
            nearest = collaborative.cold_mapped.search(
                user_factor, mapped_size, exclude=positions[positions >= 0]
            )
            parts.append(collaborative.cold_rows[nearest.rows])
    if content_vector is None:
        # No content signal: popular items, and popular tail items so that the tail has a place.
        parts.append(_first_not_excluded(snapshot.popular_rows, excluded, count))
        parts.append(
            _first_not_excluded(
                snapshot.popular_tail_rows, excluded, _source_size(count, config.tail_pool, config)
            )
        )
    pool = np.unique(np.concatenate(parts)) if parts else _EMPTY_ROWS
    if excluded.shape[0]:
        pool = pool[~np.isin(pool, excluded)]
    if pool.shape[0] == 0:
        return CandidatePool.empty(source)

    # --- features
    pool_vectors = snapshot.vectors[pool]
    popularity = snapshot.popularity[pool]
    n = pool.shape[0]
    similarity = np.zeros(n, dtype=np.float32)
    recent_max = np.zeros(n, dtype=np.float32)
    recent_mean = np.zeros(n, dtype=np.float32)
    if content_vector is not None:
        similarity = (pool_vectors @ content_vector).astype(np.float32)
        if recent_rows.shape[0]:
            recent = pool_vectors @ snapshot.vectors[recent_rows].T
            recent_max = recent.max(axis=1).astype(np.float32)
            recent_mean = recent.mean(axis=1).astype(np.float32)
            total = config.user_weight + config.recent_max_weight + config.recent_mean_weight
            content_raw = (
                config.user_weight * similarity
                + config.recent_max_weight * recent_max
                + config.recent_mean_weight * recent_mean
            ) / np.float32(max(total, 1e-9))
        else:
            content_raw = similarity
            recent_max = similarity
            recent_mean = similarity
        content_norm = min_max(content_raw.astype(np.float32))
    else:
        content_raw = np.zeros(n, dtype=np.float32)
        # Without content evidence the prior is popularity (log-scaled).
        content_norm = min_max(np.log1p(popularity).astype(np.float32))
    collaborative_raw = np.zeros(n, dtype=np.float32)
    collaborative_norm = np.zeros(n, dtype=np.float32)
    evidence = np.zeros(n, dtype=np.float32)
    known = np.zeros(n, dtype=np.bool_)
    if user_factor is not None and collaborative is not None:
        pool_model_rows = collaborative.model_rows[pool]
        known = pool_model_rows >= 0
        collaborative_raw[known] = (
            collaborative.model.item_factors[pool_model_rows[known]] @ user_factor
        )
        collaborative_norm = min_max(collaborative_raw, known)
        evidence = np.where(known, collaborative.evidence[pool], 0.0).astype(np.float32)
    # Item-item similarity in the collaborative space to the last few items (a cheap stand-in for
    # co-occurrence with recent history): cosine of unit item factors.
    factor_recent_max = np.zeros(n, dtype=np.float32)
    factor_recent_mean = np.zeros(n, dtype=np.float32)
    if collaborative is not None and recent_rows.shape[0] and known.any():
        recent_model_rows = collaborative.model_rows[recent_rows]
        recent_model_rows = recent_model_rows[recent_model_rows >= 0]
        if recent_model_rows.shape[0]:
            unit = collaborative.unit_factors
            cosines = unit[collaborative.model_rows[pool][known]] @ unit[recent_model_rows].T
            factor_recent_max[known] = cosines.max(axis=1)
            factor_recent_mean[known] = cosines.mean(axis=1)

    # The collaborative score an item's text predicts (every pool item; the only one cold items
    # have).
    mapped = np.zeros(n, dtype=np.float32)
    if (
        user_factor is not None
        and collaborative is not None
        and collaborative.content_map is not None
    ):
        mapped = ((pool_vectors @ collaborative.content_map) @ user_factor).astype(np.float32)
    tower_similarity = np.zeros(n, dtype=np.float32)
    if tower_vector is not None:
        tower_similarity = (pool_vectors @ tower_vector).astype(np.float32)

    is_tail = snapshot.is_tail[pool]
    is_cold = snapshot.is_cold[pool]
    history_tail_share = (
        float(snapshot.is_tail[history_rows].mean()) if history_rows.shape[0] else 0.0
    )
    log_popularity = np.log1p(popularity).astype(np.float32)
    tail = is_tail.astype(np.float32)
    cold = is_cold.astype(np.float32)
    features = np.column_stack(
        [
            collaborative_raw,
            known.astype(np.float32),
            collaborative_norm,
            collaborative_raw * evidence_weight(evidence, 20.0),
            similarity,
            recent_max,
            recent_mean,
            recent_max * recent_max,
            log_popularity,
            tail,
            cold,
            tail * np.float32(history_tail_share),
            log_popularity * np.float32(math.log1p(history_rows.shape[0])),
            recent_max * cold,
            factor_recent_max,
            factor_recent_mean,
            tower_similarity,
            tower_similarity * cold,
            mapped,
            mapped * cold,
        ]
    ).astype(np.float32)
    return CandidatePool(
        source=source,
        rows=pool,
        features=features,
        content_raw=content_raw.astype(np.float32),
        content_norm=content_norm,
        collaborative_raw=collaborative_raw,
        collaborative_norm=collaborative_norm,
        evidence=evidence,
    )


def rank(
    snapshot: CatalogSnapshot,
    collaborative: CollaborativeView | None,
    query: RankQuery,
    config: ScorerConfig,
    ranker: LearnedRanker | None = None,
) -> RankResult:
    """Candidates for one user, best first (see the module docstring).

    With a ``ranker`` the score is its logit over the candidate features; without one (no model
    trained yet, or one trained before rankers existed) the evidence-weighted blend.
    """
    count = query.candidate_count
    found = candidate_pool(snapshot, collaborative, query, config)
    pool = found.rows
    if pool.shape[0] == 0:
        return RankResult([], found.source)
    if ranker is not None and found.source is VectorSource.HISTORY:
        score = ranker.score(found.features)
    else:
        score = blend(found.content_norm, found.collaborative_norm, found.evidence, config.kappa)

    # --- selection: best first, ties by catalogue row (deterministic)
    order = np.lexsort((pool, -score)).astype(np.int64)
    chosen = select_with_reserves(
        order,
        snapshot.is_tail[pool],
        snapshot.is_cold[pool],
        count,
        config.min_tail_share,
        config.min_cold_share,
    )
    popularity = snapshot.popularity[pool]
    candidates = []
    for position in chosen:
        row = int(pool[position])
        candidates.append(
            ScoredCandidate(
                item_id=snapshot.item_ids[row],
                score=float(score[position]),
                content_score=float(found.content_raw[position]),
                collaborative_score=float(found.collaborative_raw[position]),
                popularity=int(popularity[position]),
                is_tail=bool(snapshot.is_tail[row]),
                is_cold=bool(snapshot.is_cold[row]),
                categories=snapshot.categories[row],
                vector=snapshot.vectors[row] if query.include_vectors else None,
            )
        )
    return RankResult(candidates, found.source, int(pool.shape[0]))
