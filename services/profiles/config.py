"""Settings of the profiles service, read from ``LONGTAIL_PROFILES_*`` variables."""

from __future__ import annotations

import dataclasses

DEFAULT_DATABASE_URL = "sqlite:///.longtail/longtail.db"


@dataclasses.dataclass(frozen=True)
class ProfilesSettings:
    # SQLite (embedded default, one file) or ``postgresql+psycopg://user@host:5432/db``.
    database_url: str = DEFAULT_DATABASE_URL
    # Run ``alembic upgrade head`` before serving; Alembic is the only thing that makes the schema.
    migrate_on_start: bool = True
    # The head set (top 20% by interactions) is cached; it is recomputed at most this often while
    # interactions keep arriving, and at least this often otherwise (other replicas write too).
    head_refresh_seconds: float = 5.0
    # Lower bound between two recomputations forced by new interactions (each reads every counter).
    head_min_refresh_seconds: float = 1.0
    # Connections per process (PostgreSQL); SQLite writes are serialised in-process anyway.
    pool_size: int = 10
