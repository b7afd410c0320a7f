"""The Recommend pipeline: profile -> candidates -> exposure policy -> impressions.

Every hop runs under a deadline derived from the caller's. When ranking or exposure fail (down,
slow, broken), the answer comes from the fallback list (popular items mixed with tail items,
reason FALLBACK); when the store fails, the call fails with UNAVAILABLE and nothing is logged.
Impressions are written before the answer returns, idempotently by (request_id, position): a retried
request_id is answered from the log and writes nothing twice. When the store refuses the write
because the request_id already holds another list (a concurrent request under the same id claimed
it first), the call fails with ALREADY_EXISTS (REQUEST_ID_CONFLICT), or, when the list was chosen
from a kept profile (below), is answered with the logged list: only a list that is in the log is
ever answered.

A user's profile is kept (``ProfileCache``) under the version profiles gave it. A Recommend for a
kept user does not ask profiles first: it chooses from the kept copy and logs the list on
condition that the version still holds (RecordImpressions' ``if_profile_version``, checked in the
write's transaction). When it moved (an interaction, new interests, a new head set), or the
request_id already holds a list, nothing was written and the request goes the checked way: one
call that reads the profile and looks the request_id up in the log, then choose, then log. So a
kept copy never serves past an interaction recorded before the list is logged, and a retried
request_id is answered from the log.

An answer of lower quality than normal is marked ``degraded`` with its causes: every fallback
answer (FALLBACK, besides ``fallback``), and a ranked answer whose candidates ranking reported as
degraded (its ``degraded_causes``, e.g. INTERESTS_NOT_EMBEDDED when embeddings or Triton failed).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from longtail.common.v1 import common_pb2
from longtail.exposure.v1 import exposure_service_pb2
from longtail.gateway.v1 import gateway_service_pb2
from longtail.profiles.v1 import profiles_service_pb2
from longtail.ranking.v1 import ranking_service_pb2
from services.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
)
from services.common.observability import RecommenderMetrics
from services.gateway.ports import ExposurePort, ProfilesPort, RankingPort

log = logging.getLogger(__name__)

MAX_K = 100
MAX_INTERESTS_CHARS = 8192
# The profiles store's limit on user, item and request ids (its MAX_ID_LENGTH, varchar(255)
# columns). Stated again here, not imported: services never import each other's packages. Keep the
# two equal: a longer id would pass here and be refused by the store with another reason.
MAX_ID_CHARS = 255
FALLBACK_POLICY = "fallback"
# The degraded cause of every fallback answer (ranking's causes are relayed as it names them).
FALLBACK_CAUSE = "FALLBACK"
# Per-hop ceilings; the caller's deadline usually binds first.
PROFILE_TIMEOUT = 1.0
RANKING_TIMEOUT = 1.0
EXPOSURE_TIMEOUT = 0.5
WRITE_TIMEOUT = 2.0
# Client request_ids remembered to send retries the checked way (about 10 MB at 50k).
RECENT_REQUEST_IDS = 50_000


class Deadline:
    """The caller's deadline, or a default one when the caller set none."""

    def __init__(self, remaining: float | None, default: float) -> None:
        self._end = time.monotonic() + (default if remaining is None else remaining)

    def time_remaining(self) -> float:
        return self._end - time.monotonic()

    def timeout(self, ceiling: float, share: float = 1.0) -> float:
        """Seconds an outbound call may take: ``share`` of what is left, at most ``ceiling``."""
        left = self.time_remaining() * share
        if left <= 0.001:
            raise DeadlineExceeded("DEADLINE_EXHAUSTED", "no time left for the call")
        return min(ceiling, left)


