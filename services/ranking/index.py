"""ANN index over L2-normalised item vectors (FAISS, inner product = cosine similarity).

Rows are catalogue positions ``0..n-1``. Up to ``exact_max_items`` the index is exact
(``IndexFlatIP``); above it is HNSW (``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``). Items added
after a build go into an exact "delta" segment appended after the base, so that a newly indexed
item is searchable at once without rebuilding the HNSW graph; the caller rebuilds when the delta
grows (``needs_rebuild``).

``PoolIndex`` searches a subset of rows (the tail or cold pool): a small pool is scored exactly
over its own vectors, a large dense one through the main index with a bitmap selector, a large
sparse one through an HNSW of its own (a filtered HNSW walk would find too few members).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
RowArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
IndexKind = Literal["flat", "hnsw"]

# A pool searched through the main index must hold at least this share of its rows; below it a
# filtered HNSW walk visits too many non-members (recall drops), so the pool gets its own index.
MIN_FILTERED_SELECTIVITY = 0.3

_version_counter = itertools.count(1)
# FAISS's bundled stubs lack the search-parameter classes; use them untyped.
_FAISS: Any = faiss


@dataclasses.dataclass(frozen=True)
class IndexParams:
    """How the index is built; defaults tuned for recall@100 >= 0.95 (see benchmarks/ann.py)."""

    # At most this many items: exact search (recall 1). A scan reads the whole matrix: measured on
    # the 2-core target, 20k x 384-d takes ~1.1 ms per query vector, 50k ~3.6 ms (memory-bound),
    # against ~0.3 ms for HNSW; so exact stops at 20k.
    exact_max_items: int = 20_000
    # HNSW graph degree; 32 keeps recall@100 high on 384-d sentence vectors.
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    # Search beam for k=100 (recall@100 >= 0.95 needs ~2k); smaller k scale it down to no less
    # than ``hnsw_ef_min``, a filtered search scales it up by 1 / selectivity. Not lowered: at
    # 100k items (benchmarks/ann.py) 100 keeps recall@100 at 0.99 on clustered vectors but drops
    # it from 0.89 to 0.80 on benchmarks.recommend's synthetic catalogue with its users' vectors.
    hnsw_ef_search: int = 200
    hnsw_ef_min: int = 64
    # OpenMP threads per search call (one query: more threads only add barrier waits, badly so on
    # a shared 2-core machine) and per build (0 = all cores). OpenMP settings are per thread, so
    # each call sets its own.
    search_threads: int = 1
    build_threads: int = 0
    # The delta segment may hold this share of the base (at least ``delta_min_items``) before
    # ``needs_rebuild`` says so.
    delta_max_share: float = 0.05
    delta_min_items: int = 2_000


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Catalogue rows best first, with their inner products."""

    rows: RowArray
    scores: FloatArray

    def __len__(self) -> int:
        return int(self.rows.shape[0])


