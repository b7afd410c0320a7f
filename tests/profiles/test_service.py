"""ProfilesService end to end: real server on port 0, real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as pb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.channels import open_channel
from services.common.errors import error_info
from services.common.settings import ClientSettings
from services.common.tail import head_items
from services.profiles.app import SERVICE_NAME
from tests.profiles.conftest import Served, serve

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
CATEGORIES = ["drama", "comedy", "horror"]


def stamp(seconds: float) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(BASE + dt.timedelta(seconds=seconds))
    return value


def item(index: int, **fields: object) -> common_pb2.Item:
    defaults: dict[str, object] = {
        "item_id": f"item-{index:04d}",
        "title": f"Title {index}",
        "description": f"A story about number {index}.",
        "tags": [f"tag{index % 5}", "shared"],
        "categories": [CATEGORIES[index % 3]],
        "attributes": {"rank": str(index)},
    }
    defaults.update(fields)
    return common_pb2.Item(**defaults)  # type: ignore[arg-type]


def interaction(
    user: str,
    item_id: str,
    seconds: float,
    kind: common_pb2.InteractionKind.ValueType = common_pb2.INTERACTION_KIND_CLICK,
    **extra: object,
) -> common_pb2.Interaction:
    return common_pb2.Interaction(
        user_id=user,
        item_id=item_id,
        kind=kind,
        occurred_at=stamp(seconds),
        **extra,  # type: ignore[arg-type]
    )


def impression(
    request_id: str, position: int, item_id: str, user: str = "u1"
) -> common_pb2.Impression:
    return common_pb2.Impression(
        request_id=request_id,
        position=position,
        user_id=user,
        item_id=item_id,
        policy_name="tail_quota",
        policy_version="1",
        reason=common_pb2.REASON_TAIL_BOOST if position % 2 else common_pb2.REASON_RELEVANCE,
        score=1.0 / (abs(position) + 1),
        served_at=stamp(position),
    )


def vector_update(
    item_id: str, values: list[float], name: str = "minilm", version: str = "1"
) -> pb.ItemVectorUpdate:
    return pb.ItemVectorUpdate(
        item_id=item_id,
        vector=common_pb2.ItemVector(values=values, model_name=name, model_version=version),
    )


async def seed(served: Served, n_items: int = 10, users: tuple[str, ...] = ("u1", "u2")) -> None:
    await served.stub.UpsertItems(pb.UpsertItemsRequest(items=[item(i) for i in range(n_items)]))
    await served.stub.UpsertUsers(
        pb.UpsertUsersRequest(
            users=[common_pb2.User(user_id=u, interests=f"{u} likes films") for u in users]
        )
    )


async def expect_error(call: object, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    info = error_info(caught.value)
    assert info is not None and info.reason == reason, info


# ----------------------------------------------------------------------------- items


async def test_items_round_trip_in_requested_order_with_missing(served: Served) -> None:
    created = stamp(42)
    answer = await served.stub.UpsertItems(
        pb.UpsertItemsRequest(items=[item(1, created_at=created), item(2), item(3)])
    )
    assert answer.upserted_count == 3
    got = await served.stub.GetItems(
        pb.GetItemsRequest(item_ids=["item-0003", "nope", "item-0001", "item-0003"])
    )
    assert [i.item_id for i in got.items] == ["item-0003", "item-0001", "item-0003"]
    assert list(got.missing_item_ids) == ["nope"]
    first = got.items[1]
    assert first.title == "Title 1"
    assert list(first.tags) == ["tag1", "shared"]
    assert list(first.categories) == ["comedy"]
    assert dict(first.attributes) == {"rank": "1"}
    assert first.created_at == created
    assert got.items[0].created_at.seconds > 0  # defaulted to the time of the upsert
    assert not first.HasField("vector")


async def test_vectors_are_stored_as_float32_and_cleared_when_text_changes(served: Served) -> None:
    await seed(served, n_items=3)
    values = [0.25, -1.5, 3.0e-3, 7.0]
    answer = await served.stub.UpdateItemVectors(
        pb.UpdateItemVectorsRequest(
            updates=[vector_update("item-0000", values), vector_update("item-0001", values[::-1])]
        )
    )
    assert answer.updated_count == 2
    got = await served.stub.GetItems(
        pb.GetItemsRequest(item_ids=["item-0000", "item-0001", "item-0002"], include_vectors=True)
    )
    assert np.allclose(got.items[0].vector.values, np.asarray(values, dtype=np.float32))
    assert (got.items[0].vector.model_name, got.items[0].vector.model_version) == ("minilm", "1")
    assert not got.items[2].HasField("vector")
    without = await served.stub.GetItems(pb.GetItemsRequest(item_ids=["item-0000"]))
    assert not without.items[0].HasField("vector")

    # Same text (attributes changed): the vector still describes the item. New title: it does not.
    await served.stub.UpsertItems(
        pb.UpsertItemsRequest(items=[item(0, attributes={"x": "y"}), item(1, title="Renamed")])
    )
    got = await served.stub.GetItems(
        pb.GetItemsRequest(item_ids=["item-0000", "item-0001"], include_vectors=True)
    )
    assert got.items[0].HasField("vector") and dict(got.items[0].attributes) == {"x": "y"}
    assert got.items[1].title == "Renamed" and not got.items[1].HasField("vector")

    # A vector can come with the item itself.
    with_vector = item(5)
    with_vector.vector.CopyFrom(
        common_pb2.ItemVector(values=values, model_name="minilm", model_version="1")
    )
    await served.stub.UpsertItems(pb.UpsertItemsRequest(items=[with_vector]))
    got = await served.stub.GetItems(
        pb.GetItemsRequest(item_ids=["item-0005"], include_vectors=True)
    )
    assert len(got.items[0].vector.values) == 4


async def test_list_items_pages_cover_every_item_exactly_once(served: Served) -> None:
    items = [item(i) for i in range(257)]
    for start in range(0, len(items), 100):
        await served.stub.UpsertItems(pb.UpsertItemsRequest(items=items[start : start + 100]))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await served.stub.ListItems(pb.ListItemsRequest(page_size=50, page_token=token))
        assert page.total_size == 257
        seen += [i.item_id for i in page.items]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 6
    assert seen == sorted(i.item_id for i in items)


async def test_list_items_stale_and_model_filters(served: Served) -> None:
    await seed(served, n_items=6)
    await served.stub.UpdateItemVectors(
        pb.UpdateItemVectorsRequest(
            updates=[vector_update(f"item-000{i}", [1.0, 2.0]) for i in (0, 1)]
        )
    )
    await served.stub.UpdateItemVectors(
        pb.UpdateItemVectorsRequest(
            updates=[vector_update("item-0002", [1.0, 2.0, 3.0], version="2")]
        )
    )
    stale = await served.stub.ListItems(
        pb.ListItemsRequest(stale_for_model_name="minilm", stale_for_model_version="1")
    )
    assert [i.item_id for i in stale.items] == ["item-0002", "item-0003", "item-0004", "item-0005"]
    assert stale.total_size == 4
    indexed = await served.stub.ListItems(
        pb.ListItemsRequest(
            vector_model_name="minilm", vector_model_version="1", include_vectors=True, page_size=1
        )
    )
    assert [i.item_id for i in indexed.items] == ["item-0000"]
    assert list(indexed.items[0].vector.values) == [1.0, 2.0]
    assert indexed.total_size == 2
    following = await served.stub.ListItems(
        pb.ListItemsRequest(
            vector_model_name="minilm",
            vector_model_version="1",
            page_size=1,
            page_token=indexed.next_page_token,
        )
    )
    assert [i.item_id for i in following.items] == ["item-0001"]
    assert following.next_page_token == ""
    # A token is bound to the filters it was made for.
    await expect_error(
        served.stub.ListItems(pb.ListItemsRequest(page_token=indexed.next_page_token)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )


# ----------------------------------------------------------------------------- users, profiles


async def test_user_profile_history_tail_propensity_and_category_mix(served: Served) -> None:
    await seed(served, n_items=10, users=("u1", "u2", "u3"))
    # Popularity: item-0000 x5, item-0001 x4 (head = top 20% of 10 items = 2 items).
    events = [interaction(f"x{n}", "item-0000", n) for n in range(5)]
    events += [interaction(f"y{n}", "item-0001", n) for n in range(4)]
    # u1: two head interactions, two tail ones, spread over categories.
    events += [
        interaction("u1", "item-0000", 100),  # drama, head
        interaction("u1", "item-0001", 300),  # comedy, head
        interaction("u1", "item-0005", 200, kind=common_pb2.INTERACTION_KIND_RATING, value=4.5),
        interaction("u1", "item-0003", 50),  # drama, tail
    ]
    answer = await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=events, create_missing_users=True)
    )
    assert (answer.recorded_count, answer.duplicate_count) == (len(events), 0)

    profile = (await served.stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u1"))).profile
    assert profile.interests == "u1 likes films"
    assert [h.item_id for h in profile.history] == [
        "item-0001",
        "item-0005",
        "item-0000",
        "item-0003",
    ]
    assert profile.history[1].kind == common_pb2.INTERACTION_KIND_RATING
    assert profile.history[1].value == 4.5
    assert profile.history[0].occurred_at == stamp(300)
    assert profile.interaction_count == 4

    counts = {f"item-{i:04d}": 0 for i in range(10)}
    counts["item-0000"] = 6
    counts["item-0001"] = 5
    counts["item-0005"] = 1
    counts["item-0003"] = 1
    head = head_items(counts)
    assert head == {"item-0000", "item-0001"}
    assert math.isclose(profile.tail_propensity, 2 / 4)
    # item 0 and 3: drama; item 1: comedy; item 5: horror.
    assert dict(profile.category_mix) == pytest.approx(
        {"drama": 0.5, "comedy": 0.25, "horror": 0.25}
    )
    assert math.isclose(sum(profile.category_mix.values()), 1.0)

    limited = await served.stub.GetUserProfile(
        pb.GetUserProfileRequest(user_id="u1", history_limit=2)
    )
    assert [h.item_id for h in limited.profile.history] == ["item-0001", "item-0005"]
    # Beyond the history limit, every item the user touched is still listed as seen.
    assert list(limited.profile.seen_item_ids) == [
        "item-0000",
        "item-0001",
        "item-0003",
        "item-0005",
    ]
    empty = (await served.stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u3"))).profile
    assert (empty.interaction_count, empty.tail_propensity, dict(empty.category_mix)) == (
        0,
        0.0,
        {},
    )

    # Upserting a user again replaces its interests.
    await served.stub.UpsertUsers(
        pb.UpsertUsersRequest(users=[common_pb2.User(user_id="u3", interests="space operas")])
    )
    again = await served.stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u3"))
    assert again.profile.interests == "space operas"


async def test_unknown_user_is_not_found(served: Served) -> None:
    await seed(served)
    await expect_error(
        served.stub.GetUserProfile(pb.GetUserProfileRequest(user_id="ghost")),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    await expect_error(
        served.stub.RecordInteractions(
            pb.RecordInteractionsRequest(
                interactions=[
                    interaction("u1", "item-0001", 1),
                    interaction("ghost", "item-0001", 2),
                ]
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    await expect_error(
        served.stub.RecordInteractions(
            pb.RecordInteractionsRequest(
                interactions=[
                    interaction("u1", "item-0001", 1),
                    interaction("u1", "no-such-item", 2),
                ]
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "ITEM_NOT_FOUND",
    )
    # Nothing of the refused batches was written, counters included.
    listed = await served.stub.ListInteractions(pb.ListInteractionsRequest())
    assert list(listed.interactions) == []
    stats = await served.stub.GetItemStats(pb.GetItemStatsRequest(item_ids=["item-0001"]))
    assert stats.stats[0].interaction_count == 0
    # With create_missing_users the unknown user is created.
    answer = await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(
            interactions=[interaction("ghost", "item-0001", 2)], create_missing_users=True
        )
    )
    assert answer.recorded_count == 1
    profile = await served.stub.GetUserProfile(pb.GetUserProfileRequest(user_id="ghost"))
    assert profile.profile.interaction_count == 1


# ----------------------------------------------------------------------------- interactions


async def test_interactions_are_idempotent_and_bump_counters_once(served: Served) -> None:
    await seed(served)
    batch = [
        interaction("u1", "item-0001", 1),
        interaction("u1", "item-0001", 2),
        interaction("u2", "item-0001", 1, idempotency_key="client-key-1"),
        interaction("u2", "item-0002", 3, request_id="req-1"),
        interaction("u2", "item-0002", 3, request_id="req-1"),  # the same event twice in a batch
    ]
    first = await served.stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=batch))
    assert (first.recorded_count, first.duplicate_count) == (4, 1)
    replay = await served.stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=batch))
    assert (replay.recorded_count, replay.duplicate_count) == (0, 5)
    # A client key wins over the fields: other fields, same key, still a duplicate.
    same_key = interaction("u2", "item-0003", 9, idempotency_key="client-key-1")
    again = await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=[same_key])
    )
    assert (again.recorded_count, again.duplicate_count) == (0, 1)

    stats = await served.stub.GetItemStats(
        pb.GetItemStatsRequest(item_ids=["item-0002", "unknown", "item-0001", "item-0003"])
    )
    by_id = {s.item_id: s for s in stats.stats}
    assert [s.item_id for s in stats.stats] == ["item-0002", "item-0001", "item-0003"]
    assert (by_id["item-0001"].interaction_count, by_id["item-0001"].feedback_count) == (3, 0)
    assert (by_id["item-0002"].interaction_count, by_id["item-0002"].feedback_count) == (1, 1)
    assert by_id["item-0003"].is_cold and by_id["item-0003"].is_tail
    assert not by_id["item-0001"].is_cold and not by_id["item-0001"].is_tail

    # Paging by id returns every stored interaction once, keys and request ids included.
    collected: list[common_pb2.Interaction] = []
    token = ""
    while True:
        page = await served.stub.ListInteractions(
            pb.ListInteractionsRequest(page_size=3, page_token=token)
        )
        collected += page.interactions
        token = page.next_page_token
        if not token:
            break
    assert len(collected) == 4
    assert len({i.idempotency_key for i in collected}) == 4
    assert "client-key-1" in {i.idempotency_key for i in collected}
    feedback = [i for i in collected if i.request_id]
    assert [(i.request_id, i.item_id) for i in feedback] == [("req-1", "item-0002")]
    assert all(i.kind == common_pb2.INTERACTION_KIND_CLICK for i in collected)


# ----------------------------------------------------------------------------- impressions


async def test_impression_replay_is_stored_once(served: Served) -> None:
    await seed(served)
    batch = [impression("req-a", p, f"item-000{p}") for p in range(5)]
    first = await served.stub.RecordImpressions(pb.RecordImpressionsRequest(impressions=batch))
    assert (first.recorded_count, first.duplicate_count) == (5, 0)
    replay = await served.stub.RecordImpressions(
        pb.RecordImpressionsRequest(impressions=batch[::-1])
    )
    assert (replay.recorded_count, replay.duplicate_count) == (0, 5)

    listed = await served.stub.ListImpressions(pb.ListImpressionsRequest(request_id="req-a"))
    assert list(listed.impressions) == batch
    assert (
        list(
            (
                await served.stub.ListImpressions(pb.ListImpressionsRequest(request_id="nope"))
            ).impressions
        )
        == []
    )
    stats = await served.stub.GetItemStats(
        pb.GetItemStatsRequest(item_ids=[f"item-000{p}" for p in range(5)])
    )
    assert [s.impression_count for s in stats.stats] == [1] * 5
    catalog = await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest())
    assert catalog.impression_count == 5


async def test_profile_read_with_served_request_id_returns_what_is_logged(served: Served) -> None:
    await seed(served)
    batch = [impression("req-s", p, f"item-000{p}") for p in range(3)]
    await served.stub.RecordImpressions(pb.RecordImpressionsRequest(impressions=batch))
    plain = await served.stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u1"))
    # A served request_id: the same profile, plus the logged list in position order.
    both = await served.stub.GetUserProfile(
        pb.GetUserProfileRequest(user_id="u1", served_request_id="req-s")
    )
    assert both.profile == plain.profile
    assert list(both.served) == batch
    # Nothing logged under the id: the profile alone.
    fresh = await served.stub.GetUserProfile(
        pb.GetUserProfileRequest(user_id="u1", served_request_id="req-new")
    )
    assert fresh.profile == plain.profile and list(fresh.served) == []
    # An unknown user whose request_id holds a list (another user's): the list, no profile, so
    # that the gateway can refuse the reuse; with nothing logged, NOT_FOUND as before.
    reused = await served.stub.GetUserProfile(
        pb.GetUserProfileRequest(user_id="ghost", served_request_id="req-s")
    )
    assert not reused.HasField("profile") and [i.user_id for i in reused.served] == ["u1"] * 3
    await expect_error(
        served.stub.GetUserProfile(
            pb.GetUserProfileRequest(user_id="ghost", served_request_id="req-new")
        ),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    await expect_error(
        served.stub.GetUserProfile(
            pb.GetUserProfileRequest(user_id="u1", served_request_id="r" * 256)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ID_TOO_LONG",
    )


async def settle_head_set(served: Served) -> None:
    """CatalogStats recomputes the head set inline from the current counts: any later refresh
    finds the same set, so profile versions do not move under the test's feet."""
    await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest())


