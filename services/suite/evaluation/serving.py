"""Ask the running gateway for every test user's list, one exposure-policy setting at a time.

Numbers then describe what is served: the gateway's own history exclusion, candidate pool,
policy and fallbacks. Requests carry fixed request ids and a fixed seed; users go in a fixed
order. Policies whose state changes with impressions (fair_exposure reads the impression
counters, explore samples from them) are served one request at a time, so each request sees the
same counters on every run; the others run ``concurrency`` requests in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence

import grpc
from tqdm import tqdm

from longtail.common.v1 import common_pb2
from longtail.gateway.v1 import gateway_service_pb2
from longtail_client.client import LongtailClient, policy_spec

REASONS = {value: name.removeprefix("REASON_").lower() for name, value in common_pb2.Reason.items()}
ATTEMPTS = 3


@dataclasses.dataclass(frozen=True)
class PolicySetting:
    """One row of the sweep: a policy (None = the gateway's default) and its parameters."""

    family: str
    policy: str | None
    params: Mapping[str, float | bool] = dataclasses.field(default_factory=dict)
    explore_slots: int = 0

    @property
    def stateful(self) -> bool:
        """Order-dependent: reads impression counters that its own requests change."""
        # The default policy comes with the service's default exploration slots.
        return self.policy in ("fair_exposure", None) or self.explore_slots > 0

    @property
    def label(self) -> str:
        parts = [f"{key}={value:g}" for key, value in sorted(self.params.items())]
        if self.explore_slots:
            parts.append(f"explore={self.explore_slots}")
        return " ".join(parts) or "defaults"

    @property
    def slug(self) -> str:
        text = f"{self.policy or 'default'}-{self.label}".replace(" ", "-").replace("=", "")
        return text

    def spec(self, seed: int) -> common_pb2.PolicySpec:
        spec = policy_spec(self.policy or "relevance", dict(self.params), self.explore_slots, seed)
        if self.policy is None:
            spec.ClearField("relevance")  # no policy named: the service's default one serves
        return spec


def default_sweep(full: bool = False) -> list[PolicySetting]:
    """The exposure-policy settings to serve. Small by default (CI-speed), wider with ``full``.

    Stateless settings come first; fair_exposure and exploration last, so that the impressions
    they read are those of every earlier setting (fixed order, so the same on every run)."""
    quota = (0.1, 0.2, 0.3, 0.4, 0.5) if full else (0.1, 0.3, 0.5)
    xquad = (0.3, 0.6, 0.9) if full else (0.3, 0.9)
    settings = [PolicySetting("relevance", "relevance")]
    settings += [PolicySetting("tail_quota", "tail_quota", {"min_tail_share": s}) for s in quota]
    settings += [PolicySetting("tail_xquad", "tail_xquad", {"lambda": lam}) for lam in xquad]
    if full:
        settings += [
            PolicySetting("calibrated", "calibrated", {"lambda": lam}) for lam in (0.25, 0.5, 0.75)
        ]
        settings += [PolicySetting("mmr", "mmr", {"lambda": lam}) for lam in (0.5, 0.7, 0.9)]
        settings += [
            PolicySetting("fair_exposure", "fair_exposure", {"weight": w}) for w in (0.5, 1.0, 2.0)
        ]
    else:
        settings += [
            PolicySetting("calibrated", "calibrated"),
            PolicySetting("mmr", "mmr"),
            PolicySetting("fair_exposure", "fair_exposure"),
        ]
    settings.append(PolicySetting("default+explore", None, {}, explore_slots=1))
    return settings


@dataclasses.dataclass
class Served:
    lists: dict[str, list[str]]
    fallbacks: int = 0
    reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    # Served items the gateway flagged tail / cold, for a check against the evaluation's own.
    flagged_tail: dict[str, bool] = dataclasses.field(default_factory=dict)
    flagged_cold: dict[str, bool] = dataclasses.field(default_factory=dict)
    policy_names: Counter[str] = dataclasses.field(default_factory=Counter)


async def _recommend(
    client: LongtailClient,
    user: str,
    k: int,
    spec: common_pb2.PolicySpec,
    request_id: str,
    timeout: float,
) -> gateway_service_pb2.RecommendResponse:
    for attempt in range(ATTEMPTS):
        try:
            # The same request id on a retry: the gateway answers from its impression log.
            return await client.recommend(
                user, k, policy=spec, request_id=request_id, timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            retryable = error.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            if not retryable or attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def serve_setting(
    client: LongtailClient,
    users: Sequence[str],
    setting: PolicySetting,
    k: int,
    *,
    seed: int,
    run_tag: str,
    concurrency: int = 8,
    timeout: float = 30.0,
    progress: bool = True,
) -> Served:
    """Every user's top-k under ``setting``, asked of the gateway."""
    spec = setting.spec(seed)
    answers: dict[str, gateway_service_pb2.RecommendResponse] = {}
    in_flight = 1 if setting.stateful else max(1, concurrency)
    semaphore = asyncio.Semaphore(in_flight)
    desc = f"{setting.policy or 'default'} {setting.label}"
    with tqdm(total=len(users), desc=desc[:40], unit="req", disable=not progress) as bar:

        async def one(user: str) -> None:
            async with semaphore:
                answers[user] = await _recommend(
                    client, user, k, spec, f"{run_tag}:{setting.slug}:{user}", timeout
                )
                bar.update(1)

        if in_flight == 1:
            for user in users:
                await one(user)
        else:
            # Tasks start in user order and take the semaphore in that order.
            await asyncio.gather(*(one(user) for user in users))

    served = Served(lists={})
    for user in users:
        answer = answers[user]
        served.lists[user] = [item.item_id for item in answer.items]
        served.fallbacks += int(answer.fallback)
        served.policy_names[answer.policy_name] += 1
        for item in answer.items:
            served.reasons[REASONS.get(item.reason, "?")] += 1
            served.flagged_tail[item.item_id] = item.is_tail
            served.flagged_cold[item.item_id] = item.is_cold
    return served
