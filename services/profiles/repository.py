"""SQL statements of the profiles store. Dumb on purpose: every method takes the caller's session
(the caller owns the transaction), works on whole batches (one statement per batch, never one
round trip per row) and validates nothing.

Idempotent inserts are ``INSERT .. ON CONFLICT DO NOTHING RETURNING``: the rows it returns are the
rows this transaction stored, so counters are bumped for exactly those, even under concurrent
replays. Rows and counter updates go in key order so that concurrent PostgreSQL writers lock in the
same order and cannot deadlock.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.profiles.models import Impression, Interaction, Item, ItemCounter, User, UtcDateTime
from services.profiles.records import (
    HistoryEntry,
    ImpressionRecord,
    InteractionRecord,
    ItemFilter,
    ItemRecord,
    ItemVector,
    RequestState,
    ServedEntry,
    UserRecord,
    VectorUpdate,
)

users_t: sa.Table = User.__table__  # type: ignore[assignment]
items_t: sa.Table = Item.__table__  # type: ignore[assignment]
interactions_t: sa.Table = Interaction.__table__  # type: ignore[assignment]
impressions_t: sa.Table = Impression.__table__  # type: ignore[assignment]
counters_t: sa.Table = ItemCounter.__table__  # type: ignore[assignment]

COUNTER_COLUMNS = ("interaction_count", "impression_count", "feedback_count")
# The counters the exposure policies read: a bump of one stamps exposure_changed_at.
EXPOSURE_COUNTER_COLUMNS = ("impression_count", "feedback_count")

# One UPDATE per counter column, built once (RecordImpressions bumps on every call).
_BUMP_COUNTER = {
    column: sa.update(counters_t)
    .where(counters_t.c.item_id == sa.bindparam("b_item_id"))
    .values(
        {
            column: counters_t.c[column] + sa.bindparam("b_n"),
            **(
                {"exposure_changed_at": sa.bindparam("b_at", type_=UtcDateTime())}
                if column in EXPOSURE_COUNTER_COLUMNS
                else {}
            ),
        }
    )
    for column in COUNTER_COLUMNS
}
# The statements of the per-request paths (GetUserProfile, GetItemStats, RecordImpressions) are
# built once with bound parameters and run on the session's Core connection: building a select
# per call and the ORM execution layer cost more than SQLite's own work on these small reads.
_USER_STATE = sa.select(users_t.c.interests, users_t.c.profile_version).where(
    users_t.c.user_id == sa.bindparam("user_id")
)
# Moves the profile version of the users named (their profile changed in this transaction).
_BUMP_PROFILE_VERSIONS = (
    sa.update(users_t)
    .where(users_t.c.user_id.in_(sa.bindparam("user_ids", expanding=True)))
    .values(profile_version=users_t.c.profile_version + 1)
)
_RECENT_HISTORY = (
    sa.select(
        interactions_t.c.item_id,
        interactions_t.c.kind,
        interactions_t.c.value,
        interactions_t.c.occurred_at,
    )
    .where(interactions_t.c.user_id == sa.bindparam("user_id"))
    .order_by(interactions_t.c.occurred_at.desc(), interactions_t.c.id.desc())
    .limit(sa.bindparam("limit"))
)
_PER_ITEM = (
    sa.select(interactions_t.c.item_id, sa.func.count().label("n"))
    .where(interactions_t.c.user_id == sa.bindparam("user_id"))
    .group_by(interactions_t.c.item_id)
    .subquery()
)
# Categories come back as their JSON text and are decoded through ``_categories``: a user's items
# repeat a catalogue's few category lists, and decoding every row was most of this read's CPU.
_USER_ITEM_COUNTS = sa.select(
    _PER_ITEM.c.item_id, sa.cast(items_t.c.categories, sa.Text), _PER_ITEM.c.n
).join(items_t, items_t.c.item_id == _PER_ITEM.c.item_id)


@functools.lru_cache(maxsize=65_536)
def _categories(raw: str | None) -> tuple[str, ...]:
    """An item's categories from their stored JSON text (a list of strings, or NULL)."""
    decoded = json.loads(raw) if raw else None
    return tuple(str(c) for c in decoded) if isinstance(decoded, list) else ()


