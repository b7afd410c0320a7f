"""Recommend under faults: children killed and restarted by the supervisor, the database restarted.

    python -m benchmarks.faults                    # ~4-5 minutes on 2 cores
    python -m benchmarks.faults --rate 8 --items 2000 --out out/faults

Starts a throwaway PostgreSQL cluster of its own (``initdb`` + ``pg_ctl`` from the Debian
binaries under ``/usr/lib/postgresql/*/bin``, a free port on 127.0.0.1, a temporary folder; run
as the ``postgres`` user through ``runuser`` when this runs as root) and the whole suite on it
(LocalSuite, supervised, free ports), with a synthetic catalogue (demo texts and interactions,
synthetic vectors, as ``benchmarks.recommend`` does). Then an open-loop Recommend load (a fixed
rate, bounded in count and time, loopback only; a share of new users with stated interests, each
text unique so that no cache stands in for Triton) runs through phases:

- ``baseline``: no fault;
- ``kill triton`` / ``kill ranking`` / ``kill exposure`` / ``kill profiles``: SIGKILL to the
  child's main process (as a crash), the supervisor reaps it and restarts it on its port; the
  phase runs on until the child is SERVING again and a while after;
- ``restart postgres``: ``pg_ctl restart -m immediate`` (a crash and recovery of the store)
  while the gateway writes impressions through profiles to that cluster.

Every request carries its own request_id (the client retries UNAVAILABLE with it). Afterwards
every request_id is looked up in the impression log: a served list must be there exactly once
(``missing``: a served list with no rows; ``doubled``: more rows than served items or a position
twice). Errors are counted by code; UNAVAILABLE while profiles or the store is down is documented
behaviour ("the store down: UNAVAILABLE, nothing half-written"), any other error is not.
``fallback`` counts answers from the gateway's fallback list, ``degraded`` answers marked degraded
(the response's ``degraded`` field, where the contracts have it; ``n/a`` otherwise).

The gateway's profiles read/write ceilings are raised to 5 s (from 1 s and 2 s) so that a busy
2-core machine does not turn load into profiles errors that no fault caused; ranking and exposure
keep the product's ceilings (their failures become fallbacks, which is what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from rich.console import Console

from benchmarks.recommend import Workload, prepare
from benchmarks.tables import emit_table
from longtail.profiles.v1 import profiles_service_pb2
from longtail_client.client import LongtailClient
from services.embeddings.tritonserver import free_ports
from services.suite.local import SERVICES, TRITON, LocalSuite, SuiteConfig

console = Console()

# Errors that the contracts document for a phase: the store (or profiles) down -> UNAVAILABLE.
DOCUMENTED = {
    "kill profiles": {"UNAVAILABLE"},
    "restart postgres": {"UNAVAILABLE"},
}
GATEWAY_ENV = {
    "LONGTAIL_GATEWAY_PROFILE_TIMEOUT_SECONDS": "5",
    "LONGTAIL_GATEWAY_WRITE_TIMEOUT_SECONDS": "5",
}


@dataclass
class Outcome:
    phase: str
    request_id: str
    ok: bool
    code: str = ""
    fallback: bool = False
    degraded: bool | None = None
    served: list[str] = field(default_factory=list)


@dataclass
class Phase:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    # Seconds from the fault until the child (or the store) served again.
    recovery_seconds: float | None = None


class ThrowawayPostgres:
    """A PostgreSQL cluster of this benchmark's own: temporary folder, free port, trust auth."""

    def __init__(self) -> None:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not candidates:
            raise SystemExit("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        self.bin = candidates[-1].parent
        self.port = free_ports(1)[0]
        self.root = Path(tempfile.mkdtemp(prefix="longtail-faults-pg-"))
        self.data = self.root / "data"
        self.user = "postgres" if os.geteuid() == 0 else None  # initdb refuses to run as root
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = ["/usr/bin/env", f"--chdir={self.root}", str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            # Not ``subprocess.run(user=...)``: its setreuid between fork and exec crashes the
            # child (SIGSEGV/SIGABRT, ~40% of runs here) in a process whose gRPC threads are
            # busy. ``runuser`` through posix_spawn (no Python code in the child) does not.
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            command = [runuser, "-u", self.user, "--", *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            close_fds=False,  # with cwd unset: posix_spawn (our descriptors are non-inheritable)
        )
        if result.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}\n{tail}"
            )

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"),
                  "-o", options, "-w", "start")  # fmt: skip

    def restart(self) -> None:
        """A crash and recovery: every connection is cut, the cluster comes back."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"),
                  "-m", "immediate", "-o", options, "-w", "restart")  # fmt: skip

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    cluster = ThrowawayPostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


class UncachedWorkload(Workload):
    """New users' interests made unique, so each one is embedded through Triton."""

    def next(self) -> tuple[str, str]:
        user, interests = super().next()
        return user, f"{interests} ({uuid.uuid4().hex[:8]})" if interests else ""


