"""RecordImpressions claims a request_id once: one list per request_id, on both stores.

A batch is the whole list of one request_id for one user. An identical batch is a replay (nothing
written, nothing counted again); any other list under a used request_id is ALREADY_EXISTS /
REQUEST_ID_CONFLICT with nothing written, also when the two writers race (several service
replicas on one store). Unknown items refuse the batch (NOT_FOUND / UNKNOWN_ITEM); an unknown user
is created bare, in the same transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest
import sqlalchemy as sa

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as pb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.channels import open_channel
from services.common.errors import MAX_STATUS_METADATA_VALUE_CHARS, error_info
from services.common.settings import ClientSettings
from tests.profiles.conftest import Served, serve
from tests.profiles.test_service import impression, interaction, seed

DEADLINE = 60.0  # seconds, every call: generous; no assertion depends on it
ITEMS = [f"item-{n:04d}" for n in range(10)]

if TYPE_CHECKING:  # the async stub type exists in the type stubs only
    Stub: TypeAlias = profiles_service_pb2_grpc.ProfilesServiceAsyncStub
    Call: TypeAlias = Callable[[Stub], Awaitable["Outcome"]]


def listing(
    request_id: str, user: str, items: list[str], first_position: int = 0
) -> list[common_pb2.Impression]:
    return [
        impression(request_id, first_position + p, item_id, user) for p, item_id in enumerate(items)
    ]


async def record(stub: Stub, batch: list[common_pb2.Impression]) -> pb.RecordImpressionsResponse:
    return await stub.RecordImpressions(
        pb.RecordImpressionsRequest(impressions=batch), timeout=DEADLINE
    )


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A call's result: its status code, its ErrorInfo reason and metadata, or its counts."""

    code: grpc.StatusCode
    reason: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    recorded: int = -1
    duplicates: int = -1


async def attempt(stub: Stub, batch: list[common_pb2.Impression]) -> Outcome:
    try:
        answer = await record(stub, batch)
    except grpc.aio.AioRpcError as error:
        info = error_info(error)
        assert info is not None, error.details()
        return Outcome(error.code(), info.reason, tuple(sorted(info.metadata.items())))
    return Outcome(
        grpc.StatusCode.OK, recorded=answer.recorded_count, duplicates=answer.duplicate_count
    )


def conflict(request_id: str) -> Outcome:
    return Outcome(
        grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_CONFLICT", (("request_id", request_id),)
    )


async def logged(served: Served, request_id: str) -> list[common_pb2.Impression]:
    answer = await served.stub.ListImpressions(
        pb.ListImpressionsRequest(request_id=request_id), timeout=DEADLINE
    )
    return list(answer.impressions)


async def impression_counts(served: Served, items: list[str] = ITEMS) -> list[int]:
    stats = await served.stub.GetItemStats(pb.GetItemStatsRequest(item_ids=items), timeout=DEADLINE)
    assert [s.item_id for s in stats.stats] == items
    return [s.impression_count for s in stats.stats]


async def catalog(served: Served) -> pb.GetCatalogStatsResponse:
    return await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest(), timeout=DEADLINE)


async def user_known(served: Served, user: str) -> bool:
    try:
        await served.stub.GetUserProfile(pb.GetUserProfileRequest(user_id=user), timeout=DEADLINE)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        return False
    return True


@pytest.fixture
async def replicas(served: Served) -> AsyncIterator[list[Served]]:
    """Two service instances on one store, as replicas behind a balancer."""
    other = await serve(served.url)
    try:
        yield [served, other]
    finally:
        await other.channel.close()
        await other.running.stop(grace=0)


async def on_own_channels(replicas: list[Served], calls: list[Call]) -> list[Outcome]:
    """Runs every call at once, each on a channel of its own, alternating between replicas."""
    channels = [
        open_channel(ClientSettings(target=replicas[n % len(replicas)].target))
        for n in range(len(calls))
    ]
    try:
        stubs = [profiles_service_pb2_grpc.ProfilesServiceStub(channel) for channel in channels]
        results = await asyncio.gather(
            *(call(stub) for call, stub in zip(calls, stubs, strict=True))
        )
    finally:
        for channel in channels:
            await channel.close()
    return list(results)


# ----------------------------------------------------------------------------- the contract


