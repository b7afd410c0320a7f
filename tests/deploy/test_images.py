"""The service images, checked without a container engine.

One Dockerfile, deploy/images/Dockerfile, builds every service's image with
``--build-arg SERVICE=<name>``; tests/deploy/dockerfile.py reads it as docker would for that
build arg. Checked per service:

- the requirement lists pin what pyproject pins, and cover every import of the files the image
  copies (an import scan of services/common + services/<name>);
- the image is multi-stage, runs as a non-root user, starts ``python -m services.<name>``, copies
  services/common and services/<name> only, and carries its own row of the per-service table
  (ports, environment defaults, volume, system packages) and no other service's;
- each entry point, started from a copy of exactly what the image puts in /app, with the
  image's environment and only its requirements importable, reports SERVING (the embeddings
  service against a stand-in Triton that answers the readiness calls from the real model config);
  the dashboard, an HTTP server, answers 200 on /healthz once it reaches the profiles started here.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import text_format
from grpc_health.v1 import health_pb2
from packaging.requirements import Requirement

from services.common.channels import check_health
from services.common.server import ServiceDefinition, start_service
from services.common.settings import ServerSettings
from tests.conftest import missing
from tests.deploy.dockerfile import Dockerfile

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "deploy" / "images"
DOCKERFILE = IMAGES / "Dockerfile"
SERVICES = ("profiles", "embeddings", "exposure", "ranking", "gateway", "dashboard")  # start order
# HTTP servers: no gRPC health, no /metrics port (so no METRICS_PORT / HEALTHCHECK_PORT defaults).
HTTP_SERVICES = {"dashboard"}
PORTS = {
    "gateway": 50050,
    "profiles": 50051,
    "embeddings": 50052,
    "ranking": 50053,
    "exposure": 50054,
    "dashboard": 50080,
}
# What each service's row of the Dockerfile's table adds beyond host, port and metrics port.
EXTRA_ENV = {
    "gateway": {},
    "profiles": {"LONGTAIL_PROFILES_DATABASE_URL": "sqlite:////var/lib/longtail/longtail.db"},
    "embeddings": {"LONGTAIL_EMBEDDINGS_TRITON_URL": "triton:8001"},
    "ranking": {"LONGTAIL_RANKING_ARTIFACT_DIR": "/var/lib/longtail/artifacts"},
    "exposure": {},
    "dashboard": {},
}
STATEFUL = {"profiles", "ranking"}  # the volume /var/lib/longtail
SYSTEM_PACKAGES = {"ranking": {"libgomp1"}}  # OpenMP for faiss / implicit
# Packages an image carries beside its service's: the training job runs from ranking's image.
EXTRA_PACKAGES = {"ranking": {"services/training"}}
DEPENDENCIES = {
    "profiles": (),
    "embeddings": (),
    "exposure": ("profiles",),
    "ranking": ("profiles", "embeddings"),
    "gateway": ("profiles", "ranking", "exposure"),
    "dashboard": ("profiles", "exposure", "ranking", "embeddings"),
}
ENTRY = Path(__file__).with_name("image_entry.py")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path: Path) -> list[str]:
    lines: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            lines += requirement_lines(path.parent / line[3:].strip())
        elif line:
            lines.append(line)
    return lines


def closure(requirements: list[str]) -> set[str]:
    """Canonical names of the requirements and everything they pull in (markers evaluated)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    queue = [Requirement(line) for line in requirements]
    while queue:
        requirement = queue.pop()
        key = (canonical(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        for spec in importlib.metadata.requires(requirement.name) or []:
            dependency = Requirement(spec)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in extras
            ):
                queue.append(dependency)
    return names


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, str] = {}
    for line in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(line)
        pins[canonical(requirement.name)] = str(requirement.specifier)
    return pins


@pytest.mark.parametrize("path", sorted(IMAGES.glob("requirements-*.txt")), ids=lambda p: p.name)
def test_every_pin_is_pyprojects_pin(path: Path) -> None:
    pins = pyproject_pins()
    for line in requirement_lines(path):
        requirement = Requirement(line)
        name = canonical(requirement.name)
        assert str(requirement.specifier).startswith("=="), f"{path.name}: {line} is not pinned"
        assert name in pins, f"{path.name}: {name} is not a dependency in pyproject.toml"
        assert str(requirement.specifier) == pins[name], f"{path.name}: {line} vs {pins[name]}"


