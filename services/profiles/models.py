"""The SQL schema of the profiles store (SQLAlchemy 2.0 typed models).

Alembic (``migrations/``) is the only thing that creates or changes this schema outside tests;
a test checks that the migrated schema and these models agree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations can name what they alter on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 255
KEY_LENGTH = 128

# JSON on SQLite (text), JSONB on PostgreSQL.
JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite has no 64-bit autoincrement other than its INTEGER rowid alias.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite keeps no offset: naive = UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    interests: Mapped[str] = mapped_column(Text, default="")
    attributes: Mapped[dict[str, str]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    # Moves in the transaction of every write the user's profile depends on (interactions,
    # interests, the categories of items the user touched): GetUserProfile's profile_version, so a
    # caller's cached profile is re-read exactly when it would differ.
    profile_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Item(Base):
    __tablename__ = "items"

    item_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    title: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JsonType, default=list)
    categories: Mapped[list[str]] = mapped_column(JsonType, default=list)
    attributes: Mapped[dict[str, str]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    # float32 little-endian; NULL until the item is embedded.
    vector: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    vector_model_name: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)
    vector_model_version: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)
    vector_dim: Mapped[int | None] = mapped_column(Integer, nullable=True)

    # What the ANN index loads and the stale filter scans.
    __table_args__ = (Index(None, "vector_model_name", "vector_model_version"),)


class Interaction(Base):
    __tablename__ = "interactions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("users.user_id"))
    item_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("items.item_id"))
    # view | click | purchase | rating
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float, default=0.0)
    occurred_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    idempotency_key: Mapped[str] = mapped_column(String(KEY_LENGTH), unique=True)
    request_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)

    __table_args__ = (
        Index(None, "user_id", "occurred_at"),
        Index(None, "item_id"),
        # Feedback on served lists (the dashboard's clicks and request explorer); partial: the
        # bulk of the interactions (loaded histories) answer no request.
        Index(
            None,
            "request_id",
            "item_id",
            "kind",
            sqlite_where=sa.text("request_id IS NOT NULL"),
            postgresql_where=sa.text("request_id IS NOT NULL"),
        ),
    )


class Impression(Base):
    """The exposure log. No foreign keys: an impression is never refused or lost."""

    __tablename__ = "impressions"

    request_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    item_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    policy_name: Mapped[str] = mapped_column(String(ID_LENGTH), default="")
    policy_version: Mapped[str] = mapped_column(String(ID_LENGTH), default="")
    # relevance | tail_boost | explore | diversity | fallback
    reason: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float, default=0.0)
    served_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)

    # The dashboard's time windows and its newest-first list of served requests.
    __table_args__ = (Index(None, "served_at", "request_id"),)


class ItemCounter(Base):
    """Per-item popularity and exposure, updated in the transaction of the write that changes it."""

    __tablename__ = "item_counters"

    item_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("items.item_id"), primary_key=True
    )
    interaction_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    impression_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    feedback_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # When impression_count or feedback_count last moved (the writer's clock, inside the write's
    # transaction); NULL while both are 0. The exposure service's counter mirror reads what
    # changed since its last read (ListItemStatsRequest.exposure_changed_since).
    exposure_changed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)

    __table_args__ = (Index(None, "exposure_changed_at"),)


class ModelPublication(Base):
    """The model registry: each row makes ``version`` the active bundle of ``model_kind``; the
    latest row of a kind wins. Rows are never updated: the history is the audit trail."""

    __tablename__ = "model_publications"

    publication_id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    model_kind: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(ID_LENGTH))
    manifest_sha256: Mapped[str] = mapped_column(String(64), default="")
    published_by: Mapped[str] = mapped_column(String(ID_LENGTH), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    published_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    rollback: Mapped[bool] = mapped_column(Boolean, default=False)

    # The active version of a kind: its row with the largest publication_id.
    __table_args__ = (Index(None, "model_kind", "publication_id"),)
