"""Engines, transactions and migrations of the profiles store.

SQLite (the embedded default) runs in WAL mode with a busy timeout and foreign keys on; write
transactions start with ``BEGIN IMMEDIATE`` so that a reader never has to upgrade its lock (which
fails at once in WAL mode instead of waiting), and writes from this process are serialised by a lock
so that concurrent writers queue instead of polling SQLite's busy handler. PostgreSQL
(``postgresql+psycopg://``) is the production store.

Sessions are synchronous and run in worker threads (``Database.run``); the caller owns the
transaction: one ``run`` is one transaction, so a batch is stored whole or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.common.errors import ServiceError, Unavailable

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
_WRITE_OPTION = "longtail_write"
# Alembic keeps its migration context in module globals: one migration per process at a time
# (processes themselves are serialised by the database: BEGIN IMMEDIATE / an advisory lock).
_ALEMBIC_LOCK = threading.Lock()


class StoreError(ServiceError):
    """The store refused a statement for a reason that is neither bad input nor an outage."""


def is_sqlite(url: str | sa.URL) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def create_store_engine(database_url: str, pool_size: int = 10) -> Engine:
    """An engine for ``database_url`` with the pragmas and pool this service relies on."""
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,  # a restarted PostgreSQL costs one failed call, not a dead pool
        connect_args=connect_args,
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); pysqlite's implicit transactions cannot do IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        write = connection.get_execution_options().get(_WRITE_OPTION, False)
        # Straight to the driver: exec_driver_sql's result machinery cost more CPU than the
        # statement itself, on every transaction.
        connection.connection.driver_connection.execute(  # type: ignore[union-attr]
            "BEGIN IMMEDIATE" if write else "BEGIN"
        )


class Database:
    """Transactions on one engine, run off the event loop, with outages mapped to UNAVAILABLE."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = engine.execution_options(**{_WRITE_OPTION: True})
        # SQLite allows one writer; queueing here is fairer and faster than its busy polling.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )

    @contextlib.contextmanager
    def transaction(self, write: bool) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        lock = self._write_lock if write else contextlib.nullcontext()
        with (
            lock,
            Session(bind=self._writer if write else self.engine) as session,
            session.begin(),
        ):
            yield session

    def call(self, fn: Callable[[Session], T], write: bool) -> T:
        try:
            with self.transaction(write) as session:
                return fn(session)
        except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as error:
            raise Unavailable("STORE_UNAVAILABLE", f"the store is unavailable: {error}") from error
        except exc.DBAPIError as error:
            raise StoreError("STORE_ERROR", f"the store refused the write: {error.orig}") from error

    async def run(self, fn: Callable[[Session], T], write: bool = False) -> T:
        """Run ``fn(session)`` in one transaction in a worker thread."""
        return await asyncio.to_thread(self.call, fn, write)

    async def ping(self) -> bool:
        """The readiness probe: a cheap ``SELECT 1``."""

        def select_one() -> bool:
            with self.engine.connect() as connection:
                return connection.execute(sa.text("SELECT 1")).scalar() == 1

        try:
            return await asyncio.to_thread(select_one)
        except exc.SQLAlchemyError:
            return False

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(database_url: str) -> Config:
    """Alembic's configuration without an ini file: the script location is this package's."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%'; URL-encoded passwords carry them.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` on ``database_url``: the only way the schema is made or changed."""
    engine = create_store_engine(database_url, pool_size=1)
    try:
        with _ALEMBIC_LOCK, engine.connect() as connection:
            # One write transaction around the whole upgrade: the version read and every step hold
            # one lock, so a replica migrating the same store waits and then finds it at head.
            # Left to itself, alembic commits each SQLite step on its own (SQLite is not
            # "transactional DDL" to it), and a replica could read the version between two steps
            # and run the next step a second time.
            connection.execution_options(**{_WRITE_OPTION: True})
            with connection.begin():
                config = alembic_config(database_url)
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
    finally:
        engine.dispose()
