"""Catalogues and interaction logs for Longtail: MovieLens, a generic format, a synthetic demo
catalogue, and ``upload`` into the profiles service.

Nothing here downloads anything: readers take a local folder, the demo catalogue is generated.

Generic dataset format
======================

A folder with these files (UTF-8):

``items.jsonl`` (or ``items.csv``) — the catalogue, required.
    JSON lines, one object per item::

        {"item_id": "sku-1", "title": "Quiet Harbour", "description": "A slow novel about ...",
         "tags": ["sea", "family"], "categories": ["fiction"], "attributes": {"author": "..."}}

    ``item_id`` is required and unique; every other key is optional (empty by default).
    Attribute values are strings (numbers and booleans are converted with ``str``).
    The CSV form has a header row with ``item_id`` and optionally ``title``, ``description``,
    ``tags`` and ``categories`` (several values separated by ``|``); every other column becomes an
    attribute (empty cells are left out).

``interactions.csv`` (or ``interactions.jsonl``) — what users did, required (may be empty).
    Columns / keys: ``user_id``, ``item_id`` (required), ``kind`` (``view``, ``click``,
    ``purchase`` or ``rating``; default ``view``), ``value`` (a number, the rating for ``rating``;
    default 0) and ``occurred_at`` (ISO 8601 — a time without an offset is UTC — or Unix seconds;
    required). Every item an interaction names must be in the catalogue.

``users.jsonl`` — optional.
    ``{"user_id": "u1", "interests": "free text, embedded for users with no history"}``.
    Users who appear only in interactions are added with no interests.

When both a ``.jsonl`` and a ``.csv`` form of a file exist, the ``.jsonl`` one is read.
``write_generic`` writes this format (``items.jsonl``, ``users.jsonl``, ``interactions.csv``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2
from tqdm import tqdm

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc

INTERACTION_KINDS = ("view", "click", "purchase", "rating")
MAX_BATCH = 1000

_KIND_TO_PROTO = {
    "view": common_pb2.INTERACTION_KIND_VIEW,
    "click": common_pb2.INTERACTION_KIND_CLICK,
    "purchase": common_pb2.INTERACTION_KIND_PURCHASE,
    "rating": common_pb2.INTERACTION_KIND_RATING,
}

T = TypeVar("T")


@dataclasses.dataclass
class ItemRecord:
    item_id: str
    title: str = ""
    description: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    categories: list[str] = dataclasses.field(default_factory=list)
    attributes: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class UserRecord:
    user_id: str
    interests: str = ""


@dataclasses.dataclass
class InteractionRecord:
    user_id: str
    item_id: str
    # view | click | purchase | rating
    kind: str
    value: float
    # Timezone-aware (UTC).
    occurred_at: dt.datetime


@dataclasses.dataclass
class Dataset:
    items: list[ItemRecord]
    users: list[UserRecord]
    interactions: list[InteractionRecord]


class DatasetError(ValueError):
    """A dataset file is missing or malformed (the message names the file and line)."""


# ----------------------------------------------------------------------------- MovieLens

_YEAR = re.compile(r"\((\d{4})\)\s*$")
_NO_GENRES = "(no genres listed)"


def read_movielens(folder: Path) -> Dataset:
    """A MovieLens folder (``movies.csv``, ``ratings.csv``, optional ``tags.csv``).

    Items are movies: the title is the movie title, genres are categories, user tags are tags
    (lower-cased, most used first) and the year is an attribute. Every rating is a ``rating``
    interaction at its timestamp; users are the users who rated.
    """
    folder = Path(folder)
    movies_path, ratings_path, tags_path = (
        folder / "movies.csv",
        folder / "ratings.csv",
        folder / "tags.csv",
    )
    for path in (movies_path, ratings_path):
        if not path.is_file():
            raise DatasetError(f"{path} is missing: not a MovieLens folder")

    tag_counts: dict[str, Counter[str]] = {}
    if tags_path.is_file():
        for row in _csv_rows(tags_path, ("movieId", "tag")):
            tag = " ".join(row["tag"].lower().split())
            if tag:
                tag_counts.setdefault(row["movieId"], Counter())[tag] += 1

    items: list[ItemRecord] = []
    for row in _csv_rows(movies_path, ("movieId", "title", "genres")):
        movie_id = row["movieId"]
        genres = [g for g in row["genres"].split("|") if g and g != _NO_GENRES]
        attributes = {"movielens_id": movie_id}
        year = _YEAR.search(row["title"])
        if year:
            attributes["year"] = year.group(1)
        counts = tag_counts.get(movie_id, Counter())
        items.append(
            ItemRecord(
                item_id=movie_id,
                title=row["title"].strip(),
                description=f"Genres: {', '.join(genres)}." if genres else "",
                tags=[tag for tag, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))],
                categories=genres,
                attributes=attributes,
            )
        )

    interactions: list[InteractionRecord] = []
    user_ids: dict[str, None] = {}
    with ratings_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or header[:4] != ["userId", "movieId", "rating", "timestamp"]:
            raise DatasetError(f"{ratings_path}: expected userId,movieId,rating,timestamp")
        for line, fields in enumerate(reader, start=2):
            try:
                user_id, movie_id, rating, stamp = fields[:4]
                occurred = dt.datetime.fromtimestamp(int(stamp), dt.UTC)
                value = float(rating)
            except ValueError as error:
                raise DatasetError(f"{ratings_path}:{line}: {error}") from error
            user_ids[user_id] = None
            interactions.append(InteractionRecord(user_id, movie_id, "rating", value, occurred))
    users = [UserRecord(user_id) for user_id in sorted(user_ids, key=_natural_key)]
    return Dataset(items, users, interactions)


def _natural_key(value: str) -> tuple[int, int | str]:
    return (0, int(value)) if value.isdigit() else (1, value)


def _csv_rows(path: Path, required: Sequence[str]) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in required if name not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
        for row in reader:
            yield {key: (value or "") for key, value in row.items() if key is not None}


# ----------------------------------------------------------------------------- generic format


def read_generic(folder: Path) -> Dataset:
    """A folder in the generic format described in this module's docstring."""
    folder = Path(folder)
    items_path = _pick(folder, "items")
    interactions_path = _pick(folder, "interactions")
    items = (
        [_item_from_json(obj, items_path, line) for line, obj in _jsonl(items_path)]
        if items_path.suffix == ".jsonl"
        else [_item_from_csv(row, items_path, line) for line, row in _csv_lines(items_path)]
    )
    seen_items: set[str] = set()
    for item in items:
        if item.item_id in seen_items:
            raise DatasetError(f"{items_path}: item_id {item.item_id!r} appears twice")
        seen_items.add(item.item_id)

    entries: Iterable[tuple[int, dict[str, Any]]] = (
        _jsonl(interactions_path)
        if interactions_path.suffix == ".jsonl"
        else _csv_lines(interactions_path)
    )
    interactions = [
        _interaction_from(obj, interactions_path, line, seen_items) for line, obj in entries
    ]

    users: dict[str, UserRecord] = {}
    users_path = folder / "users.jsonl"
    if users_path.is_file():
        for line, obj in _jsonl(users_path):
            user_id = str(obj.get("user_id") or "")
            if not user_id:
                raise DatasetError(f"{users_path}:{line}: user_id is required")
            users[user_id] = UserRecord(user_id, str(obj.get("interests") or ""))
    for record in interactions:
        users.setdefault(record.user_id, UserRecord(record.user_id))
    return Dataset(items, list(users.values()), interactions)