async def _one(
    client: LongtailClient, workload: Workload, phase: Phase, k: int, timeout: float
) -> None:
    user, interests = workload.next()
    request_id = uuid.uuid4().hex
    try:
        answer = await client.recommend(
            user, k, interests=interests, request_id=request_id, timeout=timeout
        )
    except grpc.aio.AioRpcError as error:
        phase.outcomes.append(Outcome(phase.name, request_id, False, error.code().name))
        return
    except Exception as error:  # reported, never hidden
        phase.outcomes.append(Outcome(phase.name, request_id, False, type(error).__name__))
        return
    degraded = getattr(answer, "degraded", None)
    phase.outcomes.append(
        Outcome(
            phase.name,
            request_id,
            True,
            fallback=answer.fallback,
            degraded=None if degraded is None else bool(degraded),
            served=[item.item_id for item in answer.items],
        )
    )


async def run_phase(
    name: str,
    fault: Callable[[], Awaitable[None]] | None,
    client: LongtailClient,
    workload: Workload,
    args: argparse.Namespace,
) -> Phase:
    """Open loop at ``args.rate`` until the fault is done and ``args.settle`` seconds more (or
    ``args.phase_limit`` seconds, whichever comes first)."""
    phase = Phase(name)
    done = asyncio.Event()

    async def inject() -> None:
        try:
            await asyncio.sleep(args.lead)
            if fault is not None:
                started = time.monotonic()
                await fault()
                phase.recovery_seconds = time.monotonic() - started
            await asyncio.sleep(args.settle)
        finally:
            done.set()  # a fault that failed ends the phase too; the error is raised below

    injector = asyncio.create_task(inject())
    tasks = []
    start = time.perf_counter()
    limit = int(args.rate * args.phase_limit)
    for n in range(limit):
        scheduled = start + n / args.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), delay)
        if done.is_set():
            break
        tasks.append(asyncio.create_task(_one(client, workload, phase, args.k, args.timeout)))
    await asyncio.gather(*tasks)
    if not injector.done():
        injector.cancel()
        console.print(f"[red]{name}: phase limit reached before the fault was over[/red]")
    with contextlib.suppress(asyncio.CancelledError):
        await injector
    return phase


def kill_child(suite: LocalSuite, name: str) -> Callable[[], Awaitable[None]]:
    async def fault() -> None:
        pid = suite.pid(name)
        assert pid is not None, f"{name} is not running"
        restarts = suite.restarts[name]
        os.kill(pid, signal.SIGKILL)
        await suite.wait_restarted(name, restarts + 1, timeout=600)
        await suite.wait_healthy(["embeddings"] if name == TRITON else [name], timeout=600)

    return fault


def restart_store(suite: LocalSuite, cluster: ThrowawayPostgres) -> Callable[[], Awaitable[None]]:
    async def fault() -> None:
        await asyncio.to_thread(cluster.restart)
        await suite.wait_healthy(["profiles"], timeout=600)

    return fault


async def audit(client: LongtailClient, phases: list[Phase]) -> dict[str, Counter[str]]:
    """Look every request_id up in the impression log: missing, doubled, logged though failed."""
    found: dict[str, Counter[str]] = {phase.name: Counter() for phase in phases}
    limiter = asyncio.Semaphore(16)

    async def check(outcome: Outcome) -> None:
        async with limiter:
            answer = await client.profiles.ListImpressions(
                profiles_service_pb2.ListImpressionsRequest(request_id=outcome.request_id),
                timeout=60,
            )
        rows = [(i.position, i.item_id) for i in answer.impressions]
        counts = found[outcome.phase]
        if outcome.ok:
            if not rows:
                counts["missing"] += 1
            elif len(rows) > len(outcome.served) or len({p for p, _ in rows}) < len(rows):
                counts["doubled"] += 1
            elif rows != list(enumerate(outcome.served)):
                counts["different"] += 1
        elif rows:
            counts["logged, call failed"] += 1

    await asyncio.gather(*(check(o) for phase in phases for o in phase.outcomes))
    return found