async def test_profile_version_moves_with_every_write_the_profile_depends_on(
    served: Served,
) -> None:
    await seed(served)
    clicks = [interaction("u1", f"item-000{n}", n, idempotency_key=f"k{n}") for n in (1, 2)]
    await served.stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=clicks))
    await settle_head_set(served)

    async def read(version: str, limit: int = 10, **extra: Any) -> pb.GetUserProfileResponse:
        return await served.stub.GetUserProfile(
            pb.GetUserProfileRequest(
                user_id="u1", history_limit=limit, if_profile_version_differs=version, **extra
            )
        )

    first = await read("")
    assert first.profile_version and not first.unchanged and first.profile.interaction_count == 2
    # The same version back: nothing to re-read, and the served list still comes with it.
    batch = [impression("req-v", p, f"item-000{p}") for p in range(3)]
    await served.stub.RecordImpressions(pb.RecordImpressionsRequest(impressions=batch))
    held = await read(first.profile_version, served_request_id="req-v")
    assert held.unchanged and not held.HasField("profile")
    assert held.profile_version == first.profile_version and list(held.served) == batch
    # Another history limit is another profile.
    other = await read(first.profile_version, limit=20)
    assert not other.unchanged and other.profile == first.profile

    # An interaction: a new version and the item in the profile.
    await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=[interaction("u1", "item-0003", 3)])
    )
    clicked = await read(first.profile_version)
    assert not clicked.unchanged and "item-0003" in clicked.profile.seen_item_ids
    await settle_head_set(served)
    settled = await read("")
    # A replayed interaction stores nothing and keeps the version.
    replay = await served.stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=clicks))
    assert replay.duplicate_count == 2
    assert (await read(settled.profile_version)).unchanged

    # New interests.
    await served.stub.UpsertUsers(
        pb.UpsertUsersRequest(users=[common_pb2.User(user_id="u1", interests="westerns")])
    )
    stated = await read(settled.profile_version)
    assert not stated.unchanged and stated.profile.interests == "westerns"

    # The categories of an item u1 touched move its mix, and its version.
    await served.stub.UpsertItems(pb.UpsertItemsRequest(items=[item(1, categories=["western"])]))
    moved = await read(stated.profile_version)
    assert not moved.unchanged and "western" in moved.profile.category_mix
    # Writes the profile does not read keep it: an item u1 never touched re-categorised, an item
    # re-upserted as it was, another user's interests, a list served to u1.
    await served.stub.UpsertItems(
        pb.UpsertItemsRequest(items=[item(7, categories=["western"]), item(2)])
    )
    await served.stub.UpsertUsers(
        pb.UpsertUsersRequest(users=[common_pb2.User(user_id="u2", interests="musicals")])
    )
    await served.stub.RecordImpressions(
        pb.RecordImpressionsRequest(impressions=[impression("req-w", 0, "item-0005")])
    )
    assert (await read(moved.profile_version)).unchanged
    # An unknown user has no version: NOT_FOUND, whatever version is named.
    await expect_error(
        served.stub.GetUserProfile(
            pb.GetUserProfileRequest(user_id="ghost", if_profile_version_differs="1.10.x")
        ),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )


