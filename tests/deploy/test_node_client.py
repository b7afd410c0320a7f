"""The Node.js client (clients/node), generated from the same protos, against the real suite.

``npm test`` builds the client (types generated from protos/, then tsc) and runs node's test
runner: the wrapper tests against an in-process stand-in always, and the live tests when
LONGTAIL_GATEWAY_TARGET names a running gateway, which the Triton test here provides.
Without node and npm these tests fail when LONGTAIL_REQUIRE_NODE=1 (``make test`` sets it) and are
skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from longtail.embeddings.v1 import embeddings_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2_grpc
from longtail.ranking.v1 import ranking_service_pb2, ranking_service_pb2_grpc
from services.common.channels import open_channel
from services.common.settings import ClientSettings
from services.suite import datasets
from services.suite.local import LocalSuite, SuiteConfig
from tests.conftest import missing, require_triton
from tests.e2e.suite_env import GENEROUS_ENV, START_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "clients" / "node"
TOKEN = "node-client-test-token"


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        missing("node", "node and npm are not installed")
    assert npm is not None
    if not (NODE_CLIENT / "node_modules" / ".package-lock.json").exists():
        # `make setup` runs `npm ci` there; do the same so that the test works on its own.
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True, timeout=600
        )
    return npm


def _npm_test(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    result = subprocess.run(
        [_npm(), "test"],
        cwd=NODE_CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    counts = {
        name: int(value)
        for name, value in re.findall(r"^\S (pass|fail|skipped|tests) (\d+)$", result.stdout, re.M)
    }
    return result, counts


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LONGTAIL_")}


def test_node_client_builds_from_the_protos_and_its_wrapper_tests_pass() -> None:
    result, counts = _npm_test(_base_env())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert counts["fail"] == 0 and counts["pass"] >= 4, result.stdout[-2000:]
    assert (NODE_CLIENT / "src" / "generated" / "gateway_service.ts").exists()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway_user(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, str]]:
    """A running suite (bearer token on) with a tiny catalogue indexed and trained."""
    from services.suite.indexing import index_catalogue

    require_triton()
    config = SuiteConfig(
        workdir=tmp_path_factory.mktemp("suite"),
        auth_token=TOKEN,
        # Generous hop ceilings: the Node test asserts the healthy (non-fallback) answer.
        extra_env=GENEROUS_ENV,
        start_timeout_seconds=START_TIMEOUT,
    )
    suite = LocalSuite(config)
    # Past require_triton(), a suite that does not start is a defect: it raises, never skips.
    try:
        await suite.start()
    except BaseException:
        await suite.stop()
        raise
    channels = {
        name: open_channel(ClientSettings(suite.target(name), auth_token=TOKEN, timeout_seconds=60))
        for name in ("profiles", "embeddings", "ranking")
    }
    try:
        profiles = profiles_service_pb2_grpc.ProfilesServiceStub(channels["profiles"])
        ranking = ranking_service_pb2_grpc.RankingServiceStub(channels["ranking"])
        embeddings = embeddings_service_pb2_grpc.EmbeddingsServiceStub(channels["embeddings"])
        data = datasets.make_demo_catalogue(200, 40, seed=5)
        await datasets.upload(data, profiles, progress=False)
        await index_catalogue(profiles, embeddings, progress=False)
        await ranking.TrainModel(ranking_service_pb2.TrainModelRequest(), timeout=300)
        await ranking.ReloadModels(ranking_service_pb2.ReloadModelsRequest(), timeout=120)
        user = Counter(i.user_id for i in data.interactions).most_common(1)[0][0]
        yield suite.target("gateway"), user
    finally:
        for channel in channels.values():
            await channel.close()
        await suite.stop()


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_node_client_calls_recommend_on_the_running_gateway(
    gateway_user: tuple[str, str],
) -> None:
    target, user = gateway_user
    env = {
        **_base_env(),
        "LONGTAIL_GATEWAY_TARGET": target,
        "LONGTAIL_AUTH_TOKEN": TOKEN,
        "LONGTAIL_TEST_USER": user,
    }
    result, counts = await asyncio.to_thread(_npm_test, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # Every live test ran (none skipped) and passed, besides the wrapper tests.
    assert counts["fail"] == 0 and counts["skipped"] == 0, result.stdout[-3000:]
    assert counts["pass"] == counts["tests"] >= 7, result.stdout[-3000:]
