"""Baselines run in the same command as the suite: most-popular, random, ALS (``implicit``),
content-only over the LLM item vectors, and plain xQuAD over a relevance baseline's top 100.

Every baseline scores a (users x catalogue) block; ``recommend`` removes each user's training
items and keeps the top K with ties broken by catalogue order, so results repeat exactly. A user
with no training interactions (possible under the global split) gets the most-popular list.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import scipy.sparse

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
SCORE_BATCH = 256


@dataclasses.dataclass(frozen=True)
class TrainMatrix:
    """Binary user-by-item matrix of training interactions (a repeated pair counts once)."""

    users: tuple[str, ...]
    items: tuple[str, ...]
    matrix: scipy.sparse.csr_matrix
    user_index: Mapping[str, int]
    item_index: Mapping[str, int]

    @classmethod
    def build(
        cls,
        pairs: Iterable[tuple[str, str]],
        items: Sequence[str],
        users: Iterable[str] = (),
    ) -> TrainMatrix:
        """``pairs`` = (user_id, item_id) of training interactions; ``items`` = the catalogue
        (column order); ``users`` = extra users to give a (possibly empty) row. Rows are sorted."""
        pair_list = list(pairs)
        item_index = {item: position for position, item in enumerate(items)}
        all_users = sorted({user for user, _ in pair_list} | set(users))
        user_index = {user: position for position, user in enumerate(all_users)}
        rows = np.fromiter((user_index[u] for u, _ in pair_list), np.int64, len(pair_list))
        cols = np.fromiter((item_index[i] for _, i in pair_list), np.int64, len(pair_list))
        matrix = scipy.sparse.csr_matrix(
            (np.ones(len(pair_list), dtype=np.float32), (rows, cols)),
            shape=(len(all_users), len(items)),
            dtype=np.float32,
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return cls(tuple(all_users), tuple(items), matrix, user_index, item_index)

    @property
    def popularity(self) -> npt.NDArray[np.float64]:
        """Distinct users per item (the training interaction count once repeats are merged)."""
        return np.asarray(self.matrix.sum(axis=0), dtype=np.float64).ravel()

    def seen(self, row: int) -> IntArray:
        start, end = self.matrix.indptr[row], self.matrix.indptr[row + 1]
        return np.asarray(self.matrix.indices[start:end], dtype=np.int64)


class Recommender(Protocol):
    name: str

    def fit(self, train: TrainMatrix) -> None: ...

    def score(self, rows: IntArray) -> npt.NDArray[np.floating[Any]]:
        """Scores of every catalogue item for the given user rows (higher is better)."""
        ...


def top_k(scores: npt.NDArray[np.floating[Any]], k: int) -> IntArray:
    """Indices of the k best finite scores, best first, ties to the lower index."""
    finite = np.isfinite(scores)
    k = min(k, int(finite.sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    masked = np.where(finite, scores, -np.inf)
    part = np.argpartition(-masked, k - 1)[:k]
    threshold = masked[part].min()
    above = np.flatnonzero(masked > threshold)
    ties = np.flatnonzero(masked == threshold)[: k - len(above)]
    chosen = np.concatenate([above, ties])
    order = np.lexsort((chosen, -masked[chosen]))
    return np.asarray(chosen[order], dtype=np.int64)


def _batches(users: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(users), size):
        yield users[start : start + size]


def scored_lists(
    model: Recommender, train: TrainMatrix, users: Sequence[str], k: int
) -> dict[str, tuple[IntArray, npt.NDArray[np.float64]]]:
    """Per user: the top-k item indices (training items excluded) and their scores."""
    popularity = train.popularity
    out: dict[str, tuple[IntArray, npt.NDArray[np.float64]]] = {}
    for chunk in _batches(list(users), SCORE_BATCH):
        rows = np.array([train.user_index[user] for user in chunk], dtype=np.int64)
        block = np.asarray(model.score(rows), dtype=np.float64)
        for offset, (user, row) in enumerate(zip(chunk, rows, strict=True)):
            seen = train.seen(int(row))
            scores = block[offset] if len(seen) else popularity.copy()
            scores[seen] = -np.inf
            best = top_k(scores, k)
            out[user] = (best, scores[best])
    return out


def recommend(
    model: Recommender, train: TrainMatrix, users: Sequence[str], k: int
) -> dict[str, list[str]]:
    """Top-k item ids per user, the user's training items excluded."""
    return {
        user: [train.items[i] for i in best]
        for user, (best, _) in scored_lists(model, train, users, k).items()
    }


