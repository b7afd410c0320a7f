"""Fitting the learned ranker on a validation slice of the stored interactions.

The slice follows the evaluation's per-user time rule: for each user with at least
``min_interactions`` interactions, the last ``max(1, floor(share * n))`` by (time, item id) are
labels and the rest is the history. A collaborative model is refitted on the history part only and
the catalogue's popularity / head / tail / cold flags are recomputed from it, so the features the
ranker learns from look like serving's features (computed from the past) and the labels lie in
that past's future.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.tail import head_items
from services.ranking.catalog import CatalogSnapshot, ItemStatsRecord, restat_snapshot
from services.ranking.collaborative import (
    AlsParams,
    CollaborativeModel,
    InteractionBatch,
    train_als,
)
from services.ranking.index import FloatArray, IndexParams, RowArray
from services.ranking.learned import LearnedRanker, fit_ranker
from services.ranking.scorer import (
    CollaborativeView,
    HistoryItem,
    RankQuery,
    ScorerConfig,
    VectorSource,
    candidate_pool,
    fit_content_map,
)
from services.ranking.tower import TowerRunner

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RankerTrainingParams:
    label_share: float = 0.2
    min_interactions: int = 5
    # Users whose pools are featurised (a deterministic stride sample above this many).
    max_users: int = 3000
    # Candidates per training pool (the serving default).
    candidate_count: int = 100
    l2: float = 1.0
    # Width of the ranker's tanh layer (0: logistic regression).
    hidden: int = 0
    max_history: int = 1000
    # Share of the interacted items made cold in the slice (seeded): every interaction with them
    # leaves the history part (so no collaborative factor, no popularity, flagged cold) while
    # their label interactions stay, so the ranker sees cold items that turn out relevant and
    # learns what content says about them (DropoutNet's idea, the cold-items protocol's shape).
    # Without it every positive of the slice is warm and cold items are ranked as never relevant.
    # It bounds the cold prior the ranker can learn; how much of it the ranker takes is chosen
    # on the slice (``cold_weights``).
    cold_item_share: float = 0.3
    # Candidate weights of the slice's cold positives (1: as many as the share makes; 1/3 of 0.3
    # weighs like a share of 0.1). The ranker is fitted with each on most of the slice's users
    # and scored on the rest; the weight that ranks the cold items the users went on to consume
    # highest (mean reciprocal rank in the pool) is taken among those within ``warm_tolerance``
    # of the best warm NDCG@10 (``choose_cold_weight``).
    cold_weights: tuple[float, ...] = (1 / 3, 2 / 3, 1.0)
    # The share of warm NDCG@10 the ranker may give up for cold recall: 2% of the 5% that the
    # product allows a default list below the best relevance list (the policies take the rest).
    warm_tolerance: float = 0.02
    # Share of the slice's users held out to choose the weight (a deterministic stride).
    holdout_share: float = 0.2
    seed: int = 0
    # Fit the sequential user tower (services.ranking.user_tower) with the ranker: on the slice's
    # history part for the ranker's features, then on every interaction for serving. Steps 0 =
    # the tower's default.
    tower: bool = True
    tower_steps: int = 0


@dataclasses.dataclass(frozen=True)
class _Event:
    time: float
    item_id: str
    weight: float


def _user_events(batches: Sequence[InteractionBatch]) -> dict[str, list[_Event]] | None:
    events: dict[str, list[_Event]] = defaultdict(list)
    for batch in batches:
        if batch.timestamps is None:
            return None
        for user, item, weight, at in zip(
            batch.user_ids, batch.item_ids, batch.weights, batch.timestamps, strict=True
        ):
            events[user].append(_Event(float(at), item, float(weight)))
    for user_events in events.values():
        user_events.sort(key=lambda e: (e.time, e.item_id))
    return events


def split_by_time(
    events: dict[str, list[_Event]], params: RankerTrainingParams
) -> tuple[dict[str, list[_Event]], dict[str, set[str]]]:
    """(history part per user, label items per user) by the per-user time rule."""
    history: dict[str, list[_Event]] = {}
    labels: dict[str, set[str]] = {}
    for user, user_events in events.items():
        n = len(user_events)
        if n < params.min_interactions:
            history[user] = user_events
            continue
        held = max(1, math.floor(params.label_share * n))
        history[user] = user_events[: n - held]
        seen = {e.item_id for e in history[user]}
        wanted = {e.item_id for e in user_events[n - held :]} - seen
        if wanted:
            labels[user] = wanted
    return history, labels


def simulated_cold_items(item_ids: Sequence[str], share: float, seed: int) -> frozenset[str]:
    """``round(share * n)`` of the items, those with the smallest blake2b(seed, id): depends
    only on the seed and the set of ids."""
    if share <= 0.0:
        return frozenset()
    items = sorted(set(item_ids))
    count = math.floor(share * len(items) + 0.5)

    def key(item: str) -> tuple[bytes, str]:
        return hashlib.blake2b(f"{seed}\x00{item}".encode(), digest_size=8).digest(), item

    return frozenset(sorted(items, key=key)[:count])


def make_cold(history: dict[str, list[_Event]], items: frozenset[str]) -> dict[str, list[_Event]]:
    """The history part without any interaction with ``items``."""
    if not items:
        return history
    return {u: [e for e in events if e.item_id not in items] for u, events in history.items()}


@dataclasses.dataclass(frozen=True)
class _Timed:
    """An interaction as the user tower's training reads it."""

    user_id: str
    item_id: str
    occurred_at: dt.datetime