async def test_a_list_chosen_from_a_kept_profile_is_logged_only_while_its_version_holds(
    served: Served,
) -> None:
    await seed(served)
    await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=[interaction("u1", "item-0001", 1)])
    )
    await settle_head_set(served)

    async def version() -> str:
        read = pb.GetUserProfileRequest(user_id="u1", history_limit=10)
        return (await served.stub.GetUserProfile(read)).profile_version

    async def record(request_id: str, kept: str, user: str = "u1") -> int:
        batch = [impression(request_id, p, f"item-000{p + 4}", user) for p in range(3)]
        request = pb.RecordImpressionsRequest(impressions=batch, if_profile_version=kept)
        return (await served.stub.RecordImpressions(request)).recorded_count

    async def logged(request_id: str) -> int:
        request = pb.ListImpressionsRequest(request_id=request_id)
        return len((await served.stub.ListImpressions(request)).impressions)

    kept = await version()
    assert await record("req-a", kept) == 3
    assert await record("req-b", kept) == 3  # a logged list does not move the profile
    # An interaction moves it: a list chosen from the old copy is refused, nothing written.
    await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=[interaction("u1", "item-0002", 2)])
    )
    await expect_error(
        record("req-c", kept), grpc.StatusCode.FAILED_PRECONDITION, "PROFILE_VERSION_MOVED"
    )
    assert await logged("req-c") == 0
    # A replay is a replay whatever the version (the log answers retries).
    assert await record("req-a", kept) == 0
    # The fresh copy's version holds again.
    await settle_head_set(served)
    assert await record("req-c", await version()) == 3
    # A user without a row has no version to hold: refused, and no bare user is made.
    await expect_error(
        record("req-d", kept, user="ghost"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROFILE_VERSION_MOVED",
    )
    await expect_error(
        served.stub.GetUserProfile(pb.GetUserProfileRequest(user_id="ghost")),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    await expect_error(
        record("req-e", "not-a-version"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PROFILE_VERSION",
    )


async def test_eight_concurrent_writers_lose_nothing(served: Served) -> None:
    await seed(served, n_items=20)
    # Two service instances on one store (replicas): half of the writers talk to each.
    other = await serve(served.url)
    channels = [
        open_channel(ClientSettings(target=(served.target, other.target)[n % 2])) for n in range(8)
    ]
    clients = [profiles_service_pb2_grpc.ProfilesServiceStub(channel) for channel in channels]
    try:
        await _write_concurrently(served, clients)
    finally:
        for channel in channels:
            await channel.close()
        await other.channel.close()
        await other.running.stop(grace=0)


async def _write_concurrently(
    served: Served, clients: list[profiles_service_pb2_grpc.ProfilesServiceAsyncStub]
) -> None:

    async def writer(w: int, stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub) -> None:
        for batch in range(5):
            request_id = f"w{w}-b{batch}"
            impressions = [impression(request_id, p, f"item-{p:04d}") for p in range(10)]
            await stub.RecordImpressions(pb.RecordImpressionsRequest(impressions=impressions))
            interactions = [
                interaction(f"user-{w}", f"item-{p:04d}", batch * 100 + p, request_id=request_id)
                for p in range(0, 10, 2)
            ]
            await stub.RecordInteractions(
                pb.RecordInteractionsRequest(interactions=interactions, create_missing_users=True)
            )

    async def replayer(stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub) -> int:
        # Every client sends the very same batch: it must be stored (and counted) once.
        shared = [impression("shared", p, "item-0019") for p in range(10)]
        answer = await stub.RecordImpressions(pb.RecordImpressionsRequest(impressions=shared))
        return int(answer.recorded_count)

    await asyncio.gather(*(writer(w, stub) for w, stub in enumerate(clients)))
    recorded = await asyncio.gather(*(replayer(stub) for stub in clients))
    assert sum(recorded) == 10

    catalog = await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest())
    assert catalog.impression_count == 8 * 5 * 10 + 10
    assert catalog.interaction_count == 8 * 5 * 5
    assert catalog.user_count == 2 + 8
    stats = await served.stub.GetItemStats(
        pb.GetItemStatsRequest(item_ids=[f"item-{p:04d}" for p in range(20)])
    )
    by_id = {s.item_id: s for s in stats.stats}
    for p in range(10):
        assert by_id[f"item-{p:04d}"].impression_count == 8 * 5
        expected = 8 * 5 if p % 2 == 0 else 0
        assert by_id[f"item-{p:04d}"].interaction_count == expected
        assert by_id[f"item-{p:04d}"].feedback_count == expected
    assert by_id["item-0019"].impression_count == 10
    for w in range(8):
        listed = await served.stub.ListImpressions(pb.ListImpressionsRequest(request_id=f"w{w}-b4"))
        assert [i.position for i in listed.impressions] == list(range(10))


# ----------------------------------------------------------------------------- stats


async def test_item_stats_pages_and_catalog_stats(served: Served) -> None:
    await seed(served, n_items=10)
    events = [interaction("u1", f"item-{i:04d}", i) for i in range(4)]
    events += [interaction("u2", "item-0000", 50), interaction("u2", "item-0001", 51)]
    events += [interaction("u2", "item-0000", 52)]
    await served.stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=events))
    collected: list[common_pb2.ItemStats] = []
    token = ""
    while True:
        page = await served.stub.ListItemStats(
            pb.ListItemStatsRequest(page_size=4, page_token=token)
        )
        collected += page.stats
        token = page.next_page_token
        if not token:
            break
    assert [s.item_id for s in collected] == [f"item-{i:04d}" for i in range(10)]
    head = [s.item_id for s in collected if not s.is_tail]
    assert head == ["item-0000", "item-0001"]
    assert [s.interaction_count for s in collected[:5]] == [3, 2, 1, 1, 0]
    assert sum(s.is_cold for s in collected) == 6
    catalog = await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest())
    assert (catalog.item_count, catalog.user_count, catalog.interaction_count) == (10, 2, 7)
    assert (catalog.head_item_count, catalog.cold_item_count, catalog.head_min_interactions) == (
        2,
        6,
        2,
    )
    assert catalog.computed_at.seconds > 0