_COUNTERS_VERSION = sa.select(
    sa.select(sa.func.max(interactions_t.c.id)).scalar_subquery(),
    sa.select(sa.func.count()).select_from(counters_t).scalar_subquery(),
)
# The impressions of one request_id (every Recommend's replay check reads it).
_REQUEST_IMPRESSIONS = (
    sa.select(impressions_t)
    .where(impressions_t.c.request_id == sa.bindparam("request_id"))
    .order_by(impressions_t.c.position)
)
_COUNTERS = sa.select(
    counters_t.c.item_id,
    counters_t.c.interaction_count,
    counters_t.c.impression_count,
    counters_t.c.feedback_count,
).where(counters_t.c.item_id.in_(sa.bindparam("item_ids", expanding=True)))


# RecordImpressions' read before it claims a request_id, in one round trip: the rows already
# stored under the request_id (tag 0) and whether the user has a row (tag 1). The placeholders are
# typed so that every dialect unifies the branches.
def _null(kind: sa.types.TypeEngine[Any], name: str) -> sa.Label[Any]:
    return sa.cast(sa.null(), kind).label(name)


def _tag(value: int) -> sa.Label[Any]:
    return sa.literal_column(str(value), sa.Integer).label("tag")


_REQUEST_STATE = sa.union_all(
    sa.select(
        _tag(0),
        impressions_t.c.position,
        impressions_t.c.user_id,
        impressions_t.c.item_id,
        impressions_t.c.reason,
        impressions_t.c.policy_name,
        impressions_t.c.policy_version,
        _null(sa.BigInteger(), "profile_version"),
    ).where(impressions_t.c.request_id == sa.bindparam("request_id")),
    sa.select(
        _tag(1),
        _null(sa.Integer(), "position"),
        users_t.c.user_id,
        _null(sa.String(), "item_id"),
        _null(sa.String(), "reason"),
        _null(sa.String(), "policy_name"),
        _null(sa.String(), "policy_version"),
        users_t.c.profile_version,
    ).where(users_t.c.user_id == sa.bindparam("user_id")),
)
# PostgreSQL: a transaction-level advisory lock per request_id (see Repository.lock_request). The
# two-integer key form: a key space apart from the migration lock's single bigint key.
_REQUEST_LOCK_SPACE = 0x4C54  # "LT"
_LOCK_REQUEST = sa.text("SELECT pg_advisory_xact_lock(:space, hashtext(:request_id))")

# Text the encoder reads: when any of it changes, the stored vector no longer describes the item.
_EMBEDDED_TEXT = ("title", "description", "tags", "categories")