class MostPopular:
    name = "most_popular"

    def __init__(self) -> None:
        self._popularity: npt.NDArray[np.float64] = np.zeros(0)

    def fit(self, train: TrainMatrix) -> None:
        self._popularity = train.popularity

    def score(self, rows: IntArray) -> npt.NDArray[np.float64]:
        return np.tile(self._popularity, (len(rows), 1))


class RandomItems:
    """Uniformly random order per user, seeded by (seed, user id): independent of batching."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._users: tuple[str, ...] = ()
        self._n_items = 0

    def fit(self, train: TrainMatrix) -> None:
        self._users = train.users
        self._n_items = len(train.items)

    def score(self, rows: IntArray) -> npt.NDArray[np.float64]:
        block = np.empty((len(rows), self._n_items), dtype=np.float64)
        for offset, row in enumerate(rows):
            digest = hashlib.blake2b(self._users[int(row)].encode(), digest_size=8).digest()
            rng = np.random.default_rng([self.seed, int.from_bytes(digest, "big")])
            block[offset] = rng.random(self._n_items)
        return block


@dataclasses.dataclass(frozen=True)
class AlsParams:
    factors: int = 64
    regularization: float = 0.01
    iterations: int = 15
    alpha: float = 1.0

    def label(self) -> str:
        return (
            f"factors={self.factors} reg={self.regularization:g} "
            f"iters={self.iterations} alpha={self.alpha:g}"
        )


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    # implicit's own threads plus BLAS threads only contend on two cores (and one solver thread
    # keeps the factors identical run to run).
    try:
        import threadpoolctl  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - installed with implicit
        return contextlib.nullcontext()
    limits: contextlib.AbstractContextManager[Any] = threadpoolctl.threadpool_limits(1, "blas")
    return limits


class Als:
    """Implicit-feedback ALS from ``implicit`` (CPU, one thread, fixed seed) on the binary matrix.

    Items without a training interaction get zero factors (their leftover random initial factors
    would otherwise score them by noise)."""

    name = "als"

    def __init__(self, params: AlsParams | None = None, seed: int = 0) -> None:
        self.params = params or AlsParams()
        self.seed = seed
        self.user_factors: FloatArray = np.zeros((0, 0), dtype=np.float32)
        self.item_factors: FloatArray = np.zeros((0, 0), dtype=np.float32)

    def fit(self, train: TrainMatrix) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        with _one_blas_thread():
            model = AlternatingLeastSquares(
                factors=self.params.factors,
                regularization=self.params.regularization,
                alpha=self.params.alpha,
                iterations=self.params.iterations,
                calculate_training_loss=False,
                num_threads=1,
                random_state=self.seed,
            )
            model.fit(train.matrix.astype(np.float32), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        items = np.asarray(model.item_factors, dtype=np.float32).copy()
        items[train.popularity == 0] = 0.0
        self.item_factors = items

    def score(self, rows: IntArray) -> FloatArray:
        result: FloatArray = self.user_factors[rows] @ self.item_factors.T
        return result


class ContentOnly:
    """User vector = mean of the (unit) LLM vectors of the user's training items; score = cosine.

    Items without a vector score 0 (they cannot be placed by content)."""

    name = "content"

    def __init__(self, vectors: Mapping[str, Sequence[float] | npt.NDArray[np.floating[Any]]]):
        self._vectors = vectors
        self._items: FloatArray = np.zeros((0, 0), dtype=np.float32)
        self._users: FloatArray = np.zeros((0, 0), dtype=np.float32)

    def fit(self, train: TrainMatrix) -> None:
        dim = len(next(iter(self._vectors.values()))) if self._vectors else 1
        items = np.zeros((len(train.items), dim), dtype=np.float32)
        for position, item in enumerate(train.items):
            vector = self._vectors.get(item)
            if vector is not None:
                items[position] = vector
        norms = np.linalg.norm(items, axis=1, keepdims=True)
        items = np.divide(items, norms, out=np.zeros_like(items), where=norms > 0)
        users = np.asarray(train.matrix @ items, dtype=np.float32)
        counts = np.asarray(train.matrix.sum(axis=1), dtype=np.float32)
        users = np.divide(users, counts, out=np.zeros_like(users), where=counts > 0)
        unorm = np.linalg.norm(users, axis=1, keepdims=True)
        self._users = np.divide(users, unorm, out=np.zeros_like(users), where=unorm > 0)
        self._items = items

    def score(self, rows: IntArray) -> FloatArray:
        result: FloatArray = self._users[rows] @ self._items.T
        return result


def minmax(values: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """Scale to [0, 1]; all-equal values give 1."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    low, high = float(x.min()), float(x.max())
    if not high > low:
        return np.ones_like(x)
    return (x - low) / (high - low)


