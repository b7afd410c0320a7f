"""The item cold-start part of ``longtail eval --split cold-items`` (protocol in README.md here).

The held-out items are in the catalogue the suite serves (text and vectors) but none of their
interactions reached training. Each user's relevant set is the held-out items the user
interacted with; two accuracies are measured per method:

- **among cold candidates**: the method ranks only the held-out items (every other item is
  excluded), as in the cold-start evaluation of DropoutNet, ALDI and the ColdRec benchmark;
- **among all items**: the method's usual list over the whole catalogue (the user's training items
  excluded), as in their "hybrid" evaluation: a cold item has to beat every warm item. With it,
  how the list spends its places: held-out items per list and hits per such place.

Methods: the suite's ranking service (``RankCandidates`` with every non-held-out item excluded,
and with only the user's history excluded), every gateway setting of the sweep (all items only:
the gateway ranks the whole catalogue and takes no exclusions), content-only over the store's
frozen-encoder vectors, and random among the held-out items.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from longtail.profiles.v1 import profiles_service_pb2
from longtail.ranking.v1 import ranking_service_pb2
from longtail_client.client import LongtailClient
from services.suite.evaluation.baselines import (
    ContentOnly,
    IntArray,
    RandomItems,
    Recommender,
    TrainMatrix,
    recommend,
)
from services.suite.evaluation.metrics import ndcg_at_k, recall_at_k
from services.suite.evaluation.report import wide

SPLIT_NAME = "cold-items"
# RankCandidatesRequest.exclude_item_ids takes at most this many ids (services.ranking.engine's
# MAX_EXCLUSIONS; a unit test keeps the two equal). Ranking among cold candidates excludes every
# other catalogue item, so it is measured only when those fit.
RANK_MAX_EXCLUSIONS = 10_000
# Candidates asked of the ranking service: the gateway's default candidate count, so the order
# measured is the one the gateway's policies receive (the first K of it are scored).
RANK_CANDIDATES = 100
AMONG_COLD = "cold_candidates"
AMONG_ALL = "all_items"
ACCURACY = ("recall", "ndcg")
# How a list over all items spends its places on held-out items: how many it gives them
# (mean per list) and how many of those are relevant (hits per place, pooled over users). Recall
# among all items grows with the places a list gives cold items; hits per place says how well it
# chooses the cold items it shows, whatever their number.
PLACEMENT = ("places", "hits_per_place")


@dataclasses.dataclass(frozen=True)
class ColdRow:
    """One method's cold-start accuracy; a part is None when the method cannot rank that way."""

    method: str
    setting: str
    among_cold: Mapping[str, float] | None
    among_all: Mapping[str, float] | None
    # ``placement`` of its list over all items (None: not measured).
    placement: Mapping[str, float] | None = None

    def value(self, part: str, metric: str, k: int) -> float | None:
        values = self.among_cold if part == AMONG_COLD else self.among_all
        if metric in PLACEMENT:  # measured on the list over all items only
            values = self.placement if part == AMONG_ALL else None
        return None if values is None else values[f"{metric}@{k}"]


