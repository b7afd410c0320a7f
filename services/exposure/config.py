"""Exposure settings, read from ``LONGTAIL_EXPOSURE_*``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from services.common.errors import InvalidArgument
from services.common.settings import SettingsError
from services.exposure.reranker import PolicyDefaults


@dataclasses.dataclass(frozen=True)
class ExposureSettings:
    # Where the exposure counters come from (the mirror's ListItemStats reads, GetItemStats
    # without it), for fair_exposure and explore.
    profiles_target: str = "127.0.0.1:50051"
    # The policy serving requests that name none (any name ListPolicies lists).
    default_policy: str = "tail_quota"
    # tail_quota's min_tail_share when a request leaves it unset. Measured offline on MovieLens
    # (per-user time split, K=10, the ranking service's learned ranker): relevance NDCG@10 0.151;
    # share 0.1 (one tail item by position 10) 0.146; 0.2 0.138; 0.3 0.130. 0.1 keeps the
    # default within 5% of relevance-only accuracy.
    default_min_tail_share: float = 0.1
    # Exploration slots added to requests that name no policy, from the first position on and
    # only where they fall inside the list (a top 10 gets one at 9; k <= 9 gets none). One slot
    # at position 9 (0-based, the last of a top 10) cost NDCG@10 0.0015 there (0.1455 -> 0.1440)
    # and lifted coverage@10 from 0.126 to 0.157; at position 2 it cost 0.008.
    default_explore_slots: int = 1
    default_explore_first_position: int = 9
    # Impressions' worth of evidence an item's relevance score is in the prior that picks which
    # cold (warm tail) item takes an exploration slot the flat posterior gives to cold (warm tail)
    # items; requests may set their own. 0: the flat prior alone. 10 was set a priori, not tuned:
    # `longtail eval` on MovieLens, one exploration slot, against 0: NDCG@10 unchanged on both
    # splits, TailRec@10 +48% (per-user) / +28% (cold-items), held-out cold items found among all
    # items +21% @10 / +8% @20, cold items' share of the slots unchanged, coverage@10 -3%; 30 finds
    # +87% / +20% held-out cold items but costs the per-user split tail and cold recall.
    default_explore_prior_strength: float = 10.0
    # Deadline of a GetItemStats call when the caller sets none (else a share of the caller's).
    profiles_timeout_seconds: float = 0.2
    # Exposure counters are served from memory this long after profiles answered (then refreshed
    # in the background): a Rerank then misses the impressions of the last seconds. 0 reads them
    # on every request, so that a list depends only on the requests served before it, never on
    # timing (``longtail eval`` runs so; its lists are reproducible run to run).
    stats_cache_seconds: float = 2.0
    # With the cache on, a mirror of every non-zero counter reads what changed this often (one
    # ListItemStats call, whatever the request rate), so that a Rerank makes no profiles call:
    # a served count then lags the impression log by about this plus the read. 0: no mirror
    # (every candidate not read in the last seconds is read inline, as with the cache alone).
    stats_mirror_seconds: float = 1.0
    # false: counters that cannot be read in time count as zero and the Rerank still succeeds
    # (serving never fails for them). true: the Rerank fails UNAVAILABLE (EXPOSURE_COUNTERS_
    # UNAVAILABLE) and the gateway serves, and counts, its fallback instead of a list computed
    # on counters that silently differ (``longtail eval`` runs so).
    stats_required: bool = False
    client_tls_ca_file: Path | None = None
    client_auth_token: str | None = None

    def __post_init__(self) -> None:
        if self.stats_cache_seconds < 0:
            raise SettingsError("configuration error: stats_cache_seconds must be >= 0")
        if self.stats_mirror_seconds < 0:
            raise SettingsError("configuration error: stats_mirror_seconds must be >= 0")
        self.policy_defaults()  # a bad default is a start-up error, not a per-request one

    def policy_defaults(self) -> PolicyDefaults:
        try:
            return PolicyDefaults(
                policy=self.default_policy,
                params={"tail_quota": {"min_tail_share": self.default_min_tail_share}},
                explore_slots=self.default_explore_slots,
                explore_first_position=self.default_explore_first_position,
                explore_prior_strength=self.default_explore_prior_strength,
            )
        except InvalidArgument as error:
            raise SettingsError(f"configuration error: {error.message}") from error
