"""The store itself: migrations, outages, atomic batches, the process entry point."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as pb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.channels import open_channel
from services.common.errors import error_info
from services.common.settings import ClientSettings
from services.profiles.models import Base
from services.profiles.store import alembic_config, create_store_engine, migrate
from tests.profiles.conftest import serve
from tests.profiles.test_service import interaction, item

REPO = Path(__file__).resolve().parents[2]


def test_migrated_schema_matches_the_models(store_url: str) -> None:
    migrate(store_url)  # a second upgrade is a no-op
    engine = create_store_engine(store_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            # The one head of the migration chain (get_current_head refuses two heads).
            head = ScriptDirectory.from_config(alembic_config(store_url)).get_current_head()
            assert context.get_current_revision() == head
    finally:
        engine.dispose()


def test_migration_0004_stamps_the_counters_that_already_moved(tmp_path: Path) -> None:
    """A store from before exposure_changed_at: its shown or clicked items get the migration's
    time, so that the exposure mirror's first read (changed since the epoch) finds them."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, "0003")
    engine = create_store_engine(url)
    try:
        with engine.begin() as connection:
            for index, (impressions, feedback) in enumerate([(0, 0), (3, 0), (0, 2)]):
                connection.execute(
                    sa.text(
                        "INSERT INTO items (item_id, title, description, tags, categories,"
                        " attributes, created_at) VALUES (:i, 't', 'd', '[]', '[]', '{}',"
                        " '2024-01-01 00:00:00')"
                    ),
                    {"i": f"item-{index}"},
                )
                connection.execute(
                    sa.text(
                        "INSERT INTO item_counters (item_id, interaction_count, impression_count,"
                        " feedback_count) VALUES (:i, 5, :n, :f)"
                    ),
                    {"i": f"item-{index}", "n": impressions, "f": feedback},
                )
        migrate(url)
        with engine.connect() as connection:
            stamped: dict[str, object] = dict(
                connection.execute(
                    sa.text("SELECT item_id, exposure_changed_at FROM item_counters")
                ).all()
            )
        assert stamped["item-0"] is None
        assert stamped["item-1"] is not None and stamped["item-2"] is not None
    finally:
        engine.dispose()