def accuracy(
    lists: Mapping[str, Sequence[str]], relevant: Mapping[str, frozenset[str]], ks: Sequence[int]
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over the users of ``relevant`` (no list = an empty list)."""
    users = sorted(user for user, items in relevant.items() if items)
    out: dict[str, float] = {}
    for k in ks:
        for name, metric in (("recall", recall_at_k), ("ndcg", ndcg_at_k)):
            values = [metric(lists.get(user, ()), relevant[user], k) for user in users]
            kept = [v for v in values if v is not None]
            out[f"{name}@{k}"] = sum(kept) / len(kept) if kept else 0.0
    return out


def placement(
    lists: Mapping[str, Sequence[str]],
    relevant: Mapping[str, frozenset[str]],
    held_out: Collection[str],
    ks: Sequence[int],
) -> dict[str, float]:
    """Over the users ``accuracy`` counts: the mean number of held-out items in the top K
    (``places@K``) and the share of those that are relevant (``hits_per_place@K``, pooled: all
    users' hits over all users' places; 0 when no list gives a held-out item a place)."""
    users = sorted(user for user, items in relevant.items() if items)
    held = frozenset(held_out)
    out: dict[str, float] = {}
    for k in ks:
        places = hits = 0
        for user in users:
            shown = [item for item in lists.get(user, ())[:k] if item in held]
            places += len(shown)
            hits += sum(1 for item in shown if item in relevant[user])
        out[f"places@{k}"] = places / len(users) if users else 0.0
        out[f"hits_per_place@{k}"] = hits / places if places else 0.0
    return out


class Restricted:
    """A recommender that ranks only ``allowed`` items (every other score is -inf)."""

    def __init__(self, model: Recommender, allowed: Collection[str]) -> None:
        self.name = model.name
        self._model = model
        self._allowed = frozenset(allowed)
        self._outside: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)

    def fit(self, train: TrainMatrix) -> None:
        self._model.fit(train)
        self._outside = np.array([item not in self._allowed for item in train.items], dtype=bool)

    def score(self, rows: IntArray) -> npt.NDArray[np.floating[Any]]:
        block = np.array(self._model.score(rows), dtype=np.float64)
        block[:, self._outside] = -np.inf
        return block


def baseline_rows(
    train: TrainMatrix,
    users: Sequence[str],
    relevant: Mapping[str, frozenset[str]],
    held_out: frozenset[str],
    encoders: Mapping[str, Mapping[str, npt.NDArray[np.float32]]],
    seed: int,
    ks: Sequence[int],
) -> list[ColdRow]:
    """Content-only over each encoder's vectors (e.g. frozen, fine-tuned) and random among the
    held-out items."""
    k = max(ks)
    rows: list[ColdRow] = []
    for encoder, vectors in encoders.items():
        if not vectors:
            continue
        content = ContentOnly(vectors)
        content.fit(train)
        cold_content = Restricted(ContentOnly(vectors), held_out)
        cold_content.fit(train)
        over_all = recommend(content, train, users, k)
        rows.append(
            ColdRow(
                "content",
                f"mean of history vectors ({encoder})",
                accuracy(recommend(cold_content, train, users, k), relevant, ks),
                accuracy(over_all, relevant, ks),
                placement(over_all, relevant, held_out, ks),
            )
        )
    random = Restricted(RandomItems(seed), held_out)
    random.fit(train)
    random_lists = recommend(random, train, users, k)
    scores = accuracy(random_lists, relevant, ks)
    # Its list holds held-out items only, so it is its own list among all items too.
    rows.append(
        ColdRow(
            "random among cold items",
            f"seed={seed}",
            scores,
            scores,
            placement(random_lists, relevant, held_out, ks),
        )
    )
    return rows


async def ranking_lists(
    client: LongtailClient,
    users: Sequence[str],
    k: int,
    *,
    exclude: frozenset[str],
    history_limit: int,
    concurrency: int = 8,
    timeout: float = 30.0,
    progress: bool = True,
    desc: str = "ranking",
) -> dict[str, list[str]]:
    """Each user's top k from the ranking service, as the gateway asks for it (the stored
    history, most recent first, and the seen items excluded) with ``exclude`` excluded too.

    The ranking service is stateless while the evaluation runs (no refresh, no impressions
    read), so the order of the calls does not matter."""
    semaphore = asyncio.Semaphore(max(1, concurrency))
    lists: dict[str, list[str]] = {}
    with tqdm(total=len(users), desc=desc, unit="req", disable=not progress) as bar:

        async def one(user: str) -> None:
            async with semaphore:
                answer = await client.profiles.GetUserProfile(
                    profiles_service_pb2.GetUserProfileRequest(
                        user_id=user, history_limit=history_limit
                    ),
                    timeout=timeout,
                )
                profile = answer.profile
                excluded = (
                    exclude
                    | set(profile.seen_item_ids)
                    | {entry.item_id for entry in profile.history}
                )
                ranked = await client.ranking.RankCandidates(
                    ranking_service_pb2.RankCandidatesRequest(
                        user_id=user,
                        history=profile.history,
                        interests=profile.interests,
                        candidate_count=max(k, RANK_CANDIDATES),
                        exclude_item_ids=sorted(excluded),
                    ),
                    timeout=timeout,
                )
                lists[user] = [candidate.item_id for candidate in ranked.candidates][:k]
                bar.update(1)

        await asyncio.gather(*(one(user) for user in users))
    return lists


# --------------------------------------------------------------------------- tables


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def table_rows(rows: Sequence[ColdRow], k: int) -> tuple[list[str], list[list[str]]]:
    header = (
        ["method", "setting"]
        + [
            f"{name}@{k} {where}"
            for where in ("cold cands", "all items")
            for name in ("Recall", "NDCG")
        ]
        + [f"held-out places@{k}", f"hits per place@{k}"]
    )
    body = [
        [row.method, row.setting]
        + [
            _cell(row.value(part, metric, k))
            for part in (AMONG_COLD, AMONG_ALL)
            for metric in ACCURACY
        ]
        + [_cell(row.value(AMONG_ALL, metric, k)) for metric in PLACEMENT]
        for row in rows
    ]
    return header, body


def markdown(rows: Sequence[ColdRow], ks: Sequence[int]) -> str:
    parts: list[str] = []
    for k in ks:
        header, body = table_rows(rows, k)
        parts.append(f"K = {k}:\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |")
        parts.extend("| " + " | ".join(cells) + " |" for cells in body)
        parts.append("")
    return "\n".join(parts)


def print_table(rows: Sequence[ColdRow], ks: Sequence[int], console: Console) -> None:
    console = wide(console)
    for k in ks:
        header, body = table_rows(rows, k)
        table = Table(title=f"Cold start (held-out items), K = {k}")
        for index, name in enumerate(header):
            table.add_column(name, justify="left" if index < 2 else "right", no_wrap=index >= 2)
        for cells in body:
            table.add_row(*cells)
        console.print(table)


def write_csv(rows: Sequence[ColdRow], ks: Sequence[int], path: Path) -> None:
    """One line per method; an empty cell where the method cannot rank that way."""
    columns = [
        (part, m, k)
        for k in ks
        for part, metrics in ((AMONG_COLD, ACCURACY), (AMONG_ALL, ACCURACY + PLACEMENT))
        for m in metrics
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "setting"] + [f"{part}_{m}@{k}" for part, m, k in columns])
        for row in rows:
            cells = [row.value(part, m, k) for part, m, k in columns]
            writer.writerow(
                [row.method, row.setting] + ["" if c is None else f"{c:.6f}" for c in cells]
            )