def fit_tower(
    snapshot: CatalogSnapshot, events: dict[str, list[_Event]], params: RankerTrainingParams
) -> TowerRunner | None:
    """The user tower trained on ``events`` over the snapshot's item vectors (exported to ONNX,
    the graph serving runs); None when it is switched off or there is nothing to learn from."""
    if not params.tower or snapshot.size == 0:
        return None
    # torch only where a tower is trained (the training job, the deprecated in-process TrainModel).
    from services.ranking.user_tower import (
        UserTowerConfig,
        export_user_tower_onnx,
        train_user_tower,
    )

    vectors = {item: snapshot.vectors[row] for item, row in snapshot.rows.items()}
    timed = [
        _Timed(user, e.item_id, dt.datetime.fromtimestamp(e.time, dt.UTC))
        for user, user_events in events.items()
        for e in user_events
        if e.item_id in vectors
    ]
    defaults = UserTowerConfig()
    config = dataclasses.replace(
        defaults, seed=params.seed, steps=params.tower_steps or defaults.steps
    )
    try:
        model, report = train_user_tower(vectors, timed, config)
    except ValueError as error:  # too few histories to form one batch
        log.warning("user tower not fitted", extra={"fields": {"detail": str(error)}})
        return None
    with tempfile.TemporaryDirectory(prefix="longtail-tower-") as scratch:
        path = export_user_tower_onnx(model, Path(scratch) / "model.onnx")
        onnx = path.read_bytes()
    description = {
        "config": dataclasses.asdict(config),
        "dimension": snapshot.dimension,
        "seconds": round(report.seconds, 3),
        "loss_last": round(report.loss_last, 5),
    }
    return TowerRunner(onnx, description)


def _stats(snapshot: CatalogSnapshot, history: dict[str, list[_Event]]) -> list[ItemStatsRecord]:
    counts: dict[str, int] = defaultdict(int)
    for user_events in history.values():
        for event in user_events:
            counts[event.item_id] += 1
    head = head_items(counts, snapshot.item_ids)
    return [
        ItemStatsRecord(
            item_id, counts.get(item_id, 0), item_id not in head, not counts.get(item_id)
        )
        for item_id in snapshot.item_ids
    ]


