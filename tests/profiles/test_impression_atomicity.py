"""RecordImpressions is one transaction per batch: a batch that fails part-way leaves nothing.

The fault is the database's own: a trigger on ``item_counters`` refuses the exposure-counter update
of one item of the batch. It fires only once the batch's log rows are inserted and the counter of
an earlier item of the batch has been bumped, in the same transaction, so the failure is genuinely
part-way; were the service to write in another order or in several transactions, the trigger would
not fire and the test would fail at ``pytest.raises``.
"""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as pb
from services.common.errors import error_info
from services.profiles.store import is_sqlite
from tests.profiles.conftest import Served
from tests.profiles.test_service import impression, seed

ITEMS = [f"item-{n:04d}" for n in range(5)]
FAILING = "req-fail"
# Counters are bumped in item order: item-0000..0002 have moved when item-0003's update fails.
FAULTY_ITEM = "item-0003"
BUMPED_EARLIER = "item-0002"

# Fires on FAULTY_ITEM's counter update only when the batch is half-written in this transaction.
_HALF_WRITTEN = (
    f"EXISTS (SELECT 1 FROM impressions WHERE request_id = '{FAILING}') "
    f"AND (SELECT impression_count FROM item_counters WHERE item_id = '{BUMPED_EARLIER}') = 2"
)


def _install_fault(url: str, action: str) -> None:
    """A trigger that runs ``action`` (PostgreSQL: a PL/pgSQL statement) at the fault point."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            if is_sqlite(url):
                connection.exec_driver_sql(
                    "CREATE TRIGGER longtail_test_fault BEFORE UPDATE ON item_counters "
                    f"WHEN NEW.item_id = '{FAULTY_ITEM}' AND {_HALF_WRITTEN} "
                    "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                )
                return
            # PostgreSQL allows no subquery in a trigger's WHEN: the function tests it.
            connection.exec_driver_sql(
                "CREATE FUNCTION longtail_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN IF NEW.item_id = '{FAULTY_ITEM}' AND {_HALF_WRITTEN} THEN {action}; "
                "END IF; RETURN NEW; END $$"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER longtail_test_fault BEFORE UPDATE ON item_counters "
                "FOR EACH ROW EXECUTE FUNCTION longtail_test_fault()"
            )
    finally:
        engine.dispose()


def _remove_fault(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            if is_sqlite(url):
                connection.exec_driver_sql("DROP TRIGGER IF EXISTS longtail_test_fault")
            else:
                connection.exec_driver_sql(
                    "DROP TRIGGER IF EXISTS longtail_test_fault ON item_counters"
                )
                connection.exec_driver_sql("DROP FUNCTION IF EXISTS longtail_test_fault()")
    finally:
        engine.dispose()


def _batch(request_id: str) -> list[common_pb2.Impression]:
    return [impression(request_id, p, item_id) for p, item_id in enumerate(ITEMS)]


async def _impression_counts(served: Served) -> list[int]:
    stats = await served.stub.GetItemStats(pb.GetItemStatsRequest(item_ids=ITEMS))
    assert [s.item_id for s in stats.stats] == ITEMS
    return [s.impression_count for s in stats.stats]


async def _logged(served: Served, request_id: str) -> list[common_pb2.Impression]:
    answer = await served.stub.ListImpressions(pb.ListImpressionsRequest(request_id=request_id))
    return list(answer.impressions)


async def _fails_and_leaves_nothing(served: Served, code: grpc.StatusCode, reason: str) -> None:
    """Seeds, records an earlier batch, then checks that the faulty batch fails whole."""
    earlier = _batch("req-before")
    answer = await served.stub.RecordImpressions(pb.RecordImpressionsRequest(impressions=earlier))
    assert answer.recorded_count == len(ITEMS)
    assert await _impression_counts(served) == [1] * len(ITEMS)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.RecordImpressions(
            pb.RecordImpressionsRequest(impressions=_batch(FAILING))
        )
    assert caught.value.code() == code, caught.value.details()
    info = error_info(caught.value)
    assert info is not None and info.reason == reason, info

    # Nothing of the batch in the log, no counter moved, the earlier batch untouched.
    assert await _logged(served, FAILING) == []
    assert await _impression_counts(served) == [1] * len(ITEMS)
    assert await _logged(served, "req-before") == earlier
    catalog = await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest())
    assert catalog.impression_count == len(ITEMS)


async def _recorded_whole_once(served: Served) -> None:
    batch = _batch(FAILING)
    first = await served.stub.RecordImpressions(pb.RecordImpressionsRequest(impressions=batch))
    assert (first.recorded_count, first.duplicate_count) == (len(ITEMS), 0)
    replay = await served.stub.RecordImpressions(pb.RecordImpressionsRequest(impressions=batch))
    assert (replay.recorded_count, replay.duplicate_count) == (0, len(ITEMS))
    assert await _logged(served, FAILING) == batch
    assert await _impression_counts(served) == [2] * len(ITEMS)


async def test_impression_batch_failing_part_way_leaves_nothing_then_records_whole(
    served: Served,
) -> None:
    await seed(served, n_items=len(ITEMS))
    _install_fault(served.url, "RAISE EXCEPTION 'injected fault'")
    try:
        # A refusal that is neither bad input nor an outage: INTERNAL (StoreError).
        await _fails_and_leaves_nothing(served, grpc.StatusCode.INTERNAL, "STORE_ERROR")
    finally:
        _remove_fault(served.url)
    await _recorded_whole_once(served)


# SQLite has no server connection to lose: this one runs on PostgreSQL only.
@pytest.mark.parametrize(
    "store_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_store_lost_mid_impression_batch_is_unavailable_and_leaves_nothing(
    served: Served,
) -> None:
    await seed(served, n_items=len(ITEMS))
    # The server ends the session in the middle of the transaction, as a crash or a failover
    # would: the client sees a broken connection, not a refusal.
    _install_fault(served.url, "PERFORM pg_terminate_backend(pg_backend_pid())")
    try:
        await _fails_and_leaves_nothing(served, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    finally:
        _remove_fault(served.url)
    await _recorded_whole_once(served)
