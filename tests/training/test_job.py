"""The training job against a real profiles service: it writes a verified bundle with its manifest
and publishes it, to the local folder and to S3 (SeaweedFS); killed half-way it publishes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from longtail.profiles.v1 import profiles_service_pb2 as ppb
from services.common.artifacts import (
    LocalFolderStore,
    incomplete_bundles,
    list_bundles,
    read_bundle,
)
from services.ranking.bundle import load_bundle
from services.ranking.config import RankingSettings
from services.training.config import TrainingSettings
from services.training.job import run_training
from tests.s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3
from tests.training.world import ServedProfiles

# Nothing listens there: the job then loads the vectors the store holds (no embeddings service).
NO_EMBEDDINGS = "127.0.0.1:9"
FAST = TrainingSettings(factors=8, iterations=3, reason="test", published_by="pytest")


def ranking_settings(profiles: ServedProfiles, **fields: object) -> RankingSettings:
    return RankingSettings(
        profiles_target=profiles.target,
        embeddings_target=NO_EMBEDDINGS,
        embeddings_timeout_seconds=1.0,
        **fields,  # type: ignore[arg-type]
    )


async def test_job_writes_a_verified_bundle_and_publishes_it(
    profiles: ServedProfiles, tmp_path: Path
) -> None:
    settings = ranking_settings(profiles, artifact_dir=tmp_path / "artifacts")
    report = await run_training(settings, FAST)
    assert report.published and await profiles.active() == report.version
    store = LocalFolderStore(tmp_path / "artifacts")
    manifest, model = load_bundle(store, report.version, report.manifest.sha256)
    assert model.version == report.version and model.ranker is not None
    # The user tower is fitted with the ranker and travels with it.
    assert manifest.kinds == ["collaborative", "learned_ranker", "user_tower"]
    world = profiles.world
    assert manifest.data["interactions"] == len(world.interactions())
    assert manifest.data["users"] == len(world.users)
    assert manifest.data["catalogue_items"] == len(world.item_ids)
    assert manifest.data["window_start"] < manifest.data["window_end"]
    assert manifest.metrics["users"] > 0 and 0 <= manifest.metrics["collaborative_ndcg@10"] <= 1
    assert manifest.code_version
    assert report.peak_rss_mb > 0 and report.manifest.size_bytes > 0
    # Not published: written and verifiable, but the active version stays.
    second = await run_training(settings, TrainingSettings(factors=8, iterations=3, publish=False))
    assert not second.published and await profiles.active() == report.version
    assert sorted(list_bundles(store)) == sorted([report.version, second.version])


async def test_job_round_trips_through_s3(
    profiles: ServedProfiles, seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    settings = ranking_settings(
        profiles, artifact_store_url="s3://longtail/job-test", artifact_s3_endpoint=seaweed.endpoint
    )
    report = await run_training(settings, FAST)
    store = seaweed.store("longtail", "job-test")
    manifest, files = read_bundle(store, report.version, report.manifest.sha256)
    assert manifest == report.manifest and "collaborative/item_factors.npy" in files
    assert await profiles.active() == report.version


async def test_job_killed_half_way_publishes_nothing(
    profiles: ServedProfiles, seaweed: SeaweedS3, tmp_path: Path
) -> None:
    """The job is killed while it writes its bundle. To make "while it writes" certain, the S3
    server is frozen (SIGSTOP) before the job starts: its writes hang until the kill."""
    before = await run_training(
        ranking_settings(profiles, artifact_dir=tmp_path / "unused"),
        TrainingSettings(factors=8, iterations=3, publish=False),
    )
    await profiles.stub.PublishModel(
        ppb.PublishModelRequest(model_kind="collaborative", version=before.version)
    )
    env = {
        **os.environ,
        "LONGTAIL_RANKING_PROFILES_TARGET": profiles.target,
        "LONGTAIL_RANKING_EMBEDDINGS_TARGET": NO_EMBEDDINGS,
        "LONGTAIL_RANKING_EMBEDDINGS_TIMEOUT_SECONDS": "1",
        "LONGTAIL_RANKING_ARTIFACT_STORE_URL": "s3://longtail/killed",
        "LONGTAIL_RANKING_ARTIFACT_S3_ENDPOINT": seaweed.endpoint,
        "LONGTAIL_TRAINING_FACTORS": "8",
        "LONGTAIL_TRAINING_ITERATIONS": "3",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    store = seaweed.store("longtail", "killed")
    store.put("created", b"the bucket exists")  # so that it can be listed afterwards
    assert seaweed.process is not None
    os.killpg(seaweed.process.pid, signal.SIGSTOP)
    job = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.training",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    stages: list[str] = []
    try:
        assert job.stderr is not None
        async with asyncio.timeout(180):  # a bound, not a pace: the line comes once fitting ends
            while "writing" not in stages:
                line = await job.stderr.readline()
                assert line, f"the job ended before writing (stages {stages})"
                record = json.loads(line)
                if record.get("msg") == "training stage":
                    stages.append(record["stage"])
        job.kill()
        await job.wait()
    finally:
        if job.returncode is None:
            job.kill()
            await job.wait()
        os.killpg(seaweed.process.pid, signal.SIGCONT)
    assert stages == ["reading", "fitting", "writing"]
    assert job.returncode == -signal.SIGKILL
    assert await profiles.active() == before.version
    assert list_bundles(store) == []
    assert incomplete_bundles(store) == []


async def test_longtail_train_command_runs_the_job(
    profiles: ServedProfiles, tmp_path: Path
) -> None:
    command = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "longtail"),
        "--profiles",
        profiles.target,
        "--embeddings",
        NO_EMBEDDINGS,
        "train",
        "--artifact-dir",
        str(tmp_path / "cli-artifacts"),
        "--factors",
        "8",
        "--iterations",
        "3",
        "--reason",
        "from the CLI",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await command.communicate()
    assert command.returncode == 0, err.decode()
    assert "published" in out.decode()
    version = await profiles.active()
    assert list_bundles(LocalFolderStore(tmp_path / "cli-artifacts")) == [version]
    history = await profiles.stub.ListModelPublications(
        ppb.ListModelPublicationsRequest(model_kind="collaborative")
    )
    assert history.publications[0].reason == "from the CLI"