def xquad_order(
    scores: Sequence[float] | npt.NDArray[np.floating[Any]],
    is_tail: Sequence[bool] | npt.NDArray[np.bool_],
    p_tail: float,
    lam: float,
    k: int,
) -> list[int]:
    """Plain (binary) xQuAD over the aspects {head, tail} (Abdollahpouri et al. 2019).

    Greedily picks argmax (1-lam) rel(i) + lam * sum_a P(a|u) [i in a] prod_{j in S} (1 - [j in a])
    with rel = min-max scaled scores of the pool, P(tail|u) = ``p_tail`` (the user's share of
    tail items in training) and P(head|u) = 1 - p_tail. Once the list holds an item of an aspect,
    that aspect's term is 0. Ties go to the better-scored (earlier) candidate. Returns pool
    indices in list order."""
    rel = minmax(np.asarray(scores, dtype=np.float64))
    tail = np.asarray(is_tail, dtype=np.float64)
    head = 1.0 - tail
    available = np.ones(len(rel), dtype=bool)
    cover_tail = cover_head = 1.0
    order: list[int] = []
    for _ in range(min(k, len(rel))):
        gain = (1.0 - lam) * rel + lam * (
            p_tail * tail * cover_tail + (1.0 - p_tail) * head * cover_head
        )
        gain[~available] = -np.inf
        best = int(np.argmax(gain))
        available[best] = False
        order.append(best)
        cover_tail *= 1.0 - tail[best]
        cover_head *= 1.0 - head[best]
    return order


def xquad_lists(
    pools: Mapping[str, tuple[IntArray, npt.NDArray[np.float64]]],
    train: TrainMatrix,
    head: frozenset[str],
    lam: float,
    k: int,
) -> dict[str, list[str]]:
    """xQuAD over each user's candidate pool (``scored_lists`` of a base model, e.g. its top
    100 with training items excluded)."""
    is_tail_item = np.array([item not in head for item in train.items], dtype=bool)
    out: dict[str, list[str]] = {}
    for user, (best, scores) in pools.items():
        seen = train.seen(train.user_index[user])
        p_tail = float(is_tail_item[seen].mean()) if len(seen) else 0.5
        order = xquad_order(scores, is_tail_item[best], p_tail, lam, k)
        out[user] = [train.items[int(best[i])] for i in order]
    return out
