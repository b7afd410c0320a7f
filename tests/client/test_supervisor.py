"""LocalSuite supervises its children: reaps, restarts on the same port, stops for good.

Real service processes (profiles and exposure on SQLite: cheap, no Triton) started by the suite;
children are killed with SIGKILL from here, as a crash would end them. Every wait is on an event
(the supervisor's restart notification) or on process/health state, under generous bounds; the
backoff delays are asserted from the supervisor's own log records, not measured. One test runs
Triton (marked) to show a Triton restart on the same ports with the orphaned stub cleaned up.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from longtail.embeddings.v1 import embeddings_service_pb2, embeddings_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2, profiles_service_pb2_grpc
from services.embeddings.tritonserver import process_group_members
from services.suite.local import (
    TRITON,
    LocalSuite,
    PortInUseError,
    SuiteConfig,
    port_is_free,
)
from tests.conftest import require_triton

# Generous bounds for a busy 2-core machine: a start, a restart, a health check.
BOUND = 120.0
# Triton takes a minute or more to load its model on 2 cores.
TRITON_BOUND = 600.0

CHEAP = ("profiles", "exposure")


def _config(tmp_path: Path, **overrides: object) -> SuiteConfig:
    settings: dict[str, object] = {
        "workdir": tmp_path / "suite",
        "services": CHEAP,
        "supervise": True,
        "start_timeout_seconds": BOUND,
        # No backoff reset within a test: the doubling is what the tests assert.
        "restart_reset_seconds": 3600.0,
    }
    settings.update(overrides)
    return SuiteConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[LocalSuite]:
    async with LocalSuite(_config(tmp_path)) as running:
        yield running


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, or None when /proc has no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0]


def _started(pid: int) -> str | None:
    """When a process started (clock ticks since boot): tells a reused pid from the original."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()[19]


def _zombie_children() -> list[int]:
    """Our own children that exited and that nobody reaped."""
    zombies = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[0] == os.getpid() and stat[1] == "Z":
                zombies.append(int(entry.name))
    return zombies


def _shm_regions(prefix: str) -> list[Path]:
    """The Python-backend shared-memory regions of one Triton run."""
    assert prefix, "a run's prefix is never empty"
    return sorted(Path("/dev/shm").glob(f"{prefix}*"))


