"""Fixtures of the training tests: a real S3-compatible server (SeaweedFS), one per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3server import SeaweedS3, running_seaweed


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server
