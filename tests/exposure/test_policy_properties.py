"""Properties every exposure policy keeps, over random candidate pools (hypothesis).

Pools include zero, negative, equal and huge scores, all-tail and no-tail pools, and k > n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from services.exposure.policies import (
    REGISTRY,
    CandidateIn,
    ExploreConfig,
    ItemCounts,
    Placed,
    Reason,
    RerankInput,
    explore_positions,
    rerank,
)

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)
CATEGORIES = ["a", "b", "c", "d"]

scores = st.one_of(
    st.sampled_from([0.0, -1.0, 1.0, 0.5, -0.5]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False),
)


@st.composite
def pools(draw: st.DrawFn, max_size: int = 25) -> list[CandidateIn]:
    size = draw(st.integers(min_value=0, max_value=max_size))
    mode = draw(st.sampled_from(["mixed", "all_tail", "no_tail"]))
    with_vectors = draw(st.booleans())
    candidates = []
    for index in range(size):
        tail = {"mixed": draw(st.booleans()), "all_tail": True, "no_tail": False}[mode]
        vector = None
        if with_vectors and draw(st.booleans()):
            vector = tuple(draw(st.lists(st.floats(-1, 1), min_size=3, max_size=3)))
        candidates.append(
            CandidateIn(
                item_id=f"i{index}",
                score=draw(scores),
                is_tail=tail,
                is_cold=tail and draw(st.booleans()),
                categories=tuple(draw(st.lists(st.sampled_from(CATEGORIES), max_size=3))),
                vector=vector,
                popularity=draw(st.integers(0, 1000)),
            )
        )
    return candidates


unit = st.floats(min_value=0.0, max_value=1.0)


@st.composite
def params_for(draw: st.DrawFn, policy: str) -> dict[str, object]:
    """Random valid parameters, each set or left to its default."""
    options: dict[str, st.SearchStrategy[object]] = {
        "lambda": unit,
        "personalized": st.booleans(),
        "min_tail_share": unit,
        "weight": st.floats(min_value=0.0, max_value=10.0),
    }
    names = REGISTRY[policy].config_class.param_fields()
    return {name: draw(options[name]) for name in names if draw(st.booleans())}


@st.composite
def requests(draw: st.DrawFn, policy: str | None = None, explore: bool = True) -> RerankInput:
    candidates = draw(pools())
    name = policy or draw(st.sampled_from(sorted(REGISTRY)))
    k = draw(st.integers(min_value=1, max_value=30))
    slots = draw(st.integers(min_value=0, max_value=k)) if explore and draw(st.booleans()) else 0
    return RerankInput(
        request_id=draw(st.text(max_size=8)),
        candidates=candidates,
        k=k,
        policy=name,
        params=draw(params_for(name)),
        explore=ExploreConfig(slots, draw(st.integers(min_value=0, max_value=10))),
        seed=draw(st.none() | st.integers(min_value=0, max_value=2**64 - 1)),
        tail_propensity=draw(unit),
        category_mix=draw(st.dictionaries(st.sampled_from(CATEGORIES), unit, max_size=4)),
    )


stats_maps = st.dictionaries(
    st.sampled_from([f"i{i}" for i in range(25)]),
    st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)).map(lambda t: ItemCounts(*t)),
)


def _relevance_order(candidates: Sequence[CandidateIn]) -> list[str]:
    order = sorted(range(len(candidates)), key=lambda i: (-candidates[i].score, i))
    return [candidates[i].item_id for i in order]


def _ids(items: Sequence[Placed]) -> list[str]:
    return [item.item_id for item in items]


@PROPERTY_SETTINGS
@given(requests(), stats_maps)
def test_every_policy_returns_min_k_n_distinct_input_items_with_reasons(
    request: RerankInput, stats: dict[str, ItemCounts]
) -> None:
    items = rerank(request, stats)
    ids = _ids(items)
    assert len(ids) == min(request.k, len(request.candidates))
    assert len(set(ids)) == len(ids)
    by_id = {c.item_id: c for c in request.candidates}
    assert set(ids) <= set(by_id)
    for item in items:
        assert isinstance(item.reason, Reason)
        assert item.score == by_id[item.item_id].score  # the served score is the relevance score


@PROPERTY_SETTINGS
@given(requests(), stats_maps)
def test_same_request_and_seed_give_the_same_list(
    request: RerankInput, stats: dict[str, ItemCounts]
) -> None:
    assert rerank(request, stats) == rerank(request, dict(stats))


@PROPERTY_SETTINGS
@given(requests(policy="relevance", explore=False))
def test_relevance_is_sorting_by_score(request: RerankInput) -> None:
    items = rerank(request)
    assert _ids(items) == _relevance_order(request.candidates)[: request.k]
    assert {item.reason for item in items} <= {Reason.RELEVANCE}


@PROPERTY_SETTINGS
@given(requests(policy="tail_quota"), stats_maps)
def test_tail_quota_holds_at_every_prefix(
    request: RerankInput, stats: dict[str, ItemCounts]
) -> None:
    items = rerank(request, stats)
    # The exact value of the float: never asks more than the policy's own rounding.
    share = Fraction(float(request.params.get("min_tail_share", 0.3)))  # type: ignore[arg-type]
    by_id = {c.item_id: c for c in request.candidates}
    pool_tail = sum(1 for c in request.candidates if c.in_tail)
    needed = math.floor(share * len(items))
    tail_flags = [by_id[item.item_id].in_tail for item in items]
    if pool_tail >= needed:
        for length in range(1, len(items) + 1):
            assert sum(tail_flags[:length]) >= math.floor(share * length), (length, tail_flags)
    else:  # not enough tail in the pool: every tail item it has is served
        assert sum(tail_flags) == pool_tail
    for item, is_tail in zip(items, tail_flags, strict=True):
        if item.reason is Reason.TAIL_BOOST:
            assert is_tail


@PROPERTY_SETTINGS
@given(requests(), stats_maps)
def test_explore_slots_hold_only_cold_or_tail_items(
    request: RerankInput, stats: dict[str, ItemCounts]
) -> None:
    items = rerank(request, stats)
    by_id = {c.item_id: c for c in request.candidates}
    explored = [p for p, item in enumerate(items) if item.reason is Reason.EXPLORE]
    assert all(by_id[items[p].item_id].in_tail for p in explored)
    pool_tail = sum(1 for c in request.candidates if c.in_tail)
    expected = min(request.explore.slots, pool_tail, len(items))
    assert len(explored) == expected
    planned = explore_positions(len(items), expected, request.explore.first_position)
    if request.policy == "tail_quota":  # the quota may pull explored items forward, never back
        assert all(got <= slot for got, slot in zip(explored, planned, strict=True))
    else:
        assert explored == planned


@PROPERTY_SETTINGS
@given(requests(explore=False))
def test_neutral_parameters_reduce_every_policy_to_relevance(request: RerankInput) -> None:
    neutral = {
        "relevance": {},
        "tail_xquad": {"lambda": 0.0},
        "calibrated": {"lambda": 0.0},
        "mmr": {"lambda": 1.0},
        "tail_quota": {"min_tail_share": 0.0},
        "fair_exposure": {"weight": 0.0},
    }[request.policy]
    items = rerank(
        RerankInput(
            request_id=request.request_id,
            candidates=request.candidates,
            k=request.k,
            policy=request.policy,
            params=neutral,
        )
    )
    assert _ids(items) == _relevance_order(request.candidates)[: request.k]
    assert {item.reason for item in items} <= {Reason.RELEVANCE}


@PROPERTY_SETTINGS
@given(requests(policy="calibrated", explore=False))
def test_calibrated_without_a_mix_is_relevance(request: RerankInput) -> None:
    items = rerank(
        RerankInput(
            request_id="r",
            candidates=request.candidates,
            k=request.k,
            policy="calibrated",
            params={"lambda": 0.9},
            category_mix={},
        )
    )
    assert _ids(items) == _relevance_order(request.candidates)[: request.k]
