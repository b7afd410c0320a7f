"""Soak: a fixed Recommend rate for a long time, memory and open files of every suite process.

    python -m benchmarks.soak --minutes 30 --out out/soak

Starts Triton and the five services (LocalSuite, supervised, SQLite, free ports) with a synthetic
catalogue (demo texts and interactions, synthetic vectors, as ``benchmarks.recommend`` does), then
sends Recommend at a fixed rate (open loop, loopback only; a share of new users with stated
interests goes through embeddings and Triton) for ``--minutes``. Every ``--interval`` seconds it
samples, from ``/proc``, the resident memory (VmRSS) and the number of open file descriptors of
every process in every child's process group (each service; Triton and its Python-backend stubs)
and of this process (the load generator).

Prints, per process, the growth after the warm-up (``--warmup`` seconds, default a fifth of the
run, at least 30 s): RSS and descriptors at the end of the warm-up and at the end, the difference,
and the least-squares slope of RSS in MiB per hour; writes ``soak.png`` (RSS and descriptors over
time, the warm-up shaded), ``soak.csv`` (every sample) and ``soak.md`` (the table) to ``--out``.
A process that the supervisor restarted during the run shows as two series (another pid).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.recommend import Workload, prepare
from benchmarks.tables import emit_table
from longtail_client.client import LongtailClient
from services.suite.local import LocalSuite, SuiteConfig

console = Console()
MIB_PER_KIB = 1 / 1024  # VmRSS is in kB


@dataclass
class Series:
    label: str
    pid: int
    times: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)


@dataclass
class Load:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    fallbacks: int = 0
    latencies_ms: list[float] = field(default_factory=list)


def read_process(pid: int) -> tuple[float, int] | None:
    """(RSS in MiB, open descriptors) of a live process, from /proc; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * MIB_PER_KIB, fds
    return None  # a zombie has no VmRSS


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def sample(suite: LocalSuite, series: dict[tuple[str, int], Series], at: float) -> None:
    processes: list[tuple[str, int]] = [("load generator (this process)", os.getpid())]
    for name, members in suite.group_members().items():
        leader = suite.pid(name)
        for pid in sorted(members):
            processes.append((name if pid == leader else f"{name}/{command_name(pid)}", pid))
    for label, pid in processes:
        reading = read_process(pid)
        if reading is None:
            continue
        entry = series.setdefault((label, pid), Series(label, pid))
        entry.times.append(at)
        entry.rss_mib.append(reading[0])
        entry.fds.append(reading[1])