async def test_migration_0005_gives_existing_users_a_version_that_moves(tmp_path: Path) -> None:
    """A store from before profile versions: its users start at version 0, their profiles read
    as before, and their next interaction moves the version."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, "0004")
    engine = create_store_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO users (user_id, interests, attributes, created_at)"
                    " VALUES ('old-user', 'films', '{}', '2024-01-01 00:00:00')"
                )
            )
        migrate(url)
        with engine.connect() as connection:
            stored = connection.execute(
                sa.text("SELECT profile_version FROM users WHERE user_id = 'old-user'")
            ).scalar()
        assert stored == 0
    finally:
        engine.dispose()
    service = await serve(url)
    try:
        await service.stub.UpsertItems(pb.UpsertItemsRequest(items=[item(1)]))
        read = pb.GetUserProfileRequest(user_id="old-user")
        before = await service.stub.GetUserProfile(read)
        assert before.profile.interests == "films" and before.profile_version.startswith("0.")
        await service.stub.RecordInteractions(
            pb.RecordInteractionsRequest(interactions=[interaction("old-user", "item-0001", 1)])
        )
        read.if_profile_version_differs = before.profile_version
        after = await service.stub.GetUserProfile(read)
        assert not after.unchanged and list(after.profile.seen_item_ids) == ["item-0001"]
    finally:
        await service.channel.close()
        await service.running.stop(grace=0)


def test_sqlite_store_is_wal_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'dir' / 'x.db'}"
    migrate(url)  # creates the parent folders
    engine = create_store_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert int(connection.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) > 0
    finally:
        engine.dispose()


async def test_store_down_is_unavailable_and_not_ready() -> None:
    # Nothing listens on port 1: every connection attempt is refused at once.
    service = await serve("postgresql+psycopg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.UpsertItems(pb.UpsertItemsRequest(items=[item(1)]))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(caught.value)
        assert info is not None and info.reason == "STORE_UNAVAILABLE"
        definition = service.running.definition
        assert definition.readiness is not None
        assert await definition.readiness() is False
    finally:
        await service.channel.close()
        await service.running.stop(grace=0)


async def test_a_batch_that_fails_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    migrate(url)
    service = await serve(url)
    try:
        await service.stub.UpsertItems(pb.UpsertItemsRequest(items=[item(1), item(2)]))
        await service.stub.UpsertUsers(pb.UpsertUsersRequest(users=[common_pb2.User(user_id="u1")]))
        # The counter update (the last statement of the transaction) fails for item-0002.
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "CREATE TRIGGER boom BEFORE UPDATE ON item_counters "
                "WHEN NEW.item_id = 'item-0002' BEGIN SELECT RAISE(ABORT, 'boom'); END"
            )
        batch = [interaction("u1", "item-0001", 1), interaction("u1", "item-0002", 2)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=batch))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        listed = await service.stub.ListInteractions(pb.ListInteractionsRequest())
        assert list(listed.interactions) == []
        stats = await service.stub.GetItemStats(pb.GetItemStatsRequest(item_ids=["item-0001"]))
        assert stats.stats[0].interaction_count == 0
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER boom")
        engine.dispose()
        # The retry of the same batch then goes through whole.
        answer = await service.stub.RecordInteractions(
            pb.RecordInteractionsRequest(interactions=batch)
        )
        assert answer.recorded_count == 2
    finally:
        await service.channel.close()
        await service.running.stop(grace=0)


async def test_python_m_services_profiles_migrates_serves_and_stops(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        LONGTAIL_PROFILES_DATABASE_URL=f"sqlite:///{tmp_path / 'main.db'}",
        LONGTAIL_PROFILES_PORT="0",
        LONGTAIL_PROFILES_GRACE_SECONDS="0.5",
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "clients" / "python")]),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.profiles",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
        assert line.startswith("LISTENING "), line
        channel = open_channel(ClientSettings(target=line.split()[1]))
        stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)
        answer = await stub.UpsertItems(pb.UpsertItemsRequest(items=[item(1)]), timeout=10)
        assert answer.upserted_count == 1
        await channel.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_a_store_mid_upgrade_looks_untouched_to_every_other_connection(tmp_path: Path) -> None:
    """The whole upgrade is one write transaction, so a replica can never run a step twice.

    At each applied step (inside the upgrade) a second connection looks at the file: it must find
    no version yet and be unable to start a write. If the steps committed one by one, it would see
    the earlier steps' version and could take the lock between two steps, which is how a replica
    starting at the same moment ran a step a second time ("index ... already exists").
    """
    path = tmp_path / "mid.db"
    seen: list[tuple[str, list[str], bool]] = []

    class Observer(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                try:
                    versions = [row[0] for row in other.execute("SELECT * FROM alembic_version")]
                except sqlite3.OperationalError:  # no table yet: nothing committed
                    versions = []
                try:
                    other.execute("BEGIN IMMEDIATE")
                    other.execute("ROLLBACK")
                    could_write = True
                except sqlite3.OperationalError:
                    could_write = False
                seen.append((record.getMessage(), versions, could_write))
            finally:
                other.close()

    logger = logging.getLogger("longtail.profiles.migrations")
    observer = Observer(level=logging.INFO)
    level = logger.level
    logger.addHandler(observer)
    logger.setLevel(logging.INFO)
    try:
        migrate(f"sqlite:///{path}")
    finally:
        logger.removeHandler(observer)
        logger.setLevel(level)
    head = ScriptDirectory.from_config(alembic_config(f"sqlite:///{path}")).get_current_head()
    assert len(seen) >= 2 and seen[-1][0] == f"migration applied: {head}"
    assert all(versions == [] and not could_write for _, versions, could_write in seen), seen
    other = sqlite3.connect(path)
    try:  # and once it returns, all of it is there
        assert [row[0] for row in other.execute("SELECT * FROM alembic_version")] == [head]
    finally:
        other.close()


async def test_concurrent_migrations_of_one_store_all_succeed(tmp_path: Path) -> None:
    """Replicas starting together on one fresh store: each process migrates, none fails."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    code = "import sys; from services.profiles.store import migrate; migrate(sys.argv[1])"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "clients" / "python")])
    )
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", code, url, cwd=REPO, env=env)
        for _ in range(3)
    ]
    codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), timeout=120)
    assert codes == [0, 0, 0]
    # And threads of one process take turns.
    await asyncio.gather(*(asyncio.to_thread(migrate, url) for _ in range(2)))
    engine = create_store_engine(url)
    try:
        with engine.connect() as connection:
            head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
            assert MigrationContext.configure(connection).get_current_revision() == head
    finally:
        engine.dispose()
