"""The ANN index: exact search equals brute force, HNSW recall, exclusions, delta, pools."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from services.ranking.index import (
    FloatArray,
    IndexParams,
    PoolIndex,
    RowArray,
    SearchRequest,
    VectorIndex,
    multi_search,
    normalize_rows,
)


def clustered(n: int, dimension: int, clusters: int, seed: int) -> FloatArray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimension))
    labels = rng.integers(0, clusters, n)
    return normalize_rows(centres[labels] + rng.standard_normal((n, dimension)) * 0.6)


def brute_force(
    vectors: FloatArray, query: FloatArray, k: int, allowed: npt.NDArray[np.bool_]
) -> RowArray:
    scores = vectors @ query
    scores[~allowed] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    best: RowArray = order[np.isfinite(scores[order])].astype(np.int64)
    return best


def test_normalize_rows_gives_unit_rows_and_keeps_zero_rows() -> None:
    matrix = normalize_rows([[3.0, 4.0], [0.0, 0.0]])
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(matrix[1], [0.0, 0.0])


def test_exact_search_equals_brute_force_with_exclusions_and_masks() -> None:
    vectors = clustered(3000, 24, 10, seed=1)
    index = VectorIndex.build(vectors, IndexParams(exact_max_items=5000))
    assert index.kind == "flat"
    rng = np.random.default_rng(2)
    mask = rng.random(3000) < 0.4
    allow = index.allow_mask(mask)
    for q in range(5):
        query = vectors[rng.integers(0, 3000)]
        excluded = rng.choice(3000, size=50, replace=False).astype(np.int64)
        allowed = np.ones(3000, dtype=bool)
        allowed[excluded] = False
        found = index.search(query, 40, exclude=excluded)
        np.testing.assert_array_equal(found.rows, brute_force(vectors, query, 40, allowed))
        np.testing.assert_allclose(found.scores, vectors[found.rows] @ query, rtol=1e-5)
        masked = index.search(query, 40, exclude=excluded, allow=allow)
        np.testing.assert_array_equal(
            masked.rows, brute_force(vectors, query, 40, allowed & mask), err_msg=f"query {q}"
        )


def test_hnsw_recall_at_100_is_at_least_095() -> None:
    vectors = clustered(20_000, 48, 64, seed=3)
    index = VectorIndex.build(vectors, IndexParams(exact_max_items=10_000))
    assert index.kind == "hnsw"
    rng = np.random.default_rng(4)
    queries = normalize_rows(
        vectors[rng.integers(0, 20_000, 50)] + rng.standard_normal((50, 48)) * 0.2
    )
    recalls = []
    for query in queries:
        truth = set(np.argsort(-(vectors @ query))[:100].tolist())
        found = index.search(query, 100)
        assert len(found) == 100
        recalls.append(len(truth & set(found.rows.tolist())) / 100)
    assert float(np.mean(recalls)) >= 0.95


def test_hnsw_honours_exclusions_and_returns_distinct_rows() -> None:
    vectors = clustered(3000, 16, 8, seed=5)
    index = VectorIndex.build(vectors, IndexParams(exact_max_items=100))
    query = vectors[7]
    excluded = index.search(query, 30).rows
    found = index.search(query, 30, exclude=excluded)
    assert len(found) == 30
    assert not set(found.rows.tolist()) & set(excluded.tolist())
    assert len(set(found.rows.tolist())) == 30


def test_delta_segment_makes_new_rows_searchable_and_shares_the_graph() -> None:
    vectors = clustered(2000, 16, 8, seed=6)
    index = VectorIndex.build(
        vectors, IndexParams(exact_max_items=100, delta_min_items=10, delta_max_share=0.001)
    )
    rng = np.random.default_rng(7)
    new = normalize_rows(rng.standard_normal((3, 16)))
    extended = index.extended(new)
    assert extended.size == 2003 and extended.delta_size == 3
    assert extended.segments[0] is index.segments[0]
    assert extended.version != index.version
    for offset, vector in enumerate(new):
        found = extended.search(vector, 5)
        assert found.rows[0] == 2000 + offset
        assert 2000 + offset not in extended.search(vector, 5, exclude=found.rows[:1]).rows
    # The old index still serves the old rows only.
    assert index.search(new[0], 5).rows.max() < 2000
    assert not extended.needs_rebuild()
    assert extended.extended(normalize_rows(rng.standard_normal((20, 16)))).needs_rebuild()


def test_flat_index_extension_rebuilds_exactly() -> None:
    vectors = clustered(500, 8, 4, seed=8)
    index = VectorIndex.build(vectors)
    extra = normalize_rows(np.eye(8, dtype=np.float32)[:2])
    extended = index.extended(extra)
    assert extended.kind == "flat" and extended.size == 502 and extended.delta_size == 0
    np.testing.assert_array_equal(
        extended.search(extra[1], 10).rows,
        brute_force(np.vstack([vectors, extra]), extra[1], 10, np.ones(502, dtype=bool)),
    )


@pytest.mark.parametrize(
    ("share", "exact_max", "strategy"),
    [
        (0.05, 50_000, "own-flat"),  # small pool: exact over its own vectors
        (0.8, 100, "filtered"),  # large dense pool: bitmap over the main HNSW
        (0.1, 100, "own-hnsw"),  # large sparse pool: a graph of its own
    ],
)
def test_pool_search_returns_only_pool_rows_near_the_query(
    share: float, exact_max: int, strategy: str
) -> None:
    vectors = clustered(4000, 16, 8, seed=9)
    params = IndexParams(exact_max_items=exact_max)
    index = VectorIndex.build(vectors, params)
    rng = np.random.default_rng(10)
    mask = rng.random(4000) < share
    pool = PoolIndex.build(index, vectors, mask, params)
    assert pool.strategy == strategy
    assert pool.size == int(mask.sum())
    query = vectors[int(np.flatnonzero(mask)[3])]
    excluded = np.flatnonzero(mask)[:5].astype(np.int64)
    found = pool.search(query, 20, exclude=excluded)
    assert len(found) == 20
    assert mask[found.rows].all()
    assert not set(found.rows.tolist()) & set(excluded.tolist())
    allowed = mask.copy()
    allowed[excluded] = False
    truth = brute_force(vectors, query, 20, allowed)
    overlap = len(set(truth.tolist()) & set(found.rows.tolist())) / 20
    assert overlap >= (1.0 if strategy == "own-flat" else 0.9)


def test_empty_index_and_empty_pool_return_nothing() -> None:
    index = VectorIndex.build(np.zeros((0, 4), dtype=np.float32))
    assert len(index.search(np.ones(4), 10)) == 0
    pool = PoolIndex.build(index, np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=bool))
    assert len(pool.search(np.ones(4), 10)) == 0


def test_query_of_the_wrong_dimension_is_rejected() -> None:
    index = VectorIndex.build(clustered(10, 4, 2, seed=11))
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones(5), 3)


@pytest.mark.parametrize("exact_max", [50_000, 100])
def test_multi_search_answers_each_request_like_a_single_search(exact_max: int) -> None:
    vectors = clustered(3000, 16, 8, seed=12)
    params = IndexParams(exact_max_items=exact_max)
    index = VectorIndex.build(vectors, params)
    rng = np.random.default_rng(13)
    tail = rng.random(3000) < 0.8
    cold = rng.random(3000) < 0.05
    tail_pool = PoolIndex.build(index, vectors, tail, params)
    cold_pool = PoolIndex.build(index, vectors, cold, params)
    queries = vectors[[1, 2]]
    excluded = np.arange(0, 300, 3, dtype=np.int64)
    requests = [
        SearchRequest(0, 30),
        SearchRequest(0, 20, tail_pool),
        SearchRequest(0, 10, cold_pool),
        SearchRequest(1, 15),
    ]
    found = multi_search(index, queries, requests, exclude=excluded)
    allowed = np.ones(3000, dtype=bool)
    allowed[excluded] = False
    expectations = [
        brute_force(vectors, queries[0], 30, allowed),
        brute_force(vectors, queries[0], 20, allowed & tail),
        brute_force(vectors, queries[0], 10, allowed & cold),
        brute_force(vectors, queries[1], 15, allowed),
    ]
    for result, expected in zip(found, expectations, strict=True):
        assert len(result) == len(expected)
        overlap = len(set(result.rows.tolist()) & set(expected.tolist())) / len(expected)
        assert overlap >= (1.0 if index.kind == "flat" else 0.9)
        assert not set(result.rows.tolist()) & set(excluded.tolist())
        assert np.all(np.diff(result.scores) <= 1e-6)


def test_multi_search_reads_a_dense_pool_off_the_all_items_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vectors = clustered(3000, 16, 8, seed=14)
    params = IndexParams(exact_max_items=100)
    index = VectorIndex.build(vectors, params)
    rng = np.random.default_rng(15)
    tail = rng.random(3000) < 0.8
    cold = rng.random(3000) < 0.05
    tail_pool = PoolIndex.build(index, vectors, tail, params)
    cold_pool = PoolIndex.build(index, vectors, cold, params)
    walked: list[int] = []
    real = PoolIndex.search

    def spy(self: PoolIndex, query: npt.ArrayLike, k: int, **kwargs: object) -> object:
        walked.append(int(self.size))
        return real(self, query, k, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PoolIndex, "search", spy)
    excluded = np.arange(0, 300, 3, dtype=np.int64)
    requests = [
        SearchRequest(0, 100),
        SearchRequest(0, 50, tail_pool),
        SearchRequest(0, 20, cold_pool),
    ]
    all_items, from_tail, from_cold = multi_search(index, vectors[[7]], requests, exclude=excluded)
    # 100 all-items hits hold about 80 tail items (>= 50) but about 5 cold ones (< 20): the tail
    # is read off the all-items answer, the cold pool is walked.
    assert walked == [cold_pool.size]
    inside = tail[all_items.rows]
    assert from_tail.rows.tolist() == all_items.rows[inside][:50].tolist()
    assert tail[from_tail.rows].all() and len(from_tail) == 50
    allowed = np.ones(3000, dtype=bool)
    allowed[excluded] = False
    truth = brute_force(vectors, vectors[7], 50, allowed & tail)
    assert len(set(truth.tolist()) & set(from_tail.rows.tolist())) >= 45
    assert cold[from_cold.rows].all() and len(from_cold) == 20
    assert not set(from_tail.rows.tolist()) & set(excluded.tolist())
