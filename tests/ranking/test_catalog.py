"""Catalogue snapshots: assembling pages, stats, incremental index reuse, refresh probing."""

from __future__ import annotations

import numpy as np

from services.ranking.catalog import (
    CatalogLoader,
    ItemPage,
    ItemStatsRecord,
    ModelRef,
    assemble_items,
    build_snapshot,
    restat_snapshot,
)
from services.ranking.index import IndexParams, normalize_rows
from tests.ranking.synthetic import MODEL, FakeCatalog, make_world

OTHER = ModelRef("other-encoder", "7")


def page(*rows: tuple[str, list[float] | None, ModelRef | None]) -> ItemPage:
    return ItemPage(
        [r[0] for r in rows],
        [("c",) for _ in rows],
        [None if r[1] is None else np.asarray(r[1], dtype=np.float32) for r in rows],
        [r[2] for r in rows],
    )


def test_assemble_keeps_the_most_common_model_dedupes_and_normalises() -> None:
    pages = [
        page(("a", [3.0, 4.0], MODEL), ("b", [1.0, 0.0], OTHER), ("c", None, None)),
        page(("d", [0.0, 2.0], MODEL), ("a", [0.0, 5.0], MODEL), ("e", [1.0, 1.0, 1.0], MODEL)),
    ]
    items = assemble_items(pages, None)
    assert items.model == MODEL
    # "a" keeps its last vector; "e" (another dimension) is dropped; "b" is another model.
    assert items.item_ids == ["d", "a"]
    np.testing.assert_allclose(items.vectors, [[0.0, 1.0], [0.0, 1.0]])
    assert assemble_items(pages, OTHER).item_ids == ["b"]
    assert assemble_items([page(("x", None, None))], None).item_ids == []


def test_snapshot_takes_flags_from_stats_and_unknown_items_are_cold_tail() -> None:
    world = make_world(n_items=50, n_users=5)
    stats = [
        ItemStatsRecord("item-00000", 9, False, False),
        ItemStatsRecord("item-00001", 2, True, False),
    ]
    snapshot = build_snapshot(world.items(), stats, IndexParams())
    assert snapshot.size == 50 and snapshot.model == MODEL and snapshot.index.kind == "flat"
    assert not snapshot.is_tail[0] and snapshot.is_tail[1] and not snapshot.is_cold[1]
    assert snapshot.is_tail[2:].all() and snapshot.is_cold[2:].all()
    assert snapshot.popular_rows[:2].tolist() == [0, 1]
    assert snapshot.popular_tail_rows[0] == 1
    assert snapshot.tail_pool.size == 49 and snapshot.cold_pool.size == 48
    assert snapshot.rows_of(["item-00003", "nope"]).tolist() == [3]


def test_new_items_reuse_the_hnsw_graph_and_changed_vectors_rebuild_it() -> None:
    world = make_world(n_items=400, n_users=20)
    params = IndexParams(exact_max_items=100)
    first = build_snapshot(world.items(), world.stats(), params)
    assert first.index.kind == "hnsw"
    items = world.items()
    new_vector = normalize_rows(np.ones((1, world.dimension)))
    items.item_ids.insert(5, "brand-new")
    items.categories.insert(5, ("new",))
    items.vectors = np.vstack([items.vectors[:5], new_vector, items.vectors[5:]])
    second = build_snapshot(items, world.stats(), params, previous=first)
    assert second.index.segments[0] is first.index.segments[0]
    assert second.index.delta_size == 1 and second.item_ids[-1] == "brand-new"
    assert second.index.version != first.index.version
    found = second.index.search(new_vector[0], 1)
    assert second.item_ids[int(found.rows[0])] == "brand-new"
    assert second.categories[second.rows["brand-new"]] == ("new",)
    assert second.is_cold[second.rows["brand-new"]]

    changed = world.items()
    changed.vectors[0] = normalize_rows(-np.ones((1, world.dimension)))[0]
    third = build_snapshot(changed, world.stats(), params, previous=second)
    assert third.index.segments[0] is not first.index.segments[0]
    assert third.index.delta_size == 0 and third.size == 400


def test_restat_only_builds_a_new_snapshot_when_stats_changed() -> None:
    world = make_world(n_items=60, n_users=10)
    snapshot = build_snapshot(world.items(), world.stats(), IndexParams())
    assert restat_snapshot(snapshot, world.stats(), IndexParams()) is None
    stats = [ItemStatsRecord(s.item_id, 0, True, True) for s in world.stats()]
    updated = restat_snapshot(snapshot, stats, IndexParams())
    assert updated is not None and updated.is_cold.all() and updated.index is snapshot.index


async def test_refresh_probes_before_fetching_and_picks_up_new_items() -> None:
    world = make_world(n_items=120, n_users=10)
    catalog = FakeCatalog(world)
    loader = CatalogLoader(catalog, IndexParams())
    snapshot = await loader.load(None)
    assert snapshot.size == 120 and catalog.item_fetches == 1 and catalog.stats_reads == 1
    assert await loader.refresh(snapshot) is None
    assert catalog.item_fetches == 1  # unchanged count: no item pages fetched
    assert catalog.stats_reads == 1  # unchanged stats version: no stats pages either

    catalog.add_item("fresh", "jazz", world.category_vector("jazz"))
    refreshed = await loader.refresh(snapshot)
    assert refreshed is not None and "fresh" in refreshed.rows and refreshed.size == 121

    catalog.counts["item-00001"] += 50
    restated = await loader.refresh(refreshed)
    assert restated is not None
    assert restated.popularity[restated.rows["item-00001"]] == catalog.counts["item-00001"]
    reads = catalog.stats_reads
    assert await loader.refresh(restated) is None and catalog.stats_reads == reads


async def test_refresh_reads_the_stats_in_full_for_a_snapshot_it_did_not_make() -> None:
    world = make_world(n_items=60, n_users=10)
    catalog = FakeCatalog(world)
    loader = CatalogLoader(catalog, IndexParams())
    await loader.load(None)
    # Built elsewhere (another loader, training's restat): the version does not vouch for it.
    foreign = build_snapshot(
        world.items(), [ItemStatsRecord(i, 0, True, True) for i in world.item_ids], IndexParams()
    )
    restated = await loader.refresh(foreign)
    assert catalog.stats_reads == 2
    assert restated is not None and not restated.is_cold.all()


async def test_load_falls_back_to_the_stores_model_when_the_encoders_has_no_vectors() -> None:
    world = make_world(n_items=30, n_users=5)
    catalog = FakeCatalog(world)
    catalog.model = OTHER  # the embeddings service moved on; nothing re-indexed yet
    snapshot = await CatalogLoader(catalog, IndexParams()).load(None)
    assert snapshot.model == MODEL and snapshot.size == 30
    catalog.embeddings_up = False
    snapshot = await CatalogLoader(catalog, IndexParams()).load(None)
    assert snapshot.model == MODEL and snapshot.size == 30