def _imports(folder: Path) -> dict[str, set[str]]:
    """Top-level modules imported anywhere under ``folder`` -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.partition(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_requirements_cover_every_import_of_the_copied_code(service: str) -> None:
    allowed = closure(requirement_lines(IMAGES / f"requirements-{service}.txt"))
    owners = importlib.metadata.packages_distributions()
    imports = _imports(ROOT / "services" / "common")
    for name, files in _imports(ROOT / "services" / service).items():
        imports.setdefault(name, set()).update(files)
    local = {"services", "longtail", "__future__"}
    missing = {
        name: sorted(files)
        for name, files in imports.items()
        if name not in sys.stdlib_module_names
        and name not in local
        and not {canonical(owner) for owner in owners.get(name, [name])} & allowed
    }
    assert not missing, f"imports outside requirements-{service}.txt: {missing}"


def test_the_embeddings_image_carries_no_model_runtime() -> None:
    allowed = closure(requirement_lines(IMAGES / "requirements-embeddings.txt"))
    assert "tritonclient" in allowed
    assert not allowed & {"torch", "transformers", "onnxruntime", "nvidia-pytriton", "faiss-cpu"}


def image(service: str) -> Dockerfile:
    """deploy/images/Dockerfile as ``docker build --build-arg SERVICE=<service>`` reads it."""
    return Dockerfile(DOCKERFILE, {"SERVICE": service})


def test_one_dockerfile_has_a_row_for_every_service_and_no_more() -> None:
    # Triton's is NVIDIA's container, the one image built otherwise.
    assert {path.parent.name for path in IMAGES.glob("*/Dockerfile")} == {"triton"}
    rows = set(Dockerfile(DOCKERFILE).stage_names) - {"builder", "base", "image"}
    assert rows == set(SERVICES)
    requirement_files = {
        p.stem.removeprefix("requirements-") for p in IMAGES.glob("requirements-*")
    }
    assert requirement_files - {"common", "protoc", "triton"} == set(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_is_multi_stage_non_root_and_starts_the_service(service: str) -> None:
    dockerfile = image(service)
    chain = [stage.name for stage in dockerfile.image()]
    assert chain == ["base", service, "image"], chain
    builder = " ".join(rest for _, rest in dockerfile.app_stage().instructions)
    assert "grpc_tools.protoc" in builder and f"requirements-{service}.txt" in builder
    assert "${SERVICE}" not in builder  # the builder stage declares the ARG it uses
    assert dockerfile.entrypoint() == ["python", "-m", f"services.{service}"]
    assert dockerfile.user().split(":")[0] not in ("0", "root")
    prefix = f"LONGTAIL_{service.upper()}_"
    longtail = {k: v for k, v in dockerfile.env().items() if k.startswith("LONGTAIL_")}
    grpc_only = {
        f"{prefix}METRICS_PORT": "9464",
        "LONGTAIL_HEALTHCHECK_PORT": str(PORTS[service]),
    }
    assert longtail == {
        f"{prefix}HOST": "0.0.0.0",
        f"{prefix}PORT": str(PORTS[service]),
        **({} if service in HTTP_SERVICES else grpc_only),
        **EXTRA_ENV[service],
    }
    metrics_ports = set() if service in HTTP_SERVICES else {9464}
    assert dockerfile.exposed() == {PORTS[service], *metrics_ports}
    assert dockerfile.volumes() == ({"/var/lib/longtail"} if service in STATEFUL else set())
    runs = " ".join(dockerfile.runtime("RUN"))
    for package in SYSTEM_PACKAGES.get(service, set()):
        assert package in runs
    assert ("apt-get" in runs) == (service in SYSTEM_PACKAGES)
    sources = {source for source, _ in dockerfile.copies_into_app()}
    copied_services = {s for s in sources if s.startswith("services/")}
    assert copied_services == {
        "services/__init__.py",
        "services/common",
        f"services/{service}",
        *EXTRA_PACKAGES.get(service, set()),
    }
    for source in sources:
        assert (ROOT / source).exists(), source


# ----------------------------------------------------------------------------- entry points


class FakeTriton:
    """Answers the readiness calls of the embeddings service from deploy/triton's real config."""

    def __init__(self) -> None:
        from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

        self.pb = service_pb2
        config = model_config_pb2.ModelConfig()
        text_format.Parse((ROOT / "deploy/triton/text_encoder/config.pbtxt").read_text(), config)
        self.config = config
        self.server = grpc.aio.server()
        fake = self

        class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
            async def ServerLive(self, request: Any, context: Any) -> Any:
                return fake.pb.ServerLiveResponse(live=True)

            async def ServerReady(self, request: Any, context: Any) -> Any:
                return fake.pb.ServerReadyResponse(ready=True)

            async def ModelReady(self, request: Any, context: Any) -> Any:
                return fake.pb.ModelReadyResponse(ready=request.name == fake.config.name)

            async def ModelMetadata(self, request: Any, context: Any) -> Any:
                return fake.pb.ModelMetadataResponse(
                    name=fake.config.name, versions=["1"], platform="python"
                )

            async def ModelConfig(self, request: Any, context: Any) -> Any:
                return fake.pb.ModelConfigResponse(config=fake.config)

        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")


