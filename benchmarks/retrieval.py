"""Candidate retrieval in ranking, in process: what each way of searching costs and finds.

    python -m benchmarks.retrieval --items 100000 --out out/retrieval

Builds ``benchmarks.recommend``'s synthetic catalogue (the same items, vectors and users), fits
the models as the training job does (ALS, the user tower, the learned ranker), then:

1. **Pool reads**: for each user's history vector, the tail pool's best 50 and the cold pool's
   best 25, read off the all-items answer (``index.multi_search``) against walked on their own,
   as recall against exact search and CPU time.
2. **rank() arms**, one ``scorer.rank`` per user (RankCandidates without the gRPC hop), CPU time
   per call, the arms interleaved over ``--rounds`` rounds so that a busy machine weighs on each
   alike (the median round is reported): every pool walked (before), pools read off the
   all-items answers, plus the mapped cold source, plus the tower's vector taking the content
   sources (the defaults).

BLAS runs on one thread (threadpoolctl), as the measurement needs: idle BLAS threads spinning on
a shared 2-core machine bill the process for time no request used.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from benchmarks.floor import KIND_NUMBERS
from benchmarks.recommend import synthetic_vectors
from benchmarks.tables import emit_table
from services.common.tail import head_items
from services.ranking import index as index_module
from services.ranking.catalog import (
    CatalogItems,
    CatalogSnapshot,
    ItemStatsRecord,
    ModelRef,
    build_snapshot,
)
from services.ranking.collaborative import (
    AlsParams,
    InteractionBatch,
    interaction_weight,
)
from services.ranking.index import IndexParams, SearchRequest, multi_search
from services.ranking.scorer import (
    CollaborativeView,
    HistoryItem,
    RankQuery,
    ScorerConfig,
    rank,
    recency_weights,
    user_vector,
)
from services.ranking.training import RankerTrainingParams, fit_models
from services.suite import datasets

console = Console()


@contextmanager
def pools_walked() -> Iterator[None]:
    """Every pool request walks its own index (the code before pool reads)."""
    real = index_module._pool_members
    index_module._pool_members = lambda *args: None
    try:
        yield
    finally:
        index_module._pool_members = real


def cpu_ms(call: Callable[[], object], times: int) -> float:
    started = time.process_time()
    for _ in range(times):
        call()
    return (time.process_time() - started) / times * 1000


def build(items: int, users: int, seed: int) -> tuple[CatalogSnapshot, Any, list[RankQuery]]:
    dataset = datasets.make_demo_catalogue(items, users, seed=seed)
    ids = [item.item_id for item in dataset.items]
    counts = dict.fromkeys(ids, 0)
    for record in dataset.interactions:
        counts[record.item_id] += 1
    head = head_items(counts, ids)
    stats = [ItemStatsRecord(i, counts[i], i not in head, counts[i] == 0) for i in ids]
    vectors = synthetic_vectors(dataset, 384, seed)
    started = time.perf_counter()
    snapshot = build_snapshot(
        CatalogItems(
            ids, [tuple(i.categories) for i in dataset.items], vectors, ModelRef("b", "1")
        ),
        stats,
        IndexParams(),
    )
    console.print(f"snapshot of {items} items: {time.perf_counter() - started:.0f} s")
    ordered = sorted(dataset.interactions, key=lambda r: r.occurred_at)
    batch = InteractionBatch(
        [r.user_id for r in ordered],
        [r.item_id for r in ordered],
        [interaction_weight(KIND_NUMBERS[r.kind], r.value) for r in ordered],
        [r.occurred_at.timestamp() for r in ordered],
    )
    started = time.perf_counter()
    fitted = fit_models(
        snapshot, [batch], AlsParams(), ScorerConfig(), IndexParams(), RankerTrainingParams()
    )
    console.print(f"models fitted: {time.perf_counter() - started:.0f} s")
    histories: dict[str, list[HistoryItem]] = {}
    for record in ordered:
        weight = interaction_weight(KIND_NUMBERS[record.kind], record.value)
        histories.setdefault(record.user_id, []).append(HistoryItem(record.item_id, weight))
    queries = [RankQuery(history[::-1][:200], 100) for history in histories.values()]
    return snapshot, fitted.model, queries


def _recall(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    return len(set(found.tolist()) & set(truth.tolist())) / max(len(truth), 1)


def pool_reads(snapshot: CatalogSnapshot, queries: list[RankQuery]) -> list[list[str]]:
    rows = []
    cpu: dict[str, float] = {}
    vectors: list[npt.NDArray[np.float32]] = []
    for query in queries:
        history = snapshot.rows_of([h.item_id for h in query.history])
        vector = user_vector(snapshot.vectors, history, recency_weights(history.shape[0], 10.0))
        if vector is not None:
            vectors.append(vector)
    requests = [
        SearchRequest(0, 100),
        SearchRequest(0, 50, snapshot.tail_pool),
        SearchRequest(0, 25, snapshot.cold_pool),
    ]
    recalls: dict[tuple[str, str], list[float]] = {}
    for name in ("read off", "walked"):
        started = time.process_time()
        answers = []
        for vector in vectors:
            if name == "walked":
                with pools_walked():
                    answers.append(multi_search(snapshot.index, vector[None, :], requests))
            else:
                answers.append(multi_search(snapshot.index, vector[None, :], requests))
        cpu[name] = (time.process_time() - started) / max(len(vectors), 1) * 1000
        for vector, (_, tail, cold) in zip(vectors, answers, strict=True):
            scores = snapshot.vectors @ vector
            for pool, found, k in (("tail", tail, 50), ("cold", cold, 25)):
                mask = snapshot.is_tail if pool == "tail" else snapshot.is_cold
                truth = np.argsort(-np.where(mask, scores, -np.inf), kind="stable")[:k]
                recalls.setdefault((name, pool), []).append(_recall(found.rows, truth))
    for name in ("walked", "read off"):
        rows.append(
            [
                name,
                f"{statistics.fmean(recalls[(name, 'tail')]):.3f}",
                f"{statistics.fmean(recalls[(name, 'cold')]):.3f}",
                f"{cpu[name]:.2f}",
            ]
        )
    return rows


def rank_arms(
    snapshot: CatalogSnapshot, model: Any, queries: list[RankQuery], rounds: int
) -> list[list[str]]:
    view = CollaborativeView.build(model, snapshot)
    defaults = ScorerConfig()
    before = dataclasses.replace(defaults, mapped_cold_pool=0.0, tower_replaces_content=False)
    arms: dict[str, tuple[bool, ScorerConfig]] = {
        "every pool walked (before)": (True, before),
        "pools read off all-items answers": (False, before),
        "+ mapped cold source": (
            False,
            dataclasses.replace(defaults, tower_replaces_content=False),
        ),
        "+ tower's vector takes the content sources (defaults)": (False, defaults),
    }
    results: dict[str, list[float]] = {name: [] for name in arms}
    pool_sizes: dict[str, int] = {}
    for _ in range(rounds):
        for name, (walk, config) in arms.items():

            def one_pass(config: ScorerConfig = config, name: str = name) -> None:
                for query in queries:
                    result = rank(snapshot, view, query, config, model.ranker)
                    pool_sizes[name] = pool_sizes.get(name, 0) + result.pool_size

            if walk:
                with pools_walked():
                    results[name].append(cpu_ms(one_pass, 1) / len(queries))
            else:
                results[name].append(cpu_ms(one_pass, 1) / len(queries))
    base = statistics.median(results["every pool walked (before)"])
    rows = []
    for name, values in results.items():
        median = statistics.median(values)
        rows.append(
            [
                name,
                f"{median:.2f}",
                f"{median / base:.2f}",
                f"{pool_sizes[name] / (rounds * len(queries)):.0f}",
                ", ".join(f"{v:.2f}" for v in values),
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=300, help="users ranked per arm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for the Markdown and CSV tables")
    args = parser.parse_args()
    with threadpool_limits(1, "blas"):
        run(args)


def run(args: argparse.Namespace) -> None:
    snapshot, model, queries = build(args.items, args.users, args.seed)
    queries = queries[: args.requests]
    share = (
        f"tail {snapshot.tail_pool.size / snapshot.size:.0%} of items "
        f"({snapshot.tail_pool.strategy}), cold {snapshot.cold_pool.size / snapshot.size:.0%} "
        f"({snapshot.cold_pool.strategy})"
    )
    header = ["pools", "recall@50 tail", "recall@25 cold", "CPU-ms (all-items 100 + pools)"]
    first = emit_table(
        console,
        f"Pool reads, {snapshot.size} items, {share}",
        header,
        pool_reads(snapshot, queries),
    )
    arm_header = ["rank() arm", "CPU-ms per call", "x before", "pool size", "rounds"]
    second = emit_table(
        console,
        f"scorer.rank, {len(queries)} users x {args.rounds} interleaved rounds",
        arm_header,
        rank_arms(snapshot, model, queries, args.rounds),
        left={"rank() arm", "rounds"},
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "retrieval.md").write_text(f"{first}\n\n{second}\n", encoding="utf-8")
        console.print(f"wrote {out / 'retrieval.md'}")


if __name__ == "__main__":
    main()
