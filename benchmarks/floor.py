"""The floor of a Recommend: the pipeline's domain code in this one process, without gRPC.

The gateway's pipeline (services/gateway/pipeline.py) runs the profile read, the exclusions,
ranking, the exposure policy and the impression write across four processes and four gRPC hops.
``Floor`` calls the same domain objects the services serve with (``Profiles``, ``RankingEngine``,
``Reranker``), built with the same settings as the suite's processes, against the same store (the
suite's SQLite file, or its PostgreSQL) and the same catalogue, collaborative model and artefacts,
with domain records where the servicers translate protobuf. What is left of a Recommend's CPU
beside this floor is what the hops, the translation and the servers cost.

One part stays a call: a new user's interests are embedded by the suite's embeddings service and
Triton, through gRPC as ranking does it; the CPU those two processes spend during the run is added
to the floor's (read from ``/proc``, as the benchmark reads the services'). The catalogue snapshot
is loaded once, through the suite's profiles and embeddings services as the ranking service loads
it (loading is not per request).

Per request, as the gateway does it (ranking's and exposure's failures are not caught: the floor
measures the served path, and a failure there is a defect of the run):
    profile read -> exclusions -> rank (100 candidates) -> rerank (k) -> impression write,
plus the writes and reads the gateway makes beside them: a new user's stated interests are
stored (``interests write``), the titles of the served items are looked up through an LRU
(``item info``), and the exposure counters that went stale are refreshed in a batch at most every
quarter second, as the exposure service does in the background (``counters refresh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import statistics
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from benchmarks.cpu import CpuSnapshot
from longtail.embeddings.v1 import embeddings_service_pb2, embeddings_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.artifacts import open_store
from services.common.channels import open_channel
from services.common.errors import FailedPrecondition, NotFound, Unavailable
from services.common.settings import ClientSettings, load_settings
from services.exposure.config import ExposureSettings
from services.exposure.policies import CandidateIn, ItemCounts
from services.exposure.reranker import Reranker, RerankQuery
from services.exposure.stats import (
    DEFAULT_CACHE_MAX_ITEMS,
    DEFAULT_CACHE_MAX_STALE_SECONDS,
    DEFAULT_REFRESH_DELAY_SECONDS,
    STATS_BATCH,
    CountsCache,
)
from services.gateway.config import GatewaySettings
from services.profiles.config import ProfilesSettings
from services.profiles.profiles import HeadCache, Profiles
from services.profiles.records import ImpressionRecord, UserProfile, UserRecord
from services.profiles.repository import Repository
from services.profiles.store import Database, create_store_engine
from services.ranking.catalog import (
    CatalogLoader,
    EmbeddingsTextEncoder,
    EncodedText,
    ProfilesCatalogSource,
    ProfilesInteractionSource,
    TextEncoder,
)
from services.ranking.collaborative import (
    KIND_CLICK,
    KIND_PURCHASE,
    KIND_RATING,
    KIND_VIEW,
    interaction_weight,
)
from services.ranking.config import RankingSettings
from services.ranking.engine import RankingEngine, RankRequest
from services.ranking.model_registry import ModelFollower, ProfilesModelRegistry
from services.ranking.scorer import HistoryItem
from services.suite.local import TRITON, LocalSuite

# The stages of ``FloorResult.stages``, in pipeline order. "other" is the rest of this process's
# CPU (exclusions, records, the event loop); "embeddings + triton" is theirs, for new users.
STAGES = (
    "profile read",
    "interests write",
    "rank",
    "rerank",
    "impression write",
    "item info",
    "counters refresh",
    "other",
    "embeddings + triton",
)
S = TypeVar("S")
# The processes whose CPU the floor counts besides its own (new users' interests).
EMBEDDING_PROCESSES = ("embeddings", TRITON)
# The profiles store's interaction kinds as ranking weighs them (the servicers' enum numbers).
KIND_NUMBERS = {
    "view": KIND_VIEW,
    "click": KIND_CLICK,
    "purchase": KIND_PURCHASE,
    "rating": KIND_RATING,
}


class RequestSource(Protocol):
    """Who asks next: ``(user_id, interests)`` (``benchmarks.recommend.Workload``)."""

    def next(self) -> tuple[str, str]: ...


def _service_settings(cls: type[S], service: str, suite: LocalSuite) -> S:
    """``service``'s settings as the suite starts it: its children see only the suite's extra
    environment under their prefix (``LocalSuite`` drops the parent's)."""
    return load_settings(
        cls, f"LONGTAIL_{service.upper()}_", dict(suite.config.extra_env.get(service, {}))
    )


class InProcessExposureStats:
    """The exposure service's counters source with ``Profiles.get_item_stats`` for the gRPC call:
    the same cache (``CountsCache``, the same TTL), ids never read fetched inline, stale ids
    collected and read in one batch by ``refresh_stale`` (the service's background refresh)."""

    def __init__(self, profiles: Profiles, ttl_seconds: float) -> None:
        self._profiles = profiles
        self._cache = CountsCache(
            ttl_seconds, DEFAULT_CACHE_MAX_STALE_SECONDS, DEFAULT_CACHE_MAX_ITEMS
        )
        self._stale: dict[str, None] = {}

    async def item_stats(self, ids: Sequence[str], timeout: float) -> dict[str, ItemCounts]:
        counts, missing, stale = self._cache.lookup(ids)
        self._stale.update(dict.fromkeys(stale))
        if missing:
            read_at = self._cache.now()
            fetched = await self._fetch(missing)
            self._cache.store(missing, fetched, read_at)
            counts.update(fetched)
        return counts

    async def refresh_stale(self) -> None:
        while self._stale:
            batch = list(self._stale)[:STATS_BATCH]
            for item_id in batch:
                del self._stale[item_id]
            read_at = self._cache.now()
            self._cache.store(batch, await self._fetch(batch), read_at)

    async def _fetch(self, ids: Sequence[str]) -> dict[str, ItemCounts]:
        counts: dict[str, ItemCounts] = {}
        for start in range(0, len(ids), STATS_BATCH):
            for stats in await self._profiles.get_item_stats(ids[start : start + STATS_BATCH]):
                counts[stats.item_id] = ItemCounts(stats.impression_count, stats.feedback_count)
        return counts


class _NoEncoder:
    """The encoder of a suite started without embeddings: every text fails to embed (ranking
    then serves the popularity-and-tail candidates, marked degraded)."""

    async def embed(self, text: str, deadline: object) -> EncodedText:
        raise Unavailable("EMBEDDINGS_NOT_STARTED", "the suite runs no embeddings service")


class _NoModelInfo:
    """``GetModelInfo`` of a suite without embeddings: no model (the store's vectors serve)."""

    async def GetModelInfo(
        self, request: embeddings_service_pb2.GetModelInfoRequest, timeout: float
    ) -> embeddings_service_pb2.GetModelInfoResponse:
        return embeddings_service_pb2.GetModelInfoResponse()


class StageClock:
    """This process's CPU seconds (``time.process_time``: every thread, so the store's and the
    scorer's worker threads too) spent inside each named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.process_time()
        try:
            yield
        finally:
            self.seconds[name] += time.process_time() - started

    def reset(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)


@dataclasses.dataclass(frozen=True)
class FloorResult:
    requests: int
    # Items served in all (k per request unless the pool ran short).
    items: int
    # Requests from new users with interests (they cost the embeddings and Triton CPU).
    cold_requests: int
    seconds: float
    # This process's CPU plus the embeddings' and Triton's during the run, per request.
    cpu_ms_per_request: float
    # CPU-ms per request of each of ``STAGES``; they add up to ``cpu_ms_per_request``.
    stages: dict[str, float]
    # Wall-clock milliseconds of each request (one at a time).
    latencies_ms: list[float]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


class Floor:
    """The Recommend pipeline's domain objects, built beside a running ``LocalSuite``."""

    def __init__(
        self,
        profiles: Profiles,
        database: Database,
        engine: RankingEngine,
        reranker: Reranker,
        stats: InProcessExposureStats,
        gateway: GatewaySettings,
        k: int,
        suite: LocalSuite | None = None,
        closers: Sequence[Any] = (),
        blas_limits: Any = None,
    ) -> None:
        self._profiles = profiles
        self._database = database
        self._engine = engine
        self._reranker = reranker
        self._stats = stats
        self._gateway = gateway
        self.k = k
        self._suite = suite
        self._closers = list(closers)
        self._blas_limits = blas_limits
        self._titles: OrderedDict[str, tuple[str, tuple[str, ...]]] = OrderedDict()
        # The gateway's profile cache: by user, (version, profile), re-read when profiles says
        # the version moved.
        self._kept: OrderedDict[str, tuple[str, UserProfile]] = OrderedDict()
        self._stale_refreshed_at = time.monotonic()
        self.clock = StageClock()

    @classmethod
    async def open(cls, suite: LocalSuite, k: int) -> Floor:
        """Builds the domain objects on the suite's store, settings and artefacts, and loads the
        catalogue snapshot and the collaborative model once (as ranking's ReloadModels does)."""
        import threadpoolctl  # type: ignore[import-untyped]

        # Ranking scores with one BLAS thread (services.ranking.app): so does the floor.
        blas_limits = threadpoolctl.threadpool_limits(1, user_api="blas")
        profiles_settings = _service_settings(ProfilesSettings, "profiles", suite)
        database = Database(create_store_engine(suite.database_url, profiles_settings.pool_size))
        profiles = Profiles(
            database,
            Repository(),
            HeadCache(
                profiles_settings.head_refresh_seconds, profiles_settings.head_min_refresh_seconds
            ),
        )
        ranking = dataclasses.replace(
            _service_settings(RankingSettings, "ranking", suite),
            artifact_dir=(suite.config.workdir / "artifacts").resolve(),
        )
        exposure = _service_settings(ExposureSettings, "exposure", suite)
        client = ClientSettings(
            target=suite.target("profiles"),
            tls_ca_file=suite.config.tls_ca_file,
            auth_token=suite.config.auth_token,
        )
        profiles_channel = open_channel(client)
        channels = [profiles_channel]
        profiles_stub = profiles_service_pb2_grpc.ProfilesServiceStub(profiles_channel)
        embeddings_stub: Any
        encoder: TextEncoder
        if "embeddings" in suite.services:
            embeddings_channel = open_channel(
                dataclasses.replace(client, target=suite.target("embeddings"))
            )
            channels.append(embeddings_channel)
            embeddings_stub = embeddings_service_pb2_grpc.EmbeddingsServiceStub(embeddings_channel)
            encoder = EmbeddingsTextEncoder(
                embeddings_stub, timeout=ranking.embeddings_timeout_seconds
            )
        else:
            embeddings_stub, encoder = _NoModelInfo(), _NoEncoder()
        engine = RankingEngine(
            CatalogLoader(
                ProfilesCatalogSource(
                    profiles_stub, embeddings_stub, timeout=ranking.profiles_timeout_seconds
                ),
                ranking.index_params(),
            ),
            ProfilesInteractionSource(profiles_stub, timeout=ranking.profiles_timeout_seconds),
            encoder,
            # The collaborative model: the registry's active bundle (kept by profiles), from the
            # suite's artefact store, as the ranking service follows it.
            ModelFollower(
                ProfilesModelRegistry(profiles_stub, timeout=ranking.profiles_timeout_seconds),
                open_store(ranking.store_settings()),
            ),
            ranking.scorer_config(),
            ranking.als_params(),
            ranking.index_params(),
            ranking.ranker_params(),
            train_in_process=ranking.train_in_process,
        )
        stats = InProcessExposureStats(profiles, exposure.stats_cache_seconds)
        reranker = Reranker(
            stats,
            exposure.policy_defaults(),
            exposure.profiles_timeout_seconds,
            stats_required=exposure.stats_required,
        )
        floor = cls(
            profiles,
            database,
            engine,
            reranker,
            stats,
            _service_settings(GatewaySettings, "gateway", suite),
            k,
            suite,
            channels,
            blas_limits,
        )
        try:
            await engine.reload()
        except BaseException:
            await floor.close()
            raise
        return floor

    async def close(self) -> None:
        for channel in self._closers:
            await channel.close()
        self._closers = []
        await asyncio.to_thread(self._database.dispose)
        if self._blas_limits is not None:
            self._blas_limits.restore_original_limits()
            self._blas_limits = None

    def embedding_processes(self) -> dict[str, list[int]]:
        """The live processes of the suite's embeddings service and Triton (their groups)."""
        if self._suite is None:
            return {}
        members = self._suite.group_members()
        return {name: members[name] for name in EMBEDDING_PROCESSES if name in members}

    async def recommend(self, user_id: str, interests: str, k: int) -> int:
        """One Recommend as the gateway serves it (request_id of its own, no policy named, seen
        items excluded); returns how many items were served and logged."""
        kept = self._kept.get(user_id)
        if kept is not None and (not interests or interests == kept[1].interests):
            # As the gateway: choose from the kept copy, log on condition that it still holds.
            self._kept.move_to_end(user_id)
            try:
                return await self._serve(user_id, interests, k, kept[1], kept[0])
            except FailedPrecondition:
                self._kept.pop(user_id, None)
        with self.clock.stage("profile read"):
            profile = await self._profile(user_id, self._gateway.history_limit)
        return await self._serve(user_id, interests, k, profile)

    async def _serve(
        self,
        user_id: str,
        interests: str,
        k: int,
        profile: UserProfile | None,
        kept_version: str = "",
    ) -> int:
        clock = self.clock
        gateway = self._gateway
        request_id = uuid.uuid4().hex
        with clock.stage("other"):
            history = profile.history if profile is not None else []
            stored_interests = profile.interests if profile is not None else ""
            seen = set(profile.seen_item_ids) if profile is not None else set()
            exclude = seen | {entry.item_id for entry in history}
            ranking_request = RankRequest(
                user_id=user_id,
                history=[
                    HistoryItem(
                        entry.item_id, interaction_weight(KIND_NUMBERS[entry.kind], entry.value)
                    )
                    for entry in history
                ],
                interests=interests or stored_interests,
                candidate_count=gateway.candidate_count,
                exclude_item_ids=sorted(exclude),
            )
        if interests and interests != stored_interests:
            # The gateway stores them beside ranking (a task); here in turn.
            with clock.stage("interests write"):
                await self._profiles.upsert_users([UserRecord(user_id, interests, {})])
        with clock.stage("rank"):
            ranked = await self._engine.rank(ranking_request)
        with clock.stage("rerank"):
            outcome = await self._reranker.rerank(
                RerankQuery(
                    request_id=request_id,
                    user_id=user_id,
                    candidates=[
                        CandidateIn(
                            item_id=c.item_id,
                            score=c.score,
                            is_tail=c.is_tail,
                            is_cold=c.is_cold,
                            categories=c.categories,
                            popularity=c.popularity,
                        )
                        for c in ranked.result.candidates
                    ],
                    k=k,
                    tail_propensity=profile.tail_propensity if profile is not None else 0.0,
                    category_mix=profile.category_mix if profile is not None else {},
                )
            )
        with clock.stage("other"):
            served_at = dt.datetime.now(dt.UTC)
            impressions = [
                ImpressionRecord(
                    request_id=request_id,
                    position=position,
                    user_id=user_id,
                    item_id=item.item_id,
                    reason=item.reason.value,
                    policy_name=outcome.policy_name,
                    policy_version=outcome.policy_version,
                    score=item.score,
                    served_at=served_at,
                )
                for position, item in enumerate(outcome.items)
            ]
        if impressions:
            with clock.stage("impression write"):
                await self._profiles.record_impressions(impressions, kept_version)
        with clock.stage("item info"):
            await self._item_info([record.item_id for record in impressions])
        if time.monotonic() - self._stale_refreshed_at >= DEFAULT_REFRESH_DELAY_SECONDS:
            with clock.stage("counters refresh"):
                await self._stats.refresh_stale()
            self._stale_refreshed_at = time.monotonic()
        return len(impressions)

    async def _profile(self, user_id: str, history_limit: int) -> UserProfile | None:
        """The profile as the gateway's checked way reads it (with the kept copy's version)."""
        kept = self._kept.get(user_id)
        try:
            read = await self._profiles.read_profile(
                user_id, history_limit, if_version_differs=kept[0] if kept is not None else ""
            )
        except NotFound:
            self._kept.pop(user_id, None)
            return None  # a new user: no history, nothing to exclude
        if read.unchanged and kept is not None:
            self._kept.move_to_end(user_id)
            return kept[1]
        if read.profile is None:
            return None
        if self._gateway.profile_cache_size > 0:
            self._kept[user_id] = (read.version, read.profile)
            self._kept.move_to_end(user_id)
            while len(self._kept) > self._gateway.profile_cache_size:
                self._kept.popitem(last=False)
        return read.profile

    async def _item_info(self, item_ids: Sequence[str]) -> None:
        """Titles and categories of the served items, through the gateway's bounded LRU."""
        titles = self._titles
        missing = [item_id for item_id in item_ids if item_id not in titles]
        if missing:
            items, _ = await self._profiles.get_items(missing, include_vectors=False)
            for item in items:
                titles[item.item_id] = (item.title, tuple(item.categories))
        for item_id in item_ids:
            if item_id in titles:
                titles.move_to_end(item_id)
        while len(titles) > self._gateway.title_cache_size:
            titles.popitem(last=False)


async def measure_floor(
    floor: Floor,
    workload: RequestSource,
    requests: int,
    k: int,
    *,
    warmup: int = 20,
) -> FloorResult:
    """``requests`` Recommends through ``floor``, one at a time, after ``warmup`` unmeasured ones
    (caches, connections, the first head set); the CPU of the suite's embeddings and Triton
    processes during the run is added to this process's."""
    for _ in range(warmup):
        user_id, interests = workload.next()
        await floor.recommend(user_id, interests, k)

    floor.clock.reset()
    latencies: list[float] = []
    items = cold = 0
    before = CpuSnapshot.take(floor.embedding_processes())
    started = time.perf_counter()
    for _ in range(requests):
        user_id, interests = workload.next()
        cold += bool(interests)
        sent = time.perf_counter()
        items += await floor.recommend(user_id, interests, k)
        latencies.append((time.perf_counter() - sent) * 1000)
    seconds = time.perf_counter() - started
    after = CpuSnapshot.take(floor.embedding_processes())
    if requests <= 0:
        return FloorResult(0, 0, 0, seconds, 0.0, dict.fromkeys(STAGES, 0.0), [])
    spent = before.per_request_ms(after, requests)
    stages = {name: seconds * 1000 / requests for name, seconds in floor.clock.seconds.items()}
    # What the process spent outside the timed stages (the loop between requests, the clock).
    stages["other"] += max(0.0, spent["load gen"] - sum(stages.values()))
    stages["embeddings + triton"] = sum(spent.get(name, 0.0) for name in EMBEDDING_PROCESSES)
    return FloorResult(
        requests=requests,
        items=items,
        cold_requests=cold,
        seconds=seconds,
        cpu_ms_per_request=sum(stages.values()),
        stages=stages,
        latencies_ms=latencies,
    )


def describe(result: FloorResult) -> str:
    """One line per stage, for logs: ``stage  CPU-ms/request``."""
    lines = [
        f"floor: {result.requests} requests ({result.cold_requests} new users), "
        f"{result.cpu_ms_per_request:.2f} CPU-ms per request, "
        f"p50 {result.percentile(50):.2f} ms, "
        f"mean {statistics.fmean(result.latencies_ms) if result.latencies_ms else 0:.2f} ms"
    ]
    lines += [f"  {name:<20} {ms:7.3f}" for name, ms in result.stages.items()]
    return "\n".join(lines)