def train_ranker(
    snapshot: CatalogSnapshot,
    batches: Sequence[InteractionBatch],
    als_params: AlsParams,
    scorer_config: ScorerConfig,
    index_params: IndexParams,
    params: RankerTrainingParams | None = None,
) -> LearnedRanker | None:
    """A ranker fitted on the validation slice; None when it cannot be fitted.

    (No timestamps, no user with enough interactions, an empty catalogue, or no label found in
    any pool.) CPU-heavy: call it off the event loop.
    """
    params = params or RankerTrainingParams()
    started = time.perf_counter()
    if snapshot.size == 0:
        return None
    events = _user_events(batches)
    if events is None:
        log.warning("interactions carry no timestamps; no learned ranker")
        return None
    history, labels = split_by_time(events, params)
    if not labels:
        return None
    cold = simulated_cold_items(
        [e.item_id for user_events in history.values() for e in user_events],
        params.cold_item_share,
        params.seed,
    )
    history = make_cold(history, cold)
    part = [(u, e) for u, user_events in history.items() for e in user_events]
    if not part:
        return None
    model = train_als(
        [
            InteractionBatch(
                [u for u, _ in part], [e.item_id for _, e in part], [e.weight for _, e in part]
            )
        ],
        als_params,
        version="validation",
    )
    past = restat_snapshot(snapshot, _stats(snapshot, history), index_params) or snapshot
    # The tower of the features: fitted on the history part only, like the ALS above.
    model.tower = fit_tower(past, history, params)
    # The text -> factor map's strength, chosen on the slice's simulated cold items.
    ridge, ridge_recalls = choose_map_ridge(
        model, past, history, labels, cold, scorer_config.content_map_ridge
    )
    view = CollaborativeView.build(model, past, ridge)
    users = sorted(labels)
    if len(users) > params.max_users:
        stride = len(users) / params.max_users
        users = [users[int(i * stride)] for i in range(params.max_users)]
    validation = collaborative_validation(model, history, labels, users)
    pools: list[SlicePool] = []
    cold_labels = 0
    for user in users:
        recent_first = history[user][::-1][: params.max_history]
        query = RankQuery(
            history=[HistoryItem(e.item_id, e.weight) for e in recent_first],
            candidate_count=params.candidate_count,
        )
        pool = candidate_pool(past, view, query, scorer_config)
        if pool.source is not VectorSource.HISTORY or pool.rows.shape[0] == 0:
            continue
        wanted = labels[user]
        cold_labels += sum(
            1 for r in pool.rows if past.item_ids[r] in wanted and past.item_ids[r] in cold
        )
        pools.append(
            SlicePool(
                pool.features,
                np.fromiter((past.item_ids[r] in wanted for r in pool.rows), dtype=np.float64),
                np.fromiter((past.item_ids[r] in cold for r in pool.rows), dtype=bool),
            )
        )
    if not pools:
        return None
    try:
        weight, weight_scores = choose_cold_weight(pools, params)
        ranker = _fit_weighted(pools, weight, params)
    except ValueError as error:
        log.warning("learned ranker not fitted", extra={"fields": {"detail": str(error)}})
        return None
    ranker.info.update(
        {
            "users": len(pools),
            # Items made cold in the slice, and their label rows the pools held.
            "simulated_cold_items": len(cold),
            "tower": model.tower is not None,
            "cold_positives": cold_labels,
            # The weight of the cold positives, chosen on held-out users of the slice, with what
            # each candidate scored there.
            "cold_weight": weight,
            "cold_weight_scores": weight_scores,
            # Serving builds its map with the same strength (CollaborativeView.build reads it).
            "content_map_ridge": ridge,
            "content_map_cold_recall@20": ridge_recalls,
            "seconds": round(time.perf_counter() - started, 3),
            "validation": validation,
        }
    )
    log.info("learned ranker fitted", extra={"fields": dict(ranker.info)})
    return ranker


@dataclasses.dataclass(frozen=True)
class SlicePool:
    """One slice user's candidate pool: features, labels (1: consumed later), cold flags."""

    features: FloatArray
    labels: npt.NDArray[np.float64]
    cold: npt.NDArray[np.bool_]


def _fit_weighted(
    pools: Sequence[SlicePool], weight: float, params: RankerTrainingParams
) -> LearnedRanker:
    """The ranker over ``pools``, their cold positives weighing ``weight`` each."""
    labels = np.concatenate([p.labels for p in pools])
    cold = np.concatenate([p.cold for p in pools])
    return fit_ranker(
        np.vstack([p.features for p in pools]),
        labels,
        l2=params.l2,
        hidden=params.hidden,
        weights=np.where((labels > 0) & cold, weight, 1.0),
    )


def _pool_scores(ranker: LearnedRanker, pools: Sequence[SlicePool]) -> tuple[float, float]:
    """(mean warm NDCG@10 over the pools, mean reciprocal rank of the cold labels in the pool),
    each over the pools that hold such labels. The weight moves how cold items compete with warm
    ones (the order among cold items barely changes), so both are read off the whole pool. The
    reciprocal rank, not a recall@20, because few held-out cold labels reach a top 20 (on
    movielens-latest-small's cold-items slice none did, for every weight): a rank that moves from
    60th to 30th still counts, while the top places still count most."""
    warm_ndcg: list[float] = []
    cold_mrr: list[float] = []
    for pool in pools:
        score = ranker.score(pool.features)
        order = np.argsort(-score, kind="stable")
        warm = (pool.labels > 0) & ~pool.cold
        if warm.any():
            top = order[:VALIDATION_K]
            gains = warm[top] / np.log2(np.arange(2, top.shape[0] + 2))
            ideal = (1.0 / np.log2(np.arange(2, min(int(warm.sum()), VALIDATION_K) + 2))).sum()
            warm_ndcg.append(float(gains.sum() / ideal))
        cold_positive = (pool.labels > 0) & pool.cold
        if cold_positive.any():
            ranks = np.flatnonzero(cold_positive[order]) + 1
            cold_mrr.append(float(np.mean(1.0 / ranks)))
    return (
        float(np.mean(warm_ndcg)) if warm_ndcg else 0.0,
        float(np.mean(cold_mrr)) if cold_mrr else 0.0,
    )