async def test_a_replay_of_the_stored_list_writes_and_counts_nothing(served: Served) -> None:
    await seed(served)
    batch = listing("req-a", "u1", ITEMS[:5])
    assert await attempt(served.stub, batch) == Outcome(
        grpc.StatusCode.OK, recorded=5, duplicates=0
    )
    # In another order, with other scores and no served_at: still the same list (score and
    # served_at are not part of what a replay must match).
    replay = [common_pb2.Impression() for _ in batch]
    for copy, original in zip(replay, batch[::-1], strict=True):
        copy.CopyFrom(original)
        copy.score += 0.5
        copy.ClearField("served_at")
    for again in (batch, replay):
        assert await attempt(served.stub, again) == Outcome(
            grpc.StatusCode.OK, recorded=0, duplicates=5
        )
    assert await logged(served, "req-a") == batch
    assert await impression_counts(served) == [1] * 5 + [0] * 5
    assert (await catalog(served)).impression_count == 5


def _other_lists() -> list[tuple[str, list[common_pb2.Impression]]]:
    stored = listing("req-a", "u1", ITEMS[:5])

    def changed(position: int, **fields: object) -> list[common_pb2.Impression]:
        batch = listing("req-a", "u1", ITEMS[:5])
        for name, value in fields.items():
            setattr(batch[position], name, value)
        return batch

    return [
        ("another user", listing("req-a", "u2", ITEMS[:5])),
        ("a brand-new user", listing("req-a", "someone-new", ITEMS[:5])),
        ("another item", changed(3, item_id=ITEMS[7])),
        ("another reason", changed(0, reason=common_pb2.REASON_EXPLORE)),
        ("another policy", changed(4, policy_name="mmr")),
        ("another policy version", changed(1, policy_version="2")),
        ("a prefix", stored[:3]),
        ("a suffix at its own positions", stored[3:]),
        ("a longer list", listing("req-a", "u1", ITEMS[:6])),
        ("shifted positions", listing("req-a", "u1", ITEMS[:5], first_position=1)),
        ("a disjoint list", listing("req-a", "u2", ITEMS[5:], first_position=5)),
    ]


async def test_another_list_under_a_used_request_id_is_refused_and_writes_nothing(
    served: Served,
) -> None:
    await seed(served)
    stored = listing("req-a", "u1", ITEMS[:5])
    await record(served.stub, stored)
    for what, batch in _other_lists():
        assert await attempt(served.stub, batch) == conflict("req-a"), what
    # Nothing of any of them: the stored list, its counters and the users are as they were.
    assert await logged(served, "req-a") == stored
    assert await impression_counts(served) == [1] * 5 + [0] * 5
    stats = await catalog(served)
    assert (stats.impression_count, stats.user_count) == (5, 2)
    assert not await user_known(served, "someone-new")