def _build_app(service: str, target: Path) -> Path:
    """What the Dockerfile puts in /app: its COPY lines, and the contracts compiled from protos/."""
    app = target / "app"
    for source, destination in image(service).copies_into_app():
        src, dst = ROOT / source, app / destination
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "protos"),
         f"--python_out={app}", f"--grpc_python_out={app}", *protos],
        check=True,
        cwd=ROOT / "protos",
    )  # fmt: skip
    for folder in [app / "longtail", *(app / "longtail").rglob("*")]:
        if folder.is_dir():
            (folder / "__init__.py").touch()
    return app


class Started:
    def __init__(self, tmp: Path, triton_url: str) -> None:
        self.tmp = tmp
        self.triton_url = triton_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def environment(self, service: str) -> dict[str, str]:
        dockerfile = image(service)
        prefix = f"LONGTAIL_{service.upper()}_"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LONGTAIL_")}
        image_env = dockerfile.env()
        image_env.pop("PATH")  # the image's venv is this interpreter here
        env.update(image_env)
        # Only what a compose file or a manifest would set: addresses and writable places.
        env[f"{prefix}HOST"] = "127.0.0.1"
        env[f"{prefix}PORT"] = "0"
        if service not in HTTP_SERVICES:
            env[f"{prefix}METRICS_PORT"] = "0"
        for dependency in DEPENDENCIES[service]:
            env[f"{prefix}{dependency.upper()}_TARGET"] = f"127.0.0.1:{self.ports[dependency]}"
        if service == "profiles":
            env[f"{prefix}DATABASE_URL"] = f"sqlite:///{self.tmp / 'longtail.db'}"
        if service == "embeddings":
            env[f"{prefix}TRITON_URL"] = self.triton_url
        if service == "ranking":
            env[f"{prefix}ARTIFACT_DIR"] = str(self.tmp / "artifacts")
        return env

    def start(self, service: str) -> int:
        app = _build_app(service, self.tmp / service)
        allowed = closure(requirement_lines(IMAGES / f"requirements-{service}.txt"))
        log = (self.tmp / f"{service}.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                str(ENTRY),
                str(app),
                ",".join(sorted(allowed)),
                f"services.{service}",
            ],
            env=self.environment(service),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        self.processes[service] = process
        assert process.stdout is not None
        line = process.stdout.readline().decode()  # LISTENING host:port, or EOF on a crash
        if not line.startswith("LISTENING "):
            process.wait(timeout=10)
            raise AssertionError(f"{service} did not start:\n{self.log(service)}")
        self.ports[service] = int(line.rsplit(":", 1)[1])
        return self.ports[service]

    def log(self, service: str) -> str:
        return (self.tmp / f"{service}.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
async def fake_triton() -> AsyncIterator[FakeTriton]:
    triton = FakeTriton()
    await triton.server.start()
    try:
        yield triton
    finally:
        await triton.server.stop(0)


@contextlib.contextmanager
def started(tmp: Path, triton_url: str) -> Iterator[Started]:
    suite = Started(tmp, triton_url)
    try:
        yield suite
    finally:
        suite.stop()


@pytest.mark.slow
async def test_each_image_entry_point_serves_with_the_image_environment(
    tmp_path: Path, fake_triton: FakeTriton
) -> None:
    with started(tmp_path, f"127.0.0.1:{fake_triton.port}") as suite:
        for service in SERVICES:
            port = await asyncio.to_thread(suite.start, service)
            deadline = time.monotonic() + 300  # generous: a busy machine starts slowly
            if service in HTTP_SERVICES:
                await _wait_until_healthz_ok(service, port, suite, deadline)
                continue
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                while await check_health(channel) != health_pb2.HealthCheckResponse.SERVING:
                    assert time.monotonic() < deadline, (
                        f"{service} not SERVING:\n{suite.log(service)}"
                    )
                    assert suite.processes[service].poll() is None, suite.log(service)
                    await asyncio.sleep(0.2)


async def _wait_until_healthz_ok(service: str, port: int, suite: Started, deadline: float) -> None:
    """An HTTP service is ready when /healthz answers 200 (503 while profiles is not SERVING)."""
    url = f"http://127.0.0.1:{port}/healthz"
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url) as response:
                if response.status == 200:
                    return
                assert response.status == 503, (response.status, suite.log(service))
            assert time.monotonic() < deadline, f"{service} /healthz not 200:\n{suite.log(service)}"
            assert suite.processes[service].poll() is None, suite.log(service)
            await asyncio.sleep(0.2)