def report(phases: list[Phase], audited: dict[str, Counter[str]], has_degraded: bool) -> str:
    header = [
        "phase",
        "sent",
        "ok",
        "errors (code: n)",
        "undocumented",
        "fallback",
        "degraded",
        "missing",
        "doubled",
        "logged, call failed",
        "recovery s",
    ]
    rows: list[list[str]] = []
    for phase in phases:
        codes = Counter(o.code for o in phase.outcomes if not o.ok)
        allowed = DOCUMENTED.get(phase.name, set())
        undocumented = sum(n for code, n in codes.items() if code not in allowed)
        ok = [o for o in phase.outcomes if o.ok]
        counts = audited[phase.name]
        different = f" (+{counts['different']} different)" if counts["different"] else ""
        cells = [
            phase.name,
            str(len(phase.outcomes)),
            str(len(ok)),
            ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())) or "0",
            str(undocumented),
            str(sum(o.fallback for o in ok)),
            str(sum(bool(o.degraded) for o in ok)) if has_degraded else "n/a",
            str(counts["missing"]) + different,
            str(counts["doubled"]),
            str(counts["logged, call failed"]),
            "" if phase.recovery_seconds is None else f"{phase.recovery_seconds:.1f}",
        ]
        rows.append(cells)
    return emit_table(
        console,
        "Recommend under faults",
        header,
        rows,
        left=("phase", header[3]),
        echo_markdown=True,
    )


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="longtail-faults-"))
    env = {"gateway": GATEWAY_ENV}
    try:
        with throwaway_postgres() as cluster:
            console.print(f"PostgreSQL {cluster.bin.parent.name} on 127.0.0.1:{cluster.port}")
            config = SuiteConfig(
                workdir=workdir,
                database_url=cluster.url,
                extra_env=env,
                supervise=True,
                start_timeout_seconds=600,
            )
            async with LocalSuite(config) as suite:
                client = LongtailClient(suite.targets, timeout_seconds=60)
                try:
                    return await _run(suite, client, cluster, args)
                finally:
                    await client.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _run(
    suite: LocalSuite, client: LongtailClient, cluster: ThrowawayPostgres, args: argparse.Namespace
) -> int:
    catalogue = argparse.Namespace(
        catalogue="synthetic", items=args.items, users=args.users, seed=args.seed, dataset=""
    )
    dataset = await prepare(client, catalogue)
    users = sorted({i.user_id for i in dataset.interactions})
    workload = UncachedWorkload(users, args.cold_share, args.seed)
    warm = Phase("warm-up")
    for _ in range(20):
        await _one(client, workload, warm, args.k, 30.0)
    plan: list[tuple[str, Callable[[], Awaitable[None]] | None]] = [("baseline", None)]
    plan += [(f"kill {name}", kill_child(suite, name)) for name in args.kill]
    plan.append(("restart postgres", restart_store(suite, cluster)))
    phases = []
    for name, fault in plan:
        console.print(f"[bold]{name}[/bold] at {args.rate:g} req/s…")
        phases.append(await run_phase(name, fault, client, workload, args))
        # The next phase starts from a whole suite.
        await suite.wait_healthy(list(SERVICES), timeout=600)
    audited = await audit(client, phases)
    has_degraded = any(o.degraded is not None for p in phases for o in p.outcomes)
    text = report(phases, audited, has_degraded)
    exits = ", ".join(f"{e.name} ({e.returncode})" for e in suite.exits)
    console.print(f"supervisor: exits {exits or 'none'}; restarts {dict(suite.restarts)}")
    if args.out:
        title = (
            f"Recommend under faults ({args.rate:g} req/s, k={args.k}, {args.items} items, "
            f"cold share {args.cold_share:g})"
        )
        out = Path(args.out)
        await asyncio.to_thread(_write, out / "faults.md", f"## {title}\n\n{text}\n")
        console.print(f"wrote {out}/faults.md")
    bad = sum(audited[p.name]["missing"] + audited[p.name]["doubled"] for p in phases)
    undocumented = sum(
        not o.ok and o.code not in DOCUMENTED.get(p.name, set()) for p in phases for o in p.outcomes
    )
    return 1 if bad or undocumented else 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--rate", type=float, default=8.0, help="requests per second")
    parser.add_argument("--cold-share", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=5.0, help="client deadline per call")
    parser.add_argument("--lead", type=float, default=3.0, help="seconds of load before a fault")
    parser.add_argument("--settle", type=float, default=8.0, help="seconds of load after it")
    parser.add_argument("--phase-limit", type=float, default=240.0, help="seconds per phase, most")
    parser.add_argument(
        "--kill",
        nargs="+",
        choices=[TRITON, *SERVICES],
        default=[TRITON, "ranking", "exposure", "profiles"],
        help="the children to kill, in turn",
    )
    parser.add_argument("--out", help="folder for faults.md")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse())))