async def test_a_conflicting_request_id_comes_back_clipped_in_the_error(served: Served) -> None:
    await seed(served)
    request_id = "r" * 254 + "!"  # as long as an id may be
    await record(served.stub, listing(request_id, "u1", ITEMS[:2]))
    outcome = await attempt(served.stub, listing(request_id, "u2", ITEMS[:2]))
    assert (outcome.code, outcome.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_CONFLICT")
    value = dict(outcome.metadata)["request_id"]
    assert len(value) == MAX_STATUS_METADATA_VALUE_CHARS
    assert value.startswith("r" * 100) and "!" not in value


async def test_a_batch_is_one_list_of_one_request_id_for_one_user(served: Served) -> None:
    await seed(served)
    mixed_ids = listing("req-a", "u1", ITEMS[:2]) + listing("req-b", "u1", ITEMS[2:3], 2)
    mixed_users = listing("req-a", "u1", ITEMS[:2]) + listing("req-a", "u2", ITEMS[2:3], 2)
    clashing = listing("req-a", "u1", ITEMS[:3]) + listing("req-a", "u1", ITEMS[5:6], 1)
    for batch, reason in (
        (mixed_ids, "MIXED_REQUEST_IDS"),
        (mixed_users, "MIXED_USERS"),
        (clashing, "CONFLICTING_POSITION"),
    ):
        outcome = await attempt(served.stub, batch)
        assert (outcome.code, outcome.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert await logged(served, "req-a") == []
    assert (await catalog(served)).impression_count == 0
    # A position repeated with the very same entry is a duplicate, as before.
    batch = listing("req-a", "u1", ITEMS[:3])
    assert await attempt(served.stub, batch + batch[1:2]) == Outcome(
        grpc.StatusCode.OK, recorded=3, duplicates=1
    )
    assert await logged(served, "req-a") == batch


# ----------------------------------------------------------------------------- items and users


async def test_unknown_items_refuse_the_whole_batch(served: Served) -> None:
    await seed(served)
    batch = listing("req-a", "someone-new", [ITEMS[0], "gone-1", ITEMS[1], "gone-0"])
    assert await attempt(served.stub, batch) == Outcome(
        grpc.StatusCode.NOT_FOUND, "UNKNOWN_ITEM", (("count", "2"), ("item_id", "gone-1"))
    )
    # Nothing written: no log, no counter, no user, and the request_id is still free.
    assert await logged(served, "req-a") == []
    assert await impression_counts(served) == [0] * 10
    stats = await catalog(served)
    assert (stats.impression_count, stats.user_count) == (0, 2)
    assert not await user_known(served, "someone-new")

    long_id = "x" * 255
    outcome = await attempt(served.stub, listing("req-b", "u1", [long_id]))
    assert (outcome.code, outcome.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_ITEM")
    assert dict(outcome.metadata)["item_id"].startswith("x" * 100)
    assert len(dict(outcome.metadata)["item_id"]) == MAX_STATUS_METADATA_VALUE_CHARS

    valid = listing("req-a", "u2", ITEMS[:2])
    assert await attempt(served.stub, valid) == Outcome(
        grpc.StatusCode.OK, recorded=2, duplicates=0
    )
    assert await logged(served, "req-a") == valid


async def test_a_served_brand_new_user_becomes_a_known_user(served: Served) -> None:
    await seed(served)
    assert not await user_known(served, "newcomer")
    batch = listing("req-new", "newcomer", ITEMS[:3])
    assert await attempt(served.stub, batch) == Outcome(
        grpc.StatusCode.OK, recorded=3, duplicates=0
    )

    profile = (
        await served.stub.GetUserProfile(
            pb.GetUserProfileRequest(user_id="newcomer"), timeout=DEADLINE
        )
    ).profile
    assert (profile.user_id, profile.interests, profile.interaction_count) == ("newcomer", "", 0)
    assert (list(profile.history), list(profile.seen_item_ids)) == ([], [])
    assert (await catalog(served)).user_count == 3
    # Known from now on: feedback needs no create_missing_users, and stated interests stick.
    await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(
            interactions=[interaction("newcomer", ITEMS[1], 1, request_id="req-new")]
        ),
        timeout=DEADLINE,
    )
    await served.stub.UpsertUsers(
        pb.UpsertUsersRequest(users=[common_pb2.User(user_id="newcomer", interests="jazz")]),
        timeout=DEADLINE,
    )
    profile = (
        await served.stub.GetUserProfile(
            pb.GetUserProfileRequest(user_id="newcomer"), timeout=DEADLINE
        )
    ).profile
    assert (profile.interests, list(profile.seen_item_ids)) == ("jazz", [ITEMS[1]])


# ----------------------------------------------------------------------------- concurrency

PAIRS = 20


async def test_concurrent_lists_under_one_request_id_one_wins_and_the_other_is_refused(
    replicas: list[Served],
) -> None:
    served = replicas[0]
    await seed(served)
    # Per request_id, two lists at the same positions: u1's of items 0-4, and a brand-new user's
    # of items 5-9. Every one of the 40 calls runs at once on its own channel, half per replica.
    first = {n: listing(f"req-{n}", "u1", ITEMS[:5]) for n in range(PAIRS)}
    second = {n: listing(f"req-{n}", f"new-{n}", ITEMS[5:]) for n in range(PAIRS)}
    calls: list[Call] = []
    for n in range(PAIRS):
        calls.append(functools.partial(attempt, batch=first[n]))
        calls.append(functools.partial(attempt, batch=second[n]))
    outcomes = await on_own_channels(replicas, calls)

    success = Outcome(grpc.StatusCode.OK, recorded=5, duplicates=0)
    first_wins = 0
    for n in range(PAIRS):
        pair = outcomes[2 * n : 2 * n + 2]
        assert sorted(pair, key=lambda o: o.code.value[0]) == [success, conflict(f"req-{n}")], n
        winner = first[n] if pair[0] == success else second[n]
        first_wins += pair[0] == success
        assert await logged(served, f"req-{n}") == winner, n
        assert await user_known(served, f"new-{n}") == (pair[1] == success), n
    # Counters bumped once per stored list, and for nothing else.
    second_wins = PAIRS - first_wins
    assert await impression_counts(served) == [first_wins] * 5 + [second_wins] * 5
    stats = await catalog(served)
    assert (stats.impression_count, stats.user_count) == (PAIRS * 5, 2 + second_wins)


async def test_concurrent_identical_lists_are_all_answered_and_stored_once(
    replicas: list[Served],
) -> None:
    served = replicas[0]
    await seed(served)
    lists = {n: listing(f"req-{n}", f"new-{n}", ITEMS[n % 5 : n % 5 + 5]) for n in range(PAIRS)}
    calls: list[Call] = []
    for n in range(PAIRS):
        calls += [functools.partial(attempt, batch=lists[n])] * 3
    outcomes = await on_own_channels(replicas, calls)

    stored = Outcome(grpc.StatusCode.OK, recorded=5, duplicates=0)
    replayed = Outcome(grpc.StatusCode.OK, recorded=0, duplicates=5)
    for n in range(PAIRS):
        triple = sorted(outcomes[3 * n : 3 * n + 3], key=lambda o: o.recorded)
        assert triple == [replayed, replayed, stored], n
        assert await logged(served, f"req-{n}") == lists[n], n
    expected = [sum(1 for n in range(PAIRS) if i in range(n % 5, n % 5 + 5)) for i in range(10)]
    assert await impression_counts(served) == expected
    stats = await catalog(served)
    assert (stats.impression_count, stats.user_count) == (PAIRS * 5, 2 + PAIRS)


# ----------------------------------------------------------------------------- PostgreSQL

GATE = (7_301, 1)  # the test's advisory lock key: a transaction parked at the trigger waits on it


def _count(engine: sa.Engine, statement: str) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql(statement).scalar() or 0)


# Backends of this test's database waiting for a lock (any kind).
_WAITING = (
    "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid IN "
    "(SELECT pid FROM pg_stat_activity WHERE datname = current_database())"
)
_PARKED = (
    "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'advisory' "
    f"AND classid = {GATE[0]} AND objid = {GATE[1]} AND objsubid = 2"
)


async def _until(
    engine: sa.Engine, condition: Callable[[int], bool], statement: str, what: str
) -> None:
    """Polls ``statement`` until ``condition`` holds: a wait on the server's lock table, which
    offers no event to wait on (NOTIFY is delivered at commit, and these transactions are
    parked). Nothing races the clock: the deadline only turns a hang into a failure."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not condition(await asyncio.to_thread(_count, engine, statement)):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


@pytest.mark.parametrize(
    "store_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_request_id_claimed_by_an_open_transaction_is_refused_once_it_commits(
    served: Served,
) -> None:
    """READ COMMITTED cannot see a claim that is not committed yet, and lists at disjoint
    positions never collide on a key: without a lock per request_id the second writer would read
    "nothing stored", store its list beside the first and both would succeed."""
    await seed(served)
    held = listing("req-held", "held-user", ITEMS[:5])
    other = listing("req-held", "u2", ITEMS[5:], first_position=5)
    engine = sa.create_engine(served.url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as gate:
            gate.exec_driver_sql(
                "CREATE FUNCTION longtail_test_park() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN PERFORM pg_advisory_xact_lock({GATE[0]}, {GATE[1]}); RETURN NEW; END $$"
            )
            gate.exec_driver_sql(
                "CREATE TRIGGER longtail_test_park AFTER INSERT ON impressions FOR EACH ROW "
                "WHEN (NEW.user_id = 'held-user') EXECUTE FUNCTION longtail_test_park()"
            )
            try:
                gate.exec_driver_sql(f"SELECT pg_advisory_lock({GATE[0]}, {GATE[1]})")
                # The first writer inserts its list, then parks inside its transaction.
                first = asyncio.create_task(attempt(served.stub, held))
                await _until(engine, lambda n: n == 1, _PARKED, "first writer parked")
                # The second: it must wait for the first (it is refused below, so it cannot have
                # finished); were it not to wait, it would finish here, unrefused.
                second = asyncio.create_task(attempt(served.stub, other))
                waiting: Callable[[int], bool] = lambda n: n >= 2 or second.done()  # noqa: E731
                await _until(engine, waiting, _WAITING, "second writer waiting or done")
                gate.exec_driver_sql(f"SELECT pg_advisory_unlock({GATE[0]}, {GATE[1]})")
                outcomes = [await first, await second]
            finally:
                gate.exec_driver_sql("SELECT pg_advisory_unlock_all()")
                gate.exec_driver_sql("DROP TRIGGER IF EXISTS longtail_test_park ON impressions")
                gate.exec_driver_sql("DROP FUNCTION IF EXISTS longtail_test_park()")
    finally:
        engine.dispose()

    assert outcomes == [
        Outcome(grpc.StatusCode.OK, recorded=5, duplicates=0),
        conflict("req-held"),
    ]
    assert await logged(served, "req-held") == held
    assert await impression_counts(served) == [1] * 5 + [0] * 5
