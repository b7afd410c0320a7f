"""Two ranking replicas behind the gateway follow the model registry under a steady Recommend load.

Real services in-process on port 0: profiles (SQLite, a synthetic world with times and vectors),
two ranking replicas (``build``) polling the registry every 0.2 s (+-20% jitter) and reading one
local artefact folder, exposure, and the gateway, whose ranking target lists both replicas (the
channel balances round-robin). Bundles come from the real training job (``run_training``).

One scenario, in order, while four callers keep asking the gateway for lists:
1. a new version is published: both replicas switch to it; no Recommend fails or falls back;
2. a corrupt bundle (truncated file, then same-size altered bytes) is published: both refuse it
   (the refusal metric counts it), keep serving the previous version, and stay SERVING;
3. a rollback to the first version: both switch back.
Waits are on observable conditions (replica status, metrics) with a generous bound, never a pace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2 as ppb
from longtail.ranking.v1 import ranking_service_pb2 as rpb
from longtail.ranking.v1 import ranking_service_pb2_grpc
from services.common.artifacts import LocalFolderStore, bundle_key
from services.common.server import RunningService, ServiceDefinition, start_service
from services.common.settings import ServerSettings
from services.exposure.app import ExposureSettings
from services.exposure.app import build as build_exposure
from services.gateway.app import build as build_gateway
from services.gateway.app import pipeline_config
from services.gateway.config import GatewaySettings
from services.ranking.app import RankingSettings
from services.ranking.app import build as build_ranking
from services.training.config import TrainingSettings
from services.training.job import TrainingReport, run_training
from tests.training.world import ServedProfiles, serve_profiles

CALL_TIMEOUT = 60.0
# A bound on waits for a condition, never a pace: the switch itself takes about a poll.
SWITCH_BOUND_SECONDS = 120.0
POLL_SECONDS = 0.2
NO_EMBEDDINGS = "127.0.0.1:9"
FACTORS = "collaborative/item_factors.npy"
RANKER = "learned_ranker/ranker.json"


@dataclasses.dataclass
class Replica:
    definition: ServiceDefinition
    running: RunningService
    channel: grpc.aio.Channel
    stub: ranking_service_pb2_grpc.RankingServiceAsyncStub

    async def version(self) -> str:
        status = await self.stub.GetRankingStatus(
            rpb.GetRankingStatusRequest(), timeout=CALL_TIMEOUT
        )
        return status.collaborative_version

    def refusals(self, reason: str) -> float:
        registry = self.definition.registries[0]
        value = registry.get_sample_value(
            "longtail_model_bundle_refusals_total", {"reason": reason}
        )
        return value or 0.0

    async def serving(self) -> bool:
        health: Any = health_pb2_grpc.HealthStub(self.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclasses.dataclass
class Fleet:
    tmp_path: Path
    profiles: ServedProfiles
    replicas: list[Replica]
    gateway: gateway_service_pb2_grpc.GatewayServiceAsyncStub
    others: list[RunningService]
    channels: list[grpc.aio.Channel]

    @property
    def store(self) -> LocalFolderStore:
        return LocalFolderStore(self.tmp_path / "artifacts")

    async def train(self) -> TrainingReport:
        """A bundle from the real job, written but not published."""
        return await run_training(
            RankingSettings(
                profiles_target=self.profiles.target,
                embeddings_target=NO_EMBEDDINGS,
                embeddings_timeout_seconds=1.0,
                artifact_dir=self.tmp_path / "artifacts",
            ),
            TrainingSettings(factors=8, iterations=3, publish=False),
        )

    async def publish(self, version: str, manifest_sha256: str = "") -> None:
        await self.profiles.stub.PublishModel(
            ppb.PublishModelRequest(
                model_kind="collaborative",
                version=version,
                manifest_sha256=manifest_sha256,
                published_by="pytest",
                reason="registry-follow test",
            ),
            timeout=CALL_TIMEOUT,
        )

    async def versions(self) -> list[str]:
        return [await replica.version() for replica in self.replicas]


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> float:
    """Seconds until ``condition`` holds (checked every 20 ms, at most SWITCH_BOUND_SECONDS)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(SWITCH_BOUND_SECONDS):
            while True:
                if await condition():
                    break
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"not within {SWITCH_BOUND_SECONDS}s: {what}")
    return time.perf_counter() - started


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    profiles = await serve_profiles(tmp_path)
    made = Fleet(tmp_path, profiles, [], None, [], [])  # type: ignore[arg-type]
    try:
        first = await made.train()
        await made.publish(first.version, first.manifest.sha256)
        for _ in range(2):
            definition = await build_ranking(
                RankingSettings(
                    profiles_target=profiles.target,
                    embeddings_target=NO_EMBEDDINGS,
                    embeddings_timeout_seconds=1.0,
                    artifact_dir=tmp_path / "artifacts",
                    refresh_seconds=0,
                    model_poll_seconds=POLL_SECONDS,
                    train_in_process=False,
                )
            )
            running = await start_service(definition, ServerSettings(port=0))
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
            made.channels.append(channel)
            made.replicas.append(
                Replica(
                    definition,
                    running,
                    channel,
                    ranking_service_pb2_grpc.RankingServiceStub(channel),
                )
            )
        exposure = await start_service(
            await build_exposure(ExposureSettings(profiles_target=profiles.target)),
            ServerSettings(port=0),
        )
        made.others.append(exposure)
        ports = ",".join(f"127.0.0.1:{r.running.port}" for r in made.replicas)
        settings = GatewaySettings(
            profiles_target=profiles.target,
            ranking_target=f"ipv4:{ports}",
            exposure_target=f"127.0.0.1:{exposure.port}",
            default_deadline_seconds=CALL_TIMEOUT,
            ranking_timeout_seconds=CALL_TIMEOUT,
            exposure_timeout_seconds=CALL_TIMEOUT,
        )
        pipeline = dataclasses.replace(
            pipeline_config(settings), profile_timeout=CALL_TIMEOUT, write_timeout=CALL_TIMEOUT
        )
        gateway = await start_service(
            await build_gateway(settings, pipeline), ServerSettings(port=0)
        )
        made.others.append(gateway)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        made.channels.append(channel)
        made.gateway = gateway_service_pb2_grpc.GatewayServiceStub(channel)

        async def loaded() -> bool:
            return await made.versions() == [first.version] * 2

        await eventually(loaded, "both replicas load the first published version")
        yield made
    finally:
        for channel in made.channels:
            await channel.close()
        for server in [*reversed(made.others), *(r.running for r in made.replicas)]:
            await server.stop(0)
        await profiles.close()


