"""ExposureService: translates proto <-> domain, nothing more."""

from __future__ import annotations

from google.protobuf import message, unknown_fields

from longtail.common.v1 import common_pb2
from longtail.exposure.v1 import exposure_service_pb2, exposure_service_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.server import Context
from services.exposure.policies import (
    POLICY_VERSION,
    CandidateIn,
    ExploreConfig,
    Reason,
)
from services.exposure.reranker import Reranker, RerankQuery

_REASONS = {
    Reason.RELEVANCE: common_pb2.REASON_RELEVANCE,
    Reason.TAIL_BOOST: common_pb2.REASON_TAIL_BOOST,
    Reason.EXPLORE: common_pb2.REASON_EXPLORE,
    Reason.DIVERSITY: common_pb2.REASON_DIVERSITY,
}
# PolicySpec's field numbers below 10 belong to the policy oneof.
_POLICY_ONEOF_MAX_FIELD = 9


def _unknown(msg: message.Message) -> list[int]:
    """Field numbers a newer contract set and this one does not know."""
    fields = unknown_fields.UnknownFieldSet(msg)
    return sorted({fields[i].field_number for i in range(len(fields))})


def _policy(spec: common_pb2.PolicySpec) -> tuple[str | None, dict[str, object]]:
    """The named policy and its explicitly set parameters (by proto field name)."""
    unknown = _unknown(spec)
    if any(number <= _POLICY_ONEOF_MAX_FIELD for number in unknown):
        raise InvalidArgument(
            "UNKNOWN_POLICY",
            f"the policy set in PolicySpec (field {unknown[0]}) is unknown to this service",
            field=unknown[0],
        )
    if unknown:
        raise InvalidArgument(
            "UNKNOWN_PARAMETER",
            f"PolicySpec field {unknown[0]} is unknown to this service",
            param=unknown[0],
        )
    which = spec.WhichOneof("policy")
    if which is None:
        return None, {}
    params_message: message.Message = getattr(spec, which)
    unknown = _unknown(params_message)
    if unknown:
        raise InvalidArgument(
            "UNKNOWN_PARAMETER",
            f"policy {which!r} has no parameter number {unknown[0]} in this service's contract",
            policy=which,
            param=unknown[0],
        )
    return which, {field.name: value for field, value in params_message.ListFields()}


def _explore(
    spec: common_pb2.PolicySpec,
) -> tuple[ExploreConfig | None, int | None, float | None]:
    if not spec.HasField("explore"):
        return None, None, None
    explore = spec.explore
    unknown = _unknown(explore)
    if unknown:
        raise InvalidArgument(
            "UNKNOWN_PARAMETER",
            f"explore has no parameter number {unknown[0]} in this service's contract",
            policy="explore",
            param=unknown[0],
        )
    # Unset first_position / prior_strength: the service's configured default (resolved by the
    # reranker).
    first = explore.first_position if explore.HasField("first_position") else None
    strength = explore.prior_strength if explore.HasField("prior_strength") else None
    return ExploreConfig(slots=explore.slots), first, strength


def _candidate(candidate: common_pb2.Candidate) -> CandidateIn:
    return CandidateIn(
        item_id=candidate.item_id,
        score=candidate.score,
        is_tail=candidate.is_tail,
        is_cold=candidate.is_cold,
        categories=tuple(candidate.categories),
        vector=tuple(candidate.vector) if len(candidate.vector) else None,
        popularity=candidate.popularity,
    )


def query_from_proto(request: exposure_service_pb2.RerankRequest) -> RerankQuery:
    policy: str | None = None
    params: dict[str, object] = {}
    explore: ExploreConfig | None = None
    first_position: int | None = None
    prior_strength: float | None = None
    seed: int | None = None
    if request.HasField("policy"):
        policy, params = _policy(request.policy)
        explore, first_position, prior_strength = _explore(request.policy)
        if request.policy.HasField("seed"):
            seed = request.policy.seed
    return RerankQuery(
        request_id=request.request_id,
        user_id=request.user_id,
        candidates=[_candidate(c) for c in request.candidates],
        k=request.k,
        explore_first_position=first_position,
        explore_prior_strength=prior_strength,
        policy=policy,
        params=params,
        explore=explore,
        seed=seed,
        tail_propensity=request.tail_propensity,
        category_mix=dict(request.category_mix),
    )


class ExposureServicer(exposure_service_pb2_grpc.ExposureServiceServicer):
    def __init__(self, reranker: Reranker) -> None:
        self._reranker = reranker

    async def Rerank(
        self, request: exposure_service_pb2.RerankRequest, context: Context
    ) -> exposure_service_pb2.RerankResponse:
        outcome = await self._reranker.rerank(query_from_proto(request), context)
        flags = {c.item_id: (c.is_tail, c.is_cold) for c in request.candidates}
        return exposure_service_pb2.RerankResponse(
            items=[
                common_pb2.RankedItem(
                    item_id=item.item_id,
                    position=position,
                    score=item.score,
                    reason=_REASONS[item.reason],
                    is_tail=flags[item.item_id][0],
                    is_cold=flags[item.item_id][1],
                )
                for position, item in enumerate(outcome.items)
            ],
            policy_name=outcome.policy_name,
            policy_version=outcome.policy_version,
        )

    async def ListPolicies(
        self, request: exposure_service_pb2.ListPoliciesRequest, context: Context
    ) -> exposure_service_pb2.ListPoliciesResponse:
        return exposure_service_pb2.ListPoliciesResponse(
            policies=[
                exposure_service_pb2.PolicyDescription(
                    name=info.name, description=info.description, defaults=info.defaults
                )
                for info in self._reranker.describe()
            ],
            default_policy=self._reranker.default_policy,
            policy_version=POLICY_VERSION,
        )
