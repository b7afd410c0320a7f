"""ListItemStats' popularity version: an unchanged catalogue is answered without the full read."""

from __future__ import annotations

import sqlalchemy as sa

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as pb
from services.profiles.profiles import FULL_HEAD_REFRESH_SECONDS, HeadCache, Profiles
from services.profiles.records import ItemRecord
from services.profiles.repository import Repository
from services.profiles.store import Database, create_store_engine
from tests.profiles.conftest import Served
from tests.profiles.test_service import impression, interaction, seed


async def _first_page(served: Served, known: str = "") -> pb.ListItemStatsResponse:
    return await served.stub.ListItemStats(
        pb.ListItemStatsRequest(page_size=4, if_popularity_version_differs=known)
    )


async def test_unchanged_until_an_interaction_is_recorded(served: Served) -> None:
    await seed(served, n_items=10)
    await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(interactions=[interaction("u1", "item-0003", 1)])
    )
    # The head set recounted now (a background recount of the same counts gives the same digest).
    await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest())
    full = await _first_page(served)
    assert not full.unchanged and len(full.stats) == 4 and full.next_page_token
    assert full.popularity_version

    same = await _first_page(served, full.popularity_version)
    assert same.unchanged and same.popularity_version == full.popularity_version
    assert list(same.stats) == [] and same.next_page_token == ""

    # Served lists move impression_count, which the popularity version does not cover.
    await served.stub.RecordImpressions(
        pb.RecordImpressionsRequest(impressions=[impression("r1", 0, "item-0001")])
    )
    assert (await _first_page(served, full.popularity_version)).unchanged

    await served.stub.RecordInteractions(
        pb.RecordInteractionsRequest(
            interactions=[interaction("u2", "item-0001", 2, request_id="r1")]
        )
    )
    after = await _first_page(served, full.popularity_version)
    assert not after.unchanged and after.popularity_version != full.popularity_version
    by_id = {s.item_id: s for s in after.stats}
    assert by_id["item-0001"].interaction_count == 1
    assert by_id["item-0001"].impression_count == 1 and by_id["item-0001"].feedback_count == 1


async def test_a_new_item_changes_the_version_and_later_pages_carry_none(served: Served) -> None:
    await seed(served, n_items=5)
    await served.stub.GetCatalogStats(pb.GetCatalogStatsRequest())
    before = await _first_page(served)
    second = await served.stub.ListItemStats(
        pb.ListItemStatsRequest(
            page_size=4,
            page_token=before.next_page_token,
            if_popularity_version_differs=before.popularity_version,
        )
    )
    # A later page is always read (the version belongs to the first).
    assert [s.item_id for s in second.stats] == ["item-0004"] and not second.unchanged
    assert second.popularity_version == ""
    await served.stub.UpsertItems(
        pb.UpsertItemsRequest(items=[common_pb2.Item(item_id="item-new", title="New")])
    )
    assert not (await _first_page(served, before.popularity_version)).unchanged


async def test_a_change_the_version_token_misses_is_read_after_the_full_recount(
    store_url: str,
) -> None:
    """On PostgreSQL an interaction can commit under an older id than the newest one counted:
    the token stays, and the head set's periodic full recount moves the version."""
    now = [0.0]
    database = Database(create_store_engine(store_url, 2))
    try:
        profiles = Profiles(
            database,
            Repository(),
            HeadCache(max_age_seconds=5.0, min_refresh_seconds=1.0, clock=lambda: now[0]),
            refresh_head_in_background=False,
        )
        await profiles.upsert_items(
            [ItemRecord(item_id=f"i{n}", title=f"Item {n}") for n in range(5)]
        )
        first = await profiles.list_item_stats(10, "")
        assert not first.unchanged and len(first.entries) == 5

        def late_commit() -> None:
            with database.engine.begin() as connection:
                connection.execute(
                    sa.text(
                        "UPDATE item_counters SET interaction_count = interaction_count + 3 "
                        "WHERE item_id = 'i2'"
                    )
                )

        late_commit()
        now[0] = 10.0  # the head set is due, but its token did not move: no full recount
        assert (await profiles.list_item_stats(10, "", first.popularity_version)).unchanged
        now[0] = FULL_HEAD_REFRESH_SECONDS + 1.0
        recounted = await profiles.list_item_stats(10, "", first.popularity_version)
        assert not recounted.unchanged
        assert {s.item_id: s.interaction_count for s in recounted.entries}["i2"] == 3
        # Nothing new since: the next recount finds the same counts, and the version holds.
        now[0] = 2 * FULL_HEAD_REFRESH_SECONDS + 2.0
        assert (await profiles.list_item_stats(10, "", recounted.popularity_version)).unchanged
    finally:
        database.dispose()