@dataclass(frozen=True)
class PipelineConfig:
    candidate_count: int = 100
    history_limit: int = 200
    pipeline_time_share: float = 0.6
    fallback_size: int = 200
    title_cache_size: int = 200_000
    ranking_timeout: float = RANKING_TIMEOUT
    exposure_timeout: float = EXPOSURE_TIMEOUT
    # Profiles kept by user (0: none): a known user's next Recommend asks profiles whether the
    # copy's version is still current instead of reading the profile again.
    profile_cache_size: int = 10_000
    # Ceilings of the store's reads and writes (not settings yet: the defaults serve; tests that
    # run real stores on a loaded machine raise them so that only the caller's deadline binds).
    profile_timeout: float = PROFILE_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT


@dataclass(frozen=True)
class ItemInfo:
    title: str
    categories: tuple[str, ...]


class ItemInfoCache:
    """Titles and categories for the response; items rarely change, so a bounded LRU saves a hop."""

    def __init__(self, profiles: ProfilesPort, capacity: int) -> None:
        self._profiles = profiles
        self._capacity = capacity
        self._items: OrderedDict[str, ItemInfo] = OrderedDict()

    def put(self, item_id: str, info: ItemInfo) -> None:
        self._items[item_id] = info
        self._items.move_to_end(item_id)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    async def fill(self, item_ids: Sequence[str], timeout: float, batch: int = 1000) -> int:
        """Reads the titles and categories of the ``item_ids`` not cached yet, while there is room
        (the catalogue refresh passes every item id it read): otherwise every not-yet-served
        item costs a store read on the request path, and a long-tail policy keeps serving items no
        one was served before. Returns how many were added."""
        added = 0
        missing = [item_id for item_id in item_ids if item_id not in self._items]
        for start in range(0, len(missing), batch):
            room = self._capacity - len(self._items)
            if room <= 0:
                break
            for item in await self._profiles.get_items(
                missing[start : start + min(batch, room)], timeout
            ):
                if item.item_id not in self._items:
                    self.put(item.item_id, ItemInfo(item.title, tuple(item.categories)))
                    added += 1
        return added

    async def lookup(self, item_ids: Sequence[str], timeout: float) -> dict[str, ItemInfo]:
        missing = [item_id for item_id in item_ids if item_id not in self._items]
        if missing:
            for item in await self._profiles.get_items(missing, timeout):
                self.put(item.item_id, ItemInfo(item.title, tuple(item.categories)))
        unknown = ItemInfo("", ())
        return {item_id: self._items.get(item_id, unknown) for item_id in item_ids}


@dataclass(frozen=True)
class KeptProfile:
    """A profile as profiles sent it, serialized (about 5 KB for a user with 165 interactions,
    against about 30 KB as a message object: parsing it back costs about 20 µs), and its version."""

    version: str
    data: bytes

    def profile(self) -> profiles_service_pb2.UserProfile:
        return profiles_service_pb2.UserProfile.FromString(self.data)


class ProfileCache:
    """The profiles of recent users, each under the version profiles gave it. Profiles moves a
    user's version in the transaction of every write the profile depends on, and a list chosen
    from a copy is logged only while the copy's version holds, so a copy serves only while it is
    exactly what a full read would return: Feedback then Recommend chooses again from a read.
    Bounded, least recently used out."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._profiles: OrderedDict[str, KeptProfile] = OrderedDict()

    def __len__(self) -> int:
        return len(self._profiles)

    def get(self, user_id: str) -> KeptProfile | None:
        kept = self._profiles.get(user_id)
        if kept is not None:
            self._profiles.move_to_end(user_id)
        return kept

    def put(self, user_id: str, kept: KeptProfile) -> None:
        if self._capacity <= 0:
            return
        self._profiles[user_id] = kept
        self._profiles.move_to_end(user_id)
        while len(self._profiles) > self._capacity:
            self._profiles.popitem(last=False)

    def drop(self, user_id: str) -> None:
        self._profiles.pop(user_id, None)


class RecentIds:
    """The last ``capacity`` ids seen, oldest out."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, id_: str) -> bool:
        """Whether ``id_`` ("" never is) was seen before; it is remembered from now on."""
        if not id_:
            return False
        if id_ in self._ids:
            self._ids.move_to_end(id_)
            return True
        self._ids[id_] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return False