def test_the_guard_refuses_what_the_image_does_not_install(tmp_path: Path) -> None:
    """The entry-point check can fail: gateway's image has no faiss, so importing it must fail."""
    app = _build_app("gateway", tmp_path)
    (app / "probe.py").write_text("import faiss\n")
    allowed = closure(requirement_lines(IMAGES / "requirements-gateway.txt"))
    result = subprocess.run(
        [sys.executable, str(ENTRY), str(app), ",".join(sorted(allowed)), "probe"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "not in this image's requirements" in result.stderr
    # ...and services.ranking is not in the gateway image at all.
    (app / "probe.py").write_text("import services.ranking\n")
    result = subprocess.run(
        [sys.executable, str(ENTRY), str(app), ",".join(sorted(allowed)), "probe"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "services.ranking" in result.stderr


def _self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        missing("openssl", "openssl is not installed (make setup installs it)")
    key, cert = folder / "tls.key", folder / "tls.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_healthcheck_script_reports_the_servers_health(tmp_path: Path) -> None:
    """compose's healthcheck: /app/healthcheck.py exits 0 on SERVING, 1 otherwise; plaintext,
    so against a TLS server it can only ask the health-only port."""
    cert, key = _self_signed(tmp_path)

    def check(port: int | None, *, from_env: bool = False) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LONGTAIL_")}
        argv = [sys.executable, str(IMAGES / "healthcheck.py")]
        if from_env:  # as the image runs it: the port from LONGTAIL_HEALTHCHECK_PORT
            env["LONGTAIL_HEALTHCHECK_PORT"] = str(port)
        else:
            argv.append(str(port))
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    plain = await start_service(ServiceDefinition("t", []), ServerSettings(port=0))
    secure = await start_service(
        ServiceDefinition("t", []),
        ServerSettings(port=0, health_port=0, tls_cert_file=cert, tls_key_file=key),
    )
    try:
        # In a thread: the servers answer from this event loop.
        answer = await asyncio.to_thread(check, plain.port, from_env=True)
        assert answer.returncode == 0 and answer.stdout.strip() == "SERVING", answer.stderr
        answer = await asyncio.to_thread(check, secure.health_port)
        assert answer.returncode == 0 and answer.stdout.strip() == "SERVING", answer.stderr
        answer = await asyncio.to_thread(check, secure.port)  # plaintext against TLS
        assert answer.returncode == 1 and "UNAVAILABLE" in answer.stderr
        await plain.health.enter_graceful_shutdown()  # what stop() does first
        answer = await asyncio.to_thread(check, plain.port)
        assert answer.returncode == 1 and answer.stdout.strip() == "NOT_SERVING"
    finally:
        await plain.stop(0)
        await secure.stop(0)
