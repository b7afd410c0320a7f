"""The training job's cost: wall time per stage, its own peak memory, the bundle's size.

    python -m benchmarks.training --catalogue movielens   # shared/datasets/movielens-latest-small
    python -m benchmarks.training --catalogue synthetic --items 100000 --users 2000

A profiles service (SQLite in a temporary folder) is started in this process and loaded; every
item gets a seeded random unit vector (384 dimensions, MiniLM's width: the cost of the ranker's
content features does not depend on where the vectors come from, its metrics do, so they are not
reported as quality). Then ``python -m services.training`` runs as its own process, exactly as a
CronJob runs it, and its JSON report (stage times, peak RSS, bundle size) is printed, with the
time a replica takes to load and verify the bundle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from longtail.common.v1 import common_pb2
from longtail.profiles.v1 import profiles_service_pb2 as ppb
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.artifacts import LocalFolderStore
from services.common.server import start_service
from services.common.settings import ServerSettings
from services.profiles.app import ProfilesSettings
from services.profiles.app import build as build_profiles
from services.ranking.bundle import load_bundle
from services.suite import datasets

MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "movielens-latest-small"
DIMENSION = 384


async def _vectors(
    stub: profiles_service_pb2_grpc.ProfilesServiceAsyncStub, ids: list[str]
) -> None:
    rng = np.random.default_rng(2026)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        values = rng.standard_normal((len(chunk), DIMENSION)).astype(np.float32)
        values /= np.linalg.norm(values, axis=1, keepdims=True)
        await stub.UpdateItemVectors(
            ppb.UpdateItemVectorsRequest(
                updates=[
                    ppb.ItemVectorUpdate(
                        item_id=item,
                        vector=common_pb2.ItemVector(
                            values=vector.tolist(), model_name="random", model_version="1"
                        ),
                    )
                    for item, vector in zip(chunk, values, strict=True)
                ]
            ),
            timeout=120,
        )


async def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="longtail-bench-training-") as folder:
        root = Path(folder)
        definition = await build_profiles(
            ProfilesSettings(database_url=f"sqlite:///{root / 'profiles.db'}")
        )
        profiles = await start_service(definition, ServerSettings(port=0))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{profiles.port}")
        try:
            stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)
            if args.catalogue == "movielens":
                dataset = datasets.read_movielens(Path(args.path))
            else:
                dataset = datasets.make_demo_catalogue(args.items, args.users, seed=0)
            loaded = time.perf_counter()
            await datasets.upload(dataset, stub, progress=False, timeout=120)
            await _vectors(stub, [item.item_id for item in dataset.items])
            load_seconds = time.perf_counter() - loaded
            env = {
                **os.environ,
                "LONGTAIL_RANKING_PROFILES_TARGET": f"127.0.0.1:{profiles.port}",
                "LONGTAIL_RANKING_EMBEDDINGS_TARGET": "127.0.0.1:9",
                "LONGTAIL_RANKING_EMBEDDINGS_TIMEOUT_SECONDS": "1",
                "LONGTAIL_RANKING_PROFILES_TIMEOUT_SECONDS": "300",
                "LONGTAIL_RANKING_ARTIFACT_DIR": str(root / "artifacts"),
                "LONGTAIL_TRAINING_LOG_LEVEL": "WARNING",
            }
            started = time.perf_counter()
            job = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.training",
                env=env,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await job.communicate()
            wall = time.perf_counter() - started
            if job.returncode != 0:
                raise SystemExit(f"the training job failed ({job.returncode})")
            report: dict[str, object] = json.loads(out)
            # What a replica pays to switch: download (here: read), verify, decode, off its loop.
            mark = time.perf_counter()
            load_bundle(LocalFolderStore(root / "artifacts"), str(report["version"]))
            report["replica_load_seconds"] = round(time.perf_counter() - mark, 3)
            report["process_wall_seconds"] = round(wall, 2)
            report["load_seconds"] = round(load_seconds, 1)
            report["catalogue"] = args.catalogue
            return report
        finally:
            await channel.close()
            await profiles.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", choices=["movielens", "synthetic"], default="movielens")
    parser.add_argument("--path", default=str(MOVIELENS), help="MovieLens folder (read in place)")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2000)
    report = asyncio.run(run(parser.parse_args()))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