def _pick(folder: Path, stem: str) -> Path:
    for suffix in (".jsonl", ".csv"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise DatasetError(f"{folder}: neither {stem}.jsonl nor {stem}.csv exists")


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}:{line}: {error}") from error
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{line}: expected a JSON object")
            yield line, obj


def _csv_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            yield line, {key: value for key, value in row.items() if key is not None}


def _strings(value: Any, path: Path, line: int, name: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split("|") if part.strip()]
    if isinstance(value, list):
        return [str(part) for part in value]
    raise DatasetError(f"{path}:{line}: {name} must be a list of strings")


def _item_from_json(obj: dict[str, Any], path: Path, line: int) -> ItemRecord:
    item_id = str(obj.get("item_id") or "")
    if not item_id:
        raise DatasetError(f"{path}:{line}: item_id is required")
    attributes = obj.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise DatasetError(f"{path}:{line}: attributes must be an object")
    return ItemRecord(
        item_id=item_id,
        title=str(obj.get("title") or ""),
        description=str(obj.get("description") or ""),
        tags=_strings(obj.get("tags"), path, line, "tags"),
        categories=_strings(obj.get("categories"), path, line, "categories"),
        attributes={str(key): str(value) for key, value in attributes.items()},
    )


_ITEM_COLUMNS = {"item_id", "title", "description", "tags", "categories"}