async def _exposure_changes(
    served: Served, since: timestamp_pb2.Timestamp
) -> tuple[dict[str, tuple[int, int]], timestamp_pb2.Timestamp]:
    """Every page of a listing of exposure changes (pages of 2): counters by item, read_at."""
    changed: dict[str, tuple[int, int]] = {}
    read_at: timestamp_pb2.Timestamp | None = None
    token = ""
    while True:
        page = await served.stub.ListItemStats(
            pb.ListItemStatsRequest(page_size=2, page_token=token, exposure_changed_since=since)
        )
        if read_at is None:
            assert page.HasField("exposure_read_at")
            read_at = page.exposure_read_at
        else:
            assert not page.HasField("exposure_read_at")  # first page only
        assert not page.popularity_version and not page.unchanged
        for stats in page.stats:
            assert stats.item_id not in changed  # pages never repeat an item
            changed[stats.item_id] = (stats.impression_count, stats.feedback_count)
        token = page.next_page_token
        if not token:
            return changed, read_at


async def test_exposure_changes_list_the_items_whose_impression_or_feedback_counters_moved(
    served: Served,
) -> None:
    await seed(served, n_items=6)
    epoch = timestamp_pb2.Timestamp()  # 1970: every item whose exposure counters ever moved
    # An interaction that answers no served list moves no exposure counter.
    await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=[interaction("u1", "item-0000", 1)])
    )
    nothing, first_read = await _exposure_changes(served, epoch)
    assert nothing == {}
    await served.stub.RecordImpressions(
        pb.RecordImpressionsRequest(
            impressions=[
                impression("r1", 0, "item-0001"),
                impression("r1", 1, "item-0002"),
                impression("r1", 2, "item-0004"),
            ]
        )
    )
    await served.stub.RecordInteractions(  # feedback on the served list
        pb.RecordInteractionsRequest(
            interactions=[interaction("u1", "item-0003", 2, request_id="r1")]
        )
    )
    changed, second_read = await _exposure_changes(served, first_read)
    assert changed == {
        "item-0001": (1, 0),
        "item-0002": (1, 0),
        "item-0003": (0, 1),
        "item-0004": (1, 0),
    }
    await served.stub.RecordImpressions(
        pb.RecordImpressionsRequest(impressions=[impression("r2", 0, "item-0002")])
    )
    again, _ = await _exposure_changes(served, second_read)
    assert again == {"item-0002": (2, 0)}
    everything, _ = await _exposure_changes(served, epoch)
    assert everything == {**changed, "item-0002": (2, 0)}
    assert (await _exposure_changes(served, stamp(10 * 365 * 86400 * 10)))[0] == {}  # 2124


