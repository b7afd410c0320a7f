"""Dataset readers, the demo catalogue, and upload through a real profiles service."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest

from longtail.profiles.v1 import profiles_service_pb2 as pb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.channels import open_channel
from services.common.server import start_service
from services.common.settings import ClientSettings, ServerSettings
from services.profiles.app import ProfilesSettings, build
from services.suite.datasets import (
    DEMO_CATEGORIES,
    Dataset,
    DatasetError,
    InteractionRecord,
    ItemRecord,
    UserRecord,
    demo_interests,
    make_demo_catalogue,
    read_generic,
    read_movielens,
    upload,
    write_generic,
)

MOVIELENS = (
    Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "movielens-latest-small"
)


@pytest.fixture(scope="module")
def movielens() -> Dataset:
    if not (MOVIELENS / "movies.csv").is_file():
        pytest.fail(
            f"MovieLens latest-small is required at {MOVIELENS} and is absent", pytrace=False
        )
    return read_movielens(MOVIELENS)


def test_movielens_counts_and_records(movielens: Dataset) -> None:
    assert len(movielens.items) == 9742
    assert len(movielens.interactions) == 100836
    assert len(movielens.users) == 610
    assert {record.kind for record in movielens.interactions} == {"rating"}
    toy_story = next(item for item in movielens.items if item.item_id == "1")
    assert toy_story.title == "Toy Story (1995)"
    assert toy_story.categories == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert "pixar" in toy_story.tags
    assert toy_story.attributes["year"] == "1995"
    first = movielens.interactions[0]
    assert (first.user_id, first.item_id, first.value) == ("1", "1", 4.0)
    assert first.occurred_at == dt.datetime.fromtimestamp(964982703, dt.UTC)
    item_ids = {item.item_id for item in movielens.items}
    assert all(record.item_id in item_ids for record in movielens.interactions)
    assert {u.user_id for u in movielens.users} == {r.user_id for r in movielens.interactions}
    # "(no genres listed)" is no category.
    assert all("(no genres listed)" not in item.categories for item in movielens.items)


def test_movielens_folder_must_hold_the_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"movies\.csv"):
        read_movielens(tmp_path)


def _small_dataset() -> Dataset:
    when = dt.datetime(2024, 3, 1, 12, 30, 15, 250000, tzinfo=dt.UTC)
    return Dataset(
        items=[
            ItemRecord(
                "a", "Alpha, the first", 'Quoted "text", commas', ["x", "y"], ["c1"], {"k": "v"}
            ),
            ItemRecord("b", "Bêta", "", [], ["c1", "c2"], {}),
        ],
        users=[UserRecord("u1", "likes alpha"), UserRecord("u2", "")],
        interactions=[
            InteractionRecord("u1", "a", "click", 0.0, when),
            InteractionRecord("u2", "b", "rating", 3.5, when + dt.timedelta(seconds=1)),
        ],
    )


def test_generic_format_round_trip(tmp_path: Path) -> None:
    dataset = _small_dataset()
    write_generic(dataset, tmp_path / "out")
    assert read_generic(tmp_path / "out") == dataset


def test_generic_csv_forms_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text(
        "item_id,title,tags,categories,colour\ni1,First,red|big,c1,blue\ni2,Second,,,\n",
        encoding="utf-8",
    )
    (tmp_path / "interactions.jsonl").write_text(
        json.dumps({"user_id": "u9", "item_id": "i1", "occurred_at": 1700000000})
        + "\n"
        + json.dumps(
            {
                "user_id": "u9",
                "item_id": "i2",
                "kind": "RATING",
                "value": "4",
                "occurred_at": "2024-01-01T10:00:00",
            }
        )
        + "\n",
        encoding="utf-8",
    )
    dataset = read_generic(tmp_path)
    assert dataset.items == [
        ItemRecord("i1", "First", "", ["red", "big"], ["c1"], {"colour": "blue"}),
        ItemRecord("i2", "Second"),
    ]
    assert dataset.users == [UserRecord("u9", "")]
    first, second = dataset.interactions
    assert (first.kind, first.value) == ("view", 0.0)
    assert first.occurred_at == dt.datetime.fromtimestamp(1700000000, dt.UTC)
    assert (second.kind, second.value) == ("rating", 4.0)
    assert second.occurred_at == dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC)


def test_generic_format_names_the_bad_line(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text('{"item_id": "i1"}\n', encoding="utf-8")
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,kind,value,occurred_at\nu1,i1,like,0,2024-01-01\n", encoding="utf-8"
    )
    with pytest.raises(DatasetError, match=r"interactions.csv:2: kind"):
        read_generic(tmp_path)
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,kind,value,occurred_at\nu1,nope,view,0,2024-01-01\n", encoding="utf-8"
    )
    with pytest.raises(DatasetError, match="not in the catalogue"):
        read_generic(tmp_path)


def test_demo_catalogue_is_deterministic_readable_and_long_tailed() -> None:
    demo = make_demo_catalogue()
    assert demo == make_demo_catalogue()
    assert demo != make_demo_catalogue(seed=1)
    assert (len(demo.items), len(demo.users)) == (3000, 400)
    assert len({c for item in demo.items for c in item.categories}) == 8
    assert all(item.title and item.description.endswith(".") and item.tags for item in demo.items)
    counts = Counter(record.item_id for record in demo.interactions)
    cold = [item for item in demo.items if item.item_id not in counts]
    assert len(cold) >= 150  # the brand-new 5% at least
    assert all(item.item_id in {i.item_id for i in cold} for item in demo.items[-150:])
    # Popularity is skewed: the top 20% of items hold most interactions.
    top = sum(n for _, n in counts.most_common(600))
    assert top / len(demo.interactions) > 0.6
    assert {record.kind for record in demo.interactions} == {"view", "click", "purchase", "rating"}
    # Users mostly stay in the categories their interests name.
    by_id = {item.item_id: item for item in demo.items}
    user = next(
        u for u in demo.users if sum(r.user_id == u.user_id for r in demo.interactions) > 20
    )
    inside = [
        any(c in user.interests for c in by_id[r.item_id].categories)
        for r in demo.interactions
        if r.user_id == user.user_id
    ]
    assert sum(inside) / len(inside) > 0.7


def test_demo_interests_speak_the_words_of_their_category() -> None:
    demo = make_demo_catalogue(n_items=400, n_users=0)
    assert len(DEMO_CATEGORIES) == 8
    for category in DEMO_CATEGORIES:
        words = set(demo_interests(category).lower().replace(".", " ").replace(",", " ").split())
        members = [item for item in demo.items if item.categories[0] == category]
        others = [item for item in demo.items if item.categories[0] != category]

        def overlap(item: ItemRecord, words: set[str] = words) -> float:
            text = " ".join([item.title, item.description, *item.tags]).lower()
            return len(words & set(text.replace(".", " ").replace(":", " ").split()))

        assert sum(map(overlap, members)) / len(members) > sum(map(overlap, others)) / len(others)
    with pytest.raises(ValueError, match="unknown demo category"):
        demo_interests("knitting")


async def test_upload_sends_everything_once(tmp_path: Path) -> None:
    demo = make_demo_catalogue(n_items=120, n_users=25, seed=7)
    definition = await build(ProfilesSettings(database_url=f"sqlite:///{tmp_path / 'up.db'}"))
    running = await start_service(definition, ServerSettings(port=0))
    channel = open_channel(ClientSettings(target=f"127.0.0.1:{running.port}"))
    try:
        stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)
        counts = await upload(demo, stub, batch_size=50, progress=False)
        assert counts == {
            "items": 120,
            "users": 25,
            "interactions": len(demo.interactions),
            "interaction_duplicates": 0,
        }
        again = await upload(demo, stub, batch_size=1000, progress=False)
        assert (again["interactions"], again["interaction_duplicates"]) == (
            0,
            len(demo.interactions),
        )
        catalog = await stub.GetCatalogStats(pb.GetCatalogStatsRequest())
        assert (catalog.item_count, catalog.user_count) == (120, 25)
        assert catalog.interaction_count == len(demo.interactions)
        assert catalog.cold_item_count >= 6
        with pytest.raises(ValueError):
            await upload(demo, stub, batch_size=1001, progress=False)
    finally:
        await channel.close()
        await running.stop(grace=0)
