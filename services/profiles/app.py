"""Wiring of the profiles service: engine, migrations, domain, servicer, readiness."""

from __future__ import annotations

import asyncio

from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.common.server import ServiceDefinition
from services.profiles.config import ProfilesSettings
from services.profiles.dashboard_queries import DashboardQueries
from services.profiles.dashboard_servicer import ProfilesWithDashboardServicer
from services.profiles.profiles import HeadCache, Profiles
from services.profiles.repository import Repository
from services.profiles.store import Database, create_store_engine, migrate

__all__ = ["ProfilesSettings", "build"]

SERVICE_NAME = profiles_service_pb2.DESCRIPTOR.services_by_name["ProfilesService"].full_name


async def build(settings: ProfilesSettings) -> ServiceDefinition:
    """The profiles service on ``settings.database_url`` (migrated first unless told otherwise)."""
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, settings.database_url)
    database = Database(create_store_engine(settings.database_url, settings.pool_size))
    profiles = Profiles(
        database,
        Repository(),
        HeadCache(settings.head_refresh_seconds, settings.head_min_refresh_seconds),
    )

    async def close() -> None:
        await asyncio.to_thread(database.dispose)

    return ServiceDefinition(
        name="profiles",
        servicers=[
            (
                profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server,
                ProfilesWithDashboardServicer(profiles, DashboardQueries(database)),
                SERVICE_NAME,
            )
        ],
        readiness=profiles.ready,
        on_shutdown=close,
    )
