"""Exposure policies: pure, typed and deterministic given (inputs, seed).

A policy chooses the final ``k`` of a candidate pool and says why each item holds its place
(the exposure audit trail). Long-tail definitions are those of ``services.common.tail``:
head = the top 20% of catalogue items by interaction count in the training window; tail = the
rest, including cold items (zero interactions). Candidates arrive already flagged; an item flagged
cold counts as tail here even if its tail flag is missing (cold is a subset of the tail).

Conventions shared by every policy:
- The relevance order is score descending, ties by input order (then item id).
- Scores are min-max normalised before they are mixed with other terms; equal scores normalise to
  1 (no division by zero); huge magnitudes are scaled first so that nothing overflows.
- The served ``score`` is the candidate's own relevance score, whatever moved it.
- An item "moved up" is one placed ahead of an item that relevance ranks above it (that item is
  later in the list or left out). Moved-up items carry the policy's reason; the others RELEVANCE.
- Output: ``min(k, len(candidates))`` distinct candidates of the input.

Every random choice (only ``explore`` draws any) comes from a numpy Generator seeded from
(seed, request_id); an unset seed is derived from the request id, so a retry gets the same list.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Generic, NamedTuple, Self, TypeVar

import numpy as np
import numpy.typing as npt

from services.common.errors import InvalidArgument

POLICY_VERSION = "2026-11-27.1"

MIN_K = 1
MAX_K = 100
# Candidates per request (the contract's batch limit).
MAX_CANDIDATES = 1000
# Steck (2018) smooths the list's category distribution towards the user's with a small alpha so
# that KL stays finite when the list lacks one of the user's categories.
CALIBRATION_SMOOTHING = 0.01
DEFAULT_EXPLORE_FIRST_POSITION = 2
# A prior worth more impressions than this would never let feedback overrule it in practice.
MAX_EXPLORE_PRIOR_STRENGTH = 10_000.0
_TINY = 1e-300
# Added before flooring quota targets so that e.g. 0.29 * 100 asks for 29, not 28.
_QUOTA_EPSILON = 1e-9

FloatArray = npt.NDArray[np.float64]


class Reason(enum.Enum):
    """Why an item holds its place (mirrors longtail.common.v1.Reason, minus FALLBACK)."""

    RELEVANCE = "relevance"
    TAIL_BOOST = "tail_boost"
    EXPLORE = "explore"
    DIVERSITY = "diversity"


@dataclasses.dataclass(frozen=True)
class CandidateIn:
    item_id: str
    score: float
    is_tail: bool = False
    is_cold: bool = False
    categories: tuple[str, ...] = ()
    # Only sent for the diversity policies; None when absent.
    vector: tuple[float, ...] | None = None
    popularity: int = 0

    @property
    def in_tail(self) -> bool:
        return self.is_tail or self.is_cold


class ItemCounts(NamedTuple):
    """Cumulative exposure of one item, from the impression log."""

    impressions: int
    feedback: int


ZERO_COUNTS = ItemCounts(0, 0)


@dataclasses.dataclass(frozen=True)
class Placed:
    item_id: str
    score: float
    reason: Reason


@dataclasses.dataclass(frozen=True)
class PolicyContext:
    """What a policy sees: the (validated) pool in input order and the user's signals."""

    candidates: tuple[CandidateIn, ...]
    tail_propensity: float = 0.0
    # Normalised to sum 1, positive weights only; empty when the user has no mix.
    category_mix: Mapping[str, float] = dataclasses.field(default_factory=dict)
    stats: Mapping[str, ItemCounts] = dataclasses.field(default_factory=dict)

    def without(self, item_ids: set[str]) -> PolicyContext:
        kept = tuple(c for c in self.candidates if c.item_id not in item_ids)
        return dataclasses.replace(self, candidates=kept)


# ---------------------------------------------------------------------------------------------
# Configuration objects


def _param(name: str, low: float | None = None, high: float | None = None) -> dict[str, object]:
    """Field metadata: the parameter's wire name (the proto field) and its closed range."""
    return {"param": name, "low": low, "high": high}