@dataclasses.dataclass
class Load:
    """Four callers asking the gateway for lists until stopped; every outcome is kept."""

    gateway: gateway_service_pb2_grpc.GatewayServiceAsyncStub
    users: list[str]
    answers: Counter[str] = dataclasses.field(default_factory=Counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    fallbacks: int = 0
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def caller(self, offset: int) -> None:
        n = offset
        while not self.stop.is_set():
            user = self.users[n % len(self.users)]
            n += 4
            try:
                answer = await self.gateway.Recommend(
                    gateway_service_pb2.RecommendRequest(user_id=user, k=10), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
                continue
            self.fallbacks += answer.fallback
            self.answers[answer.collaborative_version] += 1

    async def answered(self, version: str, more_than: int) -> bool:
        return self.answers[version] > more_than


async def test_replicas_follow_publish_refuse_corrupt_bundles_and_roll_back_under_load(
    fleet: Fleet,
) -> None:
    first = (await fleet.versions())[0]
    second = await fleet.train()
    truncated = await fleet.train()
    altered = await fleet.train()
    load = Load(fleet.gateway, sorted(fleet.profiles.world.users))
    callers = [asyncio.create_task(load.caller(i)) for i in range(4)]
    try:
        await eventually(lambda: load.answered(first, 20), "lists served under the first version")

        # 1. Publish: both replicas switch; the gateway's answers carry the new version.
        await fleet.publish(second.version, second.manifest.sha256)
        published = time.perf_counter()

        async def switched() -> bool:
            return await fleet.versions() == [second.version] * 2

        await eventually(switched, "both replicas serve the published version")
        last_switched = time.perf_counter() - published
        served_before = load.answers[second.version]
        await eventually(
            lambda: load.answered(second.version, served_before + 20),
            "lists served under the new version",
        )

        # 2. Corrupt bundles are refused; the previous version keeps serving, health SERVING.
        fleet.store.put(
            bundle_key(truncated.version, FACTORS),
            fleet.store.get(bundle_key(truncated.version, FACTORS))[:-100],
        )
        raw = fleet.store.get(bundle_key(altered.version, RANKER))
        fleet.store.put(bundle_key(altered.version, RANKER), raw.replace(b"1", b"2", 1))
        for bad in (truncated, altered):
            refused = [replica.refusals("corrupt") for replica in fleet.replicas]
            await fleet.publish(bad.version, bad.manifest.sha256)

            async def both_refused(refused: list[float] = refused) -> bool:
                counts = [replica.refusals("corrupt") for replica in fleet.replicas]
                return all(now > before for now, before in zip(counts, refused, strict=True))

            await eventually(both_refused, f"both replicas refuse {bad.version}")
            assert await fleet.versions() == [second.version] * 2
            assert all([await replica.serving() for replica in fleet.replicas])
            still = load.answers[second.version] + 10
            await eventually(
                lambda still=still: load.answered(second.version, still),  # type: ignore[misc]
                "lists still served by the previous version",
            )

        # 3. Rollback to the first version: both switch back.
        await fleet.profiles.stub.RollbackModel(
            ppb.RollbackModelRequest(
                model_kind="collaborative", to_version=first, published_by="pytest", reason="test"
            ),
            timeout=CALL_TIMEOUT,
        )

        async def rolled_back() -> bool:
            return await fleet.versions() == [first] * 2

        await eventually(rolled_back, "both replicas serve the rolled-back version")
        served_before = load.answers[first]
        await eventually(
            lambda: load.answered(first, served_before + 20), "lists served after the rollback"
        )
    finally:
        load.stop.set()
        await asyncio.gather(*callers)
    assert load.failures == []
    assert load.fallbacks == 0
    # Never a corrupt version on the wire.
    assert set(load.answers) <= {first, second.version}
    print(
        f"\npublish -> last replica switched: {last_switched:.3f}s (poll {POLL_SECONDS}s); "
        f"bundle {second.manifest.size_bytes} bytes; answers {dict(load.answers)}"
    )
