"""The Rerank use case: resolve the policy, fetch counters when needed, run the policy.

Resolution of what serves a request:
- no policy named: the service's default policy with its configured parameters, plus the default
  exploration slots unless the request sets its own ``explore``. The default slots apply only
  where they fall inside the list at their configured position (the one evaluated offline):
  ``min(default_slots, max(0, n - first_position))`` with ``n`` the list's length (k, or fewer
  when the pool is smaller). With the served defaults (1 slot at position 9) a list of up to 9
  items gets no default exploration and a top 10 one slot at position 9; never does a short
  list become mostly exploration (k = 1 used to be a single explored item);
- a policy named: that policy, parameters the request leaves unset take the service's defaults
  for it, and no exploration unless the request asks for it;
- ``explore`` asked for explicitly (with or without a policy): those slots, from the asked or the
  configured first position, capped at k; a list too short for that position moves them forward.
Counters are fetched only when the plan reads them (fair_exposure; explore with cold/tail
candidates). When profiles cannot answer in time they count as zero, and the call still succeeds,
unless the service requires its counters (``stats_required``): then the call fails UNAVAILABLE,
so that no list is computed on counters that silently differ from the impression log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence

from services.common.deadlines import HasTimeRemaining, outbound_timeout
from services.common.errors import DeadlineExceeded, Unavailable
from services.exposure.policies import (
    POLICY_VERSION,
    CandidateIn,
    ExploreConfig,
    ItemCounts,
    Placed,
    PolicyInfo,
    RerankInput,
    describe_policies,
    execute,
    plan_rerank,
    policy_entry,
)
from services.exposure.stats import ExposureStatsSource, StatsUnavailable

log = logging.getLogger(__name__)

# Share of the caller's remaining time the counters may use; the rest is for the policy.
STATS_TIME_SHARE = 0.5
# Pools up to this size without vectors run on the event loop: every policy takes well under a
# millisecond there (tail_quota ~0.2 ms for 100), less than a worker-thread round trip costs under
# load. Larger pools, and vector work (mmr: ~15 ms for 200 x 384), go to a thread.
INLINE_MAX_CANDIDATES = 100


@dataclasses.dataclass(frozen=True)
class PolicyDefaults:
    """A service's defaults: which policy serves unnamed requests, parameters, exploration."""

    policy: str = "tail_quota"
    # Policy name -> parameter (wire name) -> value, overriding the registry's defaults.
    params: Mapping[str, Mapping[str, object]] = dataclasses.field(default_factory=dict)
    explore_slots: int = 1
    # As the served default (ExposureSettings.default_explore_first_position): the last of a top 10.
    explore_first_position: int = 9
    # As the served default (ExposureSettings.default_explore_prior_strength).
    explore_prior_strength: float = 10.0

    def __post_init__(self) -> None:
        """Raises InvalidArgument (caught at start-up) when a default is unusable."""
        policy_entry(self.policy)
        for name, params in self.params.items():
            policy_entry(name).configure(params)
        self.explore(self.explore_slots).validate(max(self.explore_slots, 0))

    def explore(self, slots: int) -> ExploreConfig:
        """``slots`` exploration slots at the configured position, with the configured prior."""
        return ExploreConfig(slots, self.explore_first_position, self.explore_prior_strength)


def default_explore(defaults: PolicyDefaults, length: int) -> ExploreConfig:
    """The default exploration of a list of ``length`` items that names no policy: only the slots
    that fall inside the list at the configured position, ``min(slots, max(0, length - first))``.
    """
    first = defaults.explore_first_position
    return defaults.explore(min(defaults.explore_slots, max(0, length - first)))


@dataclasses.dataclass(frozen=True)
class RerankQuery:
    request_id: str
    candidates: Sequence[CandidateIn]
    k: int
    # None: the service's default policy.
    policy: str | None = None
    params: Mapping[str, object] = dataclasses.field(default_factory=dict)
    # None: the default exploration of the resolved policy (see the module docstring).
    explore: ExploreConfig | None = None
    # With ``explore``: where its slots start and how much the relevance score weighs in the
    # Thompson prior; None = the service's configured default.
    explore_first_position: int | None = None
    explore_prior_strength: float | None = None
    seed: int | None = None
    tail_propensity: float = 0.0
    category_mix: Mapping[str, float] = dataclasses.field(default_factory=dict)
    user_id: str = ""


@dataclasses.dataclass(frozen=True)
class RerankOutcome:
    items: list[Placed]
    policy_name: str
    policy_version: str
    seed: int


class Reranker:
    def __init__(
        self,
        stats: ExposureStatsSource,
        defaults: PolicyDefaults | None = None,
        stats_timeout: float = 0.2,
        stats_required: bool = False,
    ) -> None:
        self._stats = stats
        self._stats_required = stats_required
        self._defaults = defaults or PolicyDefaults()
        self._stats_timeout = stats_timeout

    @property
    def default_policy(self) -> str:
        return self._defaults.policy

    def describe(self) -> list[PolicyInfo]:
        defaults = self._defaults
        return describe_policies(defaults.params, defaults.explore(defaults.explore_slots))

    def _resolve(self, query: RerankQuery) -> RerankInput:
        defaults = self._defaults
        name = query.policy if query.policy is not None else defaults.policy
        explore = query.explore
        if explore is not None:
            first = query.explore_first_position
            strength = query.explore_prior_strength
            explore = dataclasses.replace(
                explore,
                first_position=defaults.explore_first_position if first is None else first,
                prior_strength=defaults.explore_prior_strength if strength is None else strength,
            )
        if explore is None:
            explore = (
                default_explore(defaults, min(query.k, len(query.candidates)))
                if query.policy is None
                else ExploreConfig(0)
            )
        return RerankInput(
            request_id=query.request_id,
            candidates=query.candidates,
            k=query.k,
            policy=name,
            params={**defaults.params.get(name, {}), **query.params},
            explore=explore,
            seed=query.seed,
            tail_propensity=query.tail_propensity,
            category_mix=query.category_mix,
        )

    async def rerank(
        self, query: RerankQuery, deadline: HasTimeRemaining | None = None
    ) -> RerankOutcome:
        plan = plan_rerank(self._resolve(query))
        stats = await self._counters(plan.stats_ids(), deadline)
        candidates = plan.context.candidates
        if len(candidates) <= INLINE_MAX_CANDIDATES and all(c.vector is None for c in candidates):
            items = execute(plan, stats)
        else:
            # Greedy policies over up to 1000 candidates are numpy work: keep the loop free.
            items = await asyncio.to_thread(execute, plan, stats)
        return RerankOutcome(items, plan.entry.name, POLICY_VERSION, plan.seed)

    async def _counters(
        self, ids: Sequence[str], deadline: HasTimeRemaining | None
    ) -> dict[str, ItemCounts]:
        if not ids:
            return {}
        try:
            timeout = outbound_timeout(deadline, self._stats_timeout, STATS_TIME_SHARE)
            return await self._stats.item_stats(ids, timeout)
        except (StatsUnavailable, DeadlineExceeded) as error:
            if self._stats_required:
                raise Unavailable(
                    "EXPOSURE_COUNTERS_UNAVAILABLE",
                    f"exposure counters could not be read: {error}",
                ) from error
            # Degrade, never fail: the policy runs as if no item had been shown yet.
            log.warning(
                "exposure counters unavailable; counting zero",
                extra={"fields": {"items": len(ids), "error": str(error)}},
            )
            return {}
