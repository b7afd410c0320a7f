"""Recommend latency and throughput through the gateway, the whole suite on this machine.

    python -m benchmarks.recommend --catalogue movielens   # reads ../shared/datasets/...small
    python -m benchmarks.recommend --catalogue synthetic --items 100000

Starts Triton and the five services (LocalSuite, SQLite, free ports), loads the catalogue, indexes
and trains, then measures:
- closed loop: N concurrent callers, each sending Recommend back to back;
- open loop: a fixed request rate, latency counted from the scheduled send time (so a slow
  server cannot hide queueing: no coordinated omission);
- the time per hop, each service called directly and sequentially (profiles, ranking, exposure,
  impression write) next to the gateway's own Recommend;
- the CPU each suite process spent per answered Recommend in every load row (from /proc: CPU
  time is comparable on a busy machine, wall-clock is not), against the **floor**: the same
  pipeline's domain code called in this one process without gRPC (benchmarks/floor.py).
``--profile DIR`` also writes a CPU profile of every service (benchmarks/profiling).
A share of the requests (``--cold-share``) comes from new users with stated interests, which goes
through the embeddings service and Triton.

The synthetic catalogue's texts and interactions come from the demo generator; its item vectors
are synthetic (category centroids plus noise, labelled with the encoder's model and version),
because embedding 100k texts through Triton on 2 CPU cores takes most of an hour. The movielens
catalogue is embedded for real. The load generator runs on the same 2 cores as the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.cpu import SERVICE_ORDER, CpuSnapshot
from benchmarks.floor import Floor, FloorResult, measure_floor
from benchmarks.tables import emit_table
from longtail.common.v1 import common_pb2
from longtail.embeddings.v1 import embeddings_service_pb2
from longtail.exposure.v1 import exposure_service_pb2
from longtail.profiles.v1 import profiles_service_pb2
from longtail.ranking.v1 import ranking_service_pb2
from longtail_client.client import LongtailClient
from services.embeddings.tritonserver import free_ports
from services.gateway.config import GatewaySettings
from services.suite import datasets
from services.suite.indexing import index_catalogue
from services.suite.local import LocalSuite, SuiteConfig, parse_service_env

console = Console()


@dataclass
class Row:
    mode: str
    load: str
    sent: int
    ok: int
    errors: int
    fallbacks: int
    seconds: float
    latencies_ms: list[float]
    # CPU-ms per answered request of each suite process, "total" and "load gen" (benchmarks.cpu).
    cpu_ms: dict[str, float] = field(default_factory=dict)
    # The gateway's profile reads during the row, by source (kept, read, unknown): from its
    # longtail_profile_reads_total counter.
    profile_reads: dict[str, float] = field(default_factory=dict)

    @property
    def kept_share(self) -> str:
        """Known users' Recommends served from the gateway's kept profile, as a percentage."""
        known = self.profile_reads.get("kept", 0.0) + self.profile_reads.get("read", 0.0)
        return f"{100 * self.profile_reads.get('kept', 0.0) / known:.0f}%" if known else ""

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return float(np.percentile(self.latencies_ms, q))


class Workload:
    """Which user asks next: mostly known users, some new users with interests."""

    def __init__(self, users: list[str], cold_share: float, seed: int) -> None:
        self._users = users
        self._cold_share = cold_share
        self._rng = random.Random(seed)
        self._topics = datasets.DEMO_CATEGORIES

    def next(self) -> tuple[str, str]:
        if self._rng.random() < self._cold_share:
            topic = self._rng.choice(self._topics)
            return f"bench-cold-{self._rng.randrange(10**9)}", datasets.demo_interests(topic)
        return self._rng.choice(self._users), ""


async def _one(
    client: LongtailClient, workload: Workload, k: int, timeout: float
) -> tuple[bool, bool]:
    user, interests = workload.next()
    try:
        answer = await client.recommend(user, k, interests=interests, timeout=timeout)
    except Exception:
        return False, False
    return True, answer.fallback


async def closed_loop(
    client: LongtailClient, workload: Workload, concurrency: int, seconds: float, k: int
) -> Row:
    latencies: list[float] = []
    counts = {"sent": 0, "ok": 0, "errors": 0, "fallbacks": 0}
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            counts["sent"] += 1
            ok, fallback = await _one(client, workload, k, 2.0)
            if ok:
                counts["ok"] += 1
                counts["fallbacks"] += fallback
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                counts["errors"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Row(
        "closed",
        f"{concurrency} callers",
        counts["sent"],
        counts["ok"],
        counts["errors"],
        counts["fallbacks"],
        time.perf_counter() - started,
        latencies,
    )


async def open_loop(
    client: LongtailClient, workload: Workload, rate: float, seconds: float, k: int
) -> Row:
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0, "fallbacks": 0}
    total = int(rate * seconds)
    start = time.perf_counter()

    async def fire(scheduled: float) -> None:
        ok, fallback = await _one(client, workload, k, 2.0)
        if ok:
            counts["ok"] += 1
            counts["fallbacks"] += fallback
            latencies.append((time.perf_counter() - scheduled) * 1000)
        else:
            counts["errors"] += 1

    tasks = []
    for n in range(total):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(scheduled)))
    await asyncio.gather(*tasks)
    return Row(
        "open",
        f"{rate:g} req/s",
        total,
        counts["ok"],
        counts["errors"],
        counts["fallbacks"],
        time.perf_counter() - start,
        latencies,
    )


async def per_hop(
    client: LongtailClient, suite: LocalSuite, users: list[str], calls: int, k: int
) -> list[Row]:
    """Each hop of the pipeline called directly, one call at a time, with realistic inputs: one
    hop after the other, ``calls`` times each, so that every row also says what one call of that
    hop costs each process (the callee's CPU beside the caller's, "load gen"). The inputs of a
    hop are the previous hop's answers to the same users."""
    rng = random.Random(7)
    chosen = [rng.choice(users) for _ in range(calls)]
    rows: list[Row] = []

    async def hop(name: str, call: Callable[[int], Awaitable[Any]]) -> list[Any]:
        answers: list[Any] = []

        async def in_a_row() -> Row:
            latencies: list[float] = []
            began = time.perf_counter()
            for n in range(calls):
                started = time.perf_counter()
                answers.append(await call(n))
                latencies.append((time.perf_counter() - started) * 1000)
            return Row("hop", name, calls, calls, 0, 0, time.perf_counter() - began, latencies)

        rows.append(await measured(suite, in_a_row()))
        return answers

    read = await hop(
        "profiles.GetUserProfile",
        lambda n: client.profiles.GetUserProfile(
            profiles_service_pb2.GetUserProfileRequest(
                user_id=chosen[n], history_limit=GatewaySettings.history_limit
            ),
            timeout=5,
        ),
    )
    profiles = [answer.profile for answer in read]
    # The gateway's call for a user whose kept profile is current: the replay check (a new
    # request_id, as the client sends) and the version, answered "unchanged".
    await hop(
        "profiles.GetUserProfile, version current",
        lambda n: client.profiles.GetUserProfile(
            profiles_service_pb2.GetUserProfileRequest(
                user_id=chosen[n],
                history_limit=GatewaySettings.history_limit,
                served_request_id=f"bench-check-{n}",
                if_profile_version_differs=read[n].profile_version,
            ),
            timeout=5,
        ),
    )
    ranked = await hop(
        "ranking.RankCandidates",
        lambda n: client.ranking.RankCandidates(
            ranking_service_pb2.RankCandidatesRequest(
                user_id=chosen[n],
                history=profiles[n].history,
                candidate_count=100,
                exclude_item_ids=profiles[n].seen_item_ids,
            ),
            timeout=5,
        ),
    )
    reranked = await hop(
        "exposure.Rerank",
        lambda n: client.exposure.Rerank(
            exposure_service_pb2.RerankRequest(
                request_id=f"hop-{n}",
                user_id=chosen[n],
                candidates=ranked[n].candidates,
                k=k,
                tail_propensity=profiles[n].tail_propensity,
                category_mix=profiles[n].category_mix,
            ),
            timeout=5,
        ),
    )
    run = time.time_ns()  # one request_id per served list
    await hop(
        "profiles.RecordImpressions",
        lambda n: client.profiles.RecordImpressions(
            profiles_service_pb2.RecordImpressionsRequest(
                impressions=[
                    common_pb2.Impression(
                        request_id=f"bench-hop-{run}-{n}",
                        position=item.position,
                        user_id=chosen[n],
                        item_id=item.item_id,
                        policy_name="bench",
                        reason=item.reason,
                    )
                    for item in reranked[n].items
                ]
            ),
            timeout=5,
        ),
    )
    await hop("gateway.Recommend (all hops)", lambda n: client.recommend(chosen[n], k, timeout=5))
    return rows


