"""The profiles domain: validation, idempotency, counters, head/tail and profiles.

Every public method is one transaction (``Database.run``): a batch is stored whole or not at all,
and the counters it changes are updated in the same transaction. Bad input raises
``InvalidArgument`` with a specific reason before anything touches the store.

Idempotency:
- interactions are keyed by ``idempotency_key``; when it is empty the key is derived from
  (user_id, item_id, kind, value, occurred_at, request_id) *as sent*. A replay therefore stores
  nothing twice. Two genuinely separate identical events must differ in ``occurred_at`` (or carry
  their own keys): without a timestamp and a request id they are taken for one replayed event.
- impressions are keyed by (request_id, position), and a request_id holds one list: a batch is
  the whole list of one request_id, stored once; an identical batch is a replay, another list
  under a used request_id is refused (``record_impressions``).

Head/tail follows ``services.common.tail`` (head = top 20% of catalogue items by interaction
count; tail = the rest, cold = zero interactions) over the interaction counters of every item.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

import numpy as np
from sqlalchemy.orm import Session

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.tail import head_items
from services.profiles.records import (
    INTERACTION_KINDS,
    REASONS,
    CatalogStats,
    ImpressionRecord,
    InteractionRecord,
    ItemFilter,
    ItemRecord,
    ItemStats,
    ProfileRead,
    ServedEntry,
    UserProfile,
    UserRecord,
    VectorUpdate,
    WriteResult,
)
from services.profiles.repository import Repository
from services.profiles.store import Database

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_ID_LENGTH = 255
MAX_KEY_LENGTH = 128
ITEMS_PAGE = (100, 1000)  # (default, maximum)
INTERACTIONS_PAGE = (1000, 10_000)
ITEM_STATS_PAGE = (1000, 10_000)
HISTORY_LIMIT = (50, 1000)
# Unknown ids named in a NOT_FOUND error (the rest are counted).
_NAMED_IDS = 10


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ------------------------------------------------------------------------- validation


def check_batch(entries: Sequence[object], what: str) -> None:
    if len(entries) > MAX_BATCH:
        raise InvalidArgument(
            "BATCH_TOO_LARGE",
            f"at most {MAX_BATCH} {what} per call, got {len(entries)}",
            limit=MAX_BATCH,
            size=len(entries),
        )


def check_text(value: str, what: str, index: int | None = None) -> None:
    """Refuse NUL characters in any string bound for the store: PostgreSQL text and jsonb cannot
    hold them (the driver raises) while SQLite stores them, so without this check one store
    accepts what the other fails on with INTERNAL."""
    if "\x00" in value:
        where = "" if index is None else f" (entry {index})"
        raise InvalidArgument(
            "NUL_CHARACTER", f"{what} contains a NUL character{where}", index=index
        )


def check_texts(values: Iterable[str], what: str, index: int | None = None) -> None:
    for value in values:
        check_text(value, what, index)


def check_id(value: str, reason: str, what: str, index: int | None = None) -> None:
    where = "" if index is None else f" (entry {index})"
    if not value:
        raise InvalidArgument(reason, f"{what} is empty{where}", index=index)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(
            "ID_TOO_LONG", f"{what} is longer than {MAX_ID_LENGTH} characters{where}", index=index
        )
    check_text(value, what, index)


def check_page_size(page_size: int, limits: tuple[int, int]) -> int:
    default, maximum = limits
    if page_size == 0:
        return default
    if page_size < 0 or page_size > maximum:
        raise InvalidArgument(
            "INVALID_PAGE_SIZE", f"page_size must be in 1..{maximum} (0 = {default})"
        )
    return page_size


def encode_page_token(kind: str, after: str | int, fingerprint: str = "") -> str:
    raw = json.dumps({"k": kind, "a": after, "f": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, kind: str, fingerprint: str = "") -> str | int | None:
    """The key after which the page starts (None for the first page)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        after = payload["a"]
        valid = payload["k"] == kind and payload["f"] == fingerprint
    except (binascii.Error, ValueError, KeyError, TypeError):
        valid = False
    # A forged token could carry a NUL into a query; ours never do.
    if (
        not valid
        or not isinstance(after, (str, int))
        or (isinstance(after, str) and "\x00" in after)
    ):
        raise InvalidArgument(
            "INVALID_PAGE_TOKEN", "page_token was not returned by this call with these filters"
        )
    return after


def _missing_error(reason: str, what: str, missing: set[str]) -> NotFound:
    named = sorted(missing)[:_NAMED_IDS]
    return NotFound(
        reason,
        f"{len(missing)} unknown {what}: {', '.join(named)}",
        ids=",".join(named),
        count=len(missing),
    )


