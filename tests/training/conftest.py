"""Fixtures of the training tests: a real S3-compatible server (SeaweedFS), one per session; an
artefact store on the folder and on it; a real profiles service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.common.artifacts import ArtifactStore, LocalFolderStore
from tests.s3server import SeaweedS3, running_seaweed
from tests.training.world import ServedProfiles, serve_profiles


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalFolderStore(tmp_path / "artifacts")
    seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
    return seaweed.store("longtail", f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def profiles(tmp_path: Path) -> AsyncIterator[ServedProfiles]:
    served = await serve_profiles(tmp_path)
    try:
        yield served
    finally:
        await served.close()