def choose_cold_weight(
    pools: Sequence[SlicePool], params: RankerTrainingParams
) -> tuple[float, dict[str, list[float]]]:
    """The weight of the slice's cold positives (``RankerTrainingParams.cold_weights``).

    Each candidate fits the ranker on the pools of most users and scores it on the held-out rest
    (every ``1 / holdout_share``-th pool): warm NDCG@10 (cold labels aside) and the mean
    reciprocal rank of the cold labels in the pool. Among the candidates within
    ``warm_tolerance`` of the best warm NDCG the best cold MRR wins (ties: the larger weight).
    With one candidate, or too few pools to hold any out, the largest weight. Raises
    ``ValueError`` where ``fit_ranker`` does.
    """
    weights = sorted(set(params.cold_weights)) or [1.0]
    stride = round(1 / params.holdout_share) if params.holdout_share > 0 else 0
    held = [p for i, p in enumerate(pools) if stride and i % stride == stride - 1]
    fit = [p for i, p in enumerate(pools) if not (stride and i % stride == stride - 1)]
    if len(weights) == 1 or not held or not fit:
        return weights[-1], {}
    scores: dict[str, list[float]] = {}
    for weight in weights:
        warm, cold_mrr = _pool_scores(_fit_weighted(fit, weight, params), held)
        scores[f"{weight:.4g}"] = [round(warm, 5), round(cold_mrr, 5)]
    best_warm = max(warm for warm, _ in scores.values())
    eligible = [
        w for w in weights if scores[f"{w:.4g}"][0] >= (1 - params.warm_tolerance) * best_warm
    ]
    # Ties (no held-out pool holds a cold label) go to the larger weight, the most room for cold
    # items that the warm tolerance allows.
    chosen = max(eligible, key=lambda w: (scores[f"{w:.4g}"][1], w))
    return chosen, scores


VALIDATION_K = 10
# Candidate strengths of the text -> factor map (x items / dimension), tried on the slice.
MAP_RIDGES = (0.01, 0.1, 1.0, 10.0)
MAP_RECALL_K = 20


def choose_map_ridge(
    model: CollaborativeModel,
    past: CatalogSnapshot,
    history: dict[str, list[_Event]],
    labels: dict[str, set[str]],
    cold: Collection[str],
    default: float,
) -> tuple[float, dict[str, float]]:
    """The map strength under which users' folded-in factors best rank the slice's simulated
    cold items they went on to consume (Recall@20 among those items); ``default`` when the slice
    has none to measure with. Ties keep the earlier (weaker) strength."""
    cold_rows = np.asarray(sorted(past.rows[i] for i in cold if i in past.rows), dtype=np.int64)
    known = [i for i, item in enumerate(model.item_ids) if item in past.rows]
    if cold_rows.shape[0] <= MAP_RECALL_K or len(known) < 2:
        return default, {}
    cold_ids = [past.item_ids[r] for r in cold_rows]
    cold_set = set(cold)
    users = []
    for user, wanted in sorted(labels.items()):
        targets = wanted & cold_set
        if not targets:
            continue
        factor, _ = _history_factor(model, history.get(user, []))
        if factor is not None:
            users.append((factor, targets))
    if not users:
        return default, {}
    vectors = past.vectors[[past.rows[model.item_ids[i]] for i in known]]
    factors = model.item_factors[known]
    recalls: dict[str, float] = {}
    best, best_recall = default, -1.0
    for ridge in MAP_RIDGES:
        mapping = fit_content_map(vectors, factors, ridge)
        if mapping is None:
            continue
        mapped = past.vectors[cold_rows] @ mapping
        total = 0.0
        for factor, targets in users:
            top = np.argpartition(-(mapped @ factor), MAP_RECALL_K)[:MAP_RECALL_K]
            total += len({cold_ids[t] for t in top} & targets) / min(len(targets), MAP_RECALL_K)
        recall = total / len(users)
        recalls[f"{ridge:g}"] = round(recall, 4)
        if recall > best_recall:
            best, best_recall = ridge, recall
    return best, recalls