def _request_id_conflict(request_id: str) -> AlreadyExists:
    return AlreadyExists(
        "REQUEST_ID_CONFLICT",
        f"request_id {request_id!r} already holds another list",
        request_id=request_id,
    )


def derive_idempotency_key(
    user_id: str,
    item_id: str,
    kind: str,
    value: float,
    occurred_at: dt.datetime | None,
    request_id: str,
) -> str:
    stamp = "" if occurred_at is None else occurred_at.astimezone(dt.UTC).isoformat()
    # Length-prefixed fields: unambiguous whatever characters the ids hold.
    fields = (user_id, item_id, kind, repr(float(value)), stamp, request_id)
    payload = "".join(f"{len(field)}:{field};" for field in fields)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def _check_profile_request(user_id: str, history_limit: int) -> int:
    """The history limit to read (INVALID_ARGUMENT for a bad user id or limit)."""
    check_id(user_id, "EMPTY_USER_ID", "user_id")
    default, maximum = HISTORY_LIMIT
    if history_limit < 0 or history_limit > maximum:
        raise InvalidArgument(
            "INVALID_HISTORY_LIMIT", f"history_limit must be in 0..{maximum} (0 = {default})"
        )
    return history_limit or default


def profile_version(counter: int, history_limit: int, head_digest: str) -> str:
    """A profile's version: the user's write counter, the history limit the profile was read
    with, and the head set that tail_propensity was computed against."""
    return f"{counter}.{history_limit}.{head_digest}"


def _kept_history_limit(version: str) -> int:
    """The history limit inside a version a caller kept (INVALID_ARGUMENT when malformed)."""
    parts = version.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise InvalidArgument(
            "INVALID_PROFILE_VERSION", "if_profile_version is not a version GetUserProfile gave"
        )
    return int(parts[1])


# ------------------------------------------------------------------------- head/tail cache


@dataclasses.dataclass(frozen=True)
class HeadSnapshot:
    head: frozenset[str]
    catalogue_size: int
    cold_count: int
    head_min_interactions: int
    # A digest of the counts it was computed from (part of ListItemStats' popularity version):
    # equal counts give equal digests, so a periodic recount that finds nothing new keeps it.
    counts_digest: str = ""
    # A digest of the head set alone (part of every profile version: tail_propensity reads it).
    # Counts move with every interaction; the set moves only when an item crosses the boundary.
    head_digest: str = ""

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> HeadSnapshot:
        head = head_items(counts)
        return cls(
            head=head,
            catalogue_size=len(counts),
            cold_count=sum(1 for n in counts.values() if n == 0),
            head_min_interactions=min((counts[item] for item in head), default=0),
            counts_digest=_counts_digest(counts),
            head_digest=hashlib.blake2b(
                "\n".join(sorted(head)).encode(), digest_size=8
            ).hexdigest(),
        )


def _counts_digest(counts: Mapping[str, int]) -> str:
    """In the mapping's order (~20 ms at 100k items, beside ~100 ms for the head set): the same
    counts read in another order only make a caller re-read once, never hide a change."""
    text = "\n".join(f"{item_id}\t{n}" for item_id, n in counts.items())
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclasses.dataclass(frozen=True)
class BackgroundRefresh:
    """How ``HeadCache`` refreshes off the request path: ``run(work)`` runs ``work`` elsewhere
    (e.g. ``in_daemon_thread``), and ``load`` reads the counters in its own transaction."""

    load: Callable[[], Mapping[str, int]]
    run: Callable[[Callable[[], None]], None]
    # A cheap token of what the counters depend on (see ``HeadCache.get``); None: always load.
    version: Callable[[], object] | None = None


# The longest a head set is kept on an unchanged version token alone. On PostgreSQL an interaction
# that commits after a later-numbered one was counted leaves the newest id as it was; reading every
# counter at least this often bounds how long such a change can go unseen.
FULL_HEAD_REFRESH_SECONDS = 60.0


