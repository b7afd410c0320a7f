"""Small hand-checked cases for each policy, exploration and validation."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.exposure.policies import (
    REGISTRY,
    CandidateIn,
    ExploreConfig,
    ItemCounts,
    Placed,
    Reason,
    RerankInput,
    derive_seed,
    describe_policies,
    explore_positions,
    minmax,
    rerank,
)


def head(item_id: str, score: float, *categories: str) -> CandidateIn:
    return CandidateIn(item_id, score, categories=categories)


def tail(item_id: str, score: float, *categories: str, cold: bool = False) -> CandidateIn:
    return CandidateIn(item_id, score, is_tail=True, is_cold=cold, categories=categories)


def run(
    policy: str,
    candidates: list[CandidateIn],
    k: int,
    stats: dict[str, ItemCounts] | None = None,
    **fields: object,
) -> list[tuple[str, Reason]]:
    request = RerankInput(request_id="r1", candidates=candidates, k=k, policy=policy, **fields)  # type: ignore[arg-type]
    return [(p.item_id, p.reason) for p in rerank(request, stats)]


POOL = [head("h1", 0.9), head("h2", 0.8), tail("t1", 0.7), head("h3", 0.6), tail("t2", 0.5)]
R, TB, EX, DIV = Reason.RELEVANCE, Reason.TAIL_BOOST, Reason.EXPLORE, Reason.DIVERSITY


def test_minmax_guards_equal_negative_and_empty_scores() -> None:
    assert minmax([]).tolist() == []
    assert minmax([2.0, 2.0]).tolist() == [1.0, 1.0]
    assert minmax([0.0, 0.0, 0.0]).tolist() == [1.0, 1.0, 1.0]
    assert minmax([-3.0, -1.0]).tolist() == [0.0, 1.0]
    assert minmax([1e308, -1e308]).tolist() == [1.0, 0.0]


# xQuAD ----------------------------------------------------------------------------------------


def test_xquad_propensity_zero_equals_relevance() -> None:
    got = run("tail_xquad", POOL, 5, tail_propensity=0.0, params={"lambda": 0.9})
    assert got == [("h1", R), ("h2", R), ("t1", R), ("h3", R), ("t2", R)]


def test_xquad_propensity_one_with_high_lambda_puts_tail_first() -> None:
    got = run("tail_xquad", POOL, 3, tail_propensity=1.0, params={"lambda": 0.9})
    # gain(t1) = 0.1 * 0.5 + 0.9 = 0.95 > gain(h1) = 0.1; then the tail aspect is covered.
    assert got == [("t1", TB), ("h1", R), ("h2", R)]


def test_xquad_without_personalisation_weighs_both_aspects_equally() -> None:
    # P(tail|u) = 0.5 whatever the propensity: h1 (0.5 * 1 + 0.5 * 0.5) beats t1 (0.25 + 0.25),
    # then t1 (0.25 + 0.25) covers the tail aspect ahead of h2 (0.5 * 0.75, head covered).
    got = run(
        "tail_xquad",
        POOL,
        3,
        tail_propensity=0.0,
        params={"lambda": 0.5, "personalized": False},
    )
    assert got == [("h1", R), ("t1", TB), ("h2", R)]


def test_xquad_lifts_a_head_item_for_a_head_only_user_as_diversity() -> None:
    pool = [tail("t1", 1.0), head("h1", 0.9), tail("t2", 0.1)]
    got = run("tail_xquad", pool, 2, tail_propensity=0.0, params={"lambda": 0.9})
    assert got == [("h1", DIV), ("t1", R)]


# Calibration ----------------------------------------------------------------------------------


def test_calibrated_fills_the_users_missing_category() -> None:
    pool = [head("a1", 1.0, "a"), head("a2", 0.9, "a"), head("b1", 0.8, "b")]
    mix = {"a": 0.5, "b": 0.5}
    # Step 2: a2 leaves q = (1, 0), KL ~ 1.96; b1 makes q = (0.5, 0.5), KL ~ 0.
    assert run("calibrated", pool, 2, category_mix=mix) == [("a1", R), ("b1", DIV)]
    assert run("calibrated", pool, 2, category_mix=mix, params={"lambda": 0.0}) == [
        ("a1", R),
        ("a2", R),
    ]


def test_calibrated_follows_a_single_category_user() -> None:
    pool = [head("c1", 1.0, "comedy"), head("c2", 0.95, "comedy"), head("d1", 0.2, "drama")]
    got = run("calibrated", pool, 2, category_mix={"drama": 3.0}, params={"lambda": 0.9})
    assert got[0] == ("d1", DIV)


def test_calibrated_without_a_mix_is_relevance() -> None:
    pool = [head("a1", 0.1, "a"), head("b1", 0.9, "b")]
    assert run("calibrated", pool, 2, category_mix={"a": 0.0}) == [("b1", R), ("a1", R)]


# MMR ------------------------------------------------------------------------------------------


def test_mmr_skips_a_near_duplicate_vector() -> None:
    pool = [
        CandidateIn("a", 1.0, vector=(1.0, 0.0)),
        CandidateIn("b", 0.95, vector=(0.99, 0.14)),
        CandidateIn("c", 0.5, vector=(0.0, 1.0)),
    ]
    # Step 2: b = 0.5 * 0.9 - 0.5 * 0.99 < 0 = c's 0.5 * 0 - 0.5 * 0.
    assert run("mmr", pool, 2, params={"lambda": 0.5}) == [("a", R), ("c", DIV)]
    assert run("mmr", pool, 2, params={"lambda": 1.0}) == [("a", R), ("b", R)]


def test_mmr_uses_category_jaccard_without_vectors() -> None:
    pool = [head("x", 1.0, "a", "b"), head("y", 0.9, "a", "b"), head("z", 0.8, "c")]
    assert run("mmr", pool, 3, params={"lambda": 0.5}) == [("x", R), ("z", DIV), ("y", R)]


def test_mmr_rejects_vectors_of_different_dimensions() -> None:
    pool = [CandidateIn("a", 1.0, vector=(1.0,)), CandidateIn("b", 0.5, vector=(1.0, 0.0))]
    with pytest.raises(InvalidArgument) as caught:
        run("mmr", pool, 2)
    assert caught.value.reason == "VECTOR_DIMENSION_MISMATCH"


# Tail quota -----------------------------------------------------------------------------------


def test_tail_quota_forces_tail_items_in_at_each_prefix() -> None:
    pool = [head("h1", 0.9), head("h2", 0.8), head("h3", 0.7), tail("t1", 0.2), tail("t2", 0.1)]
    got = run("tail_quota", pool, 4, params={"min_tail_share": 0.5})
    assert got == [("h1", R), ("t1", TB), ("h2", R), ("t2", TB)]


def test_tail_quota_places_every_tail_item_when_the_pool_has_too_few() -> None:
    pool = [head("h1", 0.9), head("h2", 0.8), head("h3", 0.7), head("h4", 0.6), tail("t1", 0.1)]
    got = run("tail_quota", pool, 4, params={"min_tail_share": 0.5})
    assert got == [("h1", R), ("t1", TB), ("h2", R), ("h3", R)]


# Fair exposure --------------------------------------------------------------------------------


def test_fair_exposure_drops_an_over_exposed_item() -> None:
    pool = [head("a", 1.0), head("b", 0.9), tail("c", 0.1)]
    stats = {"a": ItemCounts(1000, 3)}
    # merit a = 0.53, b = 0.47; exposure a = 1, b = 0 -> b: 0.47 + 0.5 * 0.47 = 0.71 > 0.53.
    assert run("fair_exposure", pool, 3, stats) == [("b", TB), ("a", R), ("c", R)]
    assert run("fair_exposure", pool, 3, stats, params={"weight": 0.0}) == [
        ("a", R),
        ("b", R),
        ("c", R),
    ]
    # Never shown at all: every item lags its merit by the same factor, so relevance stands.
    assert run("fair_exposure", pool, 3, {}) == [("a", R), ("b", R), ("c", R)]


# Exploration ----------------------------------------------------------------------------------


def test_explore_positions_spread_and_fit() -> None:
    assert explore_positions(10, 2, 2) == [2, 6]
    assert explore_positions(10, 1, 2) == [2]
    assert explore_positions(3, 1, 2) == [2]
    assert explore_positions(2, 1, 2) == [1]  # the list is too short for position 2
    assert explore_positions(3, 3, 2) == [0, 1, 2]
    assert explore_positions(3, 0, 0) == []


def test_explore_prefers_items_with_more_feedback_per_impression() -> None:
    pool = [head("h1", 0.9), head("h2", 0.8), tail("good", 0.1), tail("bad", 0.2)]
    stats = {"good": ItemCounts(1000, 900), "bad": ItemCounts(1000, 0)}
    for seed in range(20):
        got = run("relevance", pool, 3, stats, explore=ExploreConfig(1, 1), seed=seed)
        assert got == [("h1", R), ("good", EX), ("h2", R)]


def test_a_relevance_prior_tries_the_better_scored_unseen_items_first() -> None:
    # Ten never-shown tail items scored 0.0 .. 0.9; one slot, 200 requests.
    pool = [head("h", 2.0)] + [tail(f"t{i}", i / 10) for i in range(10)]

    def explored(strength: float, stats: dict[str, ItemCounts] | None = None) -> list[str]:
        picks = []
        for seed in range(200):
            got = run("relevance", pool, 2, stats, explore=ExploreConfig(1, 1, strength), seed=seed)
            picks.append(next(item for item, reason in got if reason is EX))
        return picks

    flat, informed = explored(0.0), explored(10.0)
    # The flat prior ignores the score: every item is tried, the best about a tenth of the time.
    assert set(flat) == {f"t{i}" for i in range(10)}
    assert flat.count("t9") < 40
    # Ten impressions' worth of relevance: nearly always one of the top two.
    assert sum(item in ("t9", "t8") for item in informed) > 180
    assert informed.count("t9") > informed.count("t8") > informed.count("t0")
    # Feedback still overrules the prior: the top item shown 500 times without a click yields.
    shown = {"t9": ItemCounts(500, 0)}
    assert explored(10.0, shown).count("t9") == 0


def test_the_relevance_prior_ranks_cold_items_among_cold_items() -> None:
    # Cold items score below warm tail ones; the prior orders each group within itself, and cold
    # items keep exactly the slots the flat prior gives them.
    pool = [tail(f"w{i}", 0.5 + i / 10) for i in range(5)]
    pool += [tail(f"c{i}", i / 100, cold=True) for i in range(5)]
    picks, flat = [], []
    for seed in range(200):
        got = run("relevance", pool, 1, explore=ExploreConfig(1, 0, 5.0), seed=seed)
        picks.append(got[0][0])
        flat.append(run("relevance", pool, 1, explore=ExploreConfig(1, 0), seed=seed)[0][0])
    assert [item[0] for item in picks] == [item[0] for item in flat]
    for group in "cw":
        counts = [picks.count(f"{group}{i}") for i in range(5)]
        assert counts[4] > counts[3] > counts[0]


def test_explore_slots_go_to_the_base_policy_without_tail_candidates() -> None:
    pool = [head("h1", 0.9), head("h2", 0.8), head("h3", 0.7)]
    assert run("relevance", pool, 3, explore=ExploreConfig(2, 0)) == [
        ("h1", R),
        ("h2", R),
        ("h3", R),
    ]


def test_different_seeds_may_explore_different_items() -> None:
    pool = [head("h", 1.0)] + [tail(f"c{i}", 0.5, cold=True) for i in range(20)]
    lists = {
        tuple(run("relevance", pool, 3, explore=ExploreConfig(2, 0), seed=seed))
        for seed in range(10)
    }
    assert len(lists) > 1
    # And the same seed always gives the same list.
    first = run("relevance", pool, 3, explore=ExploreConfig(2, 0), seed=7)
    assert run("relevance", pool, 3, explore=ExploreConfig(2, 0), seed=7) == first


def test_an_unset_seed_comes_from_the_request_id() -> None:
    pool = [tail(f"c{i}", 0.5, cold=True) for i in range(30)]

    def explored(request_id: str) -> list[Placed]:
        request = RerankInput(
            request_id=request_id,
            candidates=pool,
            k=3,
            policy="relevance",
            explore=ExploreConfig(3, 0),
        )
        return rerank(request)

    assert explored("req-1") == explored("req-1")
    assert len({tuple(explored(f"req-{i}")) for i in range(10)}) > 1
    assert derive_seed("req-1") == derive_seed("req-1") != derive_seed("req-2")


# Validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason", "param"),
    [
        ({"k": 0}, "K_OUT_OF_RANGE", None),
        ({"k": 101}, "K_OUT_OF_RANGE", None),
        ({"policy": "nope"}, "UNKNOWN_POLICY", None),
        ({"policy": "tail_xquad", "params": {"lambda": 1.5}}, "PARAMETER_OUT_OF_RANGE", "lambda"),
        ({"policy": "mmr", "params": {"lambda": -0.1}}, "PARAMETER_OUT_OF_RANGE", "lambda"),
        (
            {"policy": "tail_quota", "params": {"min_tail_share": 2.0}},
            "PARAMETER_OUT_OF_RANGE",
            "min_tail_share",
        ),
        (
            {"policy": "fair_exposure", "params": {"weight": float("nan")}},
            "PARAMETER_OUT_OF_RANGE",
            "weight",
        ),
        ({"policy": "mmr", "params": {"weight": 1.0}}, "UNKNOWN_PARAMETER", "weight"),
        (
            {"policy": "tail_xquad", "params": {"personalized": 1.0}},
            "INVALID_PARAMETER_TYPE",
            "personalized",
        ),
        ({"explore": ExploreConfig(4, 0)}, "EXPLORE_SLOTS_OUT_OF_RANGE", None),
        ({"explore": ExploreConfig(-1, 0)}, "EXPLORE_SLOTS_OUT_OF_RANGE", None),
        ({"explore": ExploreConfig(1, -1)}, "PARAMETER_OUT_OF_RANGE", "first_position"),
        ({"explore": ExploreConfig(1, 0, -1.0)}, "PARAMETER_OUT_OF_RANGE", "prior_strength"),
        (
            {"explore": ExploreConfig(1, 0, float("inf"))},
            "PARAMETER_OUT_OF_RANGE",
            "prior_strength",
        ),
        ({"tail_propensity": 1.5}, "PARAMETER_OUT_OF_RANGE", "tail_propensity"),
        ({"category_mix": {"a": -1.0}}, "INVALID_CATEGORY_MIX", None),
        ({"candidates": [head("a", 1.0), head("a", 0.5)]}, "DUPLICATE_CANDIDATE", None),
        ({"candidates": [head("", 1.0)]}, "EMPTY_ITEM_ID", None),
        ({"candidates": [head("a", float("nan"))]}, "NON_FINITE_SCORE", None),
        ({"candidates": [head(f"i{i}", 0.0) for i in range(1001)]}, "BATCH_TOO_LARGE", None),
    ],
)
def test_bad_requests_are_rejected_with_a_reason(
    fields: dict[str, object], reason: str, param: str | None
) -> None:
    base: dict[str, object] = {
        "request_id": "r",
        "candidates": POOL,
        "k": 3,
        "policy": "relevance",
    }
    with pytest.raises(InvalidArgument) as caught:
        rerank(RerankInput(**{**base, **fields}))  # type: ignore[arg-type]
    assert caught.value.reason == reason
    if param is not None:
        assert caught.value.metadata["param"] == param


def test_empty_pool_and_k_above_n() -> None:
    for name in REGISTRY:
        assert run(name, [], 5) == []
        assert len(run(name, POOL, 100)) == len(POOL)


def test_describe_lists_every_policy_with_its_defaults() -> None:
    infos = {info.name: info for info in describe_policies({"tail_quota": {"min_tail_share": 0.4}})}
    assert set(infos) == {*REGISTRY, "explore"}
    assert infos["tail_xquad"].defaults == {"lambda": "0.5", "personalized": "true"}
    assert infos["mmr"].defaults == {"lambda": "0.7"}
    assert infos["tail_quota"].defaults == {"min_tail_share": "0.4"}
    assert infos["fair_exposure"].defaults == {"weight": "0.5"}
    assert infos["relevance"].defaults == {}
    assert all(info.description for info in infos.values())


def test_tail_quota_pulls_an_explored_item_forward_when_the_quota_needs_it() -> None:
    pool = [head("h1", 0.9), head("h2", 0.8), head("h3", 0.7), tail("t1", 0.1)]
    # Exploration takes the only tail item for slot 2, but prefix 2 needs one tail item.
    got = run("tail_quota", pool, 3, params={"min_tail_share": 0.5}, explore=ExploreConfig(1, 2))
    assert got == [("h1", R), ("t1", EX), ("h2", R)]
    # Without a quota to meet, the slot stays where it was planned.
    got = run("relevance", pool, 3, explore=ExploreConfig(1, 2))
    assert got == [("h1", R), ("h2", R), ("t1", EX)]
