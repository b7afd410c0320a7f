"""Gateway settings, read from ``LONGTAIL_GATEWAY_*``."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    profiles_target: str = "127.0.0.1:50051"
    ranking_target: str = "127.0.0.1:50053"
    exposure_target: str = "127.0.0.1:50054"
    # Candidates asked of ranking per request (the pool the exposure policy chooses from).
    candidate_count: int = 100
    # History entries fetched per request (most recent first) and passed to ranking, whose scorer
    # reads the first 200 (ScorerConfig.max_history): more would only be read, converted and sent
    # to be dropped. The already-seen exclusion does not depend on it: it takes every item in the
    # profile's seen_item_ids.
    history_limit: int = 200
    # Profiles kept in the gateway, by user (0: none), serialized: about 5 KB for a user with 165
    # interactions, so 10,000 take about 55 MB. A kept user's list is chosen from the copy without
    # asking profiles, and logged only while the copy's version is still the user's (checked in
    # the impression write): every write the profile depends on moves the version, so nothing
    # recorded is ever hidden; a refused list is chosen again from a fresh read.
    profile_cache_size: int = 10_000
    # Deadline used when the caller sets none.
    default_deadline_seconds: float = 2.0
    # Share of the remaining time that ranking and exposure may use; the rest is kept for the
    # fallback and the impression write.
    pipeline_time_share: float = 0.6
    # Ceilings of the ranking and exposure hops (the caller's deadline usually binds first); past
    # them the answer comes from the fallback.
    ranking_timeout_seconds: float = 1.0
    exposure_timeout_seconds: float = 0.5
    # Ceilings of the profiles reads (profile, replay, item info) and writes (impressions,
    # feedback, remembered interests); the caller's deadline usually binds first. A profiles
    # failure fails the call (UNAVAILABLE): there is no fallback without the store.
    profile_timeout_seconds: float = 1.0
    write_timeout_seconds: float = 2.0
    # How often the fallback list (popular + tail items) is refreshed from the store.
    fallback_refresh_seconds: float = 60.0
    # Items kept in the fallback list, half head and half tail.
    fallback_size: int = 200
    title_cache_size: int = 200_000
    client_tls_ca_file: Path | None = None
    client_auth_token: str | None = None
