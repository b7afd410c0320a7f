"""The in-process floor (benchmarks.floor) against a real profiles service and its SQLite store.

The suite runs profiles only (no Triton): the catalogue's vectors are uploaded, so known users
are ranked from their history, and new users' interests fail to embed (ranking serves them the
popularity-and-tail candidates), which still exercises their interests write.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from benchmarks.floor import STAGES, Floor, measure_floor
from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.common.channels import open_channel
from services.common.settings import ClientSettings
from services.suite import datasets
from services.suite.local import LocalSuite, SuiteConfig

K = 5
WARMUP = 5
REQUESTS = 30


class Users:
    """Known users, and every fourth request a new one with interests (seeded)."""

    def __init__(self, known: list[str]) -> None:
        self._known = known
        self._rng = random.Random(3)
        self._count = 0

    def next(self) -> tuple[str, str]:
        self._count += 1
        if self._count % 4 == 0:
            return f"floor-new-{self._count}", datasets.demo_interests(datasets.DEMO_CATEGORIES[0])
        return self._rng.choice(self._known), ""


async def _upload(stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub) -> datasets.Dataset:
    dataset = datasets.make_demo_catalogue(300, 40, seed=0)
    await datasets.upload(dataset, stub, progress=False)
    vectors = np.random.default_rng(0).normal(size=(len(dataset.items), 16))
    await stub.UpdateItemVectors(
        profiles_service_pb2.UpdateItemVectorsRequest(
            updates=[
                profiles_service_pb2.ItemVectorUpdate(
                    item_id=item.item_id,
                    vector=common_pb2.ItemVector(
                        values=vector.tolist(), model_name="test", model_version="1"
                    ),
                )
                for item, vector in zip(dataset.items, vectors, strict=True)
            ]
        ),
        timeout=30,
    )
    return dataset


async def test_floor_serves_and_logs_every_list(tmp_path: Path) -> None:
    config = SuiteConfig(workdir=tmp_path, services=("profiles",))
    async with LocalSuite(config) as suite:
        channel = open_channel(ClientSettings(target=suite.target("profiles")))
        try:
            stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub = (
                profiles_service_pb2_grpc.ProfilesServiceStub(channel)
            )
            dataset = await _upload(stub)
            known = sorted({i.user_id for i in dataset.interactions})
            floor = await Floor.open(suite, K)
            try:
                result = await measure_floor(floor, Users(known), REQUESTS, K, warmup=WARMUP)
            finally:
                await floor.close()
            stats = await stub.GetCatalogStats(
                profiles_service_pb2.GetCatalogStatsRequest(), timeout=10
            )
        finally:
            await channel.close()

    assert result.requests == REQUESTS
    assert result.items == REQUESTS * K
    measured = range(WARMUP + 1, WARMUP + REQUESTS + 1)
    assert result.cold_requests == sum(1 for n in measured if n % 4 == 0)
    # Every served list, warm-up included, is in the impression log.
    assert stats.impression_count == (WARMUP + REQUESTS) * K
    assert set(result.stages) == set(STAGES)
    assert result.stages["profile read"] > 0
    assert result.stages["rank"] > 0
    assert result.stages["impression write"] > 0
    assert result.stages["interests write"] > 0
    assert abs(sum(result.stages.values()) - result.cpu_ms_per_request) < 1e-9
    assert len(result.latencies_ms) == REQUESTS