async def _catalog_answers(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = profiles_service_pb2_grpc.ProfilesServiceStub(channel)
        await stub.GetCatalogStats(profiles_service_pb2.GetCatalogStatsRequest(), timeout=BOUND)


def _restart_delays(records: list[logging.LogRecord], name: str) -> list[float]:
    delays = []
    for record in records:
        message = record.getMessage()
        match = re.search(r"restart attempt \d+ in ([\d.]+) s", message)
        if record.name == "longtail.suite" and message.startswith(f"{name} ") and match:
            delays.append(float(match[1]))
    return delays


async def test_killed_child_is_reaped_and_restarted_on_its_port(
    suite: LocalSuite, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="longtail.suite")
    target = suite.target("profiles")
    for count in (1, 2):
        killed = suite.pid("profiles")
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        await suite.wait_restarted("profiles", count, timeout=BOUND)
        # A new process, listening where the old one did, and serving.
        assert suite.pid("profiles") not in (None, killed)
        assert suite.target("profiles") == target
        await suite.wait_healthy(["profiles"], timeout=BOUND)
        await _catalog_answers(target)
        # The dead one was reaped: no zombie left behind.
        assert _zombie_children() == []
    assert [(e.name, e.returncode) for e in suite.exits] == [("profiles", -signal.SIGKILL)] * 2
    assert suite.restarts == {"profiles": 2}
    # Exponential backoff: the second crash within the reset window waits twice as long.
    assert _restart_delays(caplog.records, "profiles") == [0.5, 1.0]
    assert suite.supervised("profiles") and suite.supervised("exposure")


async def test_an_intended_stop_is_not_restarted(suite: LocalSuite) -> None:
    host, port = suite.target("exposure").rsplit(":", 1)
    stopped = suite.pid("exposure")
    assert suite.supervised("exposure")
    await suite.stop_service("exposure")
    assert not suite.supervised("exposure")
    assert suite.pid("exposure") is None
    assert stopped is not None and _zombie_children() == []
    # Another child's crash and restart come and go; exposure stays down.
    killed = suite.pid("profiles")
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    await suite.wait_restarted("profiles", 1, timeout=BOUND)
    assert suite.restarts == {"profiles": 1}
    assert [e.name for e in suite.exits] == ["profiles"]
    assert port_is_free(host, int(port)), "something listens on the stopped service's port"
    # start_service brings it back, on its port, supervised again.
    await suite.start_service("exposure")
    assert suite.target("exposure") == f"{host}:{port}"
    assert suite.supervised("exposure")
    await suite.wait_healthy(["exposure"], timeout=BOUND)


async def test_unsupervised_child_is_reaped_not_restarted(tmp_path: Path) -> None:
    async with LocalSuite(_config(tmp_path, supervise=False)) as suite:
        killed = suite.pid("exposure")
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        # The watcher reaps it, records the exit and ends: nothing comes back.
        await suite.wait_until(lambda: bool(suite.exits), timeout=BOUND)
        assert [(e.name, e.returncode) for e in suite.exits] == [("exposure", -signal.SIGKILL)]
        assert _zombie_children() == []
        assert not suite.supervised("exposure")
        assert suite.restarts == {}


async def test_stop_leaves_no_process_of_any_child(tmp_path: Path) -> None:
    suite = LocalSuite(_config(tmp_path))
    await suite.start()
    try:
        groups = suite.pids
        assert set(groups) == set(CHEAP)
        assert all(process_group_members(pgid) for pgid in groups.values())
    finally:
        await suite.stop()
    for name, pgid in groups.items():
        assert process_group_members(pgid) == [], f"{name}'s process group outlived stop()"
    assert _zombie_children() == []
    assert suite.pids == {}


async def test_a_taken_fixed_port_names_the_service_the_port_and_the_way_out(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        suite = LocalSuite(_config(tmp_path, services=("profiles",), ports={"profiles": port}))
        with pytest.raises(PortInUseError) as caught:
            async with suite:
                pass
        message = str(caught.value)
        assert f"cannot start profiles: port {port} on 127.0.0.1 is already in use" in message
        assert f"by pid {os.getpid()} " in message  # the holder, from /proc
        assert "--free-ports" in message
        assert (caught.value.service, caught.value.port) == ("profiles", port)
        assert suite.pids == {}

        # Taken between the check and the bind (here: the check skipped): the service's own
        # bind failure becomes the same error, and nothing is left running.
        racing = LocalSuite(_config(tmp_path, services=("profiles",), ports={"profiles": port}))
        try:
            with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already"):
                await racing.start_service("profiles")
            assert racing.pids == {}
        finally:
            await racing.stop()


@pytest.mark.triton
@pytest.mark.slow
async def test_killed_triton_restarts_on_its_ports_without_orphans(tmp_path: Path) -> None:
    require_triton()
    config = _config(tmp_path, services=("embeddings",), start_timeout_seconds=TRITON_BOUND)
    async with LocalSuite(config) as suite:
        triton_url = suite.triton_url
        server = suite.pid(TRITON)
        assert server is not None
        group = {pid: _started(pid) for pid in process_group_members(server)}
        # The premise: the server has forked its Python-backend stub into its group, and the
        # stub holds shared memory.
        assert len(group) >= 2, group
        assert suite.triton_server is not None
        old_prefix = suite.triton_server.shm_prefix
        assert _shm_regions(old_prefix)
        # A crash of the server alone: its stub is left behind, orphaned.
        os.kill(server, signal.SIGKILL)
        await suite.wait_restarted(TRITON, 1, timeout=TRITON_BOUND)
        assert suite.triton_url == triton_url
        # (A zombie is dead already: it holds no memory, descriptors or mappings.)
        left = [
            pid
            for pid, started in group.items()
            if _started(pid) == started and (_proc_stat(pid) or (0, "Z"))[1] != "Z"
        ]
        assert left == [], "the old stub outlived its server"
        assert _shm_regions(old_prefix) == [], "the old run's shared memory is left"
        new_prefix = suite.triton_server.shm_prefix
        assert new_prefix != old_prefix and _shm_regions(new_prefix)
        # Embeddings, still configured with the same address, answers again by itself, from
        # Triton (a text it never saw: no cache hit).
        await suite.wait_healthy(["embeddings"], timeout=BOUND)
        async with grpc.aio.insecure_channel(suite.target("embeddings")) as channel:
            stub = embeddings_service_pb2_grpc.EmbeddingsServiceStub(channel)
            answer = await stub.EmbedTexts(
                embeddings_service_pb2.EmbedTextsRequest(texts=[f"restarted {uuid.uuid4()}"]),
                timeout=BOUND,
            )
        assert answer.cache_hit_count == 0
        assert len(answer.embeddings) == 1 and len(answer.embeddings[0].values) == answer.dimension
        groups = suite.pids
    for name, pgid in groups.items():
        assert process_group_members(pgid) == [], f"{name}'s process group outlived stop()"
    assert _shm_regions(new_prefix) == []


def test_longtail_up_on_a_taken_port_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``longtail up`` prints the error (no traceback) and exits 1, before starting anything."""
    from services.suite import cli
    from services.suite import local as suite

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The fixed ports, with profiles' (checked first) on the taken one.
        monkeypatch.setattr(suite, "FIXED_PORTS", {**suite.FIXED_PORTS, "profiles": port})
        monkeypatch.setenv("COLUMNS", "400")
        # The command attaches a stderr handler to the runner's logger: undone after the test.
        logger = logging.getLogger("longtail.suite")
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "level", logger.level)
        with pytest.raises(SystemExit) as exited:
            cli.main(["up", "--workdir", str(tmp_path / "state")])
    assert exited.value.code == 1
    printed = " ".join(capsys.readouterr().out.split())
    assert f"cannot start profiles: port {port} on 127.0.0.1 is already in use" in printed
    assert "--free-ports" in printed
    assert "Traceback" not in printed
    assert not (tmp_path / "state" / "logs" / "triton.log").exists()