class PolicyConfig:
    """Base of the per-policy configs: frozen dataclasses whose fields name their parameter."""

    POLICY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            meta = field.metadata
            value = getattr(self, field.name)
            name = str(meta.get("param", field.name))
            if field.type in (bool, "bool"):
                if not isinstance(value, bool):
                    raise InvalidArgument(
                        "INVALID_PARAMETER_TYPE",
                        f"{self.POLICY}.{name} must be a boolean",
                        policy=self.POLICY,
                        param=name,
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(
                    "INVALID_PARAMETER_TYPE",
                    f"{self.POLICY}.{name} must be a number",
                    policy=self.POLICY,
                    param=name,
                )
            low, high = meta.get("low"), meta.get("high")
            if (
                not math.isfinite(value)
                or (isinstance(low, float) and value < low)
                or (isinstance(high, float) and value > high)
            ):
                bounds = f"[{low if low is not None else '-inf'}, "
                bounds += f"{high if high is not None else 'inf'}]"
                raise InvalidArgument(
                    "PARAMETER_OUT_OF_RANGE",
                    f"{self.POLICY}.{name}={value} is outside {bounds}",
                    policy=self.POLICY,
                    param=name,
                    value=value,
                )

    @classmethod
    def param_fields(cls) -> dict[str, str]:
        """Parameter wire name -> dataclass field name."""
        return {
            str(f.metadata.get("param", f.name)): f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        }

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Self:
        """The config for these parameters (by wire name); unset ones keep their defaults."""
        fields = cls.param_fields()
        kwargs: dict[str, Any] = {}
        for name, value in params.items():
            if name not in fields:
                raise InvalidArgument(
                    "UNKNOWN_PARAMETER",
                    f"policy {cls.POLICY!r} has no parameter {name!r}; "
                    f"known: {', '.join(sorted(fields)) or 'none'}",
                    policy=cls.POLICY,
                    param=name,
                )
            kwargs[fields[name]] = value
        return cls(**kwargs)

    def params(self) -> dict[str, object]:
        return {name: getattr(self, attr) for name, attr in self.param_fields().items()}

    def as_text(self) -> dict[str, str]:
        """Parameter -> value as text (ListPolicies' defaults)."""
        return {name: _text(value) for name, value in self.params().items()}


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


@dataclasses.dataclass(frozen=True)
class RelevanceConfig(PolicyConfig):
    POLICY: ClassVar[str] = "relevance"


@dataclasses.dataclass(frozen=True)
class TailXquadConfig(PolicyConfig):
    POLICY: ClassVar[str] = "tail_xquad"
    lambda_: float = dataclasses.field(default=0.5, metadata=_param("lambda", 0.0, 1.0))
    personalized: bool = dataclasses.field(default=True, metadata=_param("personalized"))


@dataclasses.dataclass(frozen=True)
class CalibratedConfig(PolicyConfig):
    POLICY: ClassVar[str] = "calibrated"
    lambda_: float = dataclasses.field(default=0.5, metadata=_param("lambda", 0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class MmrConfig(PolicyConfig):
    POLICY: ClassVar[str] = "mmr"
    lambda_: float = dataclasses.field(default=0.7, metadata=_param("lambda", 0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class TailQuotaConfig(PolicyConfig):
    POLICY: ClassVar[str] = "tail_quota"
    min_tail_share: float = dataclasses.field(
        default=0.3, metadata=_param("min_tail_share", 0.0, 1.0)
    )


@dataclasses.dataclass(frozen=True)
class FairExposureConfig(PolicyConfig):
    POLICY: ClassVar[str] = "fair_exposure"
    weight: float = dataclasses.field(default=0.5, metadata=_param("weight", 0.0, None))


@dataclasses.dataclass(frozen=True)
class ExploreConfig:
    """Reserved Thompson-sampling slots; composes with any policy. 0 slots = none."""

    slots: int = 0
    first_position: int = DEFAULT_EXPLORE_FIRST_POSITION
    # How many impressions' worth of evidence the relevance score is in the prior that picks
    # which items of a group take its slots (``thompson_pick``). 0: the flat Beta(1, 1) alone.
    prior_strength: float = 0.0

    def validate(self, k: int) -> None:
        if not 0 <= self.slots <= k:
            raise InvalidArgument(
                "EXPLORE_SLOTS_OUT_OF_RANGE",
                f"explore.slots={self.slots} is outside [0, k={k}]",
                slots=self.slots,
                k=k,
            )
        if not 0 <= self.first_position < MAX_K:
            raise InvalidArgument(
                "PARAMETER_OUT_OF_RANGE",
                f"explore.first_position={self.first_position} is outside [0, {MAX_K - 1}]",
                policy="explore",
                param="first_position",
                value=self.first_position,
            )
        if not (
            math.isfinite(self.prior_strength)
            and 0.0 <= self.prior_strength <= MAX_EXPLORE_PRIOR_STRENGTH
        ):
            raise InvalidArgument(
                "PARAMETER_OUT_OF_RANGE",
                f"explore.prior_strength={self.prior_strength} is outside "
                f"[0, {MAX_EXPLORE_PRIOR_STRENGTH:g}]",
                policy="explore",
                param="prior_strength",
                value=self.prior_strength,
            )


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _ranked(candidates: Sequence[CandidateIn]) -> list[CandidateIn]:
    """The relevance order: score descending, ties by input order then item id."""
    order = sorted(
        range(len(candidates)),
        key=lambda i: (-candidates[i].score, i, candidates[i].item_id),
    )
    return [candidates[i] for i in order]


def minmax(values: Sequence[float]) -> FloatArray:
    """Min-max to [0, 1]; all-equal values give 1; safe for zero, negative and huge values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    scale = float(np.max(np.abs(x)))
    if scale > 0:
        x = x / scale  # within [-1, 1]: the span below cannot overflow
    low, high = float(x.min()), float(x.max())
    span = high - low
    if not span > 0:
        return np.ones_like(x)
    return np.clip((x - low) / span, 0.0, 1.0)


def _moved_up(order: Sequence[int]) -> list[bool]:
    """For each placed relevance rank: is some better-ranked item after it or left out?"""
    flags: list[bool] = []
    placed: list[int] = []
    for rank in order:
        better_before = sum(1 for other in placed if other < rank)
        flags.append(better_before < rank)
        placed.append(rank)
    return flags


def _place(
    ranked: Sequence[CandidateIn],
    order: Sequence[int],
    reason_if_moved: Callable[[CandidateIn], Reason],
) -> list[Placed]:
    return [
        Placed(
            ranked[rank].item_id,
            ranked[rank].score,
            reason_if_moved(ranked[rank]) if moved else Reason.RELEVANCE,
        )
        for rank, moved in zip(order, _moved_up(order), strict=True)
    ]


def _pick(gain: FloatArray, available: npt.NDArray[np.bool_]) -> int:
    """Argmax of ``gain`` over the available ranks; ties go to the better (lower) rank.

    Always returns an available rank, even if every gain is -inf (no item is picked twice).
    """
    ranks = np.flatnonzero(available)
    values = np.nan_to_num(gain[ranks], nan=-np.inf)
    best = int(ranks[int(np.argmax(values))])
    available[best] = False
    return best


def required_tail(min_tail_share: float, prefix_length: int) -> int:
    """Tail items a prefix of this length must hold: floor(min_tail_share * length)."""
    return math.floor(min_tail_share * prefix_length + _QUOTA_EPSILON)


# ---------------------------------------------------------------------------------------------
# Policies: (context, config, k) -> min(k, n) placed items


def relevance(ctx: PolicyContext, config: RelevanceConfig, k: int) -> list[Placed]:
    """No re-ranking: sort by score."""
    return [Placed(c.item_id, c.score, Reason.RELEVANCE) for c in _ranked(ctx.candidates)[:k]]


def tail_xquad(ctx: PolicyContext, config: TailXquadConfig, k: int) -> list[Placed]:
    """Personalised xQuAD over the aspects {head, tail} (Abdollahpouri et al. 2019).

    gain(i) = (1-lambda) rel(i) + lambda sum_a P(a|u) P(i in a) prod_{j in S} (1 - P(j in a))
    with binary membership, P(tail|u) = the user's tail propensity (0.5 when not personalised)
    and P(head|u) = 1 - P(tail|u). Membership being binary, each aspect's term vanishes once the
    list holds one of its items (the paper's "binary" variant); from then on relevance decides.
    Moved-up tail items: TAIL_BOOST; moved-up head items (lifted by the head aspect): DIVERSITY.
    """
    ranked = _ranked(ctx.candidates)
    n_out = min(k, len(ranked))
    if n_out == 0:
        return []
    rel = minmax([c.score for c in ranked])
    tail = np.array([1.0 if c.in_tail else 0.0 for c in ranked])
    head = 1.0 - tail
    p_tail = ctx.tail_propensity if config.personalized else 0.5
    lam = config.lambda_
    cover_tail = cover_head = 1.0
    available = np.ones(len(ranked), dtype=bool)
    order: list[int] = []
    for _ in range(n_out):
        aspects = p_tail * tail * cover_tail + (1.0 - p_tail) * head * cover_head
        best = _pick((1.0 - lam) * rel + lam * aspects, available)
        order.append(best)
        cover_tail *= 1.0 - tail[best]
        cover_head *= 1.0 - head[best]
    return _place(ranked, order, lambda c: Reason.TAIL_BOOST if c.in_tail else Reason.DIVERSITY)


def calibrated(ctx: PolicyContext, config: CalibratedConfig, k: int) -> list[Placed]:
    """Calibrated recommendations (Steck 2018) over the user's category mix.

    Greedy: maximise (1-lambda) * sum rel - lambda * KL(p_user || q_list~), where an item spreads
    its weight evenly over its categories, q_list averages that over the list's categorised items
    and q~ = (1-alpha) q + alpha p (alpha = CALIBRATION_SMOOTHING). Without a mix: relevance.
    Moved-up items: DIVERSITY.
    """
    mix = {cat: w for cat, w in ctx.category_mix.items() if w > 0}
    total = sum(mix.values())
    if not mix or not total > 0:
        return relevance(ctx, RelevanceConfig(), k)
    ranked = _ranked(ctx.candidates)
    n_out = min(k, len(ranked))
    if n_out == 0:
        return []
    cats = sorted(mix)
    column = {cat: i for i, cat in enumerate(cats)}
    p = np.array([mix[cat] / total for cat in cats])
    weights = np.zeros((len(ranked), len(cats)))
    categorised = np.zeros(len(ranked))
    for row, candidate in enumerate(ranked):
        own = set(candidate.categories)
        if not own:
            continue
        categorised[row] = 1.0
        for cat in own & column.keys():
            weights[row, column[cat]] = 1.0 / len(own)
    rel = minmax([c.score for c in ranked])
    lam = config.lambda_
    alpha = CALIBRATION_SMOOTHING
    sums = np.zeros(len(cats))
    count = 0.0
    available = np.ones(len(ranked), dtype=bool)
    order: list[int] = []
    for _ in range(n_out):
        items = count + categorised
        q = (sums[None, :] + weights) / np.where(items > 0, items, 1.0)[:, None]
        # alpha * p > 0 keeps KL finite; the floor guards against underflow of tiny shares.
        smoothed = np.maximum((1.0 - alpha) * q + alpha * p[None, :], _TINY)
        kl = np.sum(p[None, :] * np.log(p[None, :] / smoothed), axis=1)
        best = _pick((1.0 - lam) * rel - lam * kl, available)
        order.append(best)
        sums = sums + weights[best]
        count += float(categorised[best])
    return _place(ranked, order, lambda _: Reason.DIVERSITY)


def _vectors(ranked: Sequence[CandidateIn]) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Unit vectors (zero rows where absent or of zero norm) and which rows have one."""
    present = [c.vector for c in ranked if c.vector]
    dims = {len(v) for v in present}
    if len(dims) > 1:
        raise InvalidArgument(
            "VECTOR_DIMENSION_MISMATCH",
            f"candidate vectors have different dimensions: {sorted(dims)}",
        )
    dim = dims.pop() if dims else 0
    matrix = np.zeros((len(ranked), dim))
    rows = [row for row, candidate in enumerate(ranked) if candidate.vector]
    if rows:
        matrix[rows] = np.array(present, dtype=np.float64)  # one conversion, not one per row
    if not np.isfinite(matrix).all():
        raise InvalidArgument("NON_FINITE_VECTOR", "candidate vectors must be finite")
    norms = np.linalg.norm(matrix, axis=1) if dim else np.zeros(len(ranked))
    has = norms > 0
    matrix[has] = matrix[has] / norms[has][:, None]
    return matrix, has


def mmr(ctx: PolicyContext, config: MmrConfig, k: int) -> list[Placed]:
    """Maximal marginal relevance: lambda * rel - (1-lambda) * max similarity to the list.

    Similarity: cosine of the vectors when both items have one (of non-zero norm), else Jaccard of
    the category sets (0 when both are empty). Moved-up items: DIVERSITY.
    """
    ranked = _ranked(ctx.candidates)
    n_out = min(k, len(ranked))
    if n_out == 0:
        return []
    vectors, has_vector = _vectors(ranked)
    universe = sorted({cat for c in ranked for cat in c.categories})
    column = {cat: i for i, cat in enumerate(universe)}
    member = np.zeros((len(ranked), len(universe)))
    for row, candidate in enumerate(ranked):
        for cat in set(candidate.categories):
            member[row, column[cat]] = 1.0
    sizes = member.sum(axis=1)
    rel = minmax([c.score for c in ranked])
    lam = config.lambda_
    max_sim = np.zeros(len(ranked))  # max over the empty list: no penalty for the first pick
    available = np.ones(len(ranked), dtype=bool)
    order: list[int] = []
    for step in range(n_out):
        best = _pick(lam * rel - (1.0 - lam) * max_sim, available)
        order.append(best)
        cosine = vectors @ vectors[best]
        shared = member @ member[best]
        union = sizes + sizes[best] - shared
        jaccard = np.where(union > 0, shared / np.where(union > 0, union, 1.0), 0.0)
        sim = np.where(has_vector & has_vector[best], cosine, jaccard)
        max_sim = sim if step == 0 else np.maximum(max_sim, sim)
    return _place(ranked, order, lambda _: Reason.DIVERSITY)


def tail_quota(ctx: PolicyContext, config: TailQuotaConfig, k: int) -> list[Placed]:
    """FA*IR-style minimum tail share: every prefix of length p holds >= floor(share * p) tail.

    At each position the most relevant remaining item is placed unless the prefix would fall
    short of its quota, in which case the most relevant remaining tail item is forced in
    (TAIL_BOOST). When the pool runs out of tail items the quota cannot be met: every tail item
    the pool has is placed as early as the quota asks, then the rest goes by relevance.
    """
    ranked = _ranked(ctx.candidates)
    n_out = min(k, len(ranked))
    tails = [rank for rank, c in enumerate(ranked) if c.in_tail]
    heads = [rank for rank, c in enumerate(ranked) if not c.in_tail]
    next_tail = next_head = 0
    tail_count = 0
    placed: list[Placed] = []
    for length in range(1, n_out + 1):
        tail_rank = tails[next_tail] if next_tail < len(tails) else None
        head_rank = heads[next_head] if next_head < len(heads) else None
        short = tail_count < required_tail(config.min_tail_share, length)
        if tail_rank is not None and (short or head_rank is None or tail_rank < head_rank):
            forced = head_rank is not None and head_rank < tail_rank
            candidate = ranked[tail_rank]
            next_tail += 1
            tail_count += 1
            reason = Reason.TAIL_BOOST if forced else Reason.RELEVANCE
        else:
            assert head_rank is not None  # n_out <= n: some item remains
            candidate = ranked[head_rank]
            next_head += 1
            reason = Reason.RELEVANCE
        placed.append(Placed(candidate.item_id, candidate.score, reason))
    return placed


def restore_tail_quota(
    ctx: PolicyContext, config: TailQuotaConfig, placed: list[Placed]
) -> list[Placed]:
    """Re-establish the prefix quota on a list composed with exploration.

    Exploration may take the tail items the quota needed and hold them in later slots; then the
    first tail item further down (usually an explored one) is pulled forward to the prefix that
    needs it, so the quota wins over the exact slot positions. A list that meets the quota comes
    back unchanged. Pulled items keep EXPLORE; a pulled base item becomes TAIL_BOOST.
    """
    in_tail = {c.item_id: c.in_tail for c in ctx.candidates}
    remaining = list(placed)
    restored: list[Placed] = []
    tail_count = 0
    for length in range(1, len(placed) + 1):
        index = 0
        if tail_count < required_tail(config.min_tail_share, length):
            index = next((i for i, p in enumerate(remaining) if in_tail[p.item_id]), 0)
        item = remaining.pop(index)
        if index > 0 and item.reason is Reason.RELEVANCE:
            item = dataclasses.replace(item, reason=Reason.TAIL_BOOST)
        tail_count += in_tail[item.item_id]
        restored.append(item)
    return restored


def fair_exposure(ctx: PolicyContext, config: FairExposureConfig, k: int) -> list[Placed]:
    """Amortised fair exposure: lift items whose cumulative exposure lags their merit.

    merit(i) = rel(i) / sum rel (min-max relevance share of the pool); exposure(i) = the item's
    cumulative impressions / the pool's (0 when the pool was never shown); the list is re-sorted
    by merit + weight * max(0, merit - exposure), ties by relevance. An over-exposed item gets no
    lift and drops below lesser items that did. Moved-up items: TAIL_BOOST (the contract's reason
    for exposure promotions, whether the item is tail or, rarely, an under-exposed head item).
    """
    ranked = _ranked(ctx.candidates)
    n_out = min(k, len(ranked))
    if n_out == 0:
        return []
    rel = minmax([c.score for c in ranked])
    merit = rel / rel.sum()  # the best item has rel 1, so the sum is >= 1
    impressions = np.array(
        [max(0, ctx.stats.get(c.item_id, ZERO_COUNTS).impressions) for c in ranked],
        dtype=np.float64,
    )
    total = float(impressions.sum())
    exposure = impressions / total if total > 0 else np.zeros_like(impressions)
    final = merit + config.weight * np.maximum(0.0, merit - exposure)
    order = [int(rank) for rank in np.argsort(-final, kind="stable")[:n_out]]
    return _place(ranked, order, lambda _: Reason.TAIL_BOOST)


# ---------------------------------------------------------------------------------------------
# Registry: the one place Rerank and ListPolicies read

C = TypeVar("C", bound=PolicyConfig)


@dataclasses.dataclass(frozen=True)
class PolicyEntry(Generic[C]):
    name: str
    config_class: type[C]
    function: Callable[[PolicyContext, C, int], list[Placed]]
    description: str
    # Needs every candidate's exposure counters (ItemCounts).
    needs_stats: bool = False
    # Applied to the list composed with exploration (base + explored slots), when set.
    after_explore: Callable[[PolicyContext, C, list[Placed]], list[Placed]] | None = None

    def configure(self, params: Mapping[str, object]) -> C:
        return self.config_class.from_params(params)

    def defaults(self) -> dict[str, str]:
        return self.config_class().as_text()


REGISTRY: Mapping[str, PolicyEntry[Any]] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            PolicyEntry("relevance", RelevanceConfig, relevance, "No re-ranking: sort by score."),
            PolicyEntry(
                "tail_xquad",
                TailXquadConfig,
                tail_xquad,
                "Personalised xQuAD over {head, tail} (Abdollahpouri et al. 2019): the tail "
                "aspect is weighted by the user's tail propensity.",
            ),
            PolicyEntry(
                "calibrated",
                CalibratedConfig,
                calibrated,
                "Calibrated lists (Steck 2018): relevance minus KL from the user's category mix; "
                "relevance when the user has no mix.",
            ),
            PolicyEntry(
                "mmr",
                MmrConfig,
                mmr,
                "Maximal marginal relevance: cosine of item vectors, else Jaccard of categories.",
            ),
            PolicyEntry(
                "tail_quota",
                TailQuotaConfig,
                tail_quota,
                "FA*IR-style: every prefix of length p holds at least floor(min_tail_share * p) "
                "tail items (as many as the pool has).",
                after_explore=restore_tail_quota,
            ),
            PolicyEntry(
                "fair_exposure",
                FairExposureConfig,
                fair_exposure,
                "Amortised fair exposure: lifts items whose cumulative impressions lag their "
                "relevance share, from the impression log.",
                needs_stats=True,
            ),
        )
    }
)

# Not a policy of its own: PolicySpec.explore adds these slots to whichever policy serves.
EXPLORE_DESCRIPTION = (
    "Not a policy on its own: PolicySpec.explore reserves slots, spread from first_position on, "
    "for cold/tail items chosen by Thompson sampling on their feedback per impression, from a "
    "prior worth prior_strength impressions of their relevance score; composes with every policy."
)


def policy_entry(name: str) -> PolicyEntry[Any]:
    entry = REGISTRY.get(name)
    if entry is None:
        raise InvalidArgument(
            "UNKNOWN_POLICY",
            f"unknown policy {name!r}; known: {', '.join(REGISTRY)}",
            policy=name,
        )
    return entry


# ---------------------------------------------------------------------------------------------
# Exploration


def derive_seed(request_id: str) -> int:
    """The seed of a request that sets none: a retry of the same request draws the same list."""
    digest = hashlib.blake2b(f"seed:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _generator(seed: int, request_id: str) -> np.random.Generator:
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return np.random.default_rng(np.random.SeedSequence([seed, int.from_bytes(digest, "big")]))


def explore_positions(length: int, slots: int, first_position: int) -> list[int]:
    """``slots`` distinct positions of a list of ``length``, spread evenly from first_position.

    When the list is too short for that, the block moves forward so that every slot still fits.
    """
    slots = min(slots, length)
    if slots <= 0:
        return []
    start = min(first_position, length - slots)
    span = length - start
    return [start + (i * span) // slots for i in range(slots)]


def thompson_pick(
    pool: Sequence[CandidateIn],
    stats: Mapping[str, ItemCounts],
    count: int,
    rng: np.random.Generator,
    prior_strength: float = 0.0,
) -> list[CandidateIn]:
    """The ``count`` best of ``pool`` by one Beta(1 + feedback, 1 + misses) draw each.

    With a prior strength ``s > 0`` those draws decide only how many of the slots go to cold
    items and how many to warm tail items (so cold items keep exactly the share the flat prior
    gives them; the ranker rates them below warm items for want of evidence). Which items of a
    group take its slots is decided by a second draw each, from
    ``Beta(1 + s m + feedback, 1 + s (1 - m) + misses)`` with ``m`` the item's relevance score
    min-max normalised within its group: among items nobody has seen yet the better rated are
    tried first, and after about ``s`` impressions the feedback decides."""
    if count <= 0 or not pool:
        return []
    counts = [stats.get(c.item_id, ZERO_COUNTS) for c in pool]
    hits = np.array([max(0, n.feedback) for n in counts], dtype=np.float64)
    misses = np.array([max(0, n.impressions - n.feedback) for n in counts], dtype=np.float64)
    draws = rng.beta(1.0 + hits, 1.0 + misses)
    order = sorted(range(len(pool)), key=lambda i: (-float(draws[i]), i))[:count]
    if prior_strength <= 0:
        return [pool[i] for i in order]
    groups = {cold: [i for i, c in enumerate(pool) if c.is_cold == cold] for cold in (True, False)}
    merit = np.zeros(len(pool), dtype=np.float64)
    for members in groups.values():
        merit[members] = minmax([pool[i].score for i in members])
    informed = rng.beta(
        1.0 + hits + prior_strength * merit, 1.0 + misses + prior_strength * (1.0 - merit)
    )
    ranked = {
        cold: iter(sorted(members, key=lambda i: (-float(informed[i]), i)))
        for cold, members in groups.items()
    }
    # Each slot keeps the group of the flat draw's pick; the group's best informed draw fills it.
    return [pool[next(ranked[pool[i].is_cold])] for i in order]


# ---------------------------------------------------------------------------------------------
# The request: validate (plan), then execute


@dataclasses.dataclass(frozen=True)
class RerankInput:
    request_id: str
    candidates: Sequence[CandidateIn]
    k: int
    policy: str
    params: Mapping[str, object] = dataclasses.field(default_factory=dict)
    explore: ExploreConfig = ExploreConfig()
    seed: int | None = None
    tail_propensity: float = 0.0
    category_mix: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RerankPlan:
    """A validated request: everything but the exposure counters."""

    request_id: str
    entry: PolicyEntry[Any]
    config: PolicyConfig
    explore: ExploreConfig
    k: int
    seed: int
    context: PolicyContext

    def stats_ids(self) -> list[str]:
        """Items whose counters this plan reads (empty: fetch nothing)."""
        if self.entry.needs_stats:
            return [c.item_id for c in self.context.candidates]
        if self.explore.slots > 0:
            return [c.item_id for c in self.context.candidates if c.in_tail]
        return []


def _validate_candidates(candidates: Sequence[CandidateIn]) -> None:
    if len(candidates) > MAX_CANDIDATES:
        raise InvalidArgument(
            "BATCH_TOO_LARGE",
            f"{len(candidates)} candidates; at most {MAX_CANDIDATES}",
            limit=MAX_CANDIDATES,
        )
    seen: set[str] = set()
    for index, candidate in enumerate(candidates):
        if not candidate.item_id:
            raise InvalidArgument(
                "EMPTY_ITEM_ID", f"candidate {index} has an empty item_id", index=index
            )
        if candidate.item_id in seen:
            raise InvalidArgument(
                "DUPLICATE_CANDIDATE",
                f"candidate {candidate.item_id!r} appears more than once",
                item_id=candidate.item_id,
            )
        seen.add(candidate.item_id)
        if not math.isfinite(candidate.score):
            raise InvalidArgument(
                "NON_FINITE_SCORE",
                f"candidate {candidate.item_id!r} has score {candidate.score}",
                item_id=candidate.item_id,
            )


def _normalised_mix(mix: Mapping[str, float]) -> dict[str, float]:
    for category, weight in mix.items():
        if not math.isfinite(weight) or weight < 0:
            raise InvalidArgument(
                "INVALID_CATEGORY_MIX",
                f"category_mix[{category!r}]={weight}; weights must be finite and >= 0",
                category=category,
            )
    largest = max(mix.values(), default=0.0)
    if not largest > 0:
        return {}
    scaled = {category: weight / largest for category, weight in mix.items()}  # no overflow
    total = math.fsum(scaled.values())
    shares = {category: weight / total for category, weight in scaled.items()}
    return {category: share for category, share in shares.items() if share > 0}


def plan_rerank(request: RerankInput) -> RerankPlan:
    """Validate a request (raises InvalidArgument with a reason) and resolve its configuration."""
    if not MIN_K <= request.k <= MAX_K:
        raise InvalidArgument(
            "K_OUT_OF_RANGE", f"k={request.k} is outside [{MIN_K}, {MAX_K}]", k=request.k
        )
    entry = policy_entry(request.policy)
    config = entry.configure(request.params)
    request.explore.validate(request.k)
    if request.seed is not None and not 0 <= request.seed < 2**64:
        raise InvalidArgument(
            "PARAMETER_OUT_OF_RANGE", "seed must fit in 64 unsigned bits", param="seed"
        )
    if not 0.0 <= request.tail_propensity <= 1.0:  # also false for NaN
        raise InvalidArgument(
            "PARAMETER_OUT_OF_RANGE",
            f"tail_propensity={request.tail_propensity} is outside [0, 1]",
            param="tail_propensity",
        )
    _validate_candidates(request.candidates)
    return RerankPlan(
        request_id=request.request_id,
        entry=entry,
        config=config,
        explore=request.explore,
        k=request.k,
        seed=derive_seed(request.request_id) if request.seed is None else request.seed,
        context=PolicyContext(
            candidates=tuple(request.candidates),
            tail_propensity=request.tail_propensity,
            category_mix=_normalised_mix(request.category_mix),
        ),
    )


def execute(plan: RerankPlan, stats: Mapping[str, ItemCounts] | None = None) -> list[Placed]:
    """Run a plan. ``stats`` (missing items count zero) feeds fair_exposure and explore.

    Exploration: the best Thompson draws among the cold/tail candidates take the reserved slots
    (EXPLORE); the base policy fills the other positions from the remaining candidates. Slots the
    pool cannot fill (no or too few cold/tail candidates) go to the base policy. tail_quota may
    then pull an explored item forward of its slot when the quota needs it (restore_tail_quota).
    """
    ctx = dataclasses.replace(plan.context, stats=MappingProxyType(dict(stats or {})))
    n_out = min(plan.k, len(ctx.candidates))
    pool = [c for c in ctx.candidates if c.in_tail]
    slots = min(plan.explore.slots, len(pool), n_out)
    if slots == 0:
        result: list[Placed] = plan.entry.function(ctx, plan.config, plan.k)
        return result
    picked = thompson_pick(
        pool,
        ctx.stats,
        slots,
        _generator(plan.seed, plan.request_id),
        plan.explore.prior_strength,
    )
    base: list[Placed] = plan.entry.function(
        ctx.without({c.item_id for c in picked}), plan.config, n_out - slots
    )
    positions = explore_positions(n_out, slots, plan.explore.first_position)
    explored = iter(Placed(c.item_id, c.score, Reason.EXPLORE) for c in picked)
    rest = iter(base)
    slot_set = set(positions)
    merged = [next(explored) if p in slot_set else next(rest) for p in range(n_out)]
    if plan.entry.after_explore is not None:
        merged = plan.entry.after_explore(ctx, plan.config, merged)
    return merged


def rerank(request: RerankInput, stats: Mapping[str, ItemCounts] | None = None) -> list[Placed]:
    """Validate and run in one go (for callers that already hold the counters)."""
    return execute(plan_rerank(request), stats)


@dataclasses.dataclass(frozen=True)
class PolicyInfo:
    name: str
    description: str
    defaults: dict[str, str]


def describe_policies(
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    explore: ExploreConfig | None = None,
) -> list[PolicyInfo]:
    """Every policy with its defaults (``overrides``: a service's own defaults per policy)."""
    overrides = overrides or {}
    infos = []
    for name, entry in REGISTRY.items():
        defaults = (
            entry.configure(overrides[name]).as_text() if name in overrides else entry.defaults()
        )
        infos.append(PolicyInfo(name, entry.description, defaults))
    explore = explore or ExploreConfig()
    infos.append(
        PolicyInfo(
            "explore",
            EXPLORE_DESCRIPTION,
            {
                "slots": str(explore.slots),
                "first_position": str(explore.first_position),
                "prior_strength": _text(explore.prior_strength),
            },
        )
    )
    return infos