class FallbackList:
    """Popular items and tail items, refreshed from the store, served when ranking is down."""

    def __init__(self, profiles: ProfilesPort, size: int) -> None:
        self._profiles = profiles
        self._size = size
        self.head: list[common_pb2.ItemStats] = []
        self.tail: list[common_pb2.ItemStats] = []
        # The popularity version the lists were made from: a refresh re-reads the catalogue's
        # stats only when it moved (at 100k items a full read costs profiles tens of CPU-ms).
        self._version = ""
        # Every catalogue item id of the last full read (the item info cache fills from them).
        self.item_ids: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        """The popularity version of the last full read ("" before one)."""
        return self._version

    async def refresh(self, timeout: float = 10.0) -> bool:
        """Re-reads the catalogue's stats when their version moved; True when it did."""
        stats: list[common_pb2.ItemStats] = []
        first = await self._profiles.list_item_stats(10_000, "", timeout, self._version)
        if first.unchanged:
            return False
        stats.extend(first.stats)
        token = first.next_page_token
        while token:
            page = await self._profiles.list_item_stats(10_000, token, timeout)
            stats.extend(page.stats)
            token = page.next_page_token
        half = max(1, self._size // 2)
        by_popularity = sorted(stats, key=lambda s: (-s.interaction_count, s.item_id))
        self.head = [s for s in by_popularity if not s.is_tail][:half]
        tail = [s for s in by_popularity if s.is_tail]
        # Spread the tail picks over the whole tail (cold items included), not just its top.
        step = max(1, len(tail) // half)
        self.tail = tail[::step][:half]
        self.item_ids = tuple(s.item_id for s in stats)
        self._version = first.popularity_version
        return True

    def items(self, k: int, exclude: set[str], request_id: str) -> list[common_pb2.RankedItem]:
        """Alternate head and tail items; the tail rotation depends on the request."""
        rotation = int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16)
        tail = (
            self.tail[rotation % len(self.tail) :] + self.tail[: rotation % len(self.tail)]
            if (self.tail)
            else []
        )
        picked: list[common_pb2.ItemStats] = []
        heads = iter(s for s in self.head if s.item_id not in exclude)
        tails = iter(s for s in tail if s.item_id not in exclude)
        sources = [heads, tails]
        turn = 0
        while len(picked) < k:
            source = sources[turn % 2]
            other = sources[(turn + 1) % 2]
            nxt = next(source, None) or next(other, None)
            if nxt is None:
                break
            picked.append(nxt)
            turn += 1
        return [
            common_pb2.RankedItem(
                item_id=s.item_id,
                position=position,
                score=0.0,
                reason=common_pb2.REASON_FALLBACK,
                is_tail=s.is_tail,
                is_cold=s.is_cold,
            )
            for position, s in enumerate(picked)
        ]


def _check_length(value: str, field: str) -> None:
    """INVALID_ARGUMENT ``<FIELD>_TOO_LONG`` past the store's id limit (the id is not echoed)."""
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(
            f"{field.upper()}_TOO_LONG",
            f"{field} is longer than {MAX_ID_CHARS} characters",
            limit=MAX_ID_CHARS,
            length=len(value),
        )


def _validate(request: gateway_service_pb2.RecommendRequest) -> None:
    if not request.user_id.strip():
        raise InvalidArgument("EMPTY_USER_ID", "user_id is required")
    _check_length(request.user_id, "user_id")
    if not 1 <= request.k <= MAX_K:
        raise InvalidArgument("K_OUT_OF_RANGE", f"k must be in 1..{MAX_K}", k=request.k)
    if len(request.interests) > MAX_INTERESTS_CHARS:
        raise InvalidArgument(
            "INTERESTS_TOO_LONG", f"interests are longer than {MAX_INTERESTS_CHARS} characters"
        )
    _check_length(request.request_id, "request_id")


class _KeptCopyRefused(Exception):
    """A list chosen from a kept profile was not logged (the version moved, or the request_id
    already holds a list): nothing was written; the request goes the checked way."""


@dataclass(frozen=True)
class Choice:
    items: list[common_pb2.RankedItem]
    policy_name: str
    policy_version: str = ""
    index_version: str = ""
    collaborative_version: str = ""
    # Why the fallback served (the failing dependency's reason); empty when it did not.
    fallback_cause: str = ""
    # Why the answer is of lower quality than normal (the response's degraded_causes).
    degraded_causes: tuple[str, ...] = ()


class RecommendPipeline:
    def __init__(
        self,
        profiles: ProfilesPort,
        ranking: RankingPort,
        exposure: ExposurePort,
        config: PipelineConfig,
        metrics: RecommenderMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._profiles = profiles
        self._ranking = ranking
        self._exposure = exposure
        self._config = config
        self.items = ItemInfoCache(profiles, config.title_cache_size)
        self.profiles = ProfileCache(config.profile_cache_size)
        self._recent_request_ids = RecentIds(RECENT_REQUEST_IDS)
        self.fallback = FallbackList(profiles, config.fallback_size)
        # The fallback version whose item ids are all in the item info cache (or it is full).
        self._filled_version = ""

    async def refresh_catalogue(self, timeout: float = 30.0) -> int:
        """The background refresh: the fallback list when the catalogue's stats moved, then the
        item info of every catalogue item not cached yet (new items, or all of them after a
        start on an empty store). A fill cut short (store down) is redone next time even when the
        version holds. Returns how many items were added to the cache."""
        await self.fallback.refresh(timeout)
        if self._filled_version == self.fallback.version:
            return 0
        added = await self.items.fill(self.fallback.item_ids, timeout)
        self._filled_version = self.fallback.version
        return added

    async def recommend(
        self, request: gateway_service_pb2.RecommendRequest, deadline: Deadline
    ) -> gateway_service_pb2.RecommendResponse:
        _validate(request)
        kept = self.profiles.get(request.user_id)
        # A request_id this gateway saw before is a retry (or a race): the checked way answers it
        # from the log without choosing again. (A retry that reaches another replica is caught by
        # the conditional write all the same, at the cost of a list chosen for nothing.)
        retry = self._recent_request_ids.seen(request.request_id)
        if kept is not None and not retry:
            profile = kept.profile()
            # New interests are stored first (that moves the version): the checked way does it.
            if not request.interests or request.interests == profile.interests:
                try:
                    return await self._serve(request, profile, deadline, kept.version)
                except _KeptCopyRefused:
                    pass
        read = await self._read_profile(request, deadline)
        if isinstance(read, list):
            return await self._replay(request, read, deadline)
        return await self._serve(request, read, deadline)

    async def _serve(
        self,
        request: gateway_service_pb2.RecommendRequest,
        profile: profiles_service_pb2.UserProfile | None,
        deadline: Deadline,
        kept_version: str = "",
    ) -> gateway_service_pb2.RecommendResponse:
        """Choose a list for ``profile`` and log it; with ``kept_version`` (the profile is a kept
        copy nobody checked yet) only while that version holds, else _KeptCopyRefused."""
        request_id = request.request_id or uuid.uuid4().hex

        history: Sequence[common_pb2.HistoryEntry] = profile.history if profile is not None else ()
        stored_interests = profile.interests if profile is not None else ""
        interests = request.interests or stored_interests
        exclude: set[str] = set()
        if profile is not None and not request.include_seen:
            exclude = set(profile.seen_item_ids).union(entry.item_id for entry in history)

        remember = None
        if request.interests and request.interests != stored_interests:
            remember = asyncio.create_task(
                self._profiles.upsert_user(
                    request.user_id, request.interests, deadline.timeout(self._config.write_timeout)
                )
            )

        choice = await self._choose(
            request, request_id, profile, history, interests, exclude, deadline
        )
        ranked = choice.items
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        impressions = [
            common_pb2.Impression(
                request_id=request_id,
                position=item.position,
                user_id=request.user_id,
                item_id=item.item_id,
                policy_name=choice.policy_name,
                policy_version=choice.policy_version,
                reason=item.reason,
                score=item.score,
                served_at=now,
            )
            for item in ranked
        ]
        write_timeout = deadline.timeout(self._config.write_timeout)
        info_task = asyncio.create_task(
            self.items.lookup([item.item_id for item in ranked], write_timeout)
        )
        try:
            if impressions:
                try:
                    recorded = await self._profiles.record_impressions(
                        impressions, write_timeout, if_profile_version=kept_version
                    )
                except AlreadyExists:
                    # The request_id holds another list (REQUEST_ID_CONFLICT): nothing was lost,
                    # and this list must not be answered, since it is not the one in the log.
                    if kept_version:
                        raise _KeptCopyRefused() from None  # a retry: the checked way replays
                    raise
                except FailedPrecondition as error:
                    if not kept_version or error.reason != "PROFILE_VERSION_MOVED":
                        raise
                    self.profiles.drop(request.user_id)
                    self._observe_profile_read("stale")
                    raise _KeptCopyRefused() from None
                except ServiceError:
                    if self._metrics is not None:
                        self._metrics.observe_impression_failure()
                    raise
                if kept_version:
                    if recorded == 0:
                        # The request_id already holds this very list (a retry): answer it as
                        # the log has it, as every retry is.
                        raise _KeptCopyRefused()
                    self._observe_profile_read("kept")
                if self._metrics is not None:
                    self._metrics.observe_impressions(len(impressions))
            info = await info_task
            if remember is not None:
                await remember
        except BaseException:
            info_task.cancel()
            if remember is not None:
                remember.cancel()
            raise
        response = gateway_service_pb2.RecommendResponse(
            request_id=request_id,
            items=[
                gateway_service_pb2.RecommendedItem(
                    item_id=item.item_id,
                    title=info[item.item_id].title,
                    position=item.position,
                    score=item.score,
                    reason=item.reason,
                    is_tail=item.is_tail,
                    is_cold=item.is_cold,
                    categories=info[item.item_id].categories,
                )
                for item in ranked
            ],
            policy_name=choice.policy_name,
            policy_version=choice.policy_version,
            fallback=choice.policy_name == FALLBACK_POLICY,
            index_version=choice.index_version,
            collaborative_version=choice.collaborative_version,
            degraded=bool(choice.degraded_causes),
            degraded_causes=choice.degraded_causes,
        )
        if self._metrics is not None:
            self._metrics.observe_response(response, fallback_cause=choice.fallback_cause)
        return response

    async def _read_profile(
        self, request: gateway_service_pb2.RecommendRequest, deadline: Deadline
    ) -> profiles_service_pb2.UserProfile | list[common_pb2.Impression] | None:
        """The user's profile (None: unknown user), from the cache while its version holds; or,
        when the request_id was served already, the list in the log. The replay check and the
        profile read are one call (one round trip, one transaction). The checked way: used when
        no copy is kept, or a kept copy's list was refused, or the request brings new interests."""
        cached = self.profiles.get(request.user_id)
        read = await self._profiles.read_profile(
            request.user_id,
            self._config.history_limit,
            request.request_id,
            deadline.timeout(self._config.profile_timeout),
            cached.version if cached is not None else "",
        )
        if read.served:
            return read.served
        if read.unchanged and cached is not None:
            self._observe_profile_read("kept")
            return cached.profile()
        if read.profile is None:
            self.profiles.drop(request.user_id)
            self._observe_profile_read("unknown")
            return None
        self.profiles.put(
            request.user_id, KeptProfile(read.version, read.profile.SerializeToString())
        )
        self._observe_profile_read("read")
        return read.profile

    def _observe_profile_read(self, source: str) -> None:
        if self._metrics is not None:
            self._metrics.observe_profile_read(source)

    async def _choose(
        self,
        request: gateway_service_pb2.RecommendRequest,
        request_id: str,
        profile: profiles_service_pb2.UserProfile | None,
        history: Sequence[common_pb2.HistoryEntry],
        interests: str,
        exclude: set[str],
        deadline: Deadline,
    ) -> Choice:
        """Ranking then exposure; on any failure but a bad policy, the fallback list."""
        share = self._config.pipeline_time_share
        wants_vectors = request.HasField("policy") and request.policy.WhichOneof("policy") == "mmr"
        try:
            candidates = await self._ranking.rank(
                ranking_service_pb2.RankCandidatesRequest(
                    user_id=request.user_id,
                    history=history,
                    interests=interests,
                    candidate_count=self._config.candidate_count,
                    exclude_item_ids=sorted(exclude),
                    include_vectors=wants_vectors,
                    # Ranking drops history items unless told: include_seen needs both this and
                    # the empty exclusion list above.
                    include_history=request.include_seen,
                ),
                deadline.timeout(self._config.ranking_timeout, share * 0.7),
            )
            tail_propensity = profile.tail_propensity if profile is not None else 0.0
            category_mix = dict(profile.category_mix) if profile is not None else {}
            rerank = exposure_service_pb2.RerankRequest(
                request_id=request_id,
                user_id=request.user_id,
                candidates=candidates.candidates,
                k=request.k,
                tail_propensity=tail_propensity,
                category_mix=category_mix,
            )
            if request.HasField("policy"):
                rerank.policy.CopyFrom(request.policy)
            reranked = await self._exposure.rerank(
                rerank, deadline.timeout(self._config.exposure_timeout, share)
            )
        except InvalidArgument:
            raise  # the caller's policy or parameters are wrong: say so, do not paper over it
        except ServiceError as error:
            log.warning(
                "serving fallback",
                extra={"fields": {"reason": error.reason, "detail": error.message}},
            )
            items = await self._fallback(request.k, exclude, request_id, deadline)
            return Choice(
                items,
                FALLBACK_POLICY,
                fallback_cause=error.reason,
                degraded_causes=(FALLBACK_CAUSE,),
            )
        if not reranked.items and not candidates.candidates:
            # An empty pool (e.g. nothing indexed yet) is served from the fallback too.
            items = await self._fallback(request.k, exclude, request_id, deadline)
            return Choice(
                items,
                FALLBACK_POLICY,
                fallback_cause="EMPTY_CANDIDATE_POOL",
                degraded_causes=(FALLBACK_CAUSE,),
            )
        return Choice(
            list(reranked.items),
            reranked.policy_name,
            reranked.policy_version,
            candidates.index_version,
            candidates.collaborative_version,
            degraded_causes=tuple(dict.fromkeys(candidates.degraded_causes)),
        )

    async def _fallback(
        self, k: int, exclude: set[str], request_id: str, deadline: Deadline
    ) -> list[common_pb2.RankedItem]:
        if not self.fallback.head and not self.fallback.tail:
            # Only before the background refresh has filled the list; within the caller's time.
            await self.fallback.refresh(timeout=deadline.timeout(self._config.write_timeout))
        return self.fallback.items(k, exclude, request_id)

    async def _replay(
        self,
        request: gateway_service_pb2.RecommendRequest,
        logged: Sequence[common_pb2.Impression],
        deadline: Deadline,
    ) -> gateway_service_pb2.RecommendResponse:
        """The answer of a request_id already served: the list in the log, never a new one."""
        if logged[0].user_id != request.user_id:
            raise InvalidArgument(
                "REQUEST_ID_REUSED", "request_id was already used for another user"
            )
        info = await self.items.lookup(
            [i.item_id for i in logged], deadline.timeout(self._config.profile_timeout)
        )
        fallback = logged[0].policy_name == FALLBACK_POLICY
        stats = {
            s.item_id: s
            for s in await self._profiles.get_item_stats(
                [i.item_id for i in logged], deadline.timeout(self._config.profile_timeout)
            )
        }
        return gateway_service_pb2.RecommendResponse(
            request_id=request.request_id,
            items=[
                gateway_service_pb2.RecommendedItem(
                    item_id=i.item_id,
                    title=info[i.item_id].title,
                    categories=info[i.item_id].categories,
                    position=i.position,
                    score=i.score,
                    reason=i.reason,
                    is_tail=stats[i.item_id].is_tail if i.item_id in stats else False,
                    is_cold=stats[i.item_id].is_cold if i.item_id in stats else False,
                )
                for i in logged
            ],
            policy_name=logged[0].policy_name,
            policy_version=logged[0].policy_version,
            fallback=fallback,
            # The log keeps no degraded causes of ranking's: a replay reports the fallback only.
            degraded=fallback,
            degraded_causes=[FALLBACK_CAUSE] if fallback else [],
        )

    async def feedback(
        self, request: gateway_service_pb2.FeedbackRequest, deadline: Deadline
    ) -> gateway_service_pb2.FeedbackResponse:
        if not request.request_id:
            raise InvalidArgument("EMPTY_REQUEST_ID", "request_id is required")
        _check_length(request.request_id, "request_id")
        if not request.item_id:
            raise InvalidArgument("EMPTY_ITEM_ID", "item_id is required")
        _check_length(request.item_id, "item_id")
        if request.kind == common_pb2.INTERACTION_KIND_UNSPECIFIED or (
            request.kind not in common_pb2.InteractionKind.values()
        ):
            raise InvalidArgument("BAD_INTERACTION_KIND", "kind must be view/click/purchase/rating")
        logged = await self._profiles.list_impressions(
            request.request_id, deadline.timeout(self._config.profile_timeout)
        )
        served = next((i for i in logged if i.item_id == request.item_id), None)
        if served is None:
            raise NotFound(
                "IMPRESSION_NOT_FOUND",
                "no such item was served under that request_id",
                request_id=request.request_id,
                item_id=request.item_id,
            )
        occurred = request.occurred_at if request.HasField("occurred_at") else None
        if occurred is None:
            occurred = timestamp_pb2.Timestamp()
            occurred.GetCurrentTime()
        interaction = common_pb2.Interaction(
            user_id=served.user_id,
            item_id=request.item_id,
            kind=request.kind,
            value=request.value,
            occurred_at=occurred,
            # One feedback of a kind per served item: a retried Feedback counts once.
            idempotency_key=f"feedback:{request.request_id}:{request.item_id}:{request.kind}",
            request_id=request.request_id,
        )
        recorded = await self._profiles.record_interaction(
            interaction, deadline.timeout(self._config.write_timeout)
        )
        return gateway_service_pb2.FeedbackResponse(recorded=recorded)

    async def explain(
        self, request: gateway_service_pb2.ExplainRecommendationRequest, deadline: Deadline
    ) -> gateway_service_pb2.ExplainRecommendationResponse:
        if not request.request_id:
            raise InvalidArgument("EMPTY_REQUEST_ID", "request_id is required")
        _check_length(request.request_id, "request_id")
        logged = await self._profiles.list_impressions(
            request.request_id, deadline.timeout(self._config.profile_timeout)
        )
        if not logged:
            raise NotFound("REQUEST_NOT_FOUND", "nothing was served under that request_id")
        ids = [i.item_id for i in logged]
        info, stats_list = await asyncio.gather(
            self.items.lookup(ids, deadline.timeout(self._config.profile_timeout)),
            self._profiles.get_item_stats(ids, deadline.timeout(self._config.profile_timeout)),
        )
        stats = {s.item_id: s for s in stats_list}
        return gateway_service_pb2.ExplainRecommendationResponse(
            request_id=request.request_id,
            user_id=logged[0].user_id,
            items=[
                gateway_service_pb2.ExplainedItem(
                    impression=i,
                    title=info[i.item_id].title,
                    is_tail=stats[i.item_id].is_tail if i.item_id in stats else False,
                    is_cold=stats[i.item_id].is_cold if i.item_id in stats else False,
                    popularity=stats[i.item_id].interaction_count if i.item_id in stats else 0,
                )
                for i in logged
            ],
        )