async def run_load(
    client: LongtailClient, workload: Workload, rate: float, seconds: float, k: int
) -> Load:
    load = Load()
    pending: set[asyncio.Task[None]] = set()

    async def fire(scheduled: float) -> None:
        user, interests = workload.next()
        try:
            answer = await client.recommend(user, k, interests=interests, timeout=5.0)
        except Exception:
            load.errors += 1
            return
        load.ok += 1
        load.fallbacks += answer.fallback
        load.latencies_ms.append((time.perf_counter() - scheduled) * 1000)

    start = time.perf_counter()
    for n in range(int(rate * seconds)):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(fire(scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
        load.sent += 1
    await asyncio.gather(*pending)
    return load


async def sampler(
    suite: LocalSuite,
    series: dict[tuple[str, int], Series],
    interval: float,
    started: float,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        await asyncio.to_thread(sample, suite, series, time.monotonic() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    await asyncio.to_thread(sample, suite, series, time.monotonic() - started)


@dataclass
class Growth:
    label: str
    pid: int
    rss_start: float
    rss_end: float
    slope_mib_per_hour: float
    fds_start: int
    fds_end: int


def growth(series: dict[tuple[str, int], Series], warmup: float) -> list[Growth]:
    rows = []
    for entry in series.values():
        chosen = [i for i, t in enumerate(entry.times) if t >= warmup]
        if len(chosen) < 2:
            continue
        times = np.array([entry.times[i] for i in chosen]) / 3600.0
        rss = np.array([entry.rss_mib[i] for i in chosen])
        slope = float(np.polyfit(times, rss, 1)[0]) if np.ptp(times) > 0 else 0.0
        rows.append(
            Growth(
                entry.label,
                entry.pid,
                float(rss[0]),
                float(rss[-1]),
                slope,
                entry.fds[chosen[0]],
                entry.fds[chosen[-1]],
            )
        )
    return sorted(rows, key=lambda row: row.label)


def report(rows: list[Growth], title: str) -> str:
    header = [
        "process",
        "pid",
        "RSS after warm-up MiB",
        "RSS end MiB",
        "growth MiB",
        "slope MiB/h",
        "fds after warm-up",
        "fds end",
        "fd growth",
    ]
    cells_rows: list[list[str]] = []
    for row in rows:
        cells = [
            row.label,
            str(row.pid),
            f"{row.rss_start:.1f}",
            f"{row.rss_end:.1f}",
            f"{row.rss_end - row.rss_start:+.1f}",
            f"{row.slope_mib_per_hour:+.1f}",
            str(row.fds_start),
            str(row.fds_end),
            f"{row.fds_end - row.fds_start:+d}",
        ]
        cells_rows.append(cells)
    return emit_table(console, title, header, cells_rows, left=("process",), echo_markdown=True)


def write_outputs(
    out: Path, series: dict[tuple[str, int], Series], warmup: float, title: str, text: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with (out / "soak.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["process", "pid", "seconds", "rss_mib", "fds"])
        for entry in series.values():
            for t, rss, fds in zip(entry.times, entry.rss_mib, entry.fds, strict=True):
                writer.writerow([entry.label, entry.pid, f"{t:.1f}", f"{rss:.2f}", fds])
    (out / "soak.md").write_text(f"## {title}\n\n{text}\n")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for entry in sorted(series.values(), key=lambda e: e.label):
        minutes = [t / 60 for t in entry.times]
        label = f"{entry.label} ({entry.pid})"
        top.plot(minutes, entry.rss_mib, label=label, lw=1.2)
        bottom.plot(minutes, entry.fds, label=label, lw=1.2)
    for axis in (top, bottom):
        axis.axvspan(0, warmup / 60, color="grey", alpha=0.15, lw=0)
    top.set_ylabel("RSS, MiB")
    bottom.set_ylabel("open file descriptors")
    bottom.set_xlabel("minutes (shaded: warm-up)")
    top.set_title(title, fontsize=9)
    top.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=120)
    plt.close(fig)


async def main(args: argparse.Namespace) -> None:
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else max(30.0, seconds / 5)
    workdir = Path(tempfile.mkdtemp(prefix="longtail-soak-"))
    config = SuiteConfig(workdir=workdir, supervise=True, start_timeout_seconds=600)
    series: dict[tuple[str, int], Series] = {}
    try:
        async with LocalSuite(config) as suite:
            async with LongtailClient(suite.targets, timeout_seconds=60) as client:
                catalogue = argparse.Namespace(
                    catalogue="synthetic",
                    items=args.items,
                    users=args.users,
                    seed=args.seed,
                    dataset="",
                )
                dataset = await prepare(client, catalogue)
                users = sorted({i.user_id for i in dataset.interactions})
                workload = Workload(users, args.cold_share, args.seed)
                console.print(f"soak: {args.rate:g} req/s for {args.minutes:g} min…")
                stop = asyncio.Event()
                watcher = asyncio.create_task(
                    sampler(suite, series, args.interval, time.monotonic(), stop)
                )
                load = await run_load(client, workload, args.rate, seconds, args.k)
                stop.set()
                await watcher
            restarts = dict(suite.restarts)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    p50, p99 = np.percentile(load.latencies_ms, [50, 99]) if load.latencies_ms else (np.nan, np.nan)
    console.print(
        f"requests: {load.sent} sent, {load.ok} ok, {load.errors} errors, "
        f"{load.fallbacks} fallbacks; latency p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"restarts {restarts or 'none'}"
    )
    title = (
        f"Soak: {args.rate:g} Recommend/s for {args.minutes:g} min, {args.items} items, "
        f"cold share {args.cold_share:g}; growth after a {warmup:.0f} s warm-up"
    )
    text = report(growth(series, warmup), title)
    if args.out:
        await asyncio.to_thread(write_outputs, Path(args.out), series, warmup, title, text)
        console.print(f"wrote {args.out}/soak.png, soak.csv and soak.md")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default: a fifth)")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--cold-share", type=float, default=0.1)
    parser.add_argument("--out", default="out/soak", help="folder for soak.png/.csv/.md")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
