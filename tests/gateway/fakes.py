"""In-memory fakes behind the gateway's ports (unit tests only)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

from longtail.common.v1 import common_pb2
from longtail.exposure.v1 import exposure_service_pb2
from longtail.profiles.v1 import profiles_service_pb2
from longtail.ranking.v1 import ranking_service_pb2
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ServiceError,
    Unavailable,
)
from services.gateway.ports import ProfileRead, StatsPage


class FakeProfiles:
    def __init__(self, n_items: int = 40) -> None:
        self.items = {
            f"i{n}": common_pb2.Item(item_id=f"i{n}", title=f"Item {n}") for n in range(n_items)
        }
        # i0..i7 are head (top 20%), the rest tail; i30+ cold.
        self.stats = {
            f"i{n}": common_pb2.ItemStats(
                item_id=f"i{n}",
                interaction_count=max(0, 30 - n),
                is_tail=n >= 8,
                is_cold=n >= 30,
            )
            for n in range(n_items)
        }
        self.profiles: dict[str, profiles_service_pb2.UserProfile] = {
            "u1": profiles_service_pb2.UserProfile(
                user_id="u1",
                history=[
                    common_pb2.HistoryEntry(item_id="i0"),
                    common_pb2.HistoryEntry(item_id="i9"),
                ],
                tail_propensity=0.5,
                # i12 is older than the history limit: excluded all the same.
                seen_item_ids=["i0", "i9", "i12"],
            )
        }
        self.impressions: dict[tuple[str, int], common_pb2.Impression] = {}
        self.interactions: dict[str, common_pb2.Interaction] = {}
        self.users: dict[str, str] = {}
        self.down = False
        # Methods that fail with STORE_UNAVAILABLE while the others work (an outage that starts
        # mid-request); a failing write stores nothing, as the real store's transaction does.
        self.failing: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.impression_writes = 0
        # request_id -> the list of a concurrent request under the same id, whose write lands
        # just before ours (after our replay check found nothing): ours is then a conflict.
        self.racing_writes: dict[str, list[common_pb2.Impression]] = {}

    def _check(self, method: str = "") -> None:
        self.calls[method] += 1
        if self.down or method in self.failing:
            raise Unavailable("STORE_UNAVAILABLE", "store is down")

    def profile_version(self, user_id: str) -> str:
        """Like the store's: moves with every write the profile depends on (here, any change
        of the stored profile message)."""
        profile = self.profiles.get(user_id)
        return (
            ""
            if profile is None
            else hashlib.sha256(profile.SerializeToString(deterministic=True)).hexdigest()
        )

    async def read_profile(
        self,
        user_id: str,
        history_limit: int,
        served_request_id: str,
        timeout: float,
        if_version_differs: str = "",
    ) -> ProfileRead:
        # One call to the store, as the real one is (counted as the profile read).
        self._check("get_user_profile")
        served = sorted(
            (i for (r, _), i in self.impressions.items() if r == served_request_id),
            key=lambda i: i.position,
        )
        version = self.profile_version(user_id)
        if version and version == if_version_differs:
            self.calls["profile_unchanged"] += 1
            return ProfileRead(None, version, unchanged=True, served=served)
        return ProfileRead(self.profiles.get(user_id), version, served=served)

    async def upsert_user(self, user_id: str, interests: str, timeout: float) -> None:
        self._check("upsert_user")
        self.users[user_id] = interests

    async def record_impressions(
        self,
        impressions: Sequence[common_pb2.Impression],
        timeout: float,
        if_profile_version: str = "",
    ) -> int:
        self._check("record_impressions")
        self.impression_writes += 1
        for request_id in {i.request_id for i in impressions}:
            for racing in self.racing_writes.pop(request_id, []):
                self.impressions[(racing.request_id, racing.position)] = racing
        # Like the store: a request_id holding another list refuses the whole batch; an identical
        # replay (same user, items and positions) succeeds and writes nothing new.
        for request_id in {i.request_id for i in impressions}:
            held = {
                (p, i.user_id, i.item_id)
                for (r, p), i in self.impressions.items()
                if r == request_id
            }
            batch = {
                (i.position, i.user_id, i.item_id)
                for i in impressions
                if i.request_id == request_id
            }
            if held and held != batch:
                raise AlreadyExists(
                    "REQUEST_ID_CONFLICT",
                    "request_id already holds another list",
                    request_id=request_id,
                )
            # Like the store: a list chosen from a kept copy is refused once the version moved.
            user_id = impressions[0].user_id
            if not held and if_profile_version not in ("", self.profile_version(user_id)):
                self.calls["profile_version_moved"] += 1
                raise FailedPrecondition(
                    "PROFILE_VERSION_MOVED", "the profile changed", user_id=user_id
                )
        new = 0
        for impression in impressions:
            key = (impression.request_id, impression.position)
            if key not in self.impressions:
                self.impressions[key] = impression
                new += 1
        return new

    async def list_impressions(
        self, request_id: str, timeout: float
    ) -> list[common_pb2.Impression]:
        self._check("list_impressions")
        return sorted(
            (i for (r, _), i in self.impressions.items() if r == request_id),
            key=lambda i: i.position,
        )

    async def get_items(self, item_ids: Sequence[str], timeout: float) -> list[common_pb2.Item]:
        self._check("get_items")
        return [self.items[i] for i in item_ids if i in self.items]

    async def get_item_stats(
        self, item_ids: Sequence[str], timeout: float
    ) -> list[common_pb2.ItemStats]:
        self._check("get_item_stats")
        return [self.stats[i] for i in item_ids if i in self.stats]

    async def list_item_stats(
        self,
        page_size: int,
        page_token: str,
        timeout: float,
        if_popularity_version_differs: str = "",
    ) -> StatsPage:
        """Offset page tokens; the popularity version is a digest of the stats."""
        self._check("list_item_stats")
        stats = list(self.stats.values())
        version = hashlib.sha256(b"".join(s.SerializeToString() for s in stats)).hexdigest()[:16]
        if not page_token and version == if_popularity_version_differs:
            return StatsPage([], "", version, unchanged=True)
        start = int(page_token or 0)
        end = start + page_size
        return StatsPage(
            stats[start:end],
            str(end) if end < len(stats) else "",
            "" if page_token else version,
        )

    async def record_interaction(self, interaction: common_pb2.Interaction, timeout: float) -> bool:
        self._check("record_interaction")
        if interaction.idempotency_key in self.interactions:
            return False
        self.interactions[interaction.idempotency_key] = interaction
        # Like the store: the interaction is in the user's profile from now on (newest first).
        profile = self.profiles.get(interaction.user_id)
        if profile is not None:
            profile.history.insert(0, common_pb2.HistoryEntry(item_id=interaction.item_id))
            if interaction.item_id not in profile.seen_item_ids:
                profile.seen_item_ids.append(interaction.item_id)
        return True


class FakeRanking:
    def __init__(self, profiles: FakeProfiles) -> None:
        self._profiles = profiles
        self.error: ServiceError | None = None
        self.last: ranking_service_pb2.RankCandidatesRequest | None = None
        # What ranking reports as degraded about its answer (e.g. INTERESTS_NOT_EMBEDDED).
        self.degraded_causes: list[str] = []

    async def rank(
        self, request: ranking_service_pb2.RankCandidatesRequest, timeout: float
    ) -> ranking_service_pb2.RankCandidatesResponse:
        self.last = request
        if self.error is not None:
            raise self.error
        excluded = set(request.exclude_item_ids)
        candidates = [
            common_pb2.Candidate(
                item_id=s.item_id,
                score=1.0 / (1 + n),
                is_tail=s.is_tail,
                is_cold=s.is_cold,
            )
            for n, s in enumerate(self._profiles.stats.values())
            if s.item_id not in excluded
        ]
        return ranking_service_pb2.RankCandidatesResponse(
            candidates=candidates[: request.candidate_count],
            index_version="idx1",
            degraded_causes=self.degraded_causes,
        )


class FakeExposure:
    """Relevance order; rejects a policy named mmr with lambda > 1 like the real service."""

    def __init__(self) -> None:
        self.error: ServiceError | None = None

    async def rerank(
        self, request: exposure_service_pb2.RerankRequest, timeout: float
    ) -> exposure_service_pb2.RerankResponse:
        if self.error is not None:
            raise self.error
        if request.policy.HasField("mmr") and getattr(request.policy.mmr, "lambda") > 1:
            raise InvalidArgument("PARAMETER_OUT_OF_RANGE", "lambda must be in [0, 1]")
        chosen = sorted(request.candidates, key=lambda c: -c.score)[: request.k]
        return exposure_service_pb2.RerankResponse(
            items=[
                common_pb2.RankedItem(
                    item_id=c.item_id,
                    position=n,
                    score=c.score,
                    reason=common_pb2.REASON_RELEVANCE,
                    is_tail=c.is_tail,
                    is_cold=c.is_cold,
                )
                for n, c in enumerate(chosen)
            ],
            policy_name="relevance",
            policy_version="test",
        )
