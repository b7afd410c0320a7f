"""A profiles service on port 0 over a real, migrated store: SQLite (a tmp file) and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.channels import open_channel
from services.common.server import RunningService, start_service
from services.common.settings import ClientSettings, ServerSettings
from services.profiles.app import ProfilesSettings, build
from services.profiles.store import migrate

TABLES = ("impressions", "interactions", "item_counters", "items", "users", "model_publications")
_migrated: set[str] = set()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store migrated with ``migrate``: a fresh SQLite file, or the session's PostgreSQL
    database (migrated once, emptied before each test)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store' / 'profiles.db'}"
        migrate(url)
        return url
    url = str(request.getfixturevalue("postgres_url"))
    if url not in _migrated:
        migrate(url)
        _migrated.add(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()
    return url


@dataclasses.dataclass
class Served:
    running: RunningService
    channel: grpc.aio.Channel
    stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub
    url: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"


async def serve(url: str, auth_token: str | None = None) -> Served:
    definition = await build(
        ProfilesSettings(database_url=url, migrate_on_start=False, head_min_refresh_seconds=0.0)
    )
    running = await start_service(definition, ServerSettings(port=0, auth_token=auth_token))
    channel = open_channel(
        ClientSettings(target=f"127.0.0.1:{running.port}", auth_token=auth_token)
    )
    stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)
    return Served(running, channel, stub, url)


@pytest.fixture
async def served(store_url: str) -> AsyncIterator[Served]:
    service = await serve(store_url)
    try:
        yield service
    finally:
        await service.channel.close()
        await service.running.stop(grace=0)
