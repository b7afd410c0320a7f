"""The exposure service through a real gRPC server on port 0.

The counters come from a fake behind ``ExposureStatsSource``, or, for the real
``ProfilesStatsSource``, from a small ProfilesService server that answers GetItemStats.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from google.protobuf import json_format

from longtail.common.v1 import common_pb2
from longtail.exposure.v1 import exposure_service_pb2, exposure_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.common.errors import error_info
from services.common.server import Context, RunningService, ServiceDefinition, start_service
from services.common.settings import ServerSettings, SettingsError, load_settings
from services.exposure.app import ExposureSettings, build, build_with
from services.exposure.policies import POLICY_VERSION, CandidateIn, ItemCounts, Reason
from services.exposure.reranker import PolicyDefaults, Reranker, RerankQuery
from services.exposure.stats import StatsUnavailable

Request = exposure_service_pb2.RerankRequest
Candidate = common_pb2.Candidate
Spec = common_pb2.PolicySpec


class FakeStats:
    """Counters from a dict; records what was asked; can play a dead profiles."""

    def __init__(self, counts: dict[str, ItemCounts] | None = None, down: bool = False) -> None:
        self.counts = counts or {}
        self.down = down
        self.calls: list[list[str]] = []

    async def item_stats(self, ids: Sequence[str], timeout: float) -> dict[str, ItemCounts]:
        self.calls.append(list(ids))
        if self.down:
            raise StatsUnavailable("profiles is down")
        return {i: self.counts[i] for i in ids if i in self.counts}


def pool() -> list[Candidate]:
    return [
        Candidate(item_id="h1", score=0.9, categories=["a"]),
        Candidate(item_id="h2", score=0.8, categories=["a"]),
        Candidate(item_id="h3", score=0.7, categories=["b"]),
        Candidate(item_id="t1", score=0.3, is_tail=True, categories=["b"]),
        Candidate(item_id="c1", score=0.1, is_tail=True, is_cold=True, categories=["c"]),
    ]


async def serve(definition_settings: ExposureSettings, stats: FakeStats) -> RunningService:
    return await start_service(build_with(definition_settings, stats), ServerSettings(port=0))


@pytest.fixture
async def exposure() -> AsyncIterator[
    tuple[exposure_service_pb2_grpc.ExposureServiceStub, FakeStats]
]:
    stats = FakeStats({"h1": ItemCounts(500, 5)})
    running = await serve(ExposureSettings(), stats)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield exposure_service_pb2_grpc.ExposureServiceStub(channel), stats
    finally:
        await channel.close()
        await running.stop(0)


async def test_rerank_round_trip(exposure) -> None:
    stub, stats = exposure
    answer = await stub.Rerank(
        Request(
            request_id="r1",
            user_id="u1",
            candidates=pool(),
            k=4,
            policy=Spec(tail_quota=common_pb2.TailQuotaPolicy(min_tail_share=0.5)),
        ),
        timeout=5,
    )
    assert answer.policy_name == "tail_quota"
    assert answer.policy_version == POLICY_VERSION
    got = [(i.item_id, i.position, i.reason, i.is_tail, i.is_cold) for i in answer.items]
    assert got == [
        ("h1", 0, common_pb2.REASON_RELEVANCE, False, False),
        ("t1", 1, common_pb2.REASON_TAIL_BOOST, True, False),
        ("h2", 2, common_pb2.REASON_RELEVANCE, False, False),
        ("c1", 3, common_pb2.REASON_TAIL_BOOST, True, True),
    ]
    assert [i.score for i in answer.items] == pytest.approx([0.9, 0.3, 0.8, 0.1])
    assert stats.calls == []  # tail_quota without exploration reads no counters


def large_pool(heads: int = 12, tails: int = 12) -> list[Candidate]:
    """Head items first (best scores), then tail items, the last third of those cold."""
    n = heads + tails
    return [
        Candidate(
            item_id=f"h{i}" if i < heads else f"t{i}",
            score=float(n - i),
            is_tail=i >= heads,
            is_cold=i >= heads + (2 * tails) // 3,
            categories=["a" if i % 2 else "b"],
        )
        for i in range(n)
    ]


async def test_unset_policy_serves_the_default_with_an_explore_slot(exposure) -> None:
    stub, stats = exposure
    # The default slot (position 9) does not fall inside a list of 5: no exploration there.
    short = await stub.Rerank(Request(request_id="r2", candidates=large_pool(), k=5), timeout=5)
    assert short.policy_name == "tail_quota"
    assert len(short.items) == 5
    assert common_pb2.REASON_EXPLORE not in [i.reason for i in short.items]
    assert stats.calls == []  # no exploration: tail_quota reads no counters
    # A top 10: one slot, at position 9 (the evaluated default).
    request = Request(request_id="r2", candidates=large_pool(), k=10)
    answer = await stub.Rerank(request, timeout=5)
    assert answer.policy_name == "tail_quota"
    reasons = [i.reason for i in answer.items]
    assert [p for p, r in enumerate(reasons) if r == common_pb2.REASON_EXPLORE] == [9]
    assert answer.items[9].is_tail
    assert common_pb2.REASON_UNSPECIFIED not in reasons
    # explore reads only the cold/tail counters
    assert stats.calls == [[c.item_id for c in large_pool() if c.is_tail]]
    again = await stub.Rerank(request, timeout=5)
    assert again == answer  # a retry (same request id, no seed) gets the same list


@pytest.mark.parametrize(("k", "explored"), [(1, []), (3, []), (9, []), (10, [9]), (20, [9])])
async def test_default_exploration_only_where_its_slot_falls_inside_the_list(
    exposure, k: int, explored: list[int]
) -> None:
    stub, _ = exposure
    answer = await stub.Rerank(Request(request_id="r-k", candidates=large_pool(), k=k), timeout=5)
    assert answer.policy_name == "tail_quota" and len(answer.items) == k
    got = [p for p, item in enumerate(answer.items) if item.reason == common_pb2.REASON_EXPLORE]
    assert got == explored


@pytest.mark.parametrize(
    ("k", "candidates", "explored"),
    [(9, 24, []), (10, 24, [9]), (11, 24, [9, 10]), (20, 24, [9, 14]), (10, 9, []), (12, 10, [9])],
)
async def test_default_slots_are_those_inside_the_list_of_its_length(
    k: int, candidates: int, explored: list[int]
) -> None:
    # min(slots, max(0, n - first_position)), n = the list's length (k, or the smaller pool).
    reranker = Reranker(FakeStats(), PolicyDefaults(policy="relevance", explore_slots=2))
    pool = [
        _domain(c) for c in large_pool(heads=candidates // 2, tails=candidates - candidates // 2)
    ]
    outcome = await reranker.rerank(RerankQuery(request_id="r", candidates=pool, k=k))
    assert len(outcome.items) == min(k, candidates)
    got = [p for p, item in enumerate(outcome.items) if item.reason is Reason.EXPLORE]
    assert got == explored


@pytest.mark.parametrize(("k", "explored"), [(1, [0]), (3, [2])])
async def test_explore_asked_for_explicitly_is_served_in_short_lists_too(
    exposure, k: int, explored: list[int]
) -> None:
    stub, _ = exposure
    spec = Spec(explore=common_pb2.ExploreSlots(slots=1))  # first_position: the configured 9
    answer = await stub.Rerank(
        Request(request_id="r-x", candidates=large_pool(), k=k, policy=spec), timeout=5
    )
    got = [p for p, item in enumerate(answer.items) if item.reason == common_pb2.REASON_EXPLORE]
    assert got == explored  # capped at k, moved forward to fit, as before


async def test_explore_and_seed_without_a_policy_keep_the_default_policy(exposure) -> None:
    stub, _ = exposure
    spec = Spec(explore=common_pb2.ExploreSlots(slots=2, first_position=0), seed=42)
    answer = await stub.Rerank(
        Request(request_id="r3", candidates=pool(), k=3, policy=spec), timeout=5
    )
    assert answer.policy_name == "tail_quota"
    assert [i.reason for i in answer.items[:2]] == [common_pb2.REASON_EXPLORE] * 2


async def test_fair_exposure_reads_counters_and_drops_the_over_exposed_item(exposure) -> None:
    stub, stats = exposure
    spec = Spec(fair_exposure=common_pb2.FairExposurePolicy(weight=0.2))
    answer = await stub.Rerank(
        Request(request_id="r4", candidates=pool(), k=3, policy=spec), timeout=5
    )
    assert [i.item_id for i in answer.items] == ["h2", "h1", "h3"]
    assert answer.items[0].reason == common_pb2.REASON_TAIL_BOOST
    assert stats.calls == [["h1", "h2", "h3", "t1", "c1"]]


async def test_counters_down_degrade_to_zero_counts() -> None:
    stats = FakeStats({"h1": ItemCounts(500, 5)}, down=True)
    running = await serve(ExposureSettings(), stats)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = exposure_service_pb2_grpc.ExposureServiceStub(channel)
            spec = Spec(fair_exposure=common_pb2.FairExposurePolicy(weight=0.2))
            answer = await stub.Rerank(
                Request(request_id="r5", candidates=pool(), k=3, policy=spec), timeout=5
            )
    finally:
        await running.stop(0)
    assert stats.calls  # it tried
    assert [i.item_id for i in answer.items] == ["h1", "h2", "h3"]  # as if never shown


async def test_list_policies(exposure) -> None:
    stub, _ = exposure
    answer = await stub.ListPolicies(exposure_service_pb2.ListPoliciesRequest(), timeout=5)
    assert answer.default_policy == "tail_quota"
    assert answer.policy_version == POLICY_VERSION
    policies = {p.name: p for p in answer.policies}
    assert set(policies) == {
        "relevance",
        "tail_xquad",
        "calibrated",
        "mmr",
        "tail_quota",
        "fair_exposure",
        "explore",
    }
    assert dict(policies["tail_xquad"].defaults) == {"lambda": "0.5", "personalized": "true"}
    assert dict(policies["tail_quota"].defaults) == {"min_tail_share": "0.1"}
    assert dict(policies["explore"].defaults) == {
        "slots": "1",
        "first_position": "9",
        "prior_strength": "10.0",
    }


async def test_configured_defaults_are_served_and_listed() -> None:
    settings = ExposureSettings(
        default_policy="relevance", default_min_tail_share=0.6, default_explore_slots=0
    )
    running = await serve(settings, FakeStats())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = exposure_service_pb2_grpc.ExposureServiceStub(channel)
            listed = await stub.ListPolicies(exposure_service_pb2.ListPoliciesRequest(), timeout=5)
            plain = await stub.Rerank(Request(request_id="r", candidates=pool(), k=5), timeout=5)
            quota = await stub.Rerank(
                Request(
                    request_id="r",
                    candidates=pool(),
                    k=5,
                    policy=Spec(tail_quota=common_pb2.TailQuotaPolicy()),
                ),
                timeout=5,
            )
    finally:
        await running.stop(0)
    assert listed.default_policy == "relevance"
    tail_quota = next(p for p in listed.policies if p.name == "tail_quota")
    assert dict(tail_quota.defaults) == {"min_tail_share": "0.6"}
    assert plain.policy_name == "relevance"
    assert [i.item_id for i in plain.items] == ["h1", "h2", "h3", "t1", "c1"]
    # min_tail_share 0.6 (the configured default): 1 tail item in 2, 3 in 5.
    assert [i.item_id for i in quota.items] == ["h1", "t1", "h2", "c1", "h3"]


async def test_explore_without_first_position_uses_the_configured_one() -> None:
    settings = ExposureSettings(
        default_policy="relevance", default_explore_slots=0, default_explore_first_position=3
    )
    running = await serve(settings, FakeStats())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = exposure_service_pb2_grpc.ExposureServiceStub(channel)
            spec = Spec(
                relevance=common_pb2.RelevancePolicy(), explore=common_pb2.ExploreSlots(slots=1)
            )
            answer = await stub.Rerank(
                Request(request_id="r", candidates=pool(), k=5, policy=spec), timeout=5
            )
    finally:
        await running.stop(0)
    reasons = [item.reason for item in answer.items]
    assert reasons.index(common_pb2.REASON_EXPLORE) == 3


async def test_explore_without_prior_strength_uses_the_configured_one() -> None:
    settings = ExposureSettings(
        default_policy="relevance", default_explore_slots=0, default_explore_prior_strength=1000.0
    )
    running = await serve(settings, FakeStats())

    async def explored(
        stub: exposure_service_pb2_grpc.ExposureServiceAsyncStub, **prior: float
    ) -> set[str]:
        spec = Spec(
            relevance=common_pb2.RelevancePolicy(),
            explore=common_pb2.ExploreSlots(slots=1, first_position=0, **prior),
        )
        # Two warm tail items (the prior ranks cold items among cold ones only).
        candidates = [*pool()[:4], Candidate(item_id="t2", score=0.2, is_tail=True)]
        picked = set()
        for n in range(20):
            answer = await stub.Rerank(
                Request(request_id=f"r{n}", candidates=candidates, k=5, policy=spec), timeout=5
            )
            picked |= {i.item_id for i in answer.items if i.reason == common_pb2.REASON_EXPLORE}
        return picked

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = exposure_service_pb2_grpc.ExposureServiceStub(channel)
            configured = await explored(stub)
            flat = await explored(stub, prior_strength=0.0)
    finally:
        await running.stop(0)
    # The configured prior: the better-scored tail item (t1 0.3 over t2 0.2) every time; the
    # request's own flat prior: both, by the request's draw.
    assert configured == {"t1"}
    assert flat == {"t1", "t2"}


def test_bad_settings_fail_at_start_up() -> None:
    with pytest.raises(SettingsError, match="unknown policy"):
        load_settings(ExposureSettings, "X_", {"X_DEFAULT_POLICY": "nope"})
    with pytest.raises(SettingsError, match="min_tail_share"):
        load_settings(ExposureSettings, "X_", {"X_DEFAULT_MIN_TAIL_SHARE": "1.5"})
    loaded = load_settings(ExposureSettings, "X_", {"X_DEFAULT_POLICY": "mmr"})
    assert loaded.default_policy == "mmr"


# Bad requests -----------------------------------------------------------------------------------


def _policy_spec_bytes(raw_spec: bytes) -> bytes:
    """A RerankRequest whose PolicySpec (field 5) is given as raw bytes (a newer contract)."""
    base = Request(request_id="r", candidates=pool(), k=3).SerializeToString()
    return base + b"\x2a" + bytes([len(raw_spec)]) + raw_spec


async def _raw_rerank(stub_channel: grpc.aio.Channel, payload: bytes) -> None:
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, exposure_service_pb2.RerankResponse]
    call = stub_channel.unary_unary(
        "/longtail.exposure.v1.ExposureService/Rerank",
        request_serializer=None,
        response_deserializer=exposure_service_pb2.RerankResponse.FromString,
    )
    await call(payload, timeout=5)


@pytest.mark.parametrize(
    ("request_", "reason", "param"),
    [
        (Request(request_id="r", candidates=pool(), k=0), "K_OUT_OF_RANGE", None),
        (Request(request_id="r", candidates=pool(), k=101), "K_OUT_OF_RANGE", None),
        (
            Request(
                request_id="r",
                candidates=[*pool(), Candidate(item_id="h1", score=0.05)],
                k=3,
            ),
            "DUPLICATE_CANDIDATE",
            None,
        ),
        (
            Request(
                request_id="r",
                candidates=pool(),
                k=3,
                policy=Spec(
                    tail_xquad=json_format.ParseDict({"lambda": 1.5}, common_pb2.TailXquadPolicy())
                ),
            ),
            "PARAMETER_OUT_OF_RANGE",
            "lambda",
        ),
        (
            Request(
                request_id="r",
                candidates=pool(),
                k=3,
                policy=Spec(fair_exposure=common_pb2.FairExposurePolicy(weight=-1.0)),
            ),
            "PARAMETER_OUT_OF_RANGE",
            "weight",
        ),
        (
            Request(
                request_id="r",
                candidates=pool(),
                k=3,
                policy=Spec(
                    relevance=common_pb2.RelevancePolicy(), explore=common_pb2.ExploreSlots(slots=4)
                ),
            ),
            "EXPLORE_SLOTS_OUT_OF_RANGE",
            None,
        ),
        (
            Request(
                request_id="r",
                candidates=pool(),
                k=3,
                policy=Spec(
                    relevance=common_pb2.RelevancePolicy(),
                    explore=common_pb2.ExploreSlots(slots=1, prior_strength=float("nan")),
                ),
            ),
            "PARAMETER_OUT_OF_RANGE",
            "prior_strength",
        ),
        (
            Request(request_id="r", candidates=pool(), k=3, tail_propensity=2.0),
            "PARAMETER_OUT_OF_RANGE",
            "tail_propensity",
        ),
    ],
)
async def test_bad_requests_get_invalid_argument_with_a_reason(
    exposure, request_: exposure_service_pb2.RerankRequest, reason: str, param: str | None
) -> None:
    stub, _ = exposure
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(request_, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == reason
    if param is not None:
        assert info.metadata["param"] == param


@pytest.mark.parametrize(
    ("raw_spec", "reason"),
    [
        # PolicySpec field 7: a policy a newer contract added.
        (b"\x3a\x00", "UNKNOWN_POLICY"),
        # tail_xquad (field 2) carrying its field 9: a parameter a newer contract added.
        (b"\x12\x02\x48\x01", "UNKNOWN_PARAMETER"),
    ],
)
async def test_policies_and_parameters_unknown_to_this_contract_are_rejected(
    raw_spec: bytes, reason: str
) -> None:
    running = await serve(ExposureSettings(), FakeStats())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _raw_rerank(channel, _policy_spec_bytes(raw_spec))
    finally:
        await running.stop(0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == reason


# The real counters source over profiles ---------------------------------------------------------


class StatsOnlyProfiles(profiles_service_pb2_grpc.ProfilesServiceServicer):
    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    async def GetItemStats(
        self, request: profiles_service_pb2.GetItemStatsRequest, context: Context
    ) -> profiles_service_pb2.GetItemStatsResponse:
        self.asked.append(list(request.item_ids))
        known = {"h1": (900, 10), "c1": (0, 0)}
        return profiles_service_pb2.GetItemStatsResponse(
            stats=[
                common_pb2.ItemStats(item_id=i, impression_count=n, feedback_count=f)
                for i in request.item_ids
                if i in known
                for n, f in [known[i]]
            ]
        )


async def _fair_exposure_through(settings: ExposureSettings) -> list[str]:
    definition: ServiceDefinition = await build(settings)
    running = await start_service(definition, ServerSettings(port=0))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = exposure_service_pb2_grpc.ExposureServiceStub(channel)
            spec = Spec(fair_exposure=common_pb2.FairExposurePolicy(weight=0.2))
            answer = await stub.Rerank(
                Request(request_id="r", candidates=pool(), k=3, policy=spec), timeout=5
            )
    finally:
        await running.stop(0)  # closes the profiles channel
    return [i.item_id for i in answer.items]


async def test_profiles_counters_feed_fair_exposure() -> None:
    profiles = StatsOnlyProfiles()  # type: ignore[abstract]  # serves GetItemStats only
    name = profiles_service_pb2.DESCRIPTOR.services_by_name["ProfilesService"].full_name

    running = await start_service(
        ServiceDefinition(
            name="profiles",
            servicers=[
                (profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server, profiles, name)
            ],
        ),
        ServerSettings(port=0),
    )
    try:
        got = await _fair_exposure_through(
            ExposureSettings(profiles_target=f"127.0.0.1:{running.port}")
        )
    finally:
        await running.stop(0)
    assert got == ["h2", "h1", "h3"]
    assert profiles.asked == [["h1", "h2", "h3", "t1", "c1"]]


async def test_profiles_down_degrades_instead_of_failing() -> None:
    # Nothing listens on a port we just released: every GetItemStats fails.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    got = await _fair_exposure_through(
        ExposureSettings(profiles_target=f"127.0.0.1:{dead_port}", profiles_timeout_seconds=0.5)
    )
    assert got == ["h1", "h2", "h3"]


class _NoTimeLeft:
    def time_remaining(self) -> float:
        return 0.0


async def test_no_time_left_for_counters_degrades_without_calling_profiles() -> None:
    stats = FakeStats({"h1": ItemCounts(500, 5)})
    reranker = Reranker(stats, PolicyDefaults())
    query = RerankQuery(
        request_id="r",
        candidates=[_domain(c) for c in pool()],
        k=3,
        policy="fair_exposure",
        params={"weight": 0.2},
    )
    outcome = await reranker.rerank(query, _NoTimeLeft())
    assert stats.calls == []
    assert [p.item_id for p in outcome.items] == ["h1", "h2", "h3"]
    assert outcome.policy_name == "fair_exposure"
    # With time left, the same query reads the counters and the over-exposed item drops.
    outcome = await reranker.rerank(query)
    assert [p.item_id for p in outcome.items] == ["h2", "h1", "h3"]


def _domain(candidate: common_pb2.Candidate) -> CandidateIn:
    return CandidateIn(
        candidate.item_id,
        candidate.score,
        is_tail=candidate.is_tail,
        is_cold=candidate.is_cold,
        categories=tuple(candidate.categories),
    )