def synthetic_vectors(
    dataset: datasets.Dataset, dimension: int, seed: int
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Unit vectors clustered by the items' first category (a stand-in for real embeddings)."""
    rng = np.random.default_rng(seed)
    centroids = {c: rng.normal(size=dimension) for c in datasets.DEMO_CATEGORIES}
    matrix = np.stack(
        [
            centroids.get(item.categories[0] if item.categories else "", rng.normal(size=dimension))
            + rng.normal(scale=0.8, size=dimension)
            for item in dataset.items
        ]
    ).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


async def prepare(client: LongtailClient, args: argparse.Namespace) -> datasets.Dataset:
    started = time.perf_counter()
    if args.catalogue == "movielens":
        dataset = datasets.read_movielens(Path(args.dataset))
        await datasets.upload(dataset, client.profiles)
        await index_catalogue(client.profiles, client.embeddings)
    else:
        dataset = datasets.make_demo_catalogue(args.items, args.users, seed=args.seed)
        await datasets.upload(dataset, client.profiles)
        info = await client.embeddings.GetModelInfo(
            embeddings_service_pb2.GetModelInfoRequest(), timeout=30
        )
        vectors = synthetic_vectors(dataset, info.dimension, args.seed)
        for start in range(0, len(dataset.items), 1000):
            updates = [
                profiles_service_pb2.ItemVectorUpdate(
                    item_id=item.item_id,
                    vector=common_pb2.ItemVector(
                        values=vectors[start + n].tolist(),
                        model_name=info.model_name,
                        model_version=info.model_version,
                    ),
                )
                for n, item in enumerate(dataset.items[start : start + 1000])
            ]
            await client.profiles.UpdateItemVectors(
                profiles_service_pb2.UpdateItemVectorsRequest(updates=updates), timeout=60
            )
    await client.ranking.TrainModel(ranking_service_pb2.TrainModelRequest(), timeout=900)
    status = await client.ranking.ReloadModels(
        ranking_service_pb2.ReloadModelsRequest(), timeout=900
    )
    console.print(
        f"catalogue ready: {status.indexed_item_count} items indexed "
        f"in {time.perf_counter() - started:.0f}s"
    )
    return dataset


def print_table(rows: list[Row], title: str) -> str:
    header = ["mode", "load", "sent", "ok", "errors", "fallback", "req/s", "p50 ms", "p99 ms"]
    kept = any(row.profile_reads for row in rows)
    if kept:
        header.append("kept profiles")
    cells = [
        [
            row.mode,
            row.load,
            str(row.sent),
            str(row.ok),
            str(row.errors),
            str(row.fallbacks),
            f"{row.throughput:.1f}",
            f"{row.percentile(50):.2f}",
            f"{row.percentile(99):.2f}",
            *([row.kept_share] if kept else []),
        ]
        for row in rows
    ]
    return emit_table(console, title, header, cells, left=("mode", "load"))


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, marker in (("closed", "o"), ("open", "s")):
        chosen = [r for r in rows if r.mode == mode and r.latencies_ms]
        if not chosen:
            continue
        x = [r.throughput for r in chosen]
        ax.plot(x, [r.percentile(50) for r in chosen], marker=marker, label=f"{mode} loop p50")
        ax.plot(
            x, [r.percentile(99) for r in chosen], marker=marker, ls="--", label=f"{mode} loop p99"
        )
        for r in chosen:
            ax.annotate(r.load, (r.throughput, r.percentile(99)), fontsize=7)
    ax.axhline(20, color="grey", lw=0.8, ls=":", label="p99 budget 20 ms")
    ax.set_xlabel("served requests per second")
    ax.set_ylabel("latency, ms")
    ax.set_yscale("log")
    ax.set_title("Recommend through the gateway (all services on one 2-core machine)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_cpu(rows: list[Row], floor: FloorResult | None, path: Path) -> None:
    """CPU-ms per Recommend of each process, stacked per load row, with the floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [row for row in rows if row.cpu_ms and row.mode != "idle"]
    if not chosen:
        return
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    labels = [f"{row.mode}\n{row.load}" for row in chosen]
    bottom = np.zeros(len(chosen))
    for name in SERVICE_ORDER:
        values = np.array([max(row.cpu_ms.get(name, 0.0), 0.0) for row in chosen])
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom += values
    if floor is not None:
        ax.axhline(floor.cpu_ms_per_request, color="black", ls="--", lw=1, label="in-process floor")
    ax.axhline(6.0, color="grey", ls=":", lw=1, label="target 6 CPU-ms")
    ax.set_ylabel("CPU-ms per answered Recommend")
    ax.set_title("Where a Recommend's CPU goes (all processes on one 2-core machine)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_outputs(
    out: Path,
    catalogue: str,
    title: str,
    text: str,
    hop_text: str,
    rows: list[Row],
    floor: FloorResult | None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"recommend-{catalogue}.md").write_text(
        f"## {title}\n\n{text}\n\n## Per hop\n\n{hop_text}\n"
    )
    plot(rows, out / f"recommend-{catalogue}.png")
    plot_cpu(rows, floor, out / f"recommend-{catalogue}-cpu.png")
    console.print(f"wrote {out}/recommend-{catalogue}.md, .png and -cpu.png")


def profile_reads(metrics_port: int | None) -> dict[str, float]:
    """The gateway's ``longtail_profile_reads_total`` by source ({} without an endpoint)."""
    if metrics_port is None:
        return {}
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        sample.labels["source"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "longtail_profile_reads"
        for sample in family.samples
        if sample.name == "longtail_profile_reads_total"
    }


async def measured(
    suite: LocalSuite, run: Coroutine[Any, Any, Row], metrics_port: int | None = None
) -> Row:
    """``run``'s row with the CPU each suite process spent on it, per answered request, and the
    gateway's profile reads by source."""
    groups = suite.group_members()
    reads = await asyncio.to_thread(profile_reads, metrics_port)
    before = CpuSnapshot.take(groups)
    row = await run
    row.cpu_ms = before.per_request_ms(CpuSnapshot.take(groups), row.ok)
    after = await asyncio.to_thread(profile_reads, metrics_port)
    row.profile_reads = {source: n - reads.get(source, 0.0) for source, n in after.items()}
    return row


async def idle(suite: LocalSuite, seconds: float) -> Row:
    """No requests for ``seconds``: the suite's background work (refreshes of head/tail sets,
    catalogue stats, fallback lists, probes), as CPU-ms per second instead of per request. At a
    rate of r Recommend/s, each answer's row includes about this divided by r."""
    groups = suite.group_members()
    before = CpuSnapshot.take(groups)
    await asyncio.sleep(seconds)
    row = Row("idle", "no requests, per second", 0, 0, 0, 0, seconds, [])
    row.cpu_ms = before.per_request_ms(CpuSnapshot.take(groups), 1)
    row.cpu_ms = {name: ms / seconds for name, ms in row.cpu_ms.items()}
    return row


def print_cpu_table(rows: list[Row], title: str, floor: FloorResult | None = None) -> str:
    columns = ["total", *SERVICE_ORDER, "load gen"]
    header = ["mode", "load", "req/s", *[f"{c} CPU-ms" for c in columns], "x floor"]
    cells = [
        [
            row.mode,
            row.load,
            f"{row.throughput:.1f}",
            *[f"{row.cpu_ms.get(c, 0.0):.2f}" for c in columns],
            f"{row.cpu_ms['total'] / floor.cpu_ms_per_request:.1f}"
            if floor is not None and floor.cpu_ms_per_request > 0 and row.mode != "idle"
            else "",
        ]
        for row in rows
        if row.cpu_ms
    ]
    if floor is not None:
        embedding = floor.stages.get("embeddings + triton", 0.0)
        cells.append(
            [
                "floor",
                "in-process, 1 caller",
                f"{floor.requests / floor.seconds:.1f}" if floor.seconds else "",
                f"{floor.cpu_ms_per_request:.2f}",
                *["" for _ in SERVICE_ORDER[:-2]],
                f"{embedding:.2f} (with triton)",
                "",
                f"{floor.cpu_ms_per_request - embedding:.2f}",
                "1.0",
            ]
        )
    return emit_table(console, title, header, cells, left=("mode", "load"))


def print_floor_table(floor: FloorResult) -> str:
    """Where the floor's CPU goes, stage by stage."""
    header = ["stage", "CPU-ms per request"]
    cells = [[name, f"{ms:.3f}"] for name, ms in floor.stages.items()]
    cells.append(["total", f"{floor.cpu_ms_per_request:.3f}"])
    title = (
        f"Floor: the pipeline's domain code in one process, {floor.requests} requests "
        f"({floor.cold_requests} new users), p50 {floor.percentile(50):.2f} ms"
    )
    return emit_table(console, title, header, cells, left=("stage",))


def enable_profiling(folder: str) -> None:
    """Every service process started after this profiles itself (profiling/sitecustomize.py)."""
    profile_dir = Path(folder).resolve()
    profile_dir.mkdir(parents=True, exist_ok=True)
    os.environ["LONGTAIL_PROFILE_DIR"] = str(profile_dir)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).parent / "profiling"), os.environ.get("PYTHONPATH")])
    )