# ----------------------------------------------------------------------------- validation


def _bad_requests() -> list[tuple[str, str, object]]:
    too_many_items = pb.UpsertItemsRequest(items=[item(i) for i in range(1001)])
    nan = float("nan")
    return [
        (
            "UpsertItems",
            "EMPTY_ITEM_ID",
            pb.UpsertItemsRequest(items=[item(1), item(2, item_id="")]),
        ),
        ("UpsertItems", "BATCH_TOO_LARGE", too_many_items),
        ("GetItems", "EMPTY_ITEM_ID", pb.GetItemsRequest(item_ids=["item-0001", ""])),
        (
            "GetItems",
            "BATCH_TOO_LARGE",
            pb.GetItemsRequest(item_ids=[f"i{n}" for n in range(1001)]),
        ),
        (
            "UpsertUsers",
            "EMPTY_USER_ID",
            pb.UpsertUsersRequest(users=[common_pb2.User(user_id="")]),
        ),
        ("GetUserProfile", "EMPTY_USER_ID", pb.GetUserProfileRequest(user_id="")),
        (
            "GetUserProfile",
            "INVALID_HISTORY_LIMIT",
            pb.GetUserProfileRequest(user_id="u1", history_limit=5000),
        ),
        (
            "UpdateItemVectors",
            "NON_FINITE_VECTOR",
            pb.UpdateItemVectorsRequest(updates=[vector_update("item-0001", [1.0, nan])]),
        ),
        (
            "UpdateItemVectors",
            "NON_FINITE_VECTOR",
            pb.UpdateItemVectorsRequest(updates=[vector_update("item-0001", [float("inf")])]),
        ),
        (
            "UpdateItemVectors",
            "EMPTY_VECTOR",
            pb.UpdateItemVectorsRequest(updates=[vector_update("item-0001", [])]),
        ),
        (
            "UpdateItemVectors",
            "VECTOR_DIMENSION_MISMATCH",
            pb.UpdateItemVectorsRequest(
                updates=[
                    vector_update("item-0001", [1.0, 2.0]),
                    vector_update("item-0002", [1.0, 2.0, 3.0]),
                ]
            ),
        ),
        (
            "UpdateItemVectors",
            "MISSING_VECTOR_MODEL",
            pb.UpdateItemVectorsRequest(updates=[vector_update("item-0001", [1.0], version="")]),
        ),
        (
            "UpdateItemVectors",
            "EMPTY_ITEM_ID",
            pb.UpdateItemVectorsRequest(updates=[vector_update("", [1.0])]),
        ),
        (
            "RecordInteractions",
            "INVALID_INTERACTION_KIND",
            pb.RecordInteractionsRequest(
                interactions=[
                    interaction("u1", "item-0001", 1, kind=common_pb2.INTERACTION_KIND_UNSPECIFIED)
                ]
            ),
        ),
        (
            "RecordInteractions",
            "INVALID_INTERACTION_KIND",
            pb.RecordInteractionsRequest(
                interactions=[
                    interaction("u1", "item-0001", 1, kind=common_pb2.InteractionKind.ValueType(99))
                ]
            ),
        ),
        (
            "RecordInteractions",
            "EMPTY_ITEM_ID",
            pb.RecordInteractionsRequest(interactions=[interaction("u1", "", 1)]),
        ),
        (
            "RecordInteractions",
            "EMPTY_USER_ID",
            pb.RecordInteractionsRequest(interactions=[interaction("", "item-0001", 1)]),
        ),
        (
            "RecordInteractions",
            "BATCH_TOO_LARGE",
            pb.RecordInteractionsRequest(
                interactions=[interaction("u1", "item-0001", n) for n in range(1001)]
            ),
        ),
        (
            "RecordInteractions",
            "INVALID_VALUE",
            pb.RecordInteractionsRequest(
                interactions=[interaction("u1", "item-0001", 1, value=nan)]
            ),
        ),
        (
            "RecordImpressions",
            "INVALID_REASON",
            pb.RecordImpressionsRequest(
                impressions=[
                    common_pb2.Impression(
                        request_id="r", position=0, user_id="u1", item_id="item-0001"
                    )
                ]
            ),
        ),
        (
            "RecordImpressions",
            "NEGATIVE_POSITION",
            pb.RecordImpressionsRequest(impressions=[impression("r", -1, "item-0001")]),
        ),
        (
            "RecordImpressions",
            "EMPTY_REQUEST_ID",
            pb.RecordImpressionsRequest(impressions=[impression("", 0, "item-0001")]),
        ),
        (
            "RecordImpressions",
            "EMPTY_ITEM_ID",
            pb.RecordImpressionsRequest(impressions=[impression("r", 0, "")]),
        ),
        (
            "RecordImpressions",
            "BATCH_TOO_LARGE",
            pb.RecordImpressionsRequest(
                impressions=[impression("r", p, "item-0001") for p in range(1001)]
            ),
        ),
        ("ListImpressions", "EMPTY_REQUEST_ID", pb.ListImpressionsRequest(request_id="")),
        ("GetItemStats", "EMPTY_ITEM_ID", pb.GetItemStatsRequest(item_ids=[""])),
        ("ListItems", "INVALID_PAGE_SIZE", pb.ListItemsRequest(page_size=1001)),
        ("ListItems", "INVALID_PAGE_SIZE", pb.ListItemsRequest(page_size=-1)),
        ("ListItems", "INVALID_PAGE_TOKEN", pb.ListItemsRequest(page_token="not a token!")),
        ("ListInteractions", "INVALID_PAGE_SIZE", pb.ListInteractionsRequest(page_size=10_001)),
        (
            "ListInteractions",
            "INVALID_PAGE_TOKEN",
            pb.ListInteractionsRequest(page_token="eyJrIjoxfQ"),
        ),
        ("ListItemStats", "INVALID_PAGE_TOKEN", pb.ListItemStatsRequest(page_token="garbage")),
        (
            "ListItemStats",
            "CONFLICTING_FILTERS",
            pb.ListItemStatsRequest(
                if_popularity_version_differs="1.2.3",
                exposure_changed_since=timestamp_pb2.Timestamp(),
            ),
        ),
    ]


