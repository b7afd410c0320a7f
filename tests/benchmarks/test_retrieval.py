"""benchmarks.retrieval on a small catalogue: both tables come out whole and sane."""

from __future__ import annotations

from benchmarks.retrieval import build, pool_reads, rank_arms


def test_retrieval_benchmark_measures_every_arm() -> None:
    snapshot, model, queries = build(items=1500, users=120, seed=0)
    assert model.tower is not None and model.ranker is not None
    queries = queries[:20]
    reads = pool_reads(snapshot, queries)
    assert [row[0] for row in reads] == ["walked", "read off"]
    for row in reads:
        assert all(0.0 <= float(value) <= 1.0 for value in row[1:3])
        assert float(row[3]) > 0.0
    arms = rank_arms(snapshot, model, queries, rounds=1)
    assert len(arms) == 4
    assert float(arms[0][2]) == 1.0  # the baseline against itself
    assert all(float(row[1]) > 0.0 and int(row[3]) > 0 for row in arms)