def vector_to_bytes(values: np.ndarray[Any, Any]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def vector_from_bytes(blob: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _insert(session: Session, table: sa.Table) -> Any:
    """The dialect's INSERT (with ON CONFLICT support)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {name!r}")


def _pg_array_type(column: sa.Column[Any]) -> str:
    kind: Any = column.type
    if isinstance(kind, sa.TypeDecorator):
        kind = kind.impl_instance
    if isinstance(kind, sa.DateTime):
        return "timestamptz[]" if kind.timezone else "timestamp[]"
    if isinstance(kind, sa.BigInteger):
        return "int8[]"
    if isinstance(kind, sa.Integer):
        return "int4[]"
    if isinstance(kind, sa.Float):
        return "float8[]"
    if isinstance(kind, (sa.String, sa.Text)):
        return "text[]"
    raise TypeError(f"no array type for {column.name}")


_INSERT_NEW_STATEMENTS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], Any] = {}


def _insert_new_statement(
    insert: Any, conflict: tuple[str, ...], returning: tuple[str, ...]
) -> Any:
    """The ``ON CONFLICT DO NOTHING RETURNING`` insert, built once per table (hot: impressions)."""
    table: sa.Table = insert.table
    key = (type(insert).__module__, table.name, conflict, returning)
    stmt = _INSERT_NEW_STATEMENTS.get(key)
    if stmt is None:
        stmt = _INSERT_NEW_STATEMENTS[key] = insert.on_conflict_do_nothing(
            index_elements=list(conflict)
        ).returning(*(table.c[name] for name in returning))
    return stmt


def _insert_new(
    session: Session,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    conflict: Sequence[str],
    returning: Sequence[str],
) -> list[sa.Row[Any]]:
    """``INSERT .. ON CONFLICT (conflict) DO NOTHING RETURNING returning`` for many rows.

    On PostgreSQL the rows travel as one array per column through ``unnest`` (one statement with
    a handful of parameters: about twice as fast as a multi-row VALUES with thousands of them).
    """
    if not rows:
        return []
    if session.get_bind().dialect.name != "postgresql":
        stmt = _insert_new_statement(_insert(session, table), tuple(conflict), tuple(returning))
        return list(session.connection().execute(stmt, list(rows)))
    quote = session.get_bind().dialect.identifier_preparer.quote
    names = list(rows[0])
    arrays = ", ".join(
        f"CAST(:c{n} AS {_pg_array_type(table.c[name])})" for n, name in enumerate(names)
    )
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(name) for name in names)}) "
        f"SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(quote(name) for name in conflict)}) DO NOTHING "
        f"RETURNING {', '.join(quote(name) for name in returning)}"
    )
    params = {f"c{n}": [row[name] for row in rows] for n, name in enumerate(names)}
    return list(session.connection().execute(sa.text(sql), params))


def interaction_from_row(row: Any) -> InteractionRecord:
    """An ``interactions`` row as the domain's record."""
    return InteractionRecord(
        user_id=row.user_id,
        item_id=row.item_id,
        kind=row.kind,
        value=row.value,
        occurred_at=row.occurred_at,
        idempotency_key=row.idempotency_key,
        request_id=row.request_id or "",
    )


class Repository:
    # ---------------------------------------------------------------- items

    def upsert_items(self, session: Session, items: Sequence[ItemRecord], now: dt.datetime) -> None:
        """Insert or replace items (their vector is kept unless their text changed). The users
        who interacted with an item whose categories change get a new profile version (their
        category mix moves)."""
        ordered = sorted(items, key=lambda item: item.item_id)
        stored = session.connection().execute(
            sa.select(items_t.c.item_id, sa.cast(items_t.c.categories, sa.Text)).where(
                items_t.c.item_id.in_([item.item_id for item in ordered])
            )
        )
        before = {item_id: _categories(raw) for item_id, raw in stored}
        recategorised = [
            item.item_id
            for item in ordered
            if item.item_id in before and before[item.item_id] != tuple(item.categories)
        ]
        with_time = [self._item_row(item, now) for item in ordered if item.created_at is not None]
        without_time = [self._item_row(item, now) for item in ordered if item.created_at is None]
        for rows, update_created in ((with_time, True), (without_time, False)):
            if not rows:
                continue
            stmt = _insert(session, items_t)
            excluded = stmt.excluded
            unchanged = sa.and_(*(items_t.c[name] == excluded[name] for name in _EMBEDDED_TEXT))
            values: dict[str, Any] = {
                name: excluded[name]
                for name in ("title", "description", "tags", "categories", "attributes")
            }
            for name in ("vector", "vector_model_name", "vector_model_version", "vector_dim"):
                values[name] = sa.case((unchanged, items_t.c[name]), else_=sa.null())
            if update_created:
                values["created_at"] = excluded.created_at
            session.execute(
                stmt.on_conflict_do_update(index_elements=["item_id"], set_=values), rows
            )
        counter_rows = [{"item_id": item.item_id} for item in ordered]
        session.execute(
            _insert(session, counters_t).on_conflict_do_nothing(index_elements=["item_id"]),
            counter_rows,
        )
        self.bump_profiles_of_items(session, recategorised)

    @staticmethod
    def _item_row(item: ItemRecord, now: dt.datetime) -> dict[str, Any]:
        return {
            "item_id": item.item_id,
            "title": item.title,
            "description": item.description,
            "tags": list(item.tags),
            "categories": list(item.categories),
            "attributes": dict(item.attributes),
            "created_at": item.created_at or now,
            "vector": None,
            "vector_model_name": None,
            "vector_model_version": None,
            "vector_dim": None,
        }

    def existing_item_ids(self, session: Session, item_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(item_ids))
        if not ids:
            return set()
        rows = session.execute(sa.select(items_t.c.item_id).where(items_t.c.item_id.in_(ids)))
        return {row[0] for row in rows}

    def _item_columns(self, include_vectors: bool) -> list[sa.ColumnElement[Any]]:
        columns: list[sa.ColumnElement[Any]] = [
            items_t.c.item_id,
            items_t.c.title,
            items_t.c.description,
            items_t.c.tags,
            items_t.c.categories,
            items_t.c.attributes,
            items_t.c.created_at,
        ]
        if include_vectors:
            columns += [
                items_t.c.vector,
                items_t.c.vector_model_name,
                items_t.c.vector_model_version,
            ]
        return columns

    @staticmethod
    def _item_from_row(row: sa.Row[Any], include_vectors: bool) -> ItemRecord:
        vector = None
        if include_vectors and row.vector is not None:
            vector = ItemVector(
                values=vector_from_bytes(row.vector),
                model_name=row.vector_model_name or "",
                model_version=row.vector_model_version or "",
            )
        return ItemRecord(
            item_id=row.item_id,
            title=row.title,
            description=row.description,
            tags=list(row.tags or []),
            categories=list(row.categories or []),
            attributes=dict(row.attributes or {}),
            created_at=row.created_at,
            vector=vector,
        )

    def get_items(
        self, session: Session, item_ids: Iterable[str], include_vectors: bool
    ) -> dict[str, ItemRecord]:
        ids = sorted(set(item_ids))
        if not ids:
            return {}
        stmt = sa.select(*self._item_columns(include_vectors)).where(items_t.c.item_id.in_(ids))
        return {
            row.item_id: self._item_from_row(row, include_vectors) for row in session.execute(stmt)
        }

    @staticmethod
    def _item_filter(filters: ItemFilter) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = []
        if filters.stale_for_model_name:
            stale = [
                items_t.c.vector.is_(None),
                items_t.c.vector_model_name.is_distinct_from(filters.stale_for_model_name),
            ]
            if filters.stale_for_model_version:
                stale.append(
                    items_t.c.vector_model_version.is_distinct_from(filters.stale_for_model_version)
                )
            clauses.append(sa.or_(*stale))
        if filters.vector_model_name:
            clauses += [
                items_t.c.vector.is_not(None),
                items_t.c.vector_model_name == filters.vector_model_name,
            ]
            if filters.vector_model_version:
                clauses.append(items_t.c.vector_model_version == filters.vector_model_version)
        return clauses

    def list_items(
        self,
        session: Session,
        after: str | None,
        limit: int,
        filters: ItemFilter,
        include_vectors: bool,
    ) -> list[ItemRecord]:
        stmt = sa.select(*self._item_columns(include_vectors)).where(*self._item_filter(filters))
        if after is not None:
            stmt = stmt.where(items_t.c.item_id > after)
        stmt = stmt.order_by(items_t.c.item_id).limit(limit)
        return [self._item_from_row(row, include_vectors) for row in session.execute(stmt)]

    def count_items(self, session: Session, filters: ItemFilter) -> int:
        stmt = sa.select(sa.func.count()).select_from(items_t).where(*self._item_filter(filters))
        return int(session.execute(stmt).scalar_one())

    def any_vector_dim(self, session: Session, model_name: str, model_version: str) -> int | None:
        """The dimension of some stored vector of this model (all of them share it)."""
        stmt = (
            sa.select(items_t.c.vector_dim)
            .where(
                items_t.c.vector_model_name == model_name,
                items_t.c.vector_model_version == model_version,
                items_t.c.vector_dim.is_not(None),
            )
            .limit(1)
        )
        value = session.execute(stmt).scalar_one_or_none()
        return None if value is None else int(value)

    def update_vectors(self, session: Session, updates: Sequence[VectorUpdate]) -> None:
        rows = [
            {
                "b_item_id": update.item_id,
                "b_vector": vector_to_bytes(update.vector.values),
                "b_name": update.vector.model_name,
                "b_version": update.vector.model_version,
                "b_dim": len(update.vector.values),
            }
            for update in sorted(updates, key=lambda update: update.item_id)
        ]
        stmt = (
            sa.update(items_t)
            .where(items_t.c.item_id == sa.bindparam("b_item_id"))
            .values(
                vector=sa.bindparam("b_vector"),
                vector_model_name=sa.bindparam("b_name"),
                vector_model_version=sa.bindparam("b_version"),
                vector_dim=sa.bindparam("b_dim"),
            )
        )
        session.execute(stmt, rows)

    # ---------------------------------------------------------------- users

    def upsert_users(self, session: Session, users: Sequence[UserRecord], now: dt.datetime) -> None:
        rows = [
            {
                "user_id": user.user_id,
                "interests": user.interests,
                "attributes": dict(user.attributes),
                "created_at": now,
            }
            for user in sorted(users, key=lambda user: user.user_id)
        ]
        stmt = _insert(session, users_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["user_id"],
            set_={
                "interests": stmt.excluded.interests,
                "attributes": stmt.excluded.attributes,
                "profile_version": users_t.c.profile_version + 1,
            },
        )
        session.execute(stmt, rows)

    def insert_missing_users(
        self, session: Session, user_ids: Iterable[str], now: dt.datetime
    ) -> None:
        rows = [
            {"user_id": user_id, "interests": "", "attributes": {}, "created_at": now}
            for user_id in sorted(set(user_ids))
        ]
        if rows:
            stmt = _insert(session, users_t).on_conflict_do_nothing(index_elements=["user_id"])
            session.execute(stmt, rows)

    def existing_user_ids(self, session: Session, user_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(user_ids))
        if not ids:
            return set()
        rows = session.execute(sa.select(users_t.c.user_id).where(users_t.c.user_id.in_(ids)))
        return {row[0] for row in rows}

    def get_user(self, session: Session, user_id: str) -> UserRecord | None:
        row = session.execute(
            sa.select(users_t.c.user_id, users_t.c.interests, users_t.c.attributes).where(
                users_t.c.user_id == user_id
            )
        ).one_or_none()
        if row is None:
            return None
        return UserRecord(row.user_id, row.interests, dict(row.attributes or {}))

    def user_state(self, session: Session, user_id: str) -> tuple[str, int] | None:
        """The user's stated interests and profile version, None for an unknown user (no JSON
        columns read)."""
        row = session.connection().execute(_USER_STATE, {"user_id": user_id}).one_or_none()
        return None if row is None else (str(row[0]), int(row[1]))

    def bump_profile_versions(self, session: Session, user_ids: Iterable[str]) -> None:
        """Moves the profile version of ``user_ids`` (in key order: no deadlock between writers)."""
        ids = sorted(set(user_ids))
        if ids:
            session.connection().execute(_BUMP_PROFILE_VERSIONS, {"user_ids": ids})

    def bump_profiles_of_items(self, session: Session, item_ids: Iterable[str]) -> None:
        """Moves the profile version of every user who interacted with one of ``item_ids``."""
        ids = sorted(set(item_ids))
        if not ids:
            return
        touched = (
            sa.select(interactions_t.c.user_id).where(interactions_t.c.item_id.in_(ids)).distinct()
        )
        self.bump_profile_versions(session, (row[0] for row in session.execute(touched)))

    def recent_history(self, session: Session, user_id: str, limit: int) -> list[HistoryEntry]:
        rows = session.connection().execute(_RECENT_HISTORY, {"user_id": user_id, "limit": limit})
        return [HistoryEntry(item_id, kind, value, at) for item_id, kind, value, at in rows]

    def user_item_counts(
        self, session: Session, user_id: str
    ) -> list[tuple[str, tuple[str, ...], int]]:
        """(item_id, categories, the user's interaction count) per item the user touched."""
        rows = session.connection().execute(_USER_ITEM_COUNTS, {"user_id": user_id})
        return [(item_id, _categories(raw), int(n)) for item_id, raw, n in rows]

    # ---------------------------------------------------------------- interactions

    def insert_interactions(
        self, session: Session, interactions: Sequence[InteractionRecord]
    ) -> list[InteractionRecord]:
        """Store the interactions whose key is new; returns those stored."""
        rows = [
            {
                "user_id": record.user_id,
                "item_id": record.item_id,
                "kind": record.kind,
                "value": record.value,
                "occurred_at": record.occurred_at,
                "idempotency_key": record.idempotency_key,
                "request_id": record.request_id or None,
            }
            for record in sorted(interactions, key=lambda record: record.idempotency_key)
        ]
        stored = _insert_new(
            session, interactions_t, rows, ["idempotency_key"], ["user_id", "item_id", "request_id"]
        )
        self.bump_profile_versions(session, (row.user_id for row in stored))
        return [
            InteractionRecord(
                user_id="", item_id=row.item_id, kind="", request_id=row.request_id or ""
            )
            for row in stored
        ]

    def list_interactions(
        self, session: Session, after_id: int, limit: int
    ) -> list[tuple[int, InteractionRecord]]:
        stmt = (
            sa.select(interactions_t)
            .where(interactions_t.c.id > after_id)
            .order_by(interactions_t.c.id)
            .limit(limit)
        )
        return [(int(row.id), interaction_from_row(row)) for row in session.execute(stmt)]

    # ---------------------------------------------------------------- impressions

    def insert_impressions(
        self, session: Session, impressions: Sequence[ImpressionRecord]
    ) -> list[str]:
        """Store the impressions whose (request_id, position) is new; returns their item ids."""
        rows = [
            {
                "request_id": record.request_id,
                "position": record.position,
                "user_id": record.user_id,
                "item_id": record.item_id,
                "policy_name": record.policy_name,
                "policy_version": record.policy_version,
                "reason": record.reason,
                "score": record.score,
                "served_at": record.served_at,
            }
            for record in sorted(
                impressions, key=lambda record: (record.request_id, record.position)
            )
        ]
        stored = _insert_new(session, impressions_t, rows, ["request_id", "position"], ["item_id"])
        return [row.item_id for row in stored]

    def lock_request(self, session: Session, request_id: str) -> None:
        """Serialise the writers of one request_id until this transaction ends.

        PostgreSQL runs at READ COMMITTED: two transactions writing one request_id could both
        read "nothing stored yet" and both insert, the second's ON CONFLICT DO NOTHING silently
        dropping its overlapping rows (or, with disjoint positions, both lists ending up mixed
        under one request_id). Checking the stored rows again after the insert does not close
        that: a statement waits on the other transaction only where their keys collide. So the
        claim takes this lock first; the next statement (a fresh READ COMMITTED snapshot) then
        sees whatever the previous holder committed. It must be a statement of its own: a read in
        the same statement would use the snapshot taken before the wait. Two request_ids whose
        ``hashtext`` collides merely queue behind each other. SQLite needs nothing: write
        transactions begin IMMEDIATE, so they are serialised and read the latest commit.
        """
        if session.get_bind().dialect.name == "postgresql":
            session.connection().execute(
                _LOCK_REQUEST, {"space": _REQUEST_LOCK_SPACE, "request_id": request_id}
            )

    def request_state(self, session: Session, request_id: str, user_id: str) -> RequestState:
        """What is stored under ``request_id``, and the user's profile version (None: no row):
        one statement."""
        params = {"request_id": request_id, "user_id": user_id}
        stored: list[ServedEntry] = []
        profile_version: int | None = None
        for (
            tag,
            position,
            user,
            item_id,
            reason,
            name,
            version,
            profile,
        ) in session.connection().execute(_REQUEST_STATE, params):
            if tag == 0:
                stored.append(ServedEntry(int(position), user, item_id, reason, name, version))
            else:
                profile_version = int(profile)
        return RequestState(stored, profile_version)

    def list_impressions(self, session: Session, request_id: str) -> list[ImpressionRecord]:
        rows = session.connection().execute(_REQUEST_IMPRESSIONS, {"request_id": request_id})
        return [
            ImpressionRecord(
                request_id=row.request_id,
                position=row.position,
                user_id=row.user_id,
                item_id=row.item_id,
                reason=row.reason,
                policy_name=row.policy_name,
                policy_version=row.policy_version,
                score=row.score,
                served_at=row.served_at,
            )
            for row in rows
        ]

    # ---------------------------------------------------------------- counters

    def bump_counters(
        self,
        session: Session,
        column: str,
        increments: Mapping[str, int],
        changed_at: dt.datetime | None = None,
    ) -> int:
        """Add ``increments[item_id]`` to one counter column; returns how many counter rows it
        updated (items without a row are skipped: every catalogue item has one, made with it).
        An exposure counter's bump also stamps ``exposure_changed_at`` with ``changed_at``, which
        the caller takes inside the transaction (it then trails the commit by the rest of it)."""
        if column not in COUNTER_COLUMNS:
            raise ValueError(f"unknown counter {column!r}")
        rows: list[dict[str, Any]] = [
            {"b_item_id": item_id, "b_n": n} for item_id, n in sorted(increments.items()) if n
        ]
        if rows and column in EXPOSURE_COUNTER_COLUMNS:
            if changed_at is None:
                raise ValueError(f"a bump of {column} needs changed_at")
            for row in rows:
                row["b_at"] = changed_at
        if not rows:
            return 0
        # Both dialects sum the rowcount of an executemany (supports_sane_multi_rowcount).
        return int(session.connection().execute(_BUMP_COUNTER[column], rows).rowcount)

    def counters(
        self, session: Session, item_ids: Iterable[str]
    ) -> dict[str, tuple[int, int, int]]:
        ids = sorted(set(item_ids))
        if not ids:
            return {}
        rows = session.connection().execute(_COUNTERS, {"item_ids": ids})
        return {item_id: (n, impressions, feedback) for item_id, n, impressions, feedback in rows}

    def impression_totals(self, session: Session) -> tuple[int, int]:
        """(rows in the impression log, sum of the items' impression counters): equal whenever
        every write stored its list and bumped its counters in one transaction."""
        connection = session.connection()
        logged = connection.execute(sa.select(sa.func.count()).select_from(impressions_t))
        counted = connection.execute(
            sa.select(sa.func.coalesce(sa.func.sum(counters_t.c.impression_count), 0))
        )
        return int(logged.scalar_one()), int(counted.scalar_one())

    def list_counters(
        self,
        session: Session,
        after: str | None,
        limit: int,
        exposure_changed_since: dt.datetime | None = None,
    ) -> list[tuple[str, int, int, int]]:
        stmt = sa.select(counters_t)
        if after is not None:
            stmt = stmt.where(counters_t.c.item_id > after)
        if exposure_changed_since is not None:
            stmt = stmt.where(counters_t.c.exposure_changed_at >= exposure_changed_since)
        stmt = stmt.order_by(counters_t.c.item_id).limit(limit)
        return [
            (row.item_id, row.interaction_count, row.impression_count, row.feedback_count)
            for row in session.execute(stmt)
        ]

    def counters_version(self, session: Session) -> tuple[int, int]:
        """What every interaction counter depends on, in one small query: the newest interaction
        id (interactions are only ever added, each bumping its item's counter in the same
        transaction) and the number of counter rows (one per catalogue item)."""
        row = session.connection().execute(_COUNTERS_VERSION).one()
        return int(row[0] or 0), int(row[1])

    def all_interaction_counts(self, session: Session) -> dict[str, int]:
        """Interaction count of every catalogue item (zero included): the head/tail input."""
        stmt = sa.select(counters_t.c.item_id, counters_t.c.interaction_count)
        return {row[0]: int(row[1]) for row in session.execute(stmt)}

    def table_counts(self, session: Session) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name, table in (
            ("items", items_t),
            ("users", users_t),
            ("interactions", interactions_t),
            ("impressions", impressions_t),
        ):
            counts[name] = int(
                session.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            )
        return counts