def _item_from_csv(row: dict[str, Any], path: Path, line: int) -> ItemRecord:
    item_id = str(row.get("item_id") or "")
    if not item_id:
        raise DatasetError(f"{path}:{line}: item_id is required")
    return ItemRecord(
        item_id=item_id,
        title=str(row.get("title") or ""),
        description=str(row.get("description") or ""),
        tags=_strings(row.get("tags"), path, line, "tags"),
        categories=_strings(row.get("categories"), path, line, "categories"),
        attributes={
            key: str(value) for key, value in row.items() if key not in _ITEM_COLUMNS and value
        },
    )


def _parse_time(value: Any, path: Path, line: int) -> dt.datetime:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    text = str(value or "").strip()
    if not text:
        raise DatasetError(f"{path}:{line}: occurred_at is required")
    try:
        return dt.datetime.fromtimestamp(float(text), dt.UTC)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise DatasetError(f"{path}:{line}: occurred_at {text!r} is not a time") from error
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _interaction_from(
    obj: dict[str, Any], path: Path, line: int, items: set[str]
) -> InteractionRecord:
    user_id = str(obj.get("user_id") or "")
    item_id = str(obj.get("item_id") or "")
    if not user_id or not item_id:
        raise DatasetError(f"{path}:{line}: user_id and item_id are required")
    if item_id not in items:
        raise DatasetError(f"{path}:{line}: item {item_id!r} is not in the catalogue")
    kind = str(obj.get("kind") or "view").strip().lower()
    if kind not in INTERACTION_KINDS:
        raise DatasetError(f"{path}:{line}: kind must be one of {', '.join(INTERACTION_KINDS)}")
    raw_value = obj.get("value")
    try:
        value = float(raw_value) if raw_value not in (None, "") else 0.0
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{path}:{line}: value {raw_value!r} is not a number") from error
    if not math.isfinite(value):
        raise DatasetError(f"{path}:{line}: value must be finite")
    return InteractionRecord(
        user_id, item_id, kind, value, _parse_time(obj.get("occurred_at"), path, line)
    )