class HeadCache:
    """The head set, recomputed when interactions changed (at most every ``min_refresh_seconds``)
    or when older than ``max_age_seconds`` (other replicas write too). Thread-safe; while one thread
    recomputes, the others keep using the previous set."""

    def __init__(
        self,
        max_age_seconds: float = 5.0,
        min_refresh_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_age_seconds
        self._min_refresh = min_refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: HeadSnapshot | None = None
        self._loaded_at = 0.0
        self._changed = False
        self._version: object = None
        self._counted_at = 0.0

    def mark_changed(self) -> None:
        self._changed = True

    def _due(self) -> bool:
        if self._snapshot is None:
            return True
        age = self._clock() - self._loaded_at
        return age >= self._max_age or (self._changed and age >= self._min_refresh)

    def get(
        self,
        load: Callable[[], Mapping[str, int]],
        force: bool = False,
        background: BackgroundRefresh | None = None,
        version: Callable[[], object] | None = None,
    ) -> HeadSnapshot:
        """The head set, recomputed with ``load`` when due.

        With ``version`` (a cheap read of what the counters depend on, e.g. the newest
        interaction id and the catalogue size), a due refresh first compares it with the token of
        the current snapshot and, when equal, keeps the snapshot without reading every counter:
        the periodic refresh of an idle catalogue then costs one small query, not a full scan.

        With ``background``, a due recomputation of an existing snapshot runs there (with its
        own loader) and this call returns the current snapshot at once: at 100k items the
        recomputation reads and sorts every counter (~0.3 s on 2 busy cores, SQLite), which would
        otherwise land on one request every 1-5 s. The set then lags by that refresh time more.
        The first snapshot and ``force`` (CatalogStats) still load inline.
        """
        snapshot = self._snapshot
        if snapshot is not None and not force and not self._due():
            return snapshot
        if not self._lock.acquire(blocking=snapshot is None or force):
            assert snapshot is not None
            return snapshot
        if background is not None and snapshot is not None and not force:
            try:
                background.run(
                    lambda: self._refresh_and_release(background.load, background.version)
                )
            except BaseException:
                self._lock.release()
                raise
            return snapshot
        try:
            return self._refresh(load, force, version)
        finally:
            self._lock.release()

    def _refresh_and_release(
        self, load: Callable[[], Mapping[str, int]], version: Callable[[], object] | None
    ) -> None:
        try:
            self._refresh(load, force=False, version=version)
        except Exception:
            # The previous snapshot stays; the next due call tries again.
            log.exception("head set refresh failed")
        finally:
            self._lock.release()

    def _refresh(
        self,
        load: Callable[[], Mapping[str, int]],
        force: bool,
        version: Callable[[], object] | None = None,
    ) -> HeadSnapshot:
        """Recompute (the caller holds the lock)."""
        if not force and self._snapshot is not None and not self._due():
            return self._snapshot
        # Cleared before loading: a change committed during the load triggers the next one.
        changed, self._changed = self._changed, False
        try:
            # Read before the counters: a change committed in between makes the token older
            # than the snapshot, so the next due refresh loads again (never the reverse).
            token = None if version is None else version()
            if (
                not force
                and token is not None
                and self._snapshot is not None
                and token == self._version
                and self._clock() - self._counted_at < FULL_HEAD_REFRESH_SECONDS
            ):
                self._loaded_at = self._clock()
                return self._snapshot
            fresh = HeadSnapshot.from_counts(load())
        except BaseException:
            self._changed = self._changed or changed
            raise
        self._snapshot = fresh
        self._version = token
        self._loaded_at = self._counted_at = self._clock()
        return fresh


def in_daemon_thread(work: Callable[[], None]) -> None:
    """Runs ``work`` in a new daemon thread (a head-set refresh every few seconds at most)."""
    threading.Thread(target=work, name="head-refresh", daemon=True).start()


# ------------------------------------------------------------------------- the domain


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    entries: list[T]
    next_page_token: str
    total_size: int = 0


@dataclasses.dataclass(frozen=True)
class StatsPage(Page[ItemStats]):
    # Set on the first page (see ListItemStatsResponse.popularity_version).
    popularity_version: str = ""
    # The caller's version is current: no entries were read.
    unchanged: bool = False
    # A listing of exposure changes, first page: the clock just before the read.
    exposure_read_at: dt.datetime | None = None


class Profiles:
    """Every ProfilesService operation, on plain records."""

    def __init__(
        self,
        database: Database,
        repository: Repository,
        head_cache: HeadCache,
        now: Callable[[], dt.datetime] = utc_now,
        refresh_head_in_background: bool = True,
    ) -> None:
        self._db = database
        self._repo = repository
        self._head = head_cache
        self._now = now
        self._head_background = (
            BackgroundRefresh(
                lambda: self._db.call(self._repo.all_interaction_counts, write=False),
                in_daemon_thread,
                lambda: self._db.call(self._repo.counters_version, write=False),
            )
            if refresh_head_in_background
            else None
        )

    @property
    def database(self) -> Database:
        """The store these operations run on (the model registry shares it)."""
        return self._db

    def _head_snapshot(self, session: Session, force: bool = False) -> HeadSnapshot:
        """The head set; the first one is read in ``session``, later refreshes in the background
        (their own read transaction) while requests keep the previous set."""
        return self._head.get(
            lambda: self._repo.all_interaction_counts(session),
            force=force,
            background=self._head_background,
            version=lambda: self._repo.counters_version(session),
        )

    # ---------------------------------------------------------------- items

    async def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        check_batch(items, "items")
        for index, item in enumerate(items):
            check_id(item.item_id, "EMPTY_ITEM_ID", "item_id", index)
            check_texts((item.title, item.description), "title or description", index)
            check_texts((*item.tags, *item.categories), "tags or categories", index)
            check_texts((*item.attributes, *item.attributes.values()), "attributes", index)
        # Last one wins when an id repeats (ON CONFLICT cannot touch a row twice in a statement).
        unique = list({item.item_id: item for item in items}.values())
        vectors = [
            VectorUpdate(item.item_id, item.vector) for item in unique if item.vector is not None
        ]
        if vectors:
            self._check_vectors(vectors)
        if not unique:
            return 0
        now = self._now()

        def write(session: Session) -> int:
            self._repo.upsert_items(session, unique, now)
            if vectors:
                self._check_stored_dims(session, vectors)
                self._repo.update_vectors(session, vectors)
            return len(unique)

        return await self._db.run(write, write=True)

    async def get_items(
        self, item_ids: Sequence[str], include_vectors: bool
    ) -> tuple[list[ItemRecord], list[str]]:
        check_batch(item_ids, "item_ids")
        for index, item_id in enumerate(item_ids):
            check_id(item_id, "EMPTY_ITEM_ID", "item_id", index)
        found = await self._db.run(
            lambda session: self._repo.get_items(session, item_ids, include_vectors)
        )
        items = [found[item_id] for item_id in item_ids if item_id in found]
        missing = list(dict.fromkeys(item_id for item_id in item_ids if item_id not in found))
        return items, missing

    async def list_items(
        self, page_size: int, page_token: str, filters: ItemFilter, include_vectors: bool
    ) -> Page[ItemRecord]:
        size = check_page_size(page_size, ITEMS_PAGE)
        check_texts(dataclasses.astuple(filters), "model filters")
        fingerprint = hashlib.sha256(json.dumps(dataclasses.astuple(filters)).encode()).hexdigest()[
            :16
        ]
        after = decode_page_token(page_token, "items", fingerprint)
        if after is not None and not isinstance(after, str):
            raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not an items token")

        def read(session: Session) -> tuple[list[ItemRecord], int]:
            # One row more than asked tells whether another page follows.
            items = self._repo.list_items(session, after, size + 1, filters, include_vectors)
            return items, self._repo.count_items(session, filters)

        items, total = await self._db.run(read)
        token = ""
        if len(items) > size:
            items = items[:size]
            token = encode_page_token("items", items[-1].item_id, fingerprint)
        return Page(items, token, total)

    @staticmethod
    def _check_vectors(updates: Sequence[VectorUpdate]) -> None:
        dims: set[int] = set()
        for index, update in enumerate(updates):
            check_id(update.item_id, "EMPTY_ITEM_ID", "item_id", index)
            vector = update.vector
            if not vector.model_name or not vector.model_version:
                raise InvalidArgument(
                    "MISSING_VECTOR_MODEL",
                    f"vector of {update.item_id!r} needs model_name and model_version",
                    index=index,
                )
            # Stored in varchar(255) columns, which PostgreSQL enforces and SQLite does not.
            if len(vector.model_name) > MAX_ID_LENGTH or len(vector.model_version) > MAX_ID_LENGTH:
                raise InvalidArgument(
                    "ID_TOO_LONG", "vector model name or version too long", index=index
                )
            check_texts((vector.model_name, vector.model_version), "vector model", index)
            if vector.values.size == 0:
                raise InvalidArgument(
                    "EMPTY_VECTOR", f"vector of {update.item_id!r} is empty", index=index
                )
            if not bool(np.isfinite(vector.values).all()):
                raise InvalidArgument(
                    "NON_FINITE_VECTOR",
                    f"vector of {update.item_id!r} holds NaN or infinity",
                    index=index,
                )
            dims.add(int(vector.values.size))
            if len(dims) > 1:
                raise InvalidArgument(
                    "VECTOR_DIMENSION_MISMATCH",
                    f"vectors of one batch differ in dimension: {sorted(dims)}",
                    index=index,
                )

    def _check_stored_dims(self, session: Session, updates: Sequence[VectorUpdate]) -> None:
        models = {(u.vector.model_name, u.vector.model_version) for u in updates}
        dim = int(updates[0].vector.values.size)
        for name, version in sorted(models):
            stored = self._repo.any_vector_dim(session, name, version)
            if stored is not None and stored != dim:
                raise InvalidArgument(
                    "VECTOR_DIMENSION_MISMATCH",
                    f"{name}/{version} vectors are stored with dimension {stored}, got {dim}",
                    stored=stored,
                    given=dim,
                )

    async def update_item_vectors(self, updates: Sequence[VectorUpdate]) -> int:
        check_batch(updates, "updates")
        self._check_vectors(updates)
        unique = list({update.item_id: update for update in updates}.values())
        if not unique:
            return 0

        def write(session: Session) -> int:
            missing = {u.item_id for u in unique} - self._repo.existing_item_ids(
                session, (u.item_id for u in unique)
            )
            if missing:
                raise _missing_error("ITEM_NOT_FOUND", "items", missing)
            self._check_stored_dims(session, unique)
            self._repo.update_vectors(session, unique)
            return len(unique)

        return await self._db.run(write, write=True)

    # ---------------------------------------------------------------- users

    async def upsert_users(self, users: Sequence[UserRecord]) -> int:
        check_batch(users, "users")
        for index, user in enumerate(users):
            check_id(user.user_id, "EMPTY_USER_ID", "user_id", index)
            check_text(user.interests, "interests", index)
            check_texts((*user.attributes, *user.attributes.values()), "attributes", index)
        unique = list({user.user_id: user for user in users}.values())
        if not unique:
            return 0
        now = self._now()

        def write(session: Session) -> int:
            self._repo.upsert_users(session, unique, now)
            return len(unique)

        return await self._db.run(write, write=True)

    async def read_profile(
        self,
        user_id: str,
        history_limit: int,
        served_request_id: str = "",
        if_version_differs: str = "",
    ) -> ProfileRead:
        """The profile and its version, and the impressions already logged under
        ``served_request_id`` (when given), in one transaction: a Recommend's replay check and
        profile read in one round trip. When ``if_version_differs`` is the current version, only
        the version is read (unchanged). NOT_FOUND only when the user is unknown and nothing is
        logged under the request_id."""
        limit = _check_profile_request(user_id, history_limit)
        if served_request_id:
            check_id(served_request_id, "EMPTY_REQUEST_ID", "served_request_id")

        def read(session: Session) -> ProfileRead:
            served = (
                self._repo.list_impressions(session, served_request_id) if served_request_id else []
            )
            found = self._read_profile(session, user_id, limit, if_version_differs)
            if found is None and not served:
                raise NotFound("USER_NOT_FOUND", f"unknown user {user_id!r}", user_id=user_id)
            return dataclasses.replace(found or ProfileRead(None, ""), served=served)

        return await self._db.run(read)

    def _read_profile(
        self, session: Session, user_id: str, limit: int, if_version_differs: str = ""
    ) -> ProfileRead | None:
        # The version is read first: on PostgreSQL (read committed) a write that commits between
        # these statements shows in the rows read after it, and then in the next version, so a
        # copy kept under this version can only hold more than it says, never less.
        state = self._repo.user_state(session, user_id)
        if state is None:
            return None
        interests, stored_version = state
        snapshot = self._head_snapshot(session)
        version = profile_version(stored_version, limit, snapshot.head_digest)
        if if_version_differs == version:
            return ProfileRead(None, version, unchanged=True)
        history = self._repo.recent_history(session, user_id, limit)
        per_item = self._repo.user_item_counts(session, user_id)
        head = snapshot.head
        total = sum(n for _, _, n in per_item)
        tail = sum(n for item_id, _, n in per_item if item_id not in head)
        profile = UserProfile(
            user_id=user_id,
            interests=interests,
            history=history,
            tail_propensity=tail / total if total else 0.0,
            category_mix=category_mix((categories, n) for _, categories, n in per_item),
            interaction_count=total,
            seen_item_ids=sorted(item_id for item_id, _, _ in per_item),
        )
        return ProfileRead(profile, version)

    # ---------------------------------------------------------------- interactions

    def _prepare_interactions(
        self, interactions: Sequence[InteractionRecord]
    ) -> tuple[list[InteractionRecord], int]:
        now = self._now()
        prepared: dict[str, InteractionRecord] = {}
        duplicates = 0
        for index, record in enumerate(interactions):
            check_id(record.user_id, "EMPTY_USER_ID", "user_id", index)
            check_id(record.item_id, "EMPTY_ITEM_ID", "item_id", index)
            if record.kind not in INTERACTION_KINDS:
                raise InvalidArgument(
                    "INVALID_INTERACTION_KIND",
                    f"interaction kind must be one of {', '.join(INTERACTION_KINDS)}",
                    index=index,
                )
            if not math.isfinite(record.value):
                raise InvalidArgument("INVALID_VALUE", "value must be finite", index=index)
            if len(record.idempotency_key) > MAX_KEY_LENGTH:
                raise InvalidArgument(
                    "IDEMPOTENCY_KEY_TOO_LONG",
                    f"idempotency_key is longer than {MAX_KEY_LENGTH} characters",
                    index=index,
                )
            if len(record.request_id) > MAX_ID_LENGTH:
                raise InvalidArgument("ID_TOO_LONG", "request_id is too long", index=index)
            check_texts((record.idempotency_key, record.request_id), "key or request_id", index)
            key = record.idempotency_key or derive_idempotency_key(
                record.user_id,
                record.item_id,
                record.kind,
                record.value,
                record.occurred_at,
                record.request_id,
            )
            if key in prepared:
                duplicates += 1
                continue
            prepared[key] = InteractionRecord(
                user_id=record.user_id,
                item_id=record.item_id,
                kind=record.kind,
                value=record.value,
                occurred_at=record.occurred_at or now,
                idempotency_key=key,
                request_id=record.request_id,
            )
        return list(prepared.values()), duplicates

    async def record_interactions(
        self, interactions: Sequence[InteractionRecord], create_missing_users: bool
    ) -> WriteResult:
        check_batch(interactions, "interactions")
        records, duplicates = self._prepare_interactions(interactions)
        if not records:
            return WriteResult(0, duplicates)
        now = self._now()

        def write(session: Session) -> int:
            user_ids = {r.user_id for r in records}
            missing_users = user_ids - self._repo.existing_user_ids(session, user_ids)
            if missing_users:
                if not create_missing_users:
                    raise _missing_error("USER_NOT_FOUND", "users", missing_users)
                self._repo.insert_missing_users(session, missing_users, now)
            item_ids = {r.item_id for r in records}
            missing_items = item_ids - self._repo.existing_item_ids(session, item_ids)
            if missing_items:
                raise _missing_error("ITEM_NOT_FOUND", "items", missing_items)
            stored = self._repo.insert_interactions(session, records)
            self._repo.bump_counters(
                session, "interaction_count", collections.Counter(r.item_id for r in stored)
            )
            self._repo.bump_counters(
                session,
                "feedback_count",
                collections.Counter(r.item_id for r in stored if r.request_id),
                changed_at=self._now(),
            )
            return len(stored)

        recorded = await self._db.run(write, write=True)
        if recorded:
            self._head.mark_changed()
        return WriteResult(recorded, duplicates + len(records) - recorded)

    async def list_interactions(self, page_size: int, page_token: str) -> Page[InteractionRecord]:
        size = check_page_size(page_size, INTERACTIONS_PAGE)
        after = decode_page_token(page_token, "interactions")
        if after is not None and not isinstance(after, int):
            raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not an interactions token")
        rows = await self._db.run(
            lambda session: self._repo.list_interactions(session, after or 0, size + 1)
        )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = encode_page_token("interactions", rows[-1][0])
        return Page([record for _, record in rows], token)

    # ---------------------------------------------------------------- impressions

    async def record_impressions(
        self, impressions: Sequence[ImpressionRecord], if_profile_version: str = ""
    ) -> WriteResult:
        """Store one served list: the batch is the whole list of one request_id for one user.

        A request_id is claimed atomically, once: when it already holds a list, the batch is a
        replay if it is that very list (same user, positions, items, reasons and policy; score
        and served_at are not compared) and stores nothing, else it is refused with
        ALREADY_EXISTS / REQUEST_ID_CONFLICT. Items must exist (NOT_FOUND / UNKNOWN_ITEM); a user
        without a row gets a bare one (the gateway serves brand-new users). All of it in one
        transaction: refused means nothing written.

        With ``if_profile_version`` (the version the list was chosen from, by a caller that kept
        the profile), a list that is not a replay is stored only while that is still the user's
        version, else FAILED_PRECONDITION / PROFILE_VERSION_MOVED: the version is read in the
        write's transaction, so an interaction committed before it always refuses the list.
        """
        check_batch(impressions, "impressions")
        kept_limit = _kept_history_limit(if_profile_version) if if_profile_version else 0
        now = self._now()
        prepared: dict[int, ImpressionRecord] = {}
        duplicates = 0
        for index, record in enumerate(impressions):
            check_id(record.request_id, "EMPTY_REQUEST_ID", "request_id", index)
            check_id(record.user_id, "EMPTY_USER_ID", "user_id", index)
            check_id(record.item_id, "EMPTY_ITEM_ID", "item_id", index)
            if record.position < 0:
                raise InvalidArgument(
                    "NEGATIVE_POSITION", "position must be 0 or more", index=index
                )
            if record.reason not in REASONS:
                raise InvalidArgument(
                    "INVALID_REASON", f"reason must be one of {', '.join(REASONS)}", index=index
                )
            if not math.isfinite(record.score):
                raise InvalidArgument("INVALID_SCORE", "score must be finite", index=index)
            if (
                len(record.policy_name) > MAX_ID_LENGTH
                or len(record.policy_version) > MAX_ID_LENGTH
            ):
                raise InvalidArgument("ID_TOO_LONG", "policy name or version too long", index=index)
            check_texts((record.policy_name, record.policy_version), "policy", index)
            first = impressions[0]
            if record.request_id != first.request_id:
                raise InvalidArgument(
                    "MIXED_REQUEST_IDS",
                    f"a batch is the list of one request_id (entry {index} names another)",
                    index=index,
                )
            if record.user_id != first.user_id:
                raise InvalidArgument(
                    "MIXED_USERS",
                    f"a request_id's list is served to one user (entry {index} names another)",
                    index=index,
                )
            earlier = prepared.get(record.position)
            if earlier is not None:
                if ServedEntry.of(earlier) != ServedEntry.of(record):
                    raise InvalidArgument(
                        "CONFLICTING_POSITION",
                        f"position {record.position} appears twice with different entries",
                        index=index,
                        position=record.position,
                    )
                duplicates += 1
                continue
            # The gateway stamps served_at: a copy only when it is missing (records are frozen).
            prepared[record.position] = (
                record
                if record.served_at is not None
                else dataclasses.replace(record, served_at=now)
            )
        records = sorted(prepared.values(), key=lambda record: record.position)
        if not records:
            return WriteResult(0, duplicates)
        request_id, user_id = records[0].request_id, records[0].user_id
        item_ids = list(dict.fromkeys(record.item_id for record in records))
        served = [ServedEntry.of(record) for record in records]

        def write(session: Session) -> int:
            self._repo.lock_request(session, request_id)
            state = self._repo.request_state(session, request_id, user_id)
            if state.stored:
                if sorted(state.stored, key=lambda entry: entry.position) == served:
                    return 0  # a replay of the stored list
                raise _request_id_conflict(request_id)
            if if_profile_version and (
                state.profile_version is None
                or if_profile_version
                != profile_version(
                    state.profile_version,
                    kept_limit,
                    self._head_snapshot(session).head_digest,
                )
            ):
                raise FailedPrecondition(
                    "PROFILE_VERSION_MOVED",
                    f"the profile of {user_id!r} changed since the list was chosen",
                    user_id=user_id,
                )
            if not state.user_exists:
                self._repo.insert_missing_users(session, [user_id], now)
            stored = self._repo.insert_impressions(session, records)
            if len(stored) != len(records):
                # Rows appeared under this request_id that the claim did not see (a writer that
                # does not take the claim): refuse rather than keep a mixed list.
                raise _request_id_conflict(request_id)
            increments = collections.Counter(stored)
            # Every catalogue item has its counter row (made with the item), so the bump is the
            # existence check too, at no extra statement; only a refusal looks for the culprits.
            bumped = self._repo.bump_counters(
                session, "impression_count", increments, changed_at=self._now()
            )
            if bumped < len(increments):
                counted = self._repo.counters(session, increments)
                unknown = [item_id for item_id in item_ids if item_id not in counted]
                raise NotFound(
                    "UNKNOWN_ITEM",
                    f"{len(unknown)} items not in the catalogue, the first {unknown[0]!r}",
                    item_id=unknown[0],
                    count=len(unknown),
                )
            return len(stored)

        recorded = await self._db.run(write, write=True)
        return WriteResult(recorded, duplicates + len(records) - recorded)

    async def list_impressions(self, request_id: str) -> list[ImpressionRecord]:
        check_id(request_id, "EMPTY_REQUEST_ID", "request_id")
        return await self._db.run(lambda session: self._repo.list_impressions(session, request_id))

    # ---------------------------------------------------------------- stats

    async def get_item_stats(self, item_ids: Sequence[str]) -> list[ItemStats]:
        check_batch(item_ids, "item_ids")
        for index, item_id in enumerate(item_ids):
            check_id(item_id, "EMPTY_ITEM_ID", "item_id", index)

        def read(session: Session) -> tuple[dict[str, tuple[int, int, int]], HeadSnapshot]:
            return self._repo.counters(session, item_ids), self._head_snapshot(session)

        counters, snapshot = await self._db.run(read)
        return [
            _stats(item_id, counters[item_id], snapshot.head)
            for item_id in item_ids
            if item_id in counters
        ]

    async def list_item_stats(
        self,
        page_size: int,
        page_token: str,
        if_popularity_version_differs: str = "",
        exposure_changed_since: dt.datetime | None = None,
    ) -> StatsPage:
        """One page of every item's stats. On the first page, also the popularity version; when
        it equals ``if_popularity_version_differs``, an empty unchanged page without the read.

        With ``exposure_changed_since``, only the items whose impression or feedback counter
        moved at or after it (no popularity version), and on the first page the clock just
        before the read (``exposure_read_at``): what the exposure service's mirror asks for.

        The version is the counters' token (newest interaction id, catalogue size) read before the
        counters, plus the digest of the head set's counts: a change committed in between makes
        the caller's version older than its data (it re-reads once, never misses the change). A
        change the token cannot show (on PostgreSQL an interaction committing under an older id)
        moves the digest at the head set's next full recount (``FULL_HEAD_REFRESH_SECONDS``).
        """
        size = check_page_size(page_size, ITEM_STATS_PAGE)
        after = decode_page_token(page_token, "item_stats")
        if after is not None and not isinstance(after, str):
            raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not an item stats token")
        if exposure_changed_since is not None:
            if if_popularity_version_differs:
                raise InvalidArgument(
                    "CONFLICTING_FILTERS",
                    "exposure_changed_since and if_popularity_version_differs exclude each other",
                )
            return await self._exposure_changes(size, after, exposure_changed_since)

        def read(
            session: Session,
        ) -> tuple[list[tuple[str, int, int, int]] | None, HeadSnapshot, str]:
            token = self._repo.counters_version(session) if after is None else None
            snapshot = self._head_snapshot(session)
            if token is None:
                return self._repo.list_counters(session, after, size + 1), snapshot, ""
            version = f"{token[0]}.{token[1]}.{snapshot.counts_digest}"
            if version == if_popularity_version_differs:
                return None, snapshot, version
            return self._repo.list_counters(session, after, size + 1), snapshot, version

        rows, snapshot, version = await self._db.run(read)
        if rows is None:
            return StatsPage([], "", popularity_version=version, unchanged=True)
        return _stats_page(rows, size, snapshot.head, popularity_version=version)

    async def _exposure_changes(
        self, size: int, after: str | None, since: dt.datetime
    ) -> StatsPage:
        read_at = self._now() if after is None else None

        def read(session: Session) -> tuple[list[tuple[str, int, int, int]], HeadSnapshot]:
            rows = self._repo.list_counters(session, after, size + 1, exposure_changed_since=since)
            return rows, self._head_snapshot(session)

        rows, snapshot = await self._db.run(read)
        return _stats_page(rows, size, snapshot.head, exposure_read_at=read_at)

    async def catalog_stats(self) -> CatalogStats:
        def read(session: Session) -> tuple[dict[str, int], HeadSnapshot]:
            return self._repo.table_counts(session), self._head_snapshot(session, force=True)

        counts, snapshot = await self._db.run(read)
        return CatalogStats(
            item_count=counts["items"],
            user_count=counts["users"],
            interaction_count=counts["interactions"],
            impression_count=counts["impressions"],
            head_item_count=len(snapshot.head),
            cold_item_count=snapshot.cold_count,
            head_min_interactions=snapshot.head_min_interactions,
            computed_at=self._now(),
        )

    async def ready(self) -> bool:
        return await self._db.ping()


def _stats_page(
    rows: list[tuple[str, int, int, int]],
    size: int,
    head: frozenset[str],
    popularity_version: str = "",
    exposure_read_at: dt.datetime | None = None,
) -> StatsPage:
    """A page of ``size`` counter rows (read ``size + 1``: one more means another page)."""
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = encode_page_token("item_stats", rows[-1][0])
    return StatsPage(
        [_stats(row[0], row[1:], head) for row in rows],
        token,
        popularity_version=popularity_version,
        exposure_read_at=exposure_read_at,
    )


def _stats(item_id: str, counters: Sequence[int], head: frozenset[str]) -> ItemStats:
    interactions, impressions, feedback = counters
    return ItemStats(
        item_id=item_id,
        interaction_count=interactions,
        impression_count=impressions,
        feedback_count=feedback,
        is_tail=item_id not in head,
        is_cold=interactions == 0,
    )


def category_mix(entries: Iterable[tuple[Sequence[str], int]]) -> dict[str, float]:
    """Share of interactions per category; an item's interactions split evenly over its
    categories, items without categories are left out, and the shares sum to 1."""
    # A user's items repeat a few category lists: split each distinct list's total once.
    per_list: dict[tuple[str, ...], int] = collections.defaultdict(int)
    for categories, n in entries:
        per_list[tuple(categories)] += n  # no copy of a tuple
    mass: dict[str, float] = collections.defaultdict(float)
    for categories, n in per_list.items():
        distinct = list(dict.fromkeys(categories))
        for category in distinct:
            mass[category] += n / len(distinct)
    total = sum(mass.values())
    if total <= 0:
        return {}
    return {category: mass[category] / total for category in sorted(mass)}
