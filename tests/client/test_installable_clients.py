"""The clients as a backend installs them, and the Node client's own tests, against a real suite.

- The `longtail-client` wheel (clients/python) is built, installed offline into a fresh virtualenv
  that then holds it and its three dependencies only (no module of the server imports there), and
  from that venv's python calls the running suite: Recommend, Feedback, ExplainRecommendation, and
  a bad request whose error carries its google.rpc.ErrorInfo reason.
- The Node client (clients/node) is packed with `npm pack`, installed offline into an empty folder,
  compiled against by TypeScript, and calls Recommend on the running suite from there.
- ``npm test`` builds the Node client from the protos and runs its own tests: the wrapper tests
  against an in-process stand-in always, and its live tests against the suite here.

One suite (Triton and the five services, a tiny catalogue) serves every live test of this module.
The offline caches come from `make setup` (tests/client/packaging.py). Without node and npm the
Node tests fail when LONGTAIL_REQUIRE_NODE=1 (``make test`` sets it) and are skipped otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import zipfile
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
from tests.client.packaging import (
    CLIENT_DISTRIBUTIONS,
    NODE_CLIENT,
    PYTHON_CLIENT,
    ROOT,
    NodePackage,
    build_wheel,
    client_venv,
    install_node_tarball,
    installed_distributions,
    npm,
    pack_node_client,
    run_isolated,
)
from tests.conftest import require_triton
from tests.e2e.suite_env import GENEROUS_ENV, START_TIMEOUT

TOKEN = "node-client-test-token"


def _npm_test(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    result = subprocess.run(
        [npm(), "test"],
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


# The server side and its heavy dependencies: none may be importable next to the client.
SERVER_MODULES = (
    "services",
    "torch",
    "sqlalchemy",
    "numpy",
    "faiss",
    "tritonclient",
    "grpc_status",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    return client_venv(tmp_path_factory.mktemp("client-venv") / "venv", wheel)


def test_the_wheel_holds_the_generated_contracts_and_the_typed_wrapper(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    generated = {
        path.relative_to(PYTHON_CLIENT).as_posix()
        for path in (PYTHON_CLIENT / "longtail").rglob("*")
        if path.suffix in (".py", ".pyi") or path.name == "py.typed"
    }
    assert generated and generated <= names, sorted(generated - names)
    assert {
        "longtail_client/__init__.py",
        "longtail_client/client.py",
        "longtail_client/py.typed",
    } <= names
    assert not [n for n in names if n.startswith(("services/", "tests/", "benchmarks/"))]
    requires = {
        line.removeprefix("Requires-Dist: ").split("<")[0].split(">")[0].split("=")[0]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ")
    }
    assert requires == {"grpcio", "protobuf", "googleapis-common-protos"}


def test_a_fresh_venv_holds_the_client_and_nothing_of_the_server(
    venv_python: Path, tmp_path: Path
) -> None:
    assert installed_distributions(venv_python, tmp_path) == CLIENT_DISTRIBUTIONS
    probe = (
        "import importlib, json, sys\n"
        "found = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        found[name] = True\n"
        "    except ModuleNotFoundError:\n"
        "        found[name] = False\n"
        "print(json.dumps(found))\n"
    )
    result = run_isolated(venv_python, probe, tmp_path, *SERVER_MODULES)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == dict.fromkeys(SERVER_MODULES, False)
    # ...while the client and every generated contract import there.
    use = (
        "from longtail_client import LongtailClient, policy_spec\n"
        "from longtail.gateway.v1 import gateway_service_pb2_grpc\n"
        "from longtail.profiles.v1 import profiles_service_pb2_grpc\n"
        "from longtail.ranking.v1 import ranking_service_pb2_grpc\n"
        "from longtail.embeddings.v1 import embeddings_service_pb2_grpc\n"
        "from longtail.exposure.v1 import exposure_service_pb2_grpc\n"
        "from google.rpc import error_details_pb2, status_pb2\n"
        "print(policy_spec('tail_quota', {'min_tail_share': 0.4}).tail_quota.min_tail_share)\n"
    )
    result = run_isolated(venv_python, use, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.4"]


@pytest.fixture(scope="module")
def node_package(tmp_path_factory: pytest.TempPathFactory) -> NodePackage:
    return pack_node_client(tmp_path_factory.mktemp("npm-pack"))


def test_the_npm_tarball_holds_the_compiled_client_its_types_and_the_protos(
    node_package: NodePackage,
) -> None:
    files = node_package.files
    expected = {
        "package.json",
        "README.md",
        "dist/src/index.js",
        "dist/src/index.d.ts",
        "dist/src/generated/gateway_service.d.ts",
        "dist/src/generated/longtail/gateway/v1/RecommendResponse.d.ts",
        "protos/longtail/gateway/v1/gateway_service.proto",
        "protos/longtail/common/v1/common.proto",
    }
    assert expected <= files, sorted(expected - files)
    # No sources, tests, examples or build configuration.
    assert not [f for f in files if f.endswith(".ts") and not f.endswith(".d.ts")]
    assert not [f for f in files if f.startswith(("dist/test/", "src/", "node_modules/"))]
    assert not [f for f in files if "example" in f or f == "tsconfig.json"]
    # Packing copies the repository's protos in and leaves no copy behind.
    assert not (NODE_CLIENT / "protos").exists()
    manifest = json.loads((NODE_CLIENT / "package.json").read_text())
    assert set(manifest["dependencies"]) == {"@grpc/grpc-js", "@grpc/proto-loader", "protobufjs"}


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.proto")}


# Compiled by TypeScript against the installed package only (the types in its dist/).
TYPESCRIPT_CALLER = """\
import { GatewayClient, LongtailError, type RecommendResponse } from "@longtail/client";