def write_generic(dataset: Dataset, folder: Path) -> None:
    """Write ``dataset`` in the generic format (items.jsonl, users.jsonl, interactions.csv)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "items.jsonl").open("w", encoding="utf-8") as handle:
        for item in dataset.items:
            handle.write(json.dumps(dataclasses.asdict(item), ensure_ascii=False) + "\n")
    with (folder / "users.jsonl").open("w", encoding="utf-8") as handle:
        for user in dataset.users:
            handle.write(json.dumps(dataclasses.asdict(user), ensure_ascii=False) + "\n")
    with (folder / "interactions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "kind", "value", "occurred_at"])
        for record in dataset.interactions:
            writer.writerow(
                [
                    record.user_id,
                    record.item_id,
                    record.kind,
                    repr(record.value),
                    record.occurred_at.astimezone(dt.UTC).isoformat(),
                ]
            )


# ----------------------------------------------------------------------------- demo catalogue

# Per category: (adjectives, nouns, topics, tags, audiences). Titles read "<Adjective> <Noun>"
# with an optional "of/for/in <Topic>"; descriptions are one sentence.
_DEMO_POOLS: dict[str, tuple[list[str], list[str], list[str], list[str], list[str]]] = {
    "science fiction": (
        ["Distant", "Silent", "Quantum", "Red", "Hollow", "Last", "Electric", "Frozen"],
        ["Orbit", "Colony", "Signal", "Starship", "Horizon", "Machine", "Nebula", "Outpost"],
        ["first contact", "a dying sun", "rogue AI", "time loops", "Mars settlers", "deep space"],
        ["space", "aliens", "robots", "future", "dystopia", "time travel", "cyberpunk"],
        ["readers who love big ideas", "fans of hard science", "late-night dreamers"],
    ),
    "cooking": (
        ["Rustic", "Quick", "Smoky", "Golden", "Humble", "Spiced", "Fresh", "Slow"],
        ["Kitchen", "Table", "Bread", "Skillet", "Harvest", "Pantry", "Broth", "Feast"],
        ["weeknight dinners", "sourdough", "street food", "fermentation", "vegan baking"],
        ["recipes", "baking", "vegetarian", "spices", "comfort food", "grilling", "desserts"],
        ["home cooks", "busy families", "curious beginners"],
    ),
    "travel": (
        ["Wandering", "Northern", "Sunlit", "Hidden", "Coastal", "Wild", "Ancient", "Lonely"],
        ["Road", "Islands", "Trail", "Harbour", "Passage", "Mountains", "Journey", "Atlas"],
        ["Patagonia", "the Silk Road", "Nordic fjords", "Japanese rail", "desert crossings"],
        ["adventure", "backpacking", "maps", "hiking", "road trip", "islands", "culture"],
        ["restless travellers", "armchair explorers", "budget backpackers"],
    ),
    "history": (
        ["Forgotten", "Iron", "Imperial", "Broken", "Golden", "Fallen", "Secret", "Medieval"],
        ["Empire", "Crown", "Chronicle", "Siege", "Dynasty", "Republic", "Archive", "Frontier"],
        [
            "the Roman army",
            "Viking trade",
            "the printing press",
            "the Hanseatic League",
            "revolutions",
        ],
        ["ancient", "biography", "war", "empires", "archaeology", "politics", "kings"],
        ["history buffs", "students", "curious minds"],
    ),
    "jazz": (
        ["Blue", "Midnight", "Smoky", "Velvet", "Cool", "Swinging", "Late", "Modal"],
        ["Session", "Standards", "Quartet", "Groove", "Ballads", "Suite", "Notes", "Club"],
        ["bebop", "the saxophone", "New Orleans", "improvisation", "big bands"],
        ["saxophone", "piano", "bebop", "live", "vinyl", "improvisation", "swing"],
        ["late-night listeners", "record collectors", "young musicians"],
    ),
    "gardening": (
        ["Green", "Wild", "Small", "Sunny", "Shady", "Organic", "Patient", "Urban"],
        ["Garden", "Seeds", "Allotment", "Greenhouse", "Meadow", "Orchard", "Roots", "Balcony"],
        ["native plants", "composting", "tomatoes", "pollinators", "container growing"],
        ["plants", "vegetables", "flowers", "compost", "organic", "seeds", "trees"],
        ["first-time gardeners", "balcony growers", "allotment keepers"],
    ),
    "mystery": (
        ["Silent", "Crooked", "Missing", "Dark", "Locked", "Poisoned", "Cold", "Final"],
        ["Witness", "Room", "Letter", "Alibi", "Detective", "Manor", "Clue", "Verdict"],
        ["a village murder", "a stolen painting", "a vanished heiress", "an old grudge"],
        ["detective", "crime", "thriller", "whodunit", "noir", "suspense", "police"],
        ["puzzle lovers", "crime fans", "night readers"],
    ),
    "fitness": (
        ["Strong", "Daily", "Lean", "Steady", "Fast", "Mindful", "Bold", "Simple"],
        ["Workout", "Routine", "Stride", "Core", "Training", "Habit", "Marathon", "Flow"],
        ["running", "kettlebells", "yoga", "mobility", "strength at home", "cycling"],
        ["running", "yoga", "strength", "health", "cardio", "stretching", "nutrition"],
        ["beginners", "busy professionals", "weekend athletes"],
    ),
}
_DEMO_FORMATS = ["guide", "story", "collection", "handbook", "album", "series", "course"]
_DEMO_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_DEMO_DAYS = 180


DEMO_CATEGORIES: tuple[str, ...] = tuple(_DEMO_POOLS)


def demo_interests(category: str) -> str:
    """Free text about one demo category, in the catalogue's own words (for cold-start users)."""
    if category not in _DEMO_POOLS:
        raise ValueError(f"unknown demo category {category!r}; one of {', '.join(DEMO_CATEGORIES)}")
    _, nouns, topics, tags, _ = _DEMO_POOLS[category]
    return (
        f"I love {category}: {', '.join(tags[:4])}. Give me {nouns[0].lower()} and "
        f"{nouns[1].lower()} stories about {topics[0]} and {topics[1]}."
    )


