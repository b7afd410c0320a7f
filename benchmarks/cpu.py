"""CPU time of the suite's processes, read from ``/proc``: comparable on a busy machine.

Wall-clock latency moves with whatever else the machine runs; the CPU seconds a process spent do
not (much), so the cost of a Recommend is reported as CPU-milliseconds per answer, per process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Columns, in pipeline order; Triton's CPU is reported beside the embeddings service's.
SERVICE_ORDER = ("gateway", "profiles", "ranking", "exposure", "embeddings", "triton")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name (which may hold spaces): utime and stime are the 12th and
    # 13th of them (fields 14 and 15 of proc(5)).
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuSnapshot:
    per_service: dict[str, float]
    load_generator: float

    @classmethod
    def take(cls, groups: Mapping[str, list[int]]) -> CpuSnapshot:
        return cls(
            {name: sum(process_cpu_seconds(pid) for pid in pids) for name, pids in groups.items()},
            time.process_time(),
        )

    def per_request_ms(self, later: CpuSnapshot, requests: int) -> dict[str, float]:
        """CPU-ms per request of each service, ``load gen`` and ``total`` (the suite only)."""
        if requests <= 0:
            return {}
        spent = {
            name: (later.per_service.get(name, 0.0) - seconds) * 1000 / requests
            for name, seconds in self.per_service.items()
        }
        spent["total"] = sum(spent.values())
        spent["load gen"] = (later.load_generator - self.load_generator) * 1000 / requests
        return spent
