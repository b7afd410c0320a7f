"""Runs the whole suite locally as separate processes: Triton and the five services.

Each service is started exactly as it deploys on its own (``python -m services.<name>`` with its
``LONGTAIL_<NAME>_*`` environment), on fixed ports or on free ones (port 0, read back from the
``LISTENING host:port`` line it prints). Used by ``longtail up``/``longtail demo``, the end-to-end
tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2

if TYPE_CHECKING:
    from services.embeddings.tritonserver import TritonServer

from services.common.channels import check_health

# Start order follows the dependencies: each service's targets exist before it starts.
SERVICES = ("profiles", "embeddings", "exposure", "ranking", "gateway")
DEPENDENCIES: Mapping[str, tuple[str, ...]] = {
    "profiles": (),
    "embeddings": (),
    "exposure": ("profiles",),
    "ranking": ("profiles", "embeddings"),
    "gateway": ("profiles", "ranking", "exposure"),
}
FIXED_PORTS = {
    "gateway": 50050,
    "profiles": 50051,
    "embeddings": 50052,
    "ranking": 50053,
    "exposure": 50054,
}


@dataclass
class SuiteConfig:
    workdir: Path = Path(".longtail")
    # Default: SQLite in the workdir.
    database_url: str | None = None
    # Port per service; 0 (or missing) = a free port.
    ports: Mapping[str, int] = field(default_factory=dict)
    host: str = "127.0.0.1"
    auth_token: str | None = None
    # TLS everywhere: each service serves this certificate and trusts this CA for its calls.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    # Extra environment per service name, e.g. {"ranking": {"LONGTAIL_RANKING_KAPPA": "5"}}.
    extra_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Use this Triton instead of starting one (host:grpc_port).
    triton_url: str | None = None
    start_timeout_seconds: float = 120.0

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{(self.workdir / 'longtail.db').resolve()}"


@dataclass
class _Process:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path


class LocalSuite:
    """Start with ``async with LocalSuite(config) as suite``; ``suite.target(name)`` addresses."""

    def __init__(self, config: SuiteConfig) -> None:
        self.config = config
        self._processes: dict[str, _Process] = {}
        self._ports: dict[str, int] = {}
        self._triton: TritonServer | None = None
        self.triton_url: str = config.triton_url or ""

    @property
    def database_url(self) -> str:
        return self.config.database_url or self.config.sqlite_url

    def target(self, name: str) -> str:
        return f"{self.config.host}:{self._ports[name]}"

    @property
    def targets(self) -> dict[str, str]:
        return {name: self.target(name) for name in self._ports}

    def log_path(self, name: str) -> Path:
        return self.config.workdir / "logs" / f"{name}.log"

    async def __aenter__(self) -> LocalSuite:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        (self.config.workdir / "logs").mkdir(parents=True, exist_ok=True)
        if not self.triton_url:
            await self.start_triton()
        for name in SERVICES:
            await self.start_service(name)
        await self.wait_healthy(SERVICES)

    async def start_triton(self) -> None:
        """Start Triton (again, on the same ports, after ``stop_triton``)."""
        from services.embeddings.tritonserver import TritonServer, free_ports

        if self._triton is None:
            http_port, grpc_port, metrics_port = free_ports(3, self.config.host)
            self._triton = TritonServer(
                host=self.config.host,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                log_path=self.log_path("triton"),
            )
        await asyncio.to_thread(self._triton.start)
        self.triton_url = self._triton.grpc_url

    async def stop_triton(self) -> None:
        if self._triton is not None:
            await asyncio.to_thread(self._triton.stop)

    def _environment(self, name: str) -> dict[str, str]:
        prefix = f"LONGTAIL_{name.upper()}_"
        env = {key: value for key, value in os.environ.items() if not key.startswith(prefix)}
        env[f"{prefix}HOST"] = self.config.host
        env[f"{prefix}PORT"] = str(self._ports.get(name, self.config.ports.get(name, 0)))
        for dependency in DEPENDENCIES[name]:
            env[f"{prefix}{dependency.upper()}_TARGET"] = self.target(dependency)
        if name == "profiles":
            env[f"{prefix}DATABASE_URL"] = self.database_url
        if name == "embeddings":
            env[f"{prefix}TRITON_URL"] = self.triton_url
        if name == "ranking":
            env[f"{prefix}ARTIFACT_DIR"] = str((self.config.workdir / "artifacts").resolve())
        if self.config.tls_cert_file and self.config.tls_key_file:
            env[f"{prefix}TLS_CERT_FILE"] = str(self.config.tls_cert_file)
            env[f"{prefix}TLS_KEY_FILE"] = str(self.config.tls_key_file)
        if self.config.tls_ca_file and DEPENDENCIES[name]:
            env[f"{prefix}CLIENT_TLS_CA_FILE"] = str(self.config.tls_ca_file)
        if self.config.auth_token:
            env[f"{prefix}AUTH_TOKEN"] = self.config.auth_token
            if DEPENDENCIES[name]:
                env[f"{prefix}CLIENT_AUTH_TOKEN"] = self.config.auth_token
        env.update(self.config.extra_env.get(name, {}))
        return env

    async def start_service(self, name: str) -> None:
        """Start (or restart, on its earlier port) one service and wait for it to listen."""
        log_path = self.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
        offset = log_path.stat().st_size
        # Spawning is quick; the wait for readiness below is what must not block the loop.
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", f"services.{name}"],
            env=self._environment(name),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        port = await self._await_listening(name, process, log_path, offset)
        self._ports[name] = port
        self._processes[name] = _Process(name, process, port, log_path)

    async def _await_listening(
        self, name: str, process: subprocess.Popen[bytes], log_path: Path, offset: int
    ) -> int:
        deadline = time.monotonic() + self.config.start_timeout_seconds
        while time.monotonic() < deadline:
            with log_path.open("rb") as handle:
                handle.seek(offset)
                for line in handle.read().decode(errors="replace").splitlines():
                    if line.startswith("LISTENING "):
                        return int(line.rsplit(":", 1)[1])
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}:\n{_tail(log_path, offset)}"
                )
            await asyncio.sleep(0.05)
        process.kill()
        raise TimeoutError(f"{name} did not listen in time:\n{_tail(log_path, offset)}")

    async def wait_healthy(
        self, names: tuple[str, ...] | list[str], timeout: float | None = None
    ) -> None:
        """Wait until every named service reports SERVING (its readiness probe passed)."""
        deadline = time.monotonic() + (timeout or self.config.start_timeout_seconds)
        for name in names:
            while True:
                if await self.is_serving(name):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} is not SERVING:\n{_tail(self.log_path(name), 0)}")
                await asyncio.sleep(0.1)

    async def is_serving(self, name: str) -> bool:
        if self.config.tls_ca_file is not None:
            credentials = grpc.ssl_channel_credentials(self.config.tls_ca_file.read_bytes())
            channel = grpc.aio.secure_channel(self.target(name), credentials)
        else:
            channel = grpc.aio.insecure_channel(self.target(name))
        async with channel:
            status = await check_health(channel)
        return status == health_pb2.HealthCheckResponse.SERVING

    async def stop_service(self, name: str, kill: bool = False, grace: float = 10.0) -> None:
        """SIGTERM (graceful drain) or SIGKILL one service and wait for it to exit."""
        entry = self._processes.pop(name, None)
        if entry is None or entry.process.poll() is not None:
            return
        entry.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            await asyncio.to_thread(entry.process.wait, grace)
        except subprocess.TimeoutExpired:
            entry.process.kill()
            await asyncio.to_thread(entry.process.wait)

    async def stop(self) -> None:
        for name in reversed(SERVICES):
            with contextlib.suppress(Exception):
                await self.stop_service(name)
        await self.stop_triton()


def _tail(path: Path, offset: int, lines: int = 40) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
