"""Plain records of the profiles domain (no gRPC, no SQL): what the servicer translates to/from."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import numpy.typing as npt

# Interaction kinds and served-item reasons as stored (the proto enums without their prefixes).
INTERACTION_KINDS = ("view", "click", "purchase", "rating")
REASONS = ("relevance", "tail_boost", "explore", "diversity", "fallback")

Vector = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class ItemVector:
    values: Vector
    model_name: str
    model_version: str


@dataclasses.dataclass(frozen=True)
class ItemRecord:
    item_id: str
    title: str = ""
    description: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    categories: list[str] = dataclasses.field(default_factory=list)
    attributes: dict[str, str] = dataclasses.field(default_factory=dict)
    # None on input: now (new items) or unchanged (existing items).
    created_at: dt.datetime | None = None
    vector: ItemVector | None = None


@dataclasses.dataclass(frozen=True)
class VectorUpdate:
    item_id: str
    vector: ItemVector


@dataclasses.dataclass(frozen=True)
class UserRecord:
    user_id: str
    interests: str = ""
    attributes: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class InteractionRecord:
    user_id: str
    item_id: str
    kind: str
    value: float = 0.0
    # None on input: the time it is recorded.
    occurred_at: dt.datetime | None = None
    # Empty on input: derived from the other fields (see profiles.derive_idempotency_key).
    idempotency_key: str = ""
    request_id: str = ""


@dataclasses.dataclass(frozen=True)
class ImpressionRecord:
    request_id: str
    position: int
    user_id: str
    item_id: str
    reason: str
    policy_name: str = ""
    policy_version: str = ""
    score: float = 0.0
    # None on input: the time it is recorded.
    served_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class ServedEntry:
    """What identifies one position of a served list: a replayed batch must match it exactly (the
    score and the time served are not part of it)."""

    position: int
    user_id: str
    item_id: str
    reason: str
    policy_name: str
    policy_version: str

    @classmethod
    def of(cls, record: ImpressionRecord) -> ServedEntry:
        return cls(
            record.position,
            record.user_id,
            record.item_id,
            record.reason,
            record.policy_name,
            record.policy_version,
        )


@dataclasses.dataclass(frozen=True)
class RequestState:
    """What RecordImpressions reads before it claims a request_id."""

    stored: list[ServedEntry]
    # The user's profile_version counter; None when the user has no row yet.
    profile_version: int | None

    @property
    def user_exists(self) -> bool:
        return self.profile_version is not None


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    item_id: str
    kind: str
    value: float
    occurred_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class UserProfile:
    user_id: str
    interests: str
    history: list[HistoryEntry]
    tail_propensity: float
    category_mix: dict[str, float]
    interaction_count: int
    # Every distinct item the user touched, beyond the history limit.
    seen_item_ids: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ProfileRead:
    """A profile read (GetUserProfile): the profile, None for an unknown user or when the caller's
    version is current (``unchanged``); its version ("" for an unknown user); the impressions
    logged under the request_id asked about."""

    profile: UserProfile | None
    version: str
    unchanged: bool = False
    served: list[ImpressionRecord] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ItemStats:
    item_id: str
    interaction_count: int
    impression_count: int
    feedback_count: int
    is_tail: bool
    is_cold: bool


@dataclasses.dataclass(frozen=True)
class CatalogStats:
    item_count: int
    user_count: int
    interaction_count: int
    impression_count: int
    head_item_count: int
    cold_item_count: int
    head_min_interactions: int
    computed_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class ItemFilter:
    """ListItems filters; empty strings mean "not set"."""

    stale_for_model_name: str = ""
    stale_for_model_version: str = ""
    vector_model_name: str = ""
    vector_model_version: str = ""


@dataclasses.dataclass(frozen=True)
class WriteResult:
    recorded: int
    duplicates: int
