"""The dashboard's profiles RPCs against a log with known figures, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator

import grpc
import pytest
import sqlalchemy as sa

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as pb
from services.common.errors import error_info
from services.common.tail import head_items
from services.profiles.dashboard_queries import HeadBoundary, lorenz_points
from services.profiles.repository import counters_t
from services.profiles.store import Database, create_store_engine
from tests.dashboard import known_log
from tests.dashboard.known_log import END, START, stamp
from tests.profiles.conftest import Served, serve, store_url

__all__ = ["store_url"]  # the fixture, parametrised over SQLite and PostgreSQL

HOUR = dt.timedelta(hours=1)


def window(start: dt.datetime, end: dt.datetime) -> pb.ServedWindow:
    return pb.ServedWindow(start_time=stamp(start), end_time=stamp(end))


@pytest.fixture
async def logged(store_url: str) -> AsyncIterator[tuple[Served, known_log.Log]]:
    service = await serve(store_url)
    try:
        lists = await known_log.write(service.stub)
        log = await known_log.read_back(service.stub, [s.request_id for s in lists])
        yield service, log
    finally:
        await service.channel.close()
        await service.running.stop(grace=0)


async def test_summary_equals_the_counts_of_the_log(logged: tuple[Served, known_log.Log]) -> None:
    served, log = logged
    # The feedback moved no item across the head boundary it had before (same classes as set).
    assert log.head == frozenset(known_log.ITEMS[:4])
    for start, end in ((START, END), (START + HOUR, START + 3 * HOUR)):
        answer = await served.stub.GetExposureSummary(
            pb.GetExposureSummaryRequest(window=window(start, end), bucket_count=6)
        )
        want = known_log.expected(log, start, end)
        assert answer.impression_count == want.impressions
        assert answer.list_count == want.lists
        assert answer.tail_impression_count == want.tail
        assert answer.cold_impression_count == want.cold
        assert answer.distinct_item_count == want.distinct_items
        assert answer.catalogue_size == want.catalogue_size == 20
        assert answer.head_item_count == 4
        assert answer.cold_item_count == sum(log.is_cold(i) for i in known_log.ITEMS)
        assert answer.exposure_gini == pytest.approx(want.gini, abs=1e-12)
        width = (end - start) / 6
        assert answer.bucket_seconds == width.total_seconds()
        assert len(answer.buckets) == 6
        for index, bucket in enumerate(answer.buckets):
            low = start + index * width
            assert bucket.start_time.ToDatetime(tzinfo=dt.UTC) == low
            inside = log.in_window(low, low + width)
            assert bucket.impression_count == len(inside)
            assert bucket.tail_impression_count == sum(log.is_tail(i.item_id) for i in inside)
            assert bucket.cold_impression_count == sum(log.is_cold(i.item_id) for i in inside)
            assert bucket.distinct_item_count == len({i.item_id for i in inside})
        curve = [(p.item_share, p.impression_share) for p in answer.lorenz_curve]
        assert len(curve) == 101
        assert curve[0] == (0.0, 0.0) and curve[-1] == (1.0, 1.0)
        assert all(y <= x + 1e-12 for x, y in curve)  # below the diagonal


async def test_an_empty_window_is_all_zeros(logged: tuple[Served, known_log.Log]) -> None:
    served, _ = logged
    answer = await served.stub.GetExposureSummary(
        pb.GetExposureSummaryRequest(window=window(END, END + HOUR))
    )
    assert answer.impression_count == answer.list_count == answer.distinct_item_count == 0
    assert answer.exposure_gini == 0.0
    assert len(answer.buckets) == 24 and answer.bucket_seconds == 150


async def test_policy_outcomes_equal_the_log(logged: tuple[Served, known_log.Log]) -> None:
    served, log = logged
    answer = await served.stub.ListPolicyOutcomes(
        pb.ListPolicyOutcomesRequest(window=window(START, END))
    )
    want = known_log.expected(log, START, END).per_policy
    got = {
        (o.policy_name, o.policy_version): (
            o.list_count,
            o.head_impression_count,
            o.tail_impression_count,
            o.cold_impression_count,
            o.head_click_count,
            o.tail_click_count,
            o.cold_click_count,
        )
        for o in answer.outcomes
    }
    assert got == want
    assert [(o.policy_name, o.policy_version) for o in answer.outcomes] == sorted(want)
    # The known clicks: six distinct clicked impressions (one clicked twice, a view and a
    # click on an item the list did not hold do not count).
    assert sum(row[4] + row[5] for row in got.values()) == 6


async def test_exposure_gaps_weigh_merit_as_fair_exposure(
    logged: tuple[Served, known_log.Log],
) -> None:
    served, log = logged
    answer = await served.stub.ListExposureGaps(
        pb.ListExposureGapsRequest(window=window(START, END), limit=3)
    )
    shares = known_log.expected(log, START, END).shares
    assert answer.served_item_count == len(shares)
    gaps = {item_id: e - m for item_id, (e, m) in shares.items()}
    over = sorted((i for i in gaps if gaps[i] > 0), key=lambda i: (-gaps[i], i))[:3]
    under = sorted((i for i in gaps if gaps[i] < 0), key=lambda i: (gaps[i], i))[:3]
    assert [g.item_id for g in answer.over_exposed] == over
    assert [g.item_id for g in answer.under_exposed] == under
    for gap in [*answer.over_exposed, *answer.under_exposed]:
        exposure, merit = shares[gap.item_id]
        assert gap.impression_share == pytest.approx(exposure, abs=1e-12)
        assert gap.merit_share == pytest.approx(merit, abs=1e-12)
        assert gap.gap == pytest.approx(exposure - merit, abs=1e-12)
        assert gap.title == f"Title of {gap.item_id}"
        assert gap.is_tail == log.is_tail(gap.item_id)
        assert gap.is_cold == log.is_cold(gap.item_id)
    assert sum(m for _, m in shares.values()) == pytest.approx(1.0)


async def test_served_requests_page_newest_first(logged: tuple[Served, known_log.Log]) -> None:
    served, _ = logged
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await served.stub.ListServedRequests(
            pb.ListServedRequestsRequest(window=window(START, END), page_size=5, page_token=token)
        )
        seen.extend(r.request_id for r in page.requests)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [f"req-{n:02d}" for n in reversed(range(12))]
    first = (
        await served.stub.ListServedRequests(
            pb.ListServedRequestsRequest(window=window(START, START + HOUR))
        )
    ).requests
    assert [(r.request_id, r.user_id, r.policy_name) for r in first] == [
        ("req-01", "user-1", "tail_quota"),
        ("req-00", "user-0", "relevance"),
    ]


async def test_a_served_request_tells_order_policy_reason_and_feedback(
    logged: tuple[Served, known_log.Log],
) -> None:
    served, log = logged
    answer = await served.stub.GetServedRequest(pb.GetServedRequestRequest(request_id="req-01"))
    listed = known_log.served_lists()[1]
    assert [i.impression.item_id for i in answer.items] == listed.items
    assert [i.impression.position for i in answer.items] == [0, 1, 2, 3]
    assert {i.impression.policy_name for i in answer.items} == {"tail_quota"}
    assert [i.impression.reason for i in answer.items] == [
        known_log.REASONS[p % 3] for p in range(4)
    ]
    assert [i.is_tail for i in answer.items] == [log.is_tail(i) for i in listed.items]
    assert [i.is_cold for i in answer.items] == [log.is_cold(i) for i in listed.items]
    assert [i.title for i in answer.items] == [f"Title of {i}" for i in listed.items]
    assert [(f.item_id, f.kind) for f in answer.feedback] == [
        (listed.items[1], common_pb2.INTERACTION_KIND_CLICK),
        (listed.items[1], common_pb2.INTERACTION_KIND_CLICK),
        (listed.items[2], common_pb2.INTERACTION_KIND_CLICK),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.GetServedRequest(pb.GetServedRequestRequest(request_id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert info is not None and info.reason == "REQUEST_NOT_FOUND"


@pytest.mark.parametrize(
    ("method", "request_message", "reason"),
    [
        (
            "GetExposureSummary",
            pb.GetExposureSummaryRequest(window=window(END, START)),
            "INVALID_WINDOW",
        ),
        (
            "GetExposureSummary",
            pb.GetExposureSummaryRequest(bucket_count=501),
            "INVALID_BUCKET_COUNT",
        ),
        (
            "GetExposureSummary",
            pb.GetExposureSummaryRequest(lorenz_point_count=1),
            "INVALID_LORENZ_POINT_COUNT",
        ),
        ("ListExposureGaps", pb.ListExposureGapsRequest(limit=-1), "INVALID_LIMIT"),
        (
            "ListServedRequests",
            pb.ListServedRequestsRequest(page_token="not-a-token"),
            "INVALID_PAGE_TOKEN",
        ),
        ("ListServedRequests", pb.ListServedRequestsRequest(page_size=1001), "INVALID_PAGE_SIZE"),
        ("GetServedRequest", pb.GetServedRequestRequest(), "EMPTY_REQUEST_ID"),
    ],
)
async def test_bad_requests_are_invalid_argument(
    logged: tuple[Served, known_log.Log], method: str, request_message: object, reason: str
) -> None:
    served, _ = logged
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(served.stub, method)(request_message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == reason


async def test_a_page_token_is_bound_to_its_window(logged: tuple[Served, known_log.Log]) -> None:
    served, _ = logged
    page = await served.stub.ListServedRequests(
        pb.ListServedRequestsRequest(window=window(START, END), page_size=2)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.ListServedRequests(
            pb.ListServedRequestsRequest(
                window=window(START, END - HOUR), page_token=page.next_page_token
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_sql_head_predicate_is_the_head_set(store_url: str) -> None:
    """HeadBoundary in SQL picks exactly ``head_items``, ties at the boundary included (ids
    compared by code point, whatever PostgreSQL's collation)."""
    rng = random.Random(7)
    ids = [
        f"{prefix}{n}" for n, prefix in enumerate(rng.choices(["a", "B", "é", "Z-", "b_"], k=57))
    ]
    counts = {item_id: rng.choice([0, 0, 1, 2, 2, 3, 5]) for item_id in ids}
    database = Database(create_store_engine(store_url))
    try:
        with database.transaction(write=True) as session:
            from services.profiles.repository import items_t

            now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
            session.execute(
                sa.insert(items_t),
                [
                    {
                        "item_id": i,
                        "title": "",
                        "description": "",
                        "tags": [],
                        "categories": [],
                        "attributes": {},
                        "created_at": now,
                    }
                    for i in ids
                ],
            )
            session.execute(
                sa.insert(counters_t),
                [{"item_id": i, "interaction_count": n} for i, n in counts.items()],
            )
        with database.transaction(write=False) as session:
            boundary = HeadBoundary.read(session)
            dialect = session.get_bind().dialect.name
            predicate = boundary.is_head(
                counters_t.c.interaction_count, counters_t.c.item_id, dialect
            )
            in_sql = {
                row[0] for row in session.execute(sa.select(counters_t.c.item_id).where(predicate))
            }
        assert in_sql == set(head_items(counts))
        assert {i for i in ids if not boundary.classify(counts[i], i)[0]} == in_sql
        assert boundary.cold_items == sum(1 for n in counts.values() if n == 0)
    finally:
        database.dispose()


def test_lorenz_points_run_from_zero_to_one() -> None:
    assert lorenz_points([0, 0, 0, 4], 5) == [
        (0.0, 0.0),
        (0.25, 0.0),
        (0.5, 0.0),
        (0.75, 0.0),
        (1.0, 1.0),
    ]
    assert lorenz_points([], 3) == [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]
