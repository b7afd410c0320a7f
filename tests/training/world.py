"""A real profiles service (SQLite, port 0) holding a synthetic world with timestamps and vectors:
what the training job and the replicas read in the training and registry-follow tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as ppb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.server import RunningService, start_service
from services.common.settings import ServerSettings
from services.profiles.app import ProfilesSettings
from services.profiles.app import build as build_profiles
from tests.ranking.synthetic import MODEL, World, make_world

CALL_TIMEOUT = 60.0


@dataclasses.dataclass
class ServedProfiles:
    running: RunningService
    channel: grpc.aio.Channel
    stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub
    world: World

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def active(self, kind: str = "collaborative") -> str:
        answer = await self.stub.GetActiveModel(
            ppb.GetActiveModelRequest(model_kind=kind), timeout=CALL_TIMEOUT
        )
        return answer.publication.version if answer.HasField("publication") else ""

    async def close(self) -> None:
        await self.channel.close()
        await self.running.stop(0)


async def load_world(
    stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub, world: World
) -> None:
    items = [
        common_pb2.Item(
            item_id=item,
            title=item,
            categories=[category],
            vector=common_pb2.ItemVector(
                values=vector.tolist(), model_name=MODEL.name, model_version=MODEL.version
            ),
        )
        for item, category, vector in zip(
            world.item_ids, world.item_category, world.vectors, strict=True
        )
    ]
    for start in range(0, len(items), 500):
        await stub.UpsertItems(
            ppb.UpsertItemsRequest(items=items[start : start + 500]), timeout=CALL_TIMEOUT
        )
    # One interaction a minute per user, oldest first: the learned ranker's time split needs times.
    rows = [
        common_pb2.Interaction(
            user_id=user,
            item_id=item,
            kind=common_pb2.INTERACTION_KIND_CLICK,
            occurred_at=timestamp_pb2.Timestamp(seconds=1_700_000_000 + 60 * n),
            idempotency_key=f"{user}-{n}",
        )
        for user, (_, history) in world.users.items()
        for n, item in enumerate(history)
    ]
    for start in range(0, len(rows), 1000):
        await stub.RecordInteractions(
            ppb.RecordInteractionsRequest(
                interactions=rows[start : start + 1000], create_missing_users=True
            ),
            timeout=CALL_TIMEOUT,
        )


async def serve_profiles(tmp_path: Path, world: World | None = None) -> ServedProfiles:
    world = world or make_world(n_items=400, n_users=80)
    definition = await build_profiles(
        ProfilesSettings(
            database_url=f"sqlite:///{tmp_path / 'profiles.db'}", head_min_refresh_seconds=0.0
        )
    )
    running = await start_service(definition, ServerSettings(port=0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)
    await load_world(stub, world)
    return ServedProfiles(running, channel, stub, world)
