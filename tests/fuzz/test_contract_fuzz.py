"""Contract fuzz over every RPC of every service: never INTERNAL, UNKNOWN or a crash.

One suite per store, in-process on port 0: profiles on SQLite (a tmp file) and on PostgreSQL
(the session's database), and in front of it ranking (its real profiles and embeddings
adapters), exposure (counters from profiles) and the gateway (profiles, ranking, exposure). The
embeddings service here stands in front of a port where nothing listens (Triton absent): health
NOT_SERVING, and every call that needs Triton must be UNAVAILABLE, never INTERNAL; the same
service in front of the real Triton is fuzzed in tests/embeddings/test_contract_fuzz_triton.py.
The store holds a small catalogue (vectors, categories), users, interactions, a trained model and
one served list, so that valid-looking requests reach the code behind validation.

For each RPC, hypothesis sends ``EXAMPLES`` payloads (``tests/fuzz/contract.py`` says what they
are: perturbed valid requests, random messages from the descriptor, raw and mutated bytes) and
asserts every answer is in ``ACCEPTABLE`` (never INTERNAL or UNKNOWN) and, when it is our
refusal, carries an ErrorInfo reason; afterwards every service still reports the health it had
(SERVING; embeddings without Triton: NOT_SERVING) and answers a valid call as before.
The run is deterministic (derandomize, no example database); for each profiles RPC the second
store is sent the first store's payloads in the same order and must answer them alike (same code
and reason).
``KNOWN_DEFECTS`` in contract.py lists inputs kept out of the domain because they still fail in
another service's code.

Sized for ``make test`` (50 examples per RPC and store, about 25 s on an idle 2-core machine
with the Triton part); a longer run (about 10 minutes per 1,000):

    LONGTAIL_FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/fuzz
    LONGTAIL_FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/embeddings/test_contract_fuzz_triton.py
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import message, timestamp_pb2
from grpc_health.v1 import health_pb2
from hypothesis import given

from longtail.common.v1 import common_pb2 as cpb
from longtail.embeddings.v1 import embeddings_service_pb2 as epb
from longtail.exposure.v1 import exposure_service_pb2 as xpb
from longtail.gateway.v1 import gateway_service_pb2 as gpb
from longtail.profiles.v1 import profiles_service_pb2 as ppb
from longtail.ranking.v1 import ranking_service_pb2 as rpb
from services.common.server import RunningService, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.embeddings.app import build as build_embeddings
from services.embeddings.config import EmbeddingsSettings
from services.exposure.app import ExposureSettings
from services.exposure.app import build as build_exposure
from services.gateway.app import build as build_gateway
from services.gateway.config import GatewaySettings
from services.profiles.app import ProfilesSettings
from services.profiles.app import build as build_profiles
from services.profiles.store import migrate
from services.ranking.app import RankingSettings
from services.ranking.app import build as build_ranking
from tests.fuzz.contract import (
    LoopRunner,
    Payload,
    call,
    check_answer,
    fuzz_settings,
    health_status,
    payloads,
    wait_serving,
)

PG_TABLES = ("impressions", "interactions", "item_counters", "items", "users")
HOP_CEILING = 60.0
MODEL = ("fuzz-encoder", "1")
DIMENSION = 8
ITEMS = [f"item-{n:03d}" for n in range(24)]
USERS = [f"user-{n}" for n in range(6)]
CATEGORIES = ["cat-a", "cat-b", "cat-c"]
SEED_REQUEST = "seed-request"
# Strings the generators mix in so that lookups hit stored rows.
KNOWN = (*ITEMS[:4], *USERS[:2], *CATEGORIES, *MODEL, SEED_REQUEST, "relevance", "tail_quota")
SERVING = health_pb2.HealthCheckResponse.SERVING


def _timestamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def _vector(n: int) -> cpb.ItemVector:
    values = [
        float((n * 7 + d * 3) % 11) - 5.0 + (0.5 if d == n % DIMENSION else 0.0)
        for d in range(DIMENSION)
    ]
    return cpb.ItemVector(values=values, model_name=MODEL[0], model_version=MODEL[1])


def seed_requests() -> list[tuple[str, message.Message]]:
    items = [
        cpb.Item(
            item_id=item,
            title=f"Title {n}",
            categories=[CATEGORIES[n % 3]],
            tags=["fuzz"],
            vector=_vector(n),
            created_at=_timestamp(1_700_000_000 + n),
        )
        for n, item in enumerate(ITEMS)
    ]
    users = [cpb.User(user_id=user, interests="space and rockets") for user in USERS]
    interactions = [
        cpb.Interaction(
            user_id=user,
            item_id=ITEMS[(u * 5 + k * 3) % 12],  # the first 12 items: the rest stay cold
            kind=cpb.INTERACTION_KIND_CLICK,
            value=1.0,
            occurred_at=_timestamp(1_700_000_100 + u * 10 + k),
        )
        for u, user in enumerate(USERS)
        for k in range(4)
    ]
    return [
        ("UpsertItems", ppb.UpsertItemsRequest(items=items)),
        ("UpsertUsers", ppb.UpsertUsersRequest(users=users)),
        ("RecordInteractions", ppb.RecordInteractionsRequest(interactions=interactions)),
    ]


# A request each RPC answers OK on the seeded suite: the base the fuzz perturbs, and the valid
# call made after fuzzing (expected code alongside).
P = "/longtail.profiles.v1.ProfilesService/"
R = "/longtail.ranking.v1.RankingService/"
X = "/longtail.exposure.v1.ExposureService/"
G = "/longtail.gateway.v1.GatewayService/"
E = "/longtail.embeddings.v1.EmbeddingsService/"
CANDIDATES = [
    cpb.Candidate(item_id=ITEMS[0], score=0.9, categories=[CATEGORIES[0]], popularity=5),
    cpb.Candidate(item_id=ITEMS[1], score=0.5, categories=[CATEGORIES[1]], is_tail=True),
    cpb.Candidate(item_id=ITEMS[20], score=0.1, is_tail=True, is_cold=True),
]


@dataclasses.dataclass(frozen=True)
class Rpc:
    service: str
    method: str
    base: message.Message
    valid_code: grpc.StatusCode = grpc.StatusCode.OK

    @property
    def id(self) -> str:
        return f"{self.service}.{self.method.rsplit('/', 1)[1]}"


# From before the fuzzed impressions to now (the seeded list is served at the time of the run).
DASHBOARD_WINDOW = ppb.ServedWindow(start_time=_timestamp(1_699_990_000))

RPCS = [
    Rpc(
        "profiles",
        P + "UpsertItems",
        ppb.UpsertItemsRequest(
            items=[cpb.Item(item_id="fuzz-item", title="t", categories=["cat-a"])]
        ),
    ),
    Rpc("profiles", P + "GetItems", ppb.GetItemsRequest(item_ids=ITEMS[:2], include_vectors=True)),
    Rpc("profiles", P + "ListItems", ppb.ListItemsRequest(page_size=5, include_vectors=True)),
    Rpc(
        "profiles",
        P + "UpdateItemVectors",
        ppb.UpdateItemVectorsRequest(
            updates=[ppb.ItemVectorUpdate(item_id=ITEMS[23], vector=_vector(23))]
        ),
    ),
    Rpc("profiles", P + "UpsertUsers", ppb.UpsertUsersRequest(users=[cpb.User(user_id="fuzz-u")])),
    Rpc("profiles", P + "GetUserProfile", ppb.GetUserProfileRequest(user_id=USERS[0])),
    Rpc(
        "profiles",
        P + "RecordInteractions",
        ppb.RecordInteractionsRequest(
            interactions=[
                cpb.Interaction(
                    user_id=USERS[1],
                    item_id=ITEMS[2],
                    kind=cpb.INTERACTION_KIND_VIEW,
                    occurred_at=_timestamp(1_700_001_000),
                )
            ]
        ),
    ),
    Rpc("profiles", P + "ListInteractions", ppb.ListInteractionsRequest(page_size=5)),
    Rpc(
        "profiles",
        P + "RecordImpressions",
        ppb.RecordImpressionsRequest(
            impressions=[
                cpb.Impression(
                    request_id="fuzz-impressions",
                    position=0,
                    user_id=USERS[2],
                    item_id=ITEMS[3],
                    policy_name="relevance",
                    policy_version="1",
                    reason=cpb.REASON_RELEVANCE,
                    score=0.5,
                    served_at=_timestamp(1_700_002_000),
                )
            ]
        ),
    ),
    Rpc("profiles", P + "ListImpressions", ppb.ListImpressionsRequest(request_id=SEED_REQUEST)),
    Rpc("profiles", P + "GetItemStats", ppb.GetItemStatsRequest(item_ids=ITEMS[:3])),
    Rpc("profiles", P + "ListItemStats", ppb.ListItemStatsRequest(page_size=5)),
    Rpc("profiles", P + "GetCatalogStats", ppb.GetCatalogStatsRequest()),
    # The dashboard's aggregates (services/profiles/dashboard_queries.py).
    Rpc(
        "profiles",
        P + "GetExposureSummary",
        ppb.GetExposureSummaryRequest(window=DASHBOARD_WINDOW, bucket_count=4),
    ),
    Rpc(
        "profiles", P + "ListPolicyOutcomes", ppb.ListPolicyOutcomesRequest(window=DASHBOARD_WINDOW)
    ),
    Rpc("profiles", P + "ListExposureGaps", ppb.ListExposureGapsRequest(window=DASHBOARD_WINDOW)),
    Rpc(
        "profiles",
        P + "ListServedRequests",
        ppb.ListServedRequestsRequest(window=DASHBOARD_WINDOW, page_size=5),
    ),
    Rpc("profiles", P + "GetServedRequest", ppb.GetServedRequestRequest(request_id=SEED_REQUEST)),
    # The model registry (services/profiles/registry.py); the rollback goes back to the version
    # the PublishModel above published.
    Rpc(
        "profiles",
        P + "PublishModel",
        ppb.PublishModelRequest(
            model_kind="fuzz_kind", version="fuzz-v1", published_by="fuzz", reason="base"
        ),
    ),
    Rpc("profiles", P + "GetActiveModel", ppb.GetActiveModelRequest(model_kind="fuzz_kind")),
    Rpc("profiles", P + "ListModelPublications", ppb.ListModelPublicationsRequest(page_size=5)),
    Rpc(
        "profiles",
        P + "RollbackModel",
        ppb.RollbackModelRequest(model_kind="fuzz_kind", to_version="fuzz-v1"),
    ),
    Rpc(
        "ranking",
        R + "RankCandidates",
        rpb.RankCandidatesRequest(
            user_id=USERS[0],
            history=[cpb.HistoryEntry(item_id=ITEMS[0], kind=cpb.INTERACTION_KIND_CLICK, value=1)],
            candidate_count=10,
        ),
    ),
    Rpc("ranking", R + "TrainModel", rpb.TrainModelRequest(factors=4, iterations=2)),
    Rpc("ranking", R + "ReloadModels", rpb.ReloadModelsRequest()),
    Rpc("ranking", R + "GetRankingStatus", rpb.GetRankingStatusRequest()),
    Rpc(
        "exposure",
        X + "Rerank",
        xpb.RerankRequest(request_id="fuzz-rerank", user_id=USERS[0], candidates=CANDIDATES, k=2),
    ),
    Rpc("exposure", X + "ListPolicies", xpb.ListPoliciesRequest()),
    Rpc("gateway", G + "Recommend", gpb.RecommendRequest(user_id=USERS[0], k=5)),
    Rpc("gateway", G + "Feedback", gpb.FeedbackRequest()),  # Suite.base fills it in
    Rpc(
        "gateway",
        G + "ExplainRecommendation",
        gpb.ExplainRecommendationRequest(request_id=SEED_REQUEST),
    ),
    # Without Triton: validation first, then UNAVAILABLE.
    Rpc(
        "embeddings",
        E + "EmbedTexts",
        epb.EmbedTextsRequest(texts=["space and rockets"]),
        grpc.StatusCode.UNAVAILABLE,
    ),
    Rpc("embeddings", E + "GetModelInfo", epb.GetModelInfoRequest(), grpc.StatusCode.UNAVAILABLE),
]


@dataclasses.dataclass
class Suite:
    store: str
    runner: LoopRunner
    servers: dict[str, RunningService] = dataclasses.field(default_factory=dict)
    channels: dict[str, grpc.aio.Channel] = dataclasses.field(default_factory=dict)
    health: dict[str, int] = dataclasses.field(default_factory=dict)
    served_item: str = ""

    def base(self, rpc: Rpc) -> message.Message:
        """The RPC's valid request (Feedback names an item the seeded list really served)."""
        if rpc.method == G + "Feedback":
            return gpb.FeedbackRequest(
                request_id=SEED_REQUEST, item_id=self.served_item, kind=cpb.INTERACTION_KIND_CLICK
            )
        return rpc.base

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.servers[name].port}"

    async def serve(self, name: str, definition: ServiceDefinition) -> None:
        running = await start_service(definition, ServerSettings(port=0, grace_seconds=0.0))
        self.servers[name] = running
        self.channels[name] = grpc.aio.insecure_channel(self.target(name))

    async def stop(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        for running in reversed(list(self.servers.values())):
            await running.stop(0)


async def _start(suite: Suite, url: str, artifacts: Path, dead_triton: str) -> None:
    await suite.serve(
        "profiles",
        await build_profiles(
            ProfilesSettings(database_url=url, migrate_on_start=False, head_min_refresh_seconds=0.0)
        ),
    )
    await wait_serving(suite.channels["profiles"])
    for method, request in seed_requests():
        answer = await call(suite.channels["profiles"], P + method, request.SerializeToString())
        assert answer.code == grpc.StatusCode.OK, (method, answer)
    await suite.serve(
        "embeddings",
        await build_embeddings(
            EmbeddingsSettings(triton_url=dead_triton, cache_size=0, ready_timeout_seconds=5.0)
        ),
    )
    await suite.serve(
        "ranking",
        await build_ranking(
            RankingSettings(
                profiles_target=suite.target("profiles"),
                embeddings_target=suite.target("embeddings"),
                artifact_dir=artifacts,
                refresh_seconds=0,
                profiles_timeout_seconds=HOP_CEILING,
                embeddings_timeout_seconds=HOP_CEILING,
                als_threads=1,
            )
        ),
    )
    await wait_serving(suite.channels["ranking"])
    trained = await call(
        suite.channels["ranking"],
        R + "TrainModel",
        rpb.TrainModelRequest(factors=4, iterations=2).SerializeToString(),
    )
    assert trained.code == grpc.StatusCode.OK, trained
    await suite.serve(
        "exposure",
        await build_exposure(
            ExposureSettings(
                profiles_target=suite.target("profiles"), profiles_timeout_seconds=HOP_CEILING
            )
        ),
    )
    await suite.serve(
        "gateway",
        await build_gateway(
            GatewaySettings(
                profiles_target=suite.target("profiles"),
                ranking_target=suite.target("ranking"),
                exposure_target=suite.target("exposure"),
                default_deadline_seconds=HOP_CEILING,
                ranking_timeout_seconds=HOP_CEILING,
                exposure_timeout_seconds=HOP_CEILING,
                profile_timeout_seconds=HOP_CEILING,
                write_timeout_seconds=HOP_CEILING,
                fallback_refresh_seconds=3600.0,
            )
        ),
    )
    served = await call(
        suite.channels["gateway"],
        G + "Recommend",
        gpb.RecommendRequest(user_id=USERS[0], k=5, request_id=SEED_REQUEST).SerializeToString(),
    )
    assert served.code == grpc.StatusCode.OK, served
    listed = gpb.RecommendResponse.FromString(served.body)
    assert len(listed.items) == 5 and not listed.fallback, listed
    suite.served_item = listed.items[0].item_id
    for name, channel in suite.channels.items():
        suite.health[name] = await health_status(channel)
    assert suite.health == {
        "profiles": SERVING,
        "embeddings": health_pb2.HealthCheckResponse.NOT_SERVING,
        "ranking": SERVING,
        "exposure": SERVING,
        "gateway": SERVING,
    }


def _empty_postgres(url: str) -> None:
    migrate(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f"TRUNCATE {', '.join(PG_TABLES)} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def suite(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Suite]:
    folder = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'profiles.db'}"
        migrate(url)
    else:
        url = str(request.getfixturevalue("postgres_url"))
        _empty_postgres(url)
    # Bound, never listening: connections are refused, and no other process can take the port.
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        dead_triton = f"127.0.0.1:{dead.getsockname()[1]}"
        runner = LoopRunner()
        suite = Suite(request.param, runner)
        try:
            runner.run(_start(suite, url, folder / "artifacts", dead_triton))
            yield suite
        finally:
            runner.run(suite.stop())
            runner.close()


# The valid call each service must still answer as before after any fuzz run.
SANITY = {
    "profiles": P + "GetUserProfile",
    "ranking": R + "RankCandidates",
    "exposure": X + "Rerank",
    "gateway": G + "Recommend",
    "embeddings": E + "GetModelInfo",
}


async def _still_well(suite: Suite) -> None:
    """Every service reports the health it had and answers a valid call as it did."""
    for name, channel in suite.channels.items():
        assert await health_status(channel) == suite.health[name], name
    for rpc in RPCS:
        if SANITY[rpc.service] == rpc.method:
            answer = await call(
                suite.channels[rpc.service], rpc.method, suite.base(rpc).SerializeToString()
            )
            assert answer.code == rpc.valid_code, (rpc.id, answer)


def test_every_valid_base_request_is_answered_as_expected(suite: Suite) -> None:
    """The requests the fuzz perturbs are answered as expected (else the fuzz proves little)."""

    async def check() -> None:
        for rpc in RPCS:
            answer = await call(
                suite.channels[rpc.service], rpc.method, suite.base(rpc).SerializeToString()
            )
            assert answer.code == rpc.valid_code, (rpc.id, answer)

    suite.runner.run(check())


# Per profiles RPC and store: what each payload got, in order. The second store of a profiles
# RPC is sent the first store's payloads, in the same order, so the answers must be the same:
# SQLite and PostgreSQL accept and refuse the same inputs, for the same reasons. (Replayed, not
# generated again: hypothesis mixes string constants of every loaded local module into its
# strings, so modules imported during the first store's run would change the second's payloads.)
Outcome = tuple[bytes, str, str | None]
OUTCOMES: dict[str, dict[str, list[Outcome]]] = {}


@pytest.mark.parametrize("rpc", RPCS, ids=[rpc.id for rpc in RPCS])
def test_every_rpc_refuses_bad_input_without_internal_errors(suite: Suite, rpc: Rpc) -> None:
    channel = suite.channels[rpc.service]
    base = suite.base(rpc)
    # What the other store of this RPC was sent, when it ran first.
    earlier = next(
        (sent for store, sent in OUTCOMES.get(rpc.id, {}).items() if store != suite.store), None
    )
    outcomes = OUTCOMES.setdefault(rpc.id, {})[suite.store] = []

    def send(data: bytes) -> None:
        answer = suite.runner.run(call(channel, rpc.method, data))
        outcomes.append((data, answer.code.name, answer.reason))
        check_answer(rpc.method, data, answer)

    if rpc.service == "profiles" and earlier is not None:
        for data, _, _ in earlier:
            send(data)
    else:

        @fuzz_settings()
        @given(payloads(rpc.method, base, KNOWN))
        def fuzz(payload: Payload) -> None:
            send(payload.data)

        fuzz()
    answer = suite.runner.run(call(channel, rpc.method, base.SerializeToString()))
    assert answer.code == rpc.valid_code, answer
    suite.runner.run(_still_well(suite))
    stores = OUTCOMES[rpc.id]
    if rpc.service == "profiles" and len(stores) == 2:  # the second store's run compares
        sqlite, postgres = stores["sqlite"], stores["postgres"]
        assert [data for data, _, _ in sqlite] == [data for data, _, _ in postgres]
        differ = [
            (on_sqlite[0][:200], on_sqlite[1:], on_postgres[1:])
            for on_sqlite, on_postgres in zip(sqlite, postgres, strict=True)
            if on_sqlite != on_postgres
        ]
        assert differ == [], f"SQLite and PostgreSQL answered differently: {differ[:5]}"
