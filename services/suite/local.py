"""Runs the whole suite locally as separate processes: Triton, the five services, the dashboard.

Each service is started exactly as it deploys on its own (``python -m services.<name>`` with its
``LONGTAIL_<NAME>_*`` environment), on fixed ports or on free ones (port 0, read back from the
``LISTENING host:port`` line it prints). Used by ``longtail up``/``longtail demo``, the end-to-end
tests and the benchmarks.

Every child runs in its own process group and is watched by an asyncio task that reaps it the
moment it exits (no zombie) and kills what is left of its group (Triton's Python-backend stubs,
their shared memory). With ``SuiteConfig.supervise`` the watcher also restarts a child that exited
without being asked to, on the same port, with exponential backoff (0.5 s doubling to 30 s, back
to 0.5 s once a child has run a minute), and logs each exit and restart (logger
``longtail.suite``). ``stop_service``/``stop_triton``/``stop`` are the intended stops: they end
the watcher first, so nothing comes back. Triton keeps the ports chosen at its first start for the
suite's lifetime, so embeddings reconnects to a restarted Triton by itself. ``stop`` returns once
no process of any child's group is left. A fixed port that is already taken fails the start with a
``PortInUseError`` naming the service, the port and, where ``/proc`` tells, the holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2

if TYPE_CHECKING:
    from services.embeddings.tritonserver import TritonServer

from services.common.channels import check_health
from services.embeddings.tritonserver import process_group_members, wait_group_gone

log = logging.getLogger("longtail.suite")

# Start order follows the dependencies: each service's targets exist before it starts.
SERVICES = ("profiles", "embeddings", "exposure", "ranking", "gateway", "dashboard")
DEPENDENCIES: Mapping[str, tuple[str, ...]] = {
    "profiles": (),
    "embeddings": (),
    "exposure": ("profiles",),
    "ranking": ("profiles", "embeddings"),
    "gateway": ("profiles", "ranking", "exposure"),
    "dashboard": ("profiles",),
}
# The web page (HTTP, not gRPC): it needs profiles; it shows the running configuration of these
# when the suite runs them.
DASHBOARD = "dashboard"
DASHBOARD_SHOWS = ("exposure", "ranking", "embeddings")
FIXED_PORTS = {
    "gateway": 50050,
    "profiles": 50051,
    "embeddings": 50052,
    "ranking": 50053,
    "exposure": 50054,
    "dashboard": 50080,
}
# The name the watcher, ``pid`` and ``restarts`` use for the Triton server the suite started.
TRITON = "triton"
# What a gRPC service writes when its port is taken.
_BIND_FAILURES = ("failed to bind to address", "address already in use")


class PortInUseError(RuntimeError):
    """A fixed port of the suite is already taken by another process."""

    def __init__(self, service: str, host: str, port: int) -> None:
        self.service = service
        self.port = port
        holder = port_holder(port)
        held = f" by {holder}" if holder else ""
        hint = "" if holder else f" (`ss -ltnp 'sport = :{port}'` shows the holder)"
        super().__init__(
            f"cannot start {service}: port {port} on {host} is already in use{held}{hint}. "
            "Stop that process (another `longtail up`?), or run with --free-ports so that "
            "every service takes a free port."
        )


def parse_service_env(pairs: Sequence[str]) -> dict[str, dict[str, str]]:
    """``SERVICE:NAME=VALUE`` pairs (the ``--env`` option of eval and the benchmarks) as
    ``SuiteConfig.extra_env``; SystemExit names a malformed pair."""
    env: dict[str, dict[str, str]] = {}
    for pair in pairs:
        service, colon, assignment = pair.partition(":")
        name, equals, value = assignment.partition("=")
        if not colon or not equals or not service or not name:
            raise SystemExit(f"--env takes SERVICE:NAME=VALUE, got {pair!r}")
        env.setdefault(service, {})[name] = value
    return env


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
    # The services to start, a subset closed under DEPENDENCIES (Triton only with embeddings).
    services: tuple[str, ...] = SERVICES
    # Restart a child that exits unasked (``longtail up``/``demo``, the fault benchmarks). Off
    # by default: tests that stop services or Triton deliberately keep control either way.
    supervise: bool = False
    restart_backoff_seconds: float = 0.5
    restart_backoff_max_seconds: float = 30.0
    # A child that ran this long before it exited restarts after the first backoff again.
    restart_reset_seconds: float = 60.0

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{(self.workdir / 'longtail.db').resolve()}"


@dataclass
class _Process:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path


@dataclass(frozen=True)
class ChildExit:
    """A child that exited unasked: when (monotonic), how, after how long."""

    name: str
    pid: int
    returncode: int | None
    uptime_seconds: float
    at: float


class LocalSuite:
    """Start with ``async with LocalSuite(config) as suite``; ``suite.target(name)`` addresses."""

    def __init__(self, config: SuiteConfig) -> None:
        unknown = set(config.services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; known: {', '.join(SERVICES)}")
        for name in config.services:
            missing = set(DEPENDENCIES[name]) - set(config.services)
            if missing:
                raise ValueError(f"{name} needs {', '.join(sorted(missing))} in services")
        self.config = config
        self._processes: dict[str, _Process] = {}
        self._ports: dict[str, int] = {}
        self._triton: TritonServer | None = None
        self._triton_abort = threading.Event()
        self.triton_url: str = config.triton_url or ""
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._changed: asyncio.Condition | None = None
        # Successful restarts per child, and every unasked exit, in order.
        self.restarts: Counter[str] = Counter()
        self.exits: list[ChildExit] = []

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(name for name in SERVICES if name in self.config.services)

    @property
    def database_url(self) -> str:
        return self.config.database_url or self.config.sqlite_url

    def target(self, name: str) -> str:
        return f"{self.config.host}:{self._ports[name]}"

    @property
    def targets(self) -> dict[str, str]:
        """The gRPC services' addresses (the dashboard is a web page: ``dashboard_url``)."""
        return {name: self.target(name) for name in self._ports if name != DASHBOARD}

    @property
    def dashboard_url(self) -> str | None:
        """Where the dashboard is open in a browser (None when the suite does not run it)."""
        if DASHBOARD not in self._ports:
            return None
        scheme = "https" if self.config.tls_cert_file and self.config.tls_key_file else "http"
        return f"{scheme}://{self.target(DASHBOARD)}/"

    def log_path(self, name: str) -> Path:
        return self.config.workdir / "logs" / f"{name}.log"

    @property
    def triton_server(self) -> TritonServer | None:
        """The Triton server this suite started (None with ``triton_url`` or no embeddings)."""
        return self._triton

    def pid(self, name: str) -> int | None:
        """The running process of a service (or of ``TRITON``); its process group's id too."""
        if name == TRITON:
            return self._triton.pid if self._triton is not None else None
        entry = self._processes.get(name)
        return entry.process.pid if entry is not None else None

    @property
    def pids(self) -> dict[str, int]:
        """Every child's current pid, Triton included when the suite started it."""
        names = [*self._processes, *([TRITON] if self._triton is not None else [])]
        return {name: pid for name in names if (pid := self.pid(name)) is not None}

    def group_members(self) -> dict[str, list[int]]:
        """Every live process in each child's process group (Triton: the server and its stubs)."""
        return {name: process_group_members(pid) for name, pid in self.pids.items()}

    def supervised(self, name: str) -> bool:
        """Whether a watcher stands ready to restart ``name`` when it exits unasked."""
        task = self._watchers.get(name)
        return self.config.supervise and task is not None and not task.done()

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
        # Before Triton's minute of start-up: a taken fixed port fails now, and clearly.
        for name in self.services:
            port = self.config.ports.get(name, 0)
            if port and not port_is_free(self.config.host, port):
                raise PortInUseError(name, self.config.host, port)
        if not self.triton_url and "embeddings" in self.services:
            await self.start_triton()
        for name in self.services:
            await self.start_service(name)
        await self.wait_healthy(self.services)

    @property
    def artifact_dir(self) -> Path:
        """The artefact store (a local folder) of the suite's model bundles."""
        return (self.config.workdir / "artifacts").resolve()

    @property
    def triton_repository(self) -> Path:
        """The model repository of the Triton the suite starts (kept across its restarts)."""
        return (self.config.workdir / "triton-models").resolve()

    # -- Triton --------------------------------------------------------------------------------

    async def start_triton(self) -> None:
        """Start Triton (again, on the same ports, after ``stop_triton``)."""
        from services.embeddings.tritonserver import TritonServer, free_ports

        await self._unwatch(TRITON)
        if self._triton is None:
            # Chosen once for the suite's lifetime: embeddings is configured with this address.
            http_port, grpc_port, metrics_port = free_ports(3, self.config.host)
            self._triton = TritonServer(
                host=self.config.host,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                log_path=self.log_path(TRITON),
                # Kept across restarts: the encoder versions embeddings installed stay served.
                repository_dir=self.triton_repository,
            )
        self._triton_abort = threading.Event()
        await self._start_triton_process()
        self.triton_url = self._triton.grpc_url
        self._watch(TRITON)

    async def _start_triton_process(self) -> None:
        """``TritonServer.start`` in a thread; cancelling aborts it and waits until it ended."""
        assert self._triton is not None
        starting = asyncio.ensure_future(asyncio.to_thread(self._triton.start, self._triton_abort))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            self._triton_abort.set()
            with contextlib.suppress(Exception):
                await starting
            raise

    async def stop_triton(self) -> None:
        """Stop Triton on purpose (not restarted); ``start_triton`` brings it back."""
        self._triton_abort.set()
        await self._unwatch(TRITON)
        if self._triton is not None:
            await asyncio.to_thread(self._triton.stop)

    # -- services ------------------------------------------------------------------------------

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
            if self._triton is not None:
                env[f"{prefix}TRITON_REPOSITORY"] = str(self.triton_repository)
            if "profiles" in self.services:  # follows the published encoder (optional)
                env[f"{prefix}PROFILES_TARGET"] = self.target("profiles")
        if name in ("ranking", "embeddings"):
            env[f"{prefix}ARTIFACT_DIR"] = str(self.artifact_dir)
        if name == DASHBOARD:
            for shown in DASHBOARD_SHOWS:
                env[f"{prefix}{shown.upper()}_TARGET"] = (
                    self.target(shown) if shown in self._ports else ""
                )
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
        await self._unwatch(name)
        entry = self._processes.get(name)
        if entry is None or entry.process.poll() is not None:
            await self._spawn_service(name)
        self._watch(name)

    async def _spawn_service(self, name: str) -> None:
        log_path = self.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        offset = log_path.stat().st_size
        port = self._ports.get(name, self.config.ports.get(name, 0))
        # Spawning is quick; the wait for readiness below is what must not block the loop.
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", f"services.{name}"],
            env=self._environment(name),
            stdout=log_file,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: whatever it forks goes with it
        )
        log_file.close()
        self._processes[name] = _Process(name, process, port, log_path)
        try:
            port = await self._await_listening(name, process, log_path, offset, port)
        except BaseException:
            self._processes.pop(name, None)
            await _kill_group(process)
            raise
        self._ports[name] = port
        self._processes[name].port = port

    async def _await_listening(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        log_path: Path,
        offset: int,
        port: int,
    ) -> int:
        deadline = time.monotonic() + self.config.start_timeout_seconds
        while time.monotonic() < deadline:
            with log_path.open("rb") as handle:
                handle.seek(offset)
                for line in handle.read().decode(errors="replace").splitlines():
                    if line.startswith("LISTENING "):
                        return int(line.rsplit(":", 1)[1])
            if process.poll() is not None:
                tail = _tail(log_path, offset)
                if port and any(marker in tail.lower() for marker in _BIND_FAILURES):
                    raise PortInUseError(name, self.config.host, port)
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
            await asyncio.sleep(0.05)
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
        if name == DASHBOARD:
            return await self._dashboard_ready()
        if self.config.tls_ca_file is not None:
            credentials = grpc.ssl_channel_credentials(self.config.tls_ca_file.read_bytes())
            channel = grpc.aio.secure_channel(self.target(name), credentials)
        else:
            channel = grpc.aio.insecure_channel(self.target(name))
        async with channel:
            status = await check_health(channel)
        return status == health_pb2.HealthCheckResponse.SERVING

    async def _dashboard_ready(self) -> bool:
        """The dashboard's /healthz answers 200 (profiles SERVING behind it)."""
        import aiohttp

        url = f"{self.dashboard_url}healthz"
        context = (
            ssl.create_default_context(cafile=str(self.config.tls_ca_file))
            if self.config.tls_ca_file is not None
            else None
        )
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session,
                session.get(url, ssl=context if context is not None else True) as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def stop_service(self, name: str, kill: bool = False, grace: float = 10.0) -> None:
        """Stop one service on purpose (not restarted): SIGTERM (graceful drain) or SIGKILL,
        wait for it to exit, then kill whatever is left in its process group."""
        await self._unwatch(name)
        entry = self._processes.pop(name, None)
        if entry is None:
            return
        process = entry.process
        if process.returncode is not None:
            return  # reaped already, by its watcher, which cleared its group then
        if process.poll() is None:
            if kill:
                _signal_group(process.pid, signal.SIGKILL)
            else:
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, grace)
        await _kill_group(process)

    async def stop(self) -> None:
        """Stop everything on purpose; returns once no process of any child's group is left."""
        for name in list(self._watchers):
            await self._unwatch(name)
        for name in reversed(SERVICES):
            with contextlib.suppress(Exception):
                await self.stop_service(name)
        await self.stop_triton()

    # -- supervision ---------------------------------------------------------------------------

    async def wait_restarted(self, name: str, count: int = 1, timeout: float = 120.0) -> None:
        """Wait until ``name`` has been restarted ``count`` times in all (listening again)."""
        await self.wait_until(lambda: self.restarts[name] >= count, timeout)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 120.0) -> None:
        """Wait until ``predicate`` holds, re-checked whenever a child exits or restarts."""
        changed = self._condition()
        async with changed:
            await asyncio.wait_for(changed.wait_for(predicate), timeout=timeout)

    async def _notify(self) -> None:
        changed = self._condition()
        async with changed:
            changed.notify_all()

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _watch(self, name: str) -> None:
        task = asyncio.create_task(self._supervise(name), name=f"longtail-suite-watch-{name}")
        task.add_done_callback(_log_crash)
        self._watchers[name] = task

    async def _unwatch(self, name: str) -> None:
        """End the watcher: what follows is intended. A restart in flight is undone."""
        task = self._watchers.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _child(self, name: str) -> subprocess.Popen[bytes] | None:
        if name == TRITON:
            return self._triton.process if self._triton is not None else None
        entry = self._processes.get(name)
        return entry.process if entry is not None else None

    async def _supervise(self, name: str) -> None:
        """Reap ``name`` when it exits; with ``supervise``, restart it with backoff."""
        config = self.config
        delay = config.restart_backoff_seconds
        while True:
            process = self._child(name)
            if process is None:
                return
            up_since = time.monotonic()
            await _exited(process)
            uptime = time.monotonic() - up_since
            # Reap it, and kill what is left of its group (Triton: stubs, shared memory).
            if name == TRITON:
                assert self._triton is not None
                await asyncio.to_thread(self._triton.kill)
            else:
                await _kill_group(process)
            self.exits.append(
                ChildExit(name, process.pid, process.returncode, uptime, time.monotonic())
            )
            await self._notify()
            if not config.supervise:
                log.error(
                    "%s (pid %d) exited with code %s; not restarted (supervise is off)",
                    name,
                    process.pid,
                    process.returncode,
                )
                return
            if uptime >= config.restart_reset_seconds:
                delay = config.restart_backoff_seconds
            attempt = 0
            while True:
                attempt += 1
                log.warning(
                    "%s (pid %d) exited with code %s after %.1f s; restart attempt %d in %.1f s",
                    name,
                    process.pid,
                    process.returncode,
                    uptime,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, config.restart_backoff_max_seconds)
                try:
                    await self._relaunch(name)
                    break
                except Exception as error:  # the next attempt, after a longer backoff
                    first_line = (str(error) or type(error).__name__).splitlines()[0]
                    log.error("%s did not restart: %s", name, first_line)
                    uptime = 0.0
            self.restarts[name] += 1
            where = self.triton_url if name == TRITON else self.target(name)
            log.warning(
                "%s restarted on %s (pid %s, restart %d)",
                name,
                where,
                self.pid(name),
                self.restarts[name],
            )
            await self._notify()

    async def _relaunch(self, name: str) -> None:
        if name == TRITON:
            self._triton_abort = threading.Event()
            await self._start_triton_process()
        else:
            await self._spawn_service(name)


async def _exited(process: subprocess.Popen[bytes]) -> None:
    """Return once ``process`` has exited, without reaping it (its pid stays reserved)."""
    if process.returncode is not None:
        return
    try:
        descriptor = os.pidfd_open(process.pid)
    except OSError:  # already reaped, or no pidfd (Linux < 5.3): wait in a thread
        await asyncio.to_thread(process.wait)
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(descriptor, readable)
    try:
        await exited
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)


async def _kill_group(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGKILL the child's process group, reap the child, and wait until the group is empty."""
    _signal_group(process.pid, signal.SIGKILL)
    await asyncio.to_thread(process.wait)
    await asyncio.to_thread(wait_group_gone, process.pid, timeout)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (bound as gRPC binds: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str | None:
    """``pid N (command line)`` of the process listening on TCP ``port``, when ``/proc`` says."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for descriptor in (entry / "fd").iterdir():
                if os.readlink(descriptor) in inodes:
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    return f"pid {entry.name} ({command.strip()[:160]})"
        except OSError:
            continue
    return None


def _tail(path: Path, offset: int, lines: int = 40) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