def _article(word: str) -> str:
    return "An" if word[:1].lower() in "aeiou" else "A"


def make_demo_catalogue(n_items: int = 3000, n_users: int = 400, seed: int = 0) -> Dataset:
    """A synthetic catalogue with readable text in 8 categories, Zipf-like popularity, users with
    category preferences and histories, and brand-new items (about 5%) with no interactions.

    The same arguments give the same dataset; nothing is downloaded.
    """
    if n_items < 1 or n_users < 0:
        raise ValueError("n_items must be >= 1 and n_users >= 0")
    rng = random.Random(seed)
    categories = list(_DEMO_POOLS)
    # Brand-new items (no interactions at all): the last ~5% of the catalogue.
    n_new = max(1, n_items // 20) if n_items > 1 else 0
    established = n_items - n_new
    items: list[ItemRecord] = []
    by_category: dict[str, list[int]] = {category: [] for category in categories}
    for index in range(n_items):
        category = (
            categories[index % len(categories)]
            if index < len(categories)
            else rng.choice(categories)
        )
        adjectives, nouns, topics, tags, audiences = _DEMO_POOLS[category]
        adjective, noun, topic = rng.choice(adjectives), rng.choice(nouns), rng.choice(topics)
        form = rng.choice(_DEMO_FORMATS)
        # Established items were added before the interaction window, new ones at its very end.
        new = index >= n_items - n_new
        added = (
            (_DEMO_EPOCH + dt.timedelta(days=_DEMO_DAYS - rng.randint(0, 6)))
            if new
            else (_DEMO_EPOCH - dt.timedelta(days=rng.randint(1, 720)))
        )
        title = f"{adjective} {noun}"
        if rng.random() < 0.6:
            title += f": {topic[0].upper()}{topic[1:]}"
        item_categories = [category]
        if rng.random() < 0.15:
            item_categories.append(rng.choice([c for c in categories if c != category]))
        items.append(
            ItemRecord(
                item_id=f"demo-{index:05d}",
                title=title,
                description=(
                    f"{_article(adjective)} {adjective.lower()} {form} about {topic} "
                    f"for {rng.choice(audiences)}."
                ),
                tags=rng.sample(tags, 3),
                categories=item_categories,
                attributes={"format": form, "source": "demo", "added": added.date().isoformat()},
            )
        )
        by_category[category].append(index)

    # Zipf-like popularity over a random order of the established items.
    ranks = list(range(1, established + 1))
    rng.shuffle(ranks)
    weight = {index: 1.0 / ranks[index] for index in range(established)}
    pools: dict[str, tuple[list[int], list[float]]] = {}
    for category, members in by_category.items():
        members = [m for m in members if m < established]
        cumulative: list[float] = []
        total = 0.0
        for member in members:
            total += weight[member]
            cumulative.append(total)
        pools[category] = (members, cumulative)

    users: list[UserRecord] = []
    interactions: list[InteractionRecord] = []
    n_cold_users = n_users // 20
    for number in range(n_users):
        user_id = f"user-{number:04d}"
        favourites = rng.sample(categories, rng.choice((1, 2, 2, 3)))
        preference = [rng.uniform(1.0, 3.0) for _ in favourites]
        tag_words = [rng.choice(_DEMO_POOLS[c][3]) for c in favourites]
        interests = f"I enjoy {' and '.join(favourites)}, especially {', '.join(tag_words)}."
        users.append(UserRecord(user_id, interests))
        if number >= n_users - n_cold_users or established == 0:
            continue  # a new user: interests only, no history
        length = min(300, 5 + int(rng.expovariate(1 / 25)))
        seconds = sorted(rng.sample(range(_DEMO_DAYS * 86_400), length))
        for offset in seconds:
            category = rng.choices(favourites, weights=preference)[0]
            if rng.random() < 0.1:  # some curiosity outside the favourites
                category = rng.choice(categories)
            members, cumulative = pools[category]
            if not members:
                continue
            chosen = rng.choices(members, cum_weights=cumulative)[0]
            roll = rng.random()
            kind = (
                "view"
                if roll < 0.6
                else "click"
                if roll < 0.85
                else "purchase"
                if roll < 0.93
                else "rating"
            )
            value = float(rng.randint(1, 5)) if kind == "rating" else 0.0
            occurred = _DEMO_EPOCH + dt.timedelta(seconds=offset)
            interactions.append(
                InteractionRecord(user_id, items[chosen].item_id, kind, value, occurred)
            )
    return Dataset(items, users, interactions)


# ----------------------------------------------------------------------------- upload


def _batches(entries: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(entries), size):
        yield entries[start : start + size]


def _timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    micros = round(value.timestamp() * 1_000_000)
    seconds, rest = divmod(micros, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)


def _item_proto(item: ItemRecord) -> common_pb2.Item:
    return common_pb2.Item(
        item_id=item.item_id,
        title=item.title,
        description=item.description,
        tags=item.tags,
        categories=item.categories,
        attributes=item.attributes,
    )


def _interaction_proto(record: InteractionRecord) -> common_pb2.Interaction:
    kind = _KIND_TO_PROTO.get(record.kind)
    if kind is None:
        raise DatasetError(f"unknown interaction kind {record.kind!r}")
    return common_pb2.Interaction(
        user_id=record.user_id,
        item_id=record.item_id,
        kind=kind,
        value=record.value,
        occurred_at=_timestamp(record.occurred_at),
    )


async def upload(
    dataset: Dataset,
    stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub,
    batch_size: int = MAX_BATCH,
    progress: bool = True,
    timeout: float = 30.0,
) -> dict[str, int]:
    """Send items, users, then interactions through the profiles service, in batches.

    Idempotent: uploading the same dataset again stores nothing twice (interactions are keyed by
    their fields). Returns counts: ``items``, ``users``, ``interactions`` (newly recorded),
    and ``interaction_duplicates`` (already stored).
    """
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be in 1..{MAX_BATCH}")
    counts = {"items": 0, "users": 0, "interactions": 0, "interaction_duplicates": 0}

    with tqdm(total=len(dataset.items), desc="items", unit="rows", disable=not progress) as bar:
        for chunk in _batches(dataset.items, batch_size):
            items_answer = await stub.UpsertItems(
                profiles_service_pb2.UpsertItemsRequest(items=[_item_proto(i) for i in chunk]),
                timeout=timeout,
            )
            counts["items"] += items_answer.upserted_count
            bar.update(len(chunk))

    with tqdm(total=len(dataset.users), desc="users", unit="rows", disable=not progress) as bar:
        for user_chunk in _batches(dataset.users, batch_size):
            users_answer = await stub.UpsertUsers(
                profiles_service_pb2.UpsertUsersRequest(
                    users=[
                        common_pb2.User(user_id=u.user_id, interests=u.interests)
                        for u in user_chunk
                    ]
                ),
                timeout=timeout,
            )
            counts["users"] += users_answer.upserted_count
            bar.update(len(user_chunk))

    with tqdm(
        total=len(dataset.interactions), desc="interactions", unit="rows", disable=not progress
    ) as bar:
        for interaction_chunk in _batches(dataset.interactions, batch_size):
            answer = await stub.RecordInteractions(
                profiles_service_pb2.RecordInteractionsRequest(
                    interactions=[_interaction_proto(r) for r in interaction_chunk],
                    create_missing_users=True,
                ),
                timeout=timeout,
            )
            counts["interactions"] += answer.recorded_count
            counts["interaction_duplicates"] += answer.duplicate_count
            bar.update(len(interaction_chunk))
    return counts