async def test_bad_input_is_invalid_argument_with_a_reason(served: Served) -> None:
    await seed(served)
    for method, reason, request in _bad_requests():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(served.stub, method)(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, reason)
        info = error_info(caught.value)
        assert info is not None and info.reason == reason, (method, reason, info)
    # None of it reached the store.
    catalog = await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest())
    assert (catalog.item_count, catalog.interaction_count, catalog.impression_count) == (10, 0, 0)


async def test_vector_dimension_must_match_stored_vectors_of_the_model(served: Served) -> None:
    await seed(served)
    await served.stub.UpdateItemVectors(
        pb.UpdateItemVectorsRequest(updates=[vector_update("item-0001", [1.0, 2.0])])
    )
    await expect_error(
        served.stub.UpdateItemVectors(
            pb.UpdateItemVectorsRequest(updates=[vector_update("item-0002", [1.0, 2.0, 3.0])])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "VECTOR_DIMENSION_MISMATCH",
    )
    await expect_error(
        served.stub.UpdateItemVectors(
            pb.UpdateItemVectorsRequest(updates=[vector_update("unknown", [1.0, 2.0])])
        ),
        grpc.StatusCode.NOT_FOUND,
        "ITEM_NOT_FOUND",
    )
    # Another model version may have another dimension.
    answer = await served.stub.UpdateItemVectors(
        pb.UpdateItemVectorsRequest(
            updates=[vector_update("item-0002", [1.0, 2.0, 3.0], version="2")]
        )
    )
    assert answer.updated_count == 1


# ----------------------------------------------------------------------------- serving


async def test_health_serving_then_not_serving_once_stop_begins(store_url: str) -> None:
    service = await serve(store_url)
    health: Any = health_pb2_grpc.HealthStub(service.channel)
    try:
        # Watch streams every change: wait for SERVING as an event, not a guessed number of polls.
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        first = await watch.read()
        while first.status != health_pb2.HealthCheckResponse.SERVING:
            first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(service.running.stop(grace=1.0))
        after = await asyncio.wait_for(watch.read(), timeout=60)
        assert after.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        await stopping
    finally:
        await service.channel.close()
        await service.running.stop(grace=0)


async def test_auth_token_is_required_when_configured(store_url: str) -> None:
    service = await serve(store_url, auth_token="s3cret")
    anonymous = open_channel(ClientSettings(target=service.target))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await profiles_service_pb2_grpc.ProfilesServiceStub(anonymous).GetCatalogStats(
                pb.GetCatalogStatsRequest()
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = await service.stub.GetCatalogStats(pb.GetCatalogStatsRequest())
        assert answer.item_count == 0
    finally:
        await anonymous.close()
        await service.channel.close()
        await service.running.stop(grace=0)