EMPTY_RESULT = SearchResult(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


def new_version(prefix: str, size: int) -> str:
    """A readable, unique version string: ``<prefix>-<UTC time>-n<size>-<counter>``."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{prefix}-{stamp}-n{size}-{next(_version_counter)}"


def normalize_rows(vectors: npt.ArrayLike) -> FloatArray:
    """A float32, C-contiguous copy with each non-zero row scaled to unit L2 norm."""
    matrix = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


def _as_queries(query: npt.ArrayLike, dimension: int) -> FloatArray:
    queries = np.ascontiguousarray(query, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries.reshape(1, -1)
    if queries.shape[1] != dimension:
        raise ValueError(f"query dimension {queries.shape[1]} != index dimension {dimension}")
    return queries


def _bitmap(mask: BoolArray) -> npt.NDArray[np.uint8]:
    return np.packbits(mask.astype(np.bool_, copy=False), bitorder="little")


class _Segment:
    """One FAISS index over rows ``offset .. offset + size - 1`` (local ids 0..size-1)."""

    def __init__(self, offset: int, vectors: FloatArray, kind: IndexKind, params: IndexParams):
        self.offset = offset
        self.size = int(vectors.shape[0])
        self.kind: IndexKind = kind
        self.ef_search = params.hnsw_ef_search
        self.ef_min = params.hnsw_ef_min
        self.search_threads = params.search_threads
        dimension = int(vectors.shape[1])
        index: Any
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dimension, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params.hnsw_ef_construction
            index.hnsw.efSearch = params.hnsw_ef_search
        else:
            index = faiss.IndexFlatIP(dimension)
        if self.size:
            faiss.omp_set_num_threads(params.build_threads or os.cpu_count() or 1)
            index.add(vectors)
        self.index = index

    def database(self) -> FloatArray:
        """The stored vectors of an exact segment, as a view (no copy)."""
        data = faiss.rev_swig_ptr(self.index.get_xb(), self.size * self.index.d)
        matrix: FloatArray = np.asarray(data, dtype=np.float32).reshape(self.size, self.index.d)
        return matrix

    def search(
        self,
        queries: FloatArray,
        k: int,
        selector: Any | None,
        selectivity: float = 1.0,
        ef_search: int | None = None,
    ) -> tuple[FloatArray, RowArray]:
        """Top ``k`` per query as (scores, global rows); missing hits have row -1."""
        k = min(k, self.size)
        if k <= 0:
            empty = np.empty((queries.shape[0], 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        params: Any = None
        faiss.omp_set_num_threads(self.search_threads)
        if self.kind == "hnsw":
            # Recall@k needs a beam of about 2k; a selector rejecting part of the graph needs a
            # proportionally wider beam to still collect k members.
            if ef_search is None:
                ef_search = max(self.ef_min, math.ceil(self.ef_search * min(k, 100) / 100))
            ef = math.ceil(max(ef_search, k) / max(selectivity, 1e-3))
            params = _FAISS.SearchParametersHNSW(efSearch=ef)
            if selector is not None:
                params.sel = selector
        elif selector is not None:
            params = _FAISS.SearchParameters(sel=selector)
        scores, local = self.index.search(queries, k, params=params)
        rows = np.where(local >= 0, local + self.offset, -1).astype(np.int64)
        return scores.astype(np.float32, copy=False), rows


class _Selectors:
    """FAISS selectors for one segment; holds the numpy buffers they point into."""

    def __init__(self, allow_bits: npt.NDArray[np.uint8] | None, exclude_local: RowArray | None):
        self._buffers: list[Any] = [allow_bits, exclude_local]
        self._objects: list[Any] = []
        selector: Any | None = None
        if allow_bits is not None:
            # FAISS takes the bitmap's length in bytes.
            selector = faiss.IDSelectorBitmap(allow_bits.shape[0], faiss.swig_ptr(allow_bits))
            self._objects.append(selector)
        if exclude_local is not None and exclude_local.shape[0]:
            batch = faiss.IDSelectorBatch(exclude_local.shape[0], faiss.swig_ptr(exclude_local))
            negated = faiss.IDSelectorNot(batch)
            self._objects += [batch, negated]
            if selector is None:
                selector = negated
            else:
                selector = faiss.IDSelectorAnd(selector, negated)
                self._objects.append(selector)
        self.selector = selector


class AllowMask:
    """A row subset prepared for filtered search (one bitmap per segment)."""

    def __init__(self, mask: BoolArray, index: VectorIndex) -> None:
        if mask.shape[0] != index.size:
            raise ValueError("mask length differs from the index size")
        self.count = int(mask.sum())
        self.selectivity = self.count / index.size if index.size else 0.0
        self.bitmaps = [_bitmap(mask[seg.offset : seg.offset + seg.size]) for seg in index.segments]


class VectorIndex:
    """The item ANN index: a base segment (flat or HNSW) and an exact delta segment."""

    def __init__(
        self,
        segments: Sequence[_Segment],
        dimension: int,
        params: IndexParams,
        version: str,
        base_size: int,
    ) -> None:
        self.segments = list(segments)
        self.dimension = dimension
        self.params = params
        self.version = version
        self.base_size = base_size
        self.size = sum(seg.size for seg in self.segments)

    @classmethod
    def build(
        cls, vectors: FloatArray, params: IndexParams | None = None, version: str | None = None
    ) -> VectorIndex:
        """Index ``vectors`` (rows already L2-normalised); HNSW above ``exact_max_items``."""
        params = params or IndexParams()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError("vectors must be a 2-d matrix")
        n = int(vectors.shape[0])
        kind: IndexKind = "hnsw" if n > params.exact_max_items else "flat"
        segment = _Segment(0, vectors, kind, params)
        return cls([segment], int(vectors.shape[1]), params, version or new_version("idx", n), n)

    def extended(self, new_vectors: FloatArray, version: str | None = None) -> VectorIndex:
        """A new index with ``new_vectors`` appended as rows ``size..``; shares the base segment.

        The base is only read afterwards (FAISS searches are safe to run concurrently), so the
        old and the new index can serve side by side during the swap.
        """
        new_vectors = np.ascontiguousarray(new_vectors, dtype=np.float32)
        if new_vectors.shape[0] == 0:
            return self
        if self.segments[0].kind == "flat":
            # An exact base is rebuilt: copying vectors is cheap and keeps one segment.
            old = self.reconstruct_all()
            return VectorIndex.build(np.vstack([old, new_vectors]), self.params, version)
        base = self.segments[0]
        delta_old = (
            self.segments[1].index.reconstruct_n(0, self.segments[1].size)
            if len(self.segments) > 1
            else np.empty((0, self.dimension), dtype=np.float32)
        )
        delta = _Segment(base.size, np.vstack([delta_old, new_vectors]), "flat", self.params)
        size = self.size + int(new_vectors.shape[0])
        return VectorIndex(
            [base, delta],
            self.dimension,
            self.params,
            version or new_version("idx", size),
            self.base_size,
        )

    def reconstruct_all(self) -> FloatArray:
        parts = [seg.index.reconstruct_n(0, seg.size) for seg in self.segments if seg.size]
        if not parts:
            return np.empty((0, self.dimension), dtype=np.float32)
        return np.vstack(parts).astype(np.float32, copy=False)

    @property
    def kind(self) -> IndexKind:
        return self.segments[0].kind

    @property
    def delta_size(self) -> int:
        return self.size - self.base_size

    def needs_rebuild(self) -> bool:
        """Whether the delta segment has outgrown its share of the base."""
        limit = max(self.params.delta_min_items, self.params.delta_max_share * self.base_size)
        return self.delta_size > limit

    def allow_mask(self, mask: BoolArray) -> AllowMask:
        return AllowMask(np.asarray(mask, dtype=np.bool_), self)

    def search(
        self,
        query: npt.ArrayLike,
        k: int,
        *,
        exclude: RowArray | None = None,
        allow: AllowMask | None = None,
        ef_search: int | None = None,
    ) -> SearchResult:
        """The ``k`` rows with the highest inner product with ``query``.

        ``exclude`` rows are never returned; with ``allow`` only rows in that mask are.
        ``ef_search`` overrides the HNSW beam for this call (tuning, benchmarks).
        """
        return self.search_batch(query, k, exclude=exclude, allow=allow, ef_search=ef_search)[0]

    def search_batch(
        self,
        queries: npt.ArrayLike,
        k: int,
        *,
        exclude: RowArray | None = None,
        allow: AllowMask | None = None,
        ef_search: int | None = None,
    ) -> list[SearchResult]:
        """``search`` for each row of ``queries`` (one FAISS call per segment)."""
        matrix = _as_queries(queries, self.dimension)
        if k <= 0 or self.size == 0:
            return [EMPTY_RESULT for _ in range(matrix.shape[0])]
        if allow is not None and allow.count == 0:
            return [EMPTY_RESULT for _ in range(matrix.shape[0])]
        excluded = None if exclude is None else np.unique(np.asarray(exclude, dtype=np.int64))
        all_scores: list[FloatArray] = []
        all_rows: list[RowArray] = []
        for position, seg in enumerate(self.segments):
            local_excluded = None
            if excluded is not None and excluded.shape[0]:
                inside = excluded[(excluded >= seg.offset) & (excluded < seg.offset + seg.size)]
                local_excluded = np.ascontiguousarray(inside - seg.offset, dtype=np.int64)
            bits = None if allow is None else allow.bitmaps[position]
            selectors = _Selectors(bits, local_excluded)
            selectivity = 1.0 if allow is None else allow.selectivity
            scores, rows = seg.search(matrix, k, selectors.selector, selectivity, ef_search)
            all_scores.append(scores)
            all_rows.append(rows)
        if len(all_scores) == 1:
            scores, rows = all_scores[0], all_rows[0]
        else:
            scores, rows = np.hstack(all_scores), np.hstack(all_rows)
        results = []
        for i in range(matrix.shape[0]):
            valid = rows[i] >= 0
            row_i, score_i = rows[i][valid], scores[i][valid]
            if len(all_scores) > 1:
                order = np.argsort(-score_i, kind="stable")[:k]
                row_i, score_i = row_i[order], score_i[order]
            results.append(SearchResult(row_i, score_i))
        return results


class PoolIndex:
    """Search restricted to a subset of catalogue rows (e.g. the tail or the cold items)."""

    def __init__(
        self,
        rows: RowArray,
        mask: BoolArray,
        *,
        parent: VectorIndex | None = None,
        allow: AllowMask | None = None,
        own: VectorIndex | None = None,
    ) -> None:
        self.rows = rows
        self.mask = mask
        self.outside = ~mask
        self._parent = parent
        self._allow = allow
        self._own = own

    @classmethod
    def build(
        cls,
        index: VectorIndex,
        vectors: FloatArray,
        mask: BoolArray,
        params: IndexParams | None = None,
    ) -> PoolIndex:
        """Prepare the pool ``mask`` of ``index`` (whose rows are ``vectors``)."""
        params = params or index.params
        mask = np.asarray(mask, dtype=np.bool_)
        rows = np.flatnonzero(mask).astype(np.int64)
        if rows.shape[0] == 0:
            return cls(rows, mask)
        selectivity = rows.shape[0] / max(index.size, 1)
        if index.kind == "flat" and selectivity >= 0.5:
            # Exact either way; the bitmap saves copying most of the catalogue.
            return cls(rows, mask, parent=index, allow=index.allow_mask(mask))
        if rows.shape[0] <= params.exact_max_items:
            exact = dataclasses.replace(params, exact_max_items=max(rows.shape[0], 1))
            return cls(rows, mask, own=VectorIndex.build(vectors[rows], exact, "pool"))
        if selectivity >= MIN_FILTERED_SELECTIVITY:
            return cls(rows, mask, parent=index, allow=index.allow_mask(mask))
        return cls(rows, mask, own=VectorIndex.build(vectors[rows], params, "pool"))

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def strategy(self) -> str:
        if self._own is not None:
            return f"own-{self._own.kind}"
        return "filtered" if self._parent is not None else "empty"

    def search(
        self, query: npt.ArrayLike, k: int, *, exclude: RowArray | None = None
    ) -> SearchResult:
        """The ``k`` pool rows (catalogue rows) closest to ``query``, excluding ``exclude``."""
        if self.size == 0 or k <= 0:
            return EMPTY_RESULT
        if self._parent is not None:
            return self._parent.search(query, k, exclude=exclude, allow=self._allow)
        assert self._own is not None
        local_excluded = None
        if exclude is not None and len(exclude):
            positions = np.searchsorted(self.rows, exclude)
            positions = np.clip(positions, 0, self.size - 1)
            hit = self.rows[positions] == exclude
            local_excluded = positions[hit].astype(np.int64)
        found = self._own.search(query, k, exclude=local_excluded)
        return SearchResult(self.rows[found.rows], found.scores)


@dataclasses.dataclass(frozen=True)
class SearchRequest:
    """One retrieval of ``multi_search``: ``k`` rows for ``queries[query]``, within ``pool``."""

    query: int
    k: int
    pool: PoolIndex | None = None


def _top_k(scores: FloatArray, k: int) -> SearchResult:
    """The ``k`` best finite entries of ``scores``, best first (ties by row)."""
    finite = int(np.isfinite(scores).sum())
    k = min(k, finite)
    if k <= 0:
        return EMPTY_RESULT
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(k)
    order = part[np.lexsort((part, -scores[part]))].astype(np.int64)
    return SearchResult(order, scores[order].astype(np.float32))


def multi_search(
    index: VectorIndex,
    queries: npt.ArrayLike,
    requests: Sequence[SearchRequest],
    *,
    exclude: RowArray | None = None,
) -> list[SearchResult]:
    """Several retrievals for one user at once (content, tail pool, cold pool, neighbours).

    On an exact index the catalogue is scanned once for all queries (one matrix product; a scan
    per request would be memory-bound several times over) and each request is a masked top-k.
    On HNSW each all-items request walks the graph (requests alike in k share one batch call); a
    pool request is read off the all-items answer to its query when that holds enough pool
    members, and walks the pool's own index otherwise.
    """
    matrix = _as_queries(queries, index.dimension)
    if index.size == 0 or not requests:
        return [EMPTY_RESULT for _ in requests]
    excluded = None if exclude is None else np.asarray(exclude, dtype=np.int64)
    if index.kind == "flat" and len(index.segments) == 1:
        database = index.segments[0].database()
        # One matrix-vector product per query: OpenBLAS's sgemm with 2-6 columns is ~2x slower
        # than the same number of sgemv calls here, and both are bound by reading the matrix.
        # Only the queries some request reads (a source sized 0 leaves its query unread).
        scores = {q: database @ matrix[q] for q in sorted({r.query for r in requests})}
        results = []
        for request in requests:
            row = scores[request.query].copy()
            if request.pool is not None:
                np.copyto(row, -np.inf, where=request.pool.outside)
            if excluded is not None and excluded.shape[0]:
                row[excluded] = -np.inf
            results.append(_top_k(row, request.k))
        return results
    answers: dict[int, SearchResult] = {}
    whole: dict[int, list[int]] = {}
    pooled: list[int] = []
    for position, request in enumerate(requests):
        if request.pool is None:
            whole.setdefault(request.k, []).append(position)
        else:
            pooled.append(position)
    for k, positions in whole.items():
        group_queries = matrix[[requests[p].query for p in positions]]
        found = index.search_batch(group_queries, k, exclude=excluded)
        answers.update(zip(positions, found, strict=True))
    # A pool request is answered from an all-items answer to the same query when that holds k
    # pool members: the pool's best k are then its first k members there (the same rows an exact
    # search gives; with HNSW, from the all-items walk's beam). A dense pool (the tail: 80% of the
    # catalogue) saves a walk of the graph; a sparse one (few cold items) still gets its own.
    broadest: dict[int, SearchResult] = {}
    for position, result in answers.items():
        query = requests[position].query
        if len(result) > len(broadest.get(query, EMPTY_RESULT)):
            broadest[query] = result
    groups: dict[tuple[int, int], list[int]] = {}
    for position in pooled:
        request = requests[position]
        assert request.pool is not None
        derived = _pool_members(broadest.get(request.query), request.pool, request.k)
        if derived is not None:
            answers[position] = derived
        else:
            groups.setdefault((id(request.pool), request.k), []).append(position)
    for positions in groups.values():
        first = requests[positions[0]]
        assert first.pool is not None
        group_queries = matrix[[requests[p].query for p in positions]]
        found = [first.pool.search(q, first.k, exclude=excluded) for q in group_queries]
        answers.update(zip(positions, found, strict=True))
    return [answers[p] for p in range(len(requests))]


def _pool_members(result: SearchResult | None, pool: PoolIndex, k: int) -> SearchResult | None:
    """The first ``k`` rows of ``result`` inside ``pool``; None when it holds fewer."""
    if result is None:
        return None
    inside = pool.mask[result.rows]
    if int(inside.sum()) < k:
        return None
    return SearchResult(result.rows[inside][:k], result.scores[inside][:k])