def _history_factor(
    model: CollaborativeModel, events: Sequence[_Event]
) -> tuple[FloatArray | None, RowArray]:
    """A user's folded-in factor from the history events the model knows, and their model rows."""
    known = [e for e in events if e.item_id in model.item_rows]
    rows = np.asarray([model.item_rows[e.item_id] for e in known], dtype=np.int64)
    return model.fold_in(rows, [e.weight for e in known]), rows


def collaborative_validation(
    model: CollaborativeModel,
    history: dict[str, list[_Event]],
    labels: dict[str, set[str]],
    users: Sequence[str],
    k: int = VALIDATION_K,
) -> dict[str, float | int]:
    """Recall@k and NDCG@k (binary) of ``model`` (fitted on the history part only) on the label
    part: out-of-sample numbers a bundle's manifest carries, to compare versions before publishing.
    """
    recall = ndcg = 0.0
    counted = 0
    for user in users:
        factor, rows = _history_factor(model, history.get(user, []))
        if factor is None:
            continue
        scores = model.scores(factor)
        scores[rows] = -np.inf
        top = np.argpartition(-scores, min(k, scores.shape[0] - 1))[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        wanted = labels[user]
        hits = [rank for rank, row in enumerate(top) if model.item_ids[row] in wanted]
        recall += len(hits) / len(wanted)
        ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(wanted), k)))
        ndcg += sum(1.0 / math.log2(r + 2) for r in hits) / ideal
        counted += 1
    if not counted:
        return {"users": 0}
    return {
        "users": counted,
        f"collaborative_recall@{k}": round(recall / counted, 5),
        f"collaborative_ndcg@{k}": round(ndcg / counted, 5),
    }


@dataclasses.dataclass(frozen=True)
class FittedModels:
    """What one training run produced, with what a bundle's manifest says about it."""

    model: CollaborativeModel
    # The training data: window (first/last interaction), counts.
    data: dict[str, Any]
    # Validation metrics (empty without a learned ranker: the slice is fitted for it).
    metrics: dict[str, Any]


def data_summary(snapshot: CatalogSnapshot, batches: Sequence[InteractionBatch]) -> dict[str, Any]:
    first = last = None
    for batch in batches:
        if batch.timestamps is not None and len(batch.timestamps):
            low, high = float(np.min(batch.timestamps)), float(np.max(batch.timestamps))
            first = low if first is None else min(first, low)
            last = high if last is None else max(last, high)

    def iso(value: float | None) -> str:
        if value is None:
            return ""
        return dt.datetime.fromtimestamp(value, dt.UTC).isoformat()

    return {
        "window_start": iso(first),
        "window_end": iso(last),
        "interactions": sum(len(b.user_ids) for b in batches),
        "users": len({u for b in batches for u in b.user_ids}),
        "interacted_items": len({i for b in batches for i in b.item_ids}),
        "catalogue_items": snapshot.size,
        "catalogue_version": snapshot.version,
        "embedding_model": (
            f"{snapshot.model.name}:{snapshot.model.version}" if snapshot.model else ""
        ),
    }


def fit_models(
    snapshot: CatalogSnapshot,
    batches: Sequence[InteractionBatch],
    als_params: AlsParams,
    scorer_config: ScorerConfig,
    index_params: IndexParams,
    ranker_params: RankerTrainingParams | None,
) -> FittedModels:
    """ALS on every interaction, then (unless ``ranker_params`` is None) the learned ranker on
    the validation slice, against ``snapshot``'s item vectors. CPU-heavy: off the event loop.

    Raises ``ValueError`` when there are no interactions.
    """
    model = train_als(batches, als_params)
    metrics: dict[str, Any] = {}
    if ranker_params is not None:
        model.ranker = train_ranker(
            snapshot, batches, als_params, scorer_config, index_params, ranker_params
        )
        if model.ranker is not None:
            metrics = dict(model.ranker.info.get("validation", {}))
            events = _user_events(batches)
            # The ranker learned from the tower's feature only if it had one.
            if events is not None and model.ranker.info.get("tower"):
                model.tower = fit_tower(snapshot, events, ranker_params)
    return FittedModels(model, data_summary(snapshot, batches), metrics)