const client = new GatewayClient({ target: "127.0.0.1:1", deadlineMs: 1000 });
const answer: Promise<RecommendResponse> = client.recommend({
  userId: "u1",
  k: 3,
  policy: { tailQuota: { minTailShare: 0.4 } },
});
void answer.then(
  (response) => response.items.map((item) => `${item.position} ${item.itemId} ${item.reason}`),
  (error: unknown) => (error instanceof LongtailError ? error.reason : undefined),
);
client.close();
"""


def test_the_npm_tarball_installs_offline_into_an_empty_folder_with_its_protos_and_types(
    node_package: NodePackage, tmp_path: Path
) -> None:
    app = tmp_path / "backend"
    install_node_tarball(node_package.tarball, app)
    env = {"PATH": str(Path(npm()).parent)}  # no LONGTAIL_PROTOS_DIR: the package's own protos
    loaded = subprocess.run(
        [
            "node",
            "-e",
            "const c = require('@longtail/client');"
            "const proto = c.loadGatewayProto();"
            "console.log(JSON.stringify({ protos: c.resolveProtosDir(),"
            " service: typeof proto.longtail.gateway.v1.GatewayService }));",
        ],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr
    packed_protos = app / "node_modules" / "@longtail" / "client" / "protos"
    assert json.loads(loaded.stdout) == {"protos": str(packed_protos), "service": "function"}
    assert _tree(packed_protos) == _tree(ROOT / "protos")
    (app / "caller.ts").write_text(TYPESCRIPT_CALLER)
    tsc = NODE_CLIENT / "node_modules" / "typescript" / "bin" / "tsc"
    compiled = subprocess.run(
        [
            "node",
            str(tsc),
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            "--target",
            "ES2022",
            "--module",
            "commonjs",
            "--moduleResolution",
            "node",
            "caller.ts",
        ],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


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


# Run by the fresh venv's python: only the wheel and its dependencies are importable there.
PYTHON_BACKEND = """\
import asyncio, json, sys

import grpc
from google.rpc import error_details_pb2, status_pb2
from longtail_client import LongtailClient


def error_info(error):
    metadata = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(metadata["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    (detail,) = [d for d in status.details if d.Is(info.DESCRIPTOR)]
    detail.Unpack(info)
    return {"code": error.code().name, "reason": info.reason, "domain": info.domain}


async def main(target, token, user):
    async with LongtailClient({"gateway": target}, token=token, timeout_seconds=120) as client:
        answer = await client.recommend(user, k=5)
        items = [item.item_id for item in answer.items]
        feedback = await client.feedback(answer.request_id, items[0])
        explained = await client.explain(answer.request_id)
        try:
            await client.recommend(user, k=0)
            error = None
        except grpc.aio.AioRpcError as failed:
            error = error_info(failed)
    print(json.dumps({
        "items": items,
        "fallback": answer.fallback,
        "recorded": feedback.recorded,
        "explained": [e.impression.item_id for e in explained.items],
        "explained_user": explained.user_id,
        "error": error,
    }))


asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_the_python_client_wheel_alone_calls_the_running_suite(
    gateway_user: tuple[str, str], venv_python: Path, tmp_path: Path
) -> None:
    target, user = gateway_user
    result = await asyncio.to_thread(
        run_isolated, venv_python, PYTHON_BACKEND, tmp_path, target, TOKEN, user
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    answer = json.loads(result.stdout)
    assert len(answer["items"]) == len(set(answer["items"])) == 5
    assert answer["fallback"] is False
    assert answer["recorded"] is True
    assert answer["explained"] == answer["items"] and answer["explained_user"] == user
    assert answer["error"] == {
        "code": "INVALID_ARGUMENT",
        "reason": "K_OUT_OF_RANGE",
        "domain": answer["error"]["domain"],
    }
    assert answer["error"]["domain"]


# Run by node from the folder the tarball was installed into.
NODE_BACKEND = """\
const { GatewayClient } = require("@longtail/client");

async function main([target, token, user]) {
  const client = new GatewayClient({ target, token, deadlineMs: 120000 });
  try {
    const answer = await client.recommend({ userId: user, k: 5 });
    const explained = await client.explain(answer.requestId);
    let error = null;
    try {
      await client.recommend({ userId: user, k: 0 });
    } catch (failed) {
      error = { name: failed.name, code: failed.code, reason: failed.reason };
    }
    console.log(JSON.stringify({
      items: answer.items.map((item) => item.itemId),
      fallback: answer.fallback,
      explained: explained.items.map((item) => item.impression.itemId),
      error,
    }));
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).catch((error) => {
  console.error(error);
  process.exit(1);
});
"""


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_the_node_tarball_alone_calls_recommend_on_the_running_suite(
    gateway_user: tuple[str, str], node_package: NodePackage, tmp_path: Path
) -> None:
    target, user = gateway_user
    app = tmp_path / "backend"
    await asyncio.to_thread(install_node_tarball, node_package.tarball, app)
    (app / "backend.js").write_text(NODE_BACKEND)
    result = await asyncio.to_thread(
        subprocess.run,
        ["node", "backend.js", target, TOKEN, user],
        cwd=app,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    answer = json.loads(result.stdout)
    assert len(answer["items"]) == len(set(answer["items"])) == 5
    assert answer["fallback"] is False
    assert answer["explained"] == answer["items"]
    # grpc.status.INVALID_ARGUMENT is 3.
    assert answer["error"] == {"name": "LongtailError", "code": 3, "reason": "K_OUT_OF_RANGE"}