async def main(args: argparse.Namespace) -> None:
    # The suite's state (a SQLite store of the whole catalogue: ~250 MB at 100k items) goes with
    # the run.
    with tempfile.TemporaryDirectory(prefix="longtail-bench-", ignore_cleanup_errors=True) as temp:
        return await run(args, Path(temp))


async def run(args: argparse.Namespace, workdir: Path) -> None:
    extra_env = parse_service_env(args.env)
    # The gateway's metrics endpoint: each row reports how many profiles came from its cache.
    gateway_env = extra_env.setdefault("gateway", {})
    if "LONGTAIL_GATEWAY_METRICS_PORT" not in gateway_env:
        gateway_env["LONGTAIL_GATEWAY_METRICS_PORT"] = str(free_ports(1)[0])
    metrics_port = int(gateway_env["LONGTAIL_GATEWAY_METRICS_PORT"]) or None
    config = SuiteConfig(workdir=workdir, database_url=args.database_url, extra_env=extra_env)
    async with LocalSuite(config) as suite:
        client = LongtailClient(suite.targets, timeout_seconds=60)
        try:
            dataset = await prepare(client, args)
            users = sorted({i.user_id for i in dataset.interactions})
            workload = Workload(users, args.cold_share, args.seed)
            for _ in range(20):  # warm caches and connections
                await _one(client, workload, args.k, 5.0)
            if args.profile:
                # The profiles then hold the measured load only (profiling/sitecustomize.py).
                for name, pids in suite.group_members().items():
                    if name == "triton":  # not Python: SIGUSR1 would end it
                        continue
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGUSR1)
            rows: list[Row] = []
            if args.idle_seconds > 0:
                rows.append(await idle(suite, args.idle_seconds))
            for concurrency in args.concurrency:
                rows.append(
                    await measured(
                        suite,
                        closed_loop(client, workload, concurrency, args.seconds, args.k),
                        metrics_port,
                    )
                )
            for rate in args.rates:
                rows.append(
                    await measured(
                        suite,
                        open_loop(client, workload, rate, args.seconds, args.k),
                        metrics_port,
                    )
                )
            hops = await per_hop(client, suite, users, args.hop_calls, args.k)
            floor_result = None
            if args.floor_requests > 0:
                # The same pipeline's domain code in this process, on the same store and catalogue.
                floor = await Floor.open(suite, args.k)
                try:
                    floor_result = await measure_floor(floor, workload, args.floor_requests, args.k)
                finally:
                    await floor.close()
        finally:
            await client.close()
    title = (
        f"Recommend, {args.catalogue} catalogue ({len(dataset.items)} items), k={args.k}, "
        f"cold share {args.cold_share:g}"
    )
    text = print_table([row for row in rows if row.mode != "idle"], title)
    cpu_text = print_cpu_table(
        rows, "CPU-ms per answered Recommend, per process (from /proc)", floor_result
    )
    text = f"{text}\n\n{cpu_text}"
    if floor_result is not None:
        text = f"{text}\n\n{print_floor_table(floor_result)}"
    hop_text = print_table(hops, "Per hop, sequential direct calls")
    hop_text = f"{hop_text}\n\n" + print_cpu_table(
        hops, "CPU-ms per call of each hop, per process (the caller is the load generator)"
    )
    if args.out:
        await asyncio.to_thread(
            write_outputs,
            Path(args.out),
            args.catalogue,
            title,
            text,
            hop_text,
            rows,
            floor_result,
        )
    mean_hops = {r.load: statistics.fmean(r.latencies_ms) for r in hops}
    console.print({name: round(ms, 2) for name, ms in mean_hops.items()})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--catalogue", choices=["movielens", "synthetic"], default="synthetic")
    parser.add_argument(
        "--dataset",
        default=str(Path(__file__).resolve().parents[2] / "shared/datasets/movielens-latest-small"),
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--cold-share", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200])
    parser.add_argument("--hop-calls", type=int, default=200)
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=30.0,
        help="first measure the suite's CPU with no requests for this long (0 = skip)",
    )
    parser.add_argument(
        "--floor-requests",
        type=int,
        default=300,
        help="requests through the in-process floor (benchmarks/floor.py); 0 = none",
    )
    parser.add_argument(
        "--database-url",
        help="the profiles store (default: SQLite in a temporary folder), e.g. "
        "postgresql+psycopg://postgres@127.0.0.1:5432/bench (an empty database)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="SERVICE:NAME=VALUE",
        help="extra environment for one service, e.g. ranking:LONGTAIL_RANKING_USER_TOWER=false "
        "(an A/B of a setting: run twice, once with it)",
    )
    parser.add_argument(
        "--profile", help="folder: each service writes a cProfile dump there when the suite stops"
    )
    parser.add_argument("--out", help="folder for the markdown table and the plot")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.profile:
        enable_profiling(arguments.profile)
    asyncio.run(main(arguments))
