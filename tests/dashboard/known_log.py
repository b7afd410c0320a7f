"""A small impression log with known figures, written through the profiles RPCs.

Twenty items: four with many interactions (the head: the top 20%), six with one (tail), ten with
none (cold); three policy versions serve twelve lists of four over six hours; some impressions
are clicked (one twice), one gets a view (not a click) and one click names an item its list did
not hold (not a clicked impression). ``expected_*`` recompute every dashboard figure from what the
log holds, read back through ListImpressions / ListItemStats, with ``services.common.tail``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter, defaultdict

from google.protobuf import timestamp_pb2

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as pb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.observability import gini
from services.common.tail import head_items

START = dt.datetime(2026, 1, 5, 0, 0, tzinfo=dt.UTC)
END = START + dt.timedelta(hours=6)
ITEMS = [f"item-{n:02d}" for n in range(20)]
# Interactions per item before any feedback: 00-03 head, 04-09 tail, 10-19 cold.
HISTORY = {ITEMS[0]: 10, ITEMS[1]: 8, ITEMS[2]: 6, ITEMS[3]: 5} | {
    ITEMS[n]: 1 for n in range(4, 10)
}
POLICIES = [("relevance", "2026-01-01.1"), ("tail_quota", "2026-01-01.1"), ("tail_quota", "v2")]
REASONS = [common_pb2.REASON_RELEVANCE, common_pb2.REASON_TAIL_BOOST, common_pb2.REASON_EXPLORE]


def stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


@dataclasses.dataclass(frozen=True)
class ServedList:
    request_id: str
    user_id: str
    policy: tuple[str, str]
    items: list[str]
    scores: list[float]
    served_at: dt.datetime


def served_lists() -> list[ServedList]:
    lists = []
    for n in range(12):
        policy = POLICIES[n % 3]
        # Relevance serves mostly head; the tail quota mixes in tail and cold items.
        if policy[0] == "relevance":
            items = [ITEMS[(n + j) % 4] for j in range(3)] + [ITEMS[4 + n % 6]]
        else:
            items = [ITEMS[n % 4], ITEMS[4 + n % 6], ITEMS[10 + n % 10], ITEMS[10 + (n + 3) % 10]]
        scores = [1.0 - 0.2 * j for j in range(4)] if n != 5 else [0.5] * 4  # one flat list
        lists.append(
            ServedList(
                request_id=f"req-{n:02d}",
                user_id=f"user-{n % 5}",
                policy=policy,
                items=items,
                scores=scores,
                # 30 minutes apart from 00:10, so that every hour holds two lists.
                served_at=START + dt.timedelta(minutes=10 + 30 * n),
            )
        )
    return lists


# (request_id, item_id, kind): clicks (req-01 item clicked twice), a view, a stray click.
FEEDBACK = [
    ("req-00", 0, common_pb2.INTERACTION_KIND_CLICK),
    ("req-01", 1, common_pb2.INTERACTION_KIND_CLICK),
    ("req-01", 1, common_pb2.INTERACTION_KIND_CLICK),
    ("req-01", 2, common_pb2.INTERACTION_KIND_CLICK),
    ("req-02", 3, common_pb2.INTERACTION_KIND_CLICK),
    ("req-04", 2, common_pb2.INTERACTION_KIND_CLICK),
    ("req-04", 0, common_pb2.INTERACTION_KIND_VIEW),
    ("req-07", 3, common_pb2.INTERACTION_KIND_CLICK),
]
# A click whose item the list did not hold: feedback, but no clicked impression.
STRAY_CLICK = ("req-03", ITEMS[19])


async def write(stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub) -> list[ServedList]:
    """Catalogue, history, the served lists and the feedback, through the RPCs."""
    await stub.UpsertItems(
        pb.UpsertItemsRequest(
            items=[common_pb2.Item(item_id=i, title=f"Title of {i}") for i in ITEMS]
        )
    )
    history = [
        common_pb2.Interaction(
            user_id=f"user-{k % 5}",
            item_id=item_id,
            kind=common_pb2.INTERACTION_KIND_RATING,
            value=4.0,
            occurred_at=stamp(START - dt.timedelta(days=1, minutes=k)),
        )
        for item_id, count in HISTORY.items()
        for k in range(count)
    ]
    await stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=history, create_missing_users=True)
    )
    lists = served_lists()
    for served in lists:
        await stub.RecordImpressions(
            pb.RecordImpressionsRequest(
                impressions=[
                    common_pb2.Impression(
                        request_id=served.request_id,
                        position=position,
                        user_id=served.user_id,
                        item_id=item_id,
                        policy_name=served.policy[0],
                        policy_version=served.policy[1],
                        reason=REASONS[position % len(REASONS)],
                        score=served.scores[position],
                        served_at=stamp(served.served_at),
                    )
                    for position, item_id in enumerate(served.items)
                ]
            )
        )
    by_id = {served.request_id: served for served in lists}
    feedback = [
        (request_id, by_id[request_id].items[position], kind, k)
        for k, (request_id, position, kind) in enumerate(FEEDBACK)
    ] + [(STRAY_CLICK[0], STRAY_CLICK[1], common_pb2.INTERACTION_KIND_CLICK, len(FEEDBACK))]
    await stub.RecordInteractions(
        pb.RecordInteractionsRequest(
            interactions=[
                common_pb2.Interaction(
                    user_id=by_id[request_id].user_id,
                    item_id=item_id,
                    kind=kind,
                    request_id=request_id,
                    occurred_at=stamp(by_id[request_id].served_at + dt.timedelta(seconds=30 + k)),
                )
                for request_id, item_id, kind, k in feedback
            ]
        )
    )
    return lists


@dataclasses.dataclass(frozen=True)
class Log:
    """What the store holds, read back through the RPCs."""

    impressions: list[common_pb2.Impression]
    feedback: list[common_pb2.Interaction]
    interaction_counts: dict[str, int]

    @property
    def head(self) -> frozenset[str]:
        return head_items(self.interaction_counts)

    def is_tail(self, item_id: str) -> bool:
        return item_id not in self.head

    def is_cold(self, item_id: str) -> bool:
        return self.interaction_counts.get(item_id, 0) == 0

    def in_window(self, start: dt.datetime, end: dt.datetime) -> list[common_pb2.Impression]:
        return [i for i in self.impressions if start <= i.served_at.ToDatetime(tzinfo=dt.UTC) < end]


async def read_back(
    stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub, request_ids: list[str]
) -> Log:
    impressions: list[common_pb2.Impression] = []
    for request_id in request_ids:
        answer = await stub.ListImpressions(pb.ListImpressionsRequest(request_id=request_id))
        impressions.extend(answer.impressions)
    stats = await stub.ListItemStats(pb.ListItemStatsRequest(page_size=10_000))
    interactions = await stub.ListInteractions(pb.ListInteractionsRequest(page_size=10_000))
    return Log(
        impressions=impressions,
        feedback=[i for i in interactions.interactions if i.request_id],
        interaction_counts={s.item_id: s.interaction_count for s in stats.stats},
    )


@dataclasses.dataclass(frozen=True)
class Expected:
    impressions: int
    lists: int
    tail: int
    cold: int
    distinct_items: int
    catalogue_size: int
    gini: float
    # (name, version) -> (lists, head, tail, cold impressions, head, tail, cold clicks)
    per_policy: dict[tuple[str, str], tuple[int, int, int, int, int, int, int]]
    # item_id -> (impression share, merit share)
    shares: dict[str, tuple[float, float]]


def expected(log: Log, start: dt.datetime, end: dt.datetime) -> Expected:
    window = log.in_window(start, end)
    per_item = Counter(i.item_id for i in window)
    clicked = {
        (f.request_id, f.item_id)
        for f in log.feedback
        if f.kind == common_pb2.INTERACTION_KIND_CLICK
    }
    policy: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * 7)
    lists_per_policy: dict[tuple[str, str], set[str]] = defaultdict(set)
    for i in window:
        key = (i.policy_name, i.policy_version)
        lists_per_policy[key].add(i.request_id)
        row = policy[key]
        was_clicked = (i.request_id, i.item_id) in clicked
        tail, cold = log.is_tail(i.item_id), log.is_cold(i.item_id)
        row[1 if not tail else 2] += 1
        row[3] += cold
        row[4 if not tail else 5] += was_clicked
        row[6] += cold and was_clicked
    for key, row in policy.items():
        row[0] = len(lists_per_policy[key])
    # Merit as fair_exposure weighs it, per served list.
    by_request: dict[str, list[common_pb2.Impression]] = defaultdict(list)
    for i in window:
        by_request[i.request_id].append(i)
    merit: dict[str, float] = defaultdict(float)
    for rows in by_request.values():
        scores = [r.score for r in rows]
        low, high = min(scores), max(scores)
        rel = [(s - low) / (high - low) if high > low else 1.0 for s in scores]
        for r, value in zip(rows, rel, strict=True):
            merit[r.item_id] += value / sum(rel)
    total = len(window)
    return Expected(
        impressions=total,
        lists=len(by_request),
        tail=sum(log.is_tail(i.item_id) for i in window),
        cold=sum(log.is_cold(i.item_id) for i in window),
        distinct_items=len(per_item),
        catalogue_size=len(log.interaction_counts),
        gini=gini(list(per_item.values()), len(log.interaction_counts)),
        per_policy={key: tuple(row) for key, row in policy.items()},  # type: ignore[misc]
        shares={
            item_id: (n / total, merit[item_id] / len(by_request))
            for item_id, n in per_item.items()
        },
    )
