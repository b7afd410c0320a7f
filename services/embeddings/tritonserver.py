"""Start and stop a real NVIDIA Triton Inference Server on the project's model repository.

The project starts Triton itself: the ``tritonserver`` binary (2.51) and its Python backend ship in
the ``nvidia-pytriton`` wheel under ``pytriton/tritonserver/``. What it takes to run it here:

- a backends folder holding ``libtriton_python.so`` *and* the Python-backend stub built for this
  interpreter (the wheel keeps stubs per Python version in ``python_backend_stubs/``);
- ``LD_LIBRARY_PATH`` with this interpreter's ``LIBDIR`` first, otherwise the stub picks up the
  system's ``libpython3.11`` and the model fails to load;
- the virtual environment's ``bin`` first on ``PATH`` and ``VIRTUAL_ENV`` set, otherwise the stub
  does not see the venv's packages (``PYTHONPATH`` alone is not enough);
- a model repository whose config parameters name the encoder and the ONNX cache folder: the
  source repository (``deploy/triton``) is copied into a run folder and filled in.

``TritonServer`` does all of that, picks free ports, waits until the server and the model are
ready, and stops the whole process group (SIGTERM, then SIGKILL), returning only once no process
of the group (the server, the Python-backend stubs) remains, and leaving no shared memory segment
or temporary folder behind. ``kill`` does the same after a crash: a stub that outlived its server
goes with the group. A supervisor (``LocalSuite``) restarts the server on the same ports.
``python -m services.embeddings.tritonserver`` runs it standalone (prints ``TRITON_GRPC
host:port``; stops on SIGTERM/SIGINT), or with ``--prepare DIR`` only renders a repository for
NVIDIA's Triton container (production, ``--variant gpu``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = PROJECT_ROOT / "deploy" / "triton"
DEFAULT_CACHE_DIR = PROJECT_ROOT / ".longtail" / "models"
MODEL_NAME = "text_encoder"
# Where each variant's configs live inside the source repository; model code is always shared.
VARIANT_CONFIG_ROOTS = {"cpu": Path("."), "gpu": Path("gpu")}


class TritonStartError(RuntimeError):
    """Triton did not become ready; the message carries the tail of its log."""


@dataclasses.dataclass(frozen=True)
class TritonDistribution:
    """The server binary and the Python backend files shipped in nvidia-pytriton."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path

    @classmethod
    def find(cls) -> TritonDistribution:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonStartError("the nvidia-pytriton package is not installed")
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        found = cls(
            binary=root / "bin" / "tritonserver",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs=root.parent.parent / "nvidia_pytriton.libs",
        )
        for path in (found.binary, found.python_backend / "libtriton_python.so", found.stub):
            if not path.exists():
                raise TritonStartError(f"missing from nvidia-pytriton: {path}")
        return found

    def make_backends(self, target: Path) -> Path:
        """A backends folder with the Python backend and this interpreter's stub."""
        python_dir = target / "python"
        shutil.copytree(
            self.python_backend, python_dir, ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy2(self.stub, python_dir / "triton_python_backend_stub")
        return target


def load_model_module(repository: Path = DEFAULT_REPOSITORY) -> types.ModuleType:
    """The model's ``model.py`` as a module (its helpers: fingerprint, export), outside Triton."""
    path = repository / MODEL_NAME / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("longtail_text_encoder_model", path)
    if spec is None or spec.loader is None:
        raise TritonStartError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_parameter(config: str, key: str, value: str) -> str:
    """Set ``parameters { key: K value { string_value: V } }`` in a config.pbtxt text."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    pattern = re.compile(
        r'(parameters\s*:?\s*\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{\s*'
        r'string_value:\s*)"(?:[^"\\]|\\.)*"'
    )
    line = f'parameters: {{ key: "{key}" value: {{ string_value: "{escaped}" }} }}'
    if pattern.search(config):
        return pattern.sub(lambda m: m.group(1) + f'"{escaped}"', config, count=1)
    return config.rstrip("\n") + "\n" + line + "\n"


def set_output_dimension(config: str, dimension: int) -> str:
    """Point the EMBEDDING output's ``dims`` at the encoder's dimension."""
    pattern = re.compile(r'(name:\s*"EMBEDDING"[^}]*?dims:\s*\[\s*)\d+(\s*\])', re.DOTALL)
    return pattern.sub(lambda m: f"{m.group(1)}{dimension}{m.group(2)}", config, count=1)


def set_field(config: str, field: str, value: int) -> str:
    pattern = re.compile(rf"(\b{field}:\s*)\d+")
    return pattern.sub(lambda m: f"{m.group(1)}{value}", config, count=1)


@dataclasses.dataclass(frozen=True)
class PreparedRepository:
    path: Path
    fingerprint: str
    encoder_path: Path
    onnx_path: Path | None


def prepare_repository(
    target: Path,
    *,
    source: Path = DEFAULT_REPOSITORY,
    variant: str = "cpu",
    encoder_path: Path | None = None,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    runtime: str | None = None,
    max_tokens: int = 256,
    threads: int = 0,
    max_batch_size: int | None = None,
    export: bool = True,
) -> PreparedRepository:
    """Render a runnable model repository into ``target`` (created when missing).

    An existing ``target`` keeps its later version folders (fine-tuned encoders the embeddings
    service installed, ``services/embeddings/versions.py``); the config and version 1 are
    rendered anew. Copies ``model.py``, fills the config parameters (absolute encoder path, cache
    folder, fingerprint), and exports the ONNX graph once into ``cache_dir`` when the runtime is
    ONNX so that the model loads in seconds (the export runs in a subprocess: torch stays out of
    ours).
    """
    if variant not in VARIANT_CONFIG_ROOTS:
        raise ValueError(f"variant must be one of {sorted(VARIANT_CONFIG_ROOTS)}")
    module = load_model_module(source)
    folder = Path(module.resolve_encoder_path(encoder_path))
    fingerprint = str(module.model_fingerprint(folder, max_tokens))
    config_path = source / VARIANT_CONFIG_ROOTS[variant] / MODEL_NAME / "config.pbtxt"
    config = config_path.read_text()
    config = set_parameter(config, "encoder_path", str(folder))
    config = set_parameter(config, "cache_dir", str(cache_dir.resolve()))
    config = set_parameter(config, "max_tokens", str(max_tokens))
    config = set_parameter(config, "threads", str(threads))
    config = set_parameter(config, "fingerprint", fingerprint)
    if runtime:
        config = set_parameter(config, "runtime", runtime)
    config = set_output_dimension(config, int(module.embedding_dimension(folder)))
    if max_batch_size is not None:
        config = set_field(config, "max_batch_size", max_batch_size)
    effective_runtime = runtime or re.search(
        r'key:\s*"runtime"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', config
    ).group(1)  # type: ignore[union-attr]
    model_dir = target / MODEL_NAME
    shutil.rmtree(model_dir / "1", ignore_errors=True)
    (model_dir / "1").mkdir(parents=True)
    shutil.copy2(source / MODEL_NAME / "1" / "model.py", model_dir / "1" / "model.py")
    for version in model_dir.iterdir():
        # Installed versions run the current model code too.
        if version.name.isdigit() and version.name != "1" and (version / "model.py").exists():
            shutil.copy2(model_dir / "1" / "model.py", version / "model.py")
    (model_dir / "config.pbtxt").write_text(config)
    onnx_path = None
    if effective_runtime == "onnx":
        onnx_path = Path(module.onnx_path_for(folder, cache_dir.resolve(), max_tokens))
        if export and not onnx_path.exists():
            _export_onnx(source, folder, cache_dir.resolve(), max_tokens)
    return PreparedRepository(target, fingerprint, folder, onnx_path)


def _export_onnx(source: Path, folder: Path, cache_dir: Path, max_tokens: int) -> None:
    command = [
        sys.executable,
        str(source / MODEL_NAME / "1" / "model.py"),
        "export",
        "--encoder",
        str(folder),
        "--cache-dir",
        str(cache_dir),
        "--max-tokens",
        str(max_tokens),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    if result.returncode != 0:
        raise TritonStartError(f"ONNX export failed:\n{result.stderr[-4000:]}")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now (bound together, so never the same one twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the server (and the Python-backend stub it forks) needs."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [libdir] if libdir else []
    # The stub is copied out of the wheel, so its relative RPATH to the bundled libraries (CUDA
    # runtime stubs) no longer resolves: name that folder explicitly.
    bundled = TritonDistribution.find().libs
    if bundled.is_dir():
        paths.append(str(bundled))
    paths += [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p not in paths]
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        [venv_bin, *(p for p in env.get("PATH", "").split(os.pathsep) if p)]
    )
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    env.pop("PYTHONHOME", None)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


class TritonServer:
    """A Triton process serving the project's model repository.

    Ports left at 0 are chosen free at start; pass fixed ports to restart a server where clients
    expect it. Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        *,
        repository: Path = DEFAULT_REPOSITORY,
        variant: str = "cpu",
        encoder_path: Path | None = None,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        runtime: str | None = None,
        max_tokens: int = 256,
        threads: int = 0,
        max_batch_size: int | None = None,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        startup_timeout: float = 240.0,
        stop_timeout: float = 15.0,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        repository_dir: Path | None = None,
    ) -> None:
        self.repository = repository
        # Where the runnable repository is rendered: a folder that outlives restarts (installed
        # encoder versions stay), or None for one inside each run's temporary folder.
        self.repository_dir = repository_dir
        self.variant = variant
        self.encoder_path = encoder_path
        self.cache_dir = cache_dir
        self.runtime = runtime
        self.max_tokens = max_tokens
        self.threads = threads
        self.max_batch_size = max_batch_size
        self.host = host
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = self._requested_ports
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.prepared: PreparedRepository | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None
        self._log_file: IO[bytes] | None = None
        self._current_log: Path | None = None
        self._shm_prefix = ""
        # The run whose group ``kill`` has already emptied (and reaped).
        self._cleared: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def fingerprint(self) -> str:
        return self.prepared.fingerprint if self.prepared else ""

    @property
    def model_dir(self) -> Path | None:
        """The served ``text_encoder`` folder (where encoder versions are installed)."""
        return self.prepared.path / MODEL_NAME if self.prepared else None

    @property
    def run_dir(self) -> Path | None:
        """The folder holding this run's repository, backends and log (removed by ``stop``)."""
        return self._run_dir

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def shm_prefix(self) -> str:
        """The name prefix of this run's Python-backend shared-memory regions in /dev/shm."""
        return self._shm_prefix

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The server process of the current run (its pid is also its process group's id)."""
        return self._process

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, abort: threading.Event | None = None) -> None:
        """Start and wait until the server and every model are ready (or raise with the log).

        Setting ``abort`` (from another thread) gives up the wait: the start raises
        ``TritonStartError`` and leaves nothing running.
        """
        with self._lock:
            if self.is_running():
                return
            self._cleanup()  # what a killed or failed run left behind
            self._run_dir = Path(tempfile.mkdtemp(prefix="longtail-triton-"))
        try:
            self.prepared = prepare_repository(
                self.repository_dir or self._run_dir / "models",
                source=self.repository,
                variant=self.variant,
                encoder_path=self.encoder_path,
                cache_dir=self.cache_dir,
                runtime=self.runtime,
                max_tokens=self.max_tokens,
                threads=self.threads,
                max_batch_size=self.max_batch_size,
            )
            backends = TritonDistribution.find().make_backends(self._run_dir / "backends")
            # Chosen ports can be taken between choosing and binding: retry with new ones.
            attempts = 1 if all(self._requested_ports) else 3
            for attempt in range(attempts):
                if abort is not None and abort.is_set():
                    raise TritonStartError("start aborted")
                self._launch(backends)
                try:
                    self._wait_ready(abort)
                    return
                except TritonStartError:
                    exited = self._process is not None and self._process.poll() is not None
                    port_clash = "address already in use" in self.log_tail(80).lower()
                    if attempt + 1 < attempts and exited and port_clash:
                        self._terminate()
                        continue
                    raise
        except BaseException:
            self.stop()
            raise

    def _launch(self, backends: Path) -> None:
        assert self._run_dir is not None and self.prepared is not None
        wanted = list(self._requested_ports)
        chosen = iter(free_ports(wanted.count(0), self.host))
        self.http_port, self.grpc_port, self.metrics_port = (p or next(chosen) for p in wanted)
        # Unique shared-memory names: two servers must not share the backend's regions.
        self._shm_prefix = f"longtail{os.getpid()}x{secrets.token_hex(4)}_"
        self._current_log = self.log_path or self._run_dir / "tritonserver.log"
        self._current_log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self._current_log.open("ab")
        command = [
            str(TritonDistribution.find().binary),
            f"--model-repository={self.prepared.path}",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--allow-gpu-metrics={'true' if self.variant == 'gpu' else 'false'}",
            # As in production (deploy/images/triton): explicit control, so that the embeddings
            # service can load a newly installed encoder version without a restart.
            "--model-control-mode=explicit",
            f"--load-model={MODEL_NAME}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            "--exit-timeout-secs=5",
            *self.extra_args,
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=server_environment(),
            cwd=self._run_dir,
            start_new_session=True,  # its own process group: the stubs go down with it
        )

    def _wait_ready(self, abort: threading.Event | None = None) -> None:
        deadline = time.monotonic() + self.startup_timeout
        urls = [f"{self.http_url}/v2/health/ready", f"{self.http_url}/v2/models/{MODEL_NAME}/ready"]
        while time.monotonic() < deadline:
            if abort is not None and abort.is_set():
                raise TritonStartError("start aborted")
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise TritonStartError(
                    f"tritonserver exited with code {code} before it was ready:\n" + self.log_tail()
                )
            if all(_http_ok(url) for url in urls):
                return
            time.sleep(0.25)
        raise TritonStartError(
            f"tritonserver not ready after {self.startup_timeout:.0f} s:\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        if self._log_file is not None:
            with contextlib.suppress(ValueError):
                self._log_file.flush()
        if self._current_log is None or not self._current_log.exists():
            return ""
        text = self._current_log.read_bytes()[-64_000:].decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group now and reap it (the run folder stays): simulates a
        crash in tests, and cleans up after one (stubs that outlived the server, shared memory)."""
        process = self._process
        if process is not None and self._cleared is not process:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
            wait_group_gone(process.pid, self.stop_timeout)
            self._remove_shared_memory()
            # Done: the pid is free for reuse now, so no later signal may go to its group.
            self._cleared = process

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None and self._cleared is not process:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
            # Stubs that outlived the server (it was killed) are still in the group.
            _signal_group(process.pid, signal.SIGKILL)
            wait_group_gone(process.pid, self.stop_timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._remove_shared_memory()

    def _remove_shared_memory(self) -> None:
        """A killed server leaves its Python-backend regions in /dev/shm."""
        if self._shm_prefix:
            for leftover in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_timeout``) and remove the run
        folder. Idempotent."""
        with self._lock:
            self._cleanup()
            self.http_port, self.grpc_port, self.metrics_port = self._requested_ports

    def _cleanup(self) -> None:
        self._terminate()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: [state, ppid, pgrp, …] (None once gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_group_members(pgid: int) -> list[int]:
    """Every live process (zombies excluded) whose process group is ``pgid``, from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait (bounded) until no process of the group is left after a SIGKILL to it: a killed
    process leaves ``/proc`` once it has died; a zombie no longer counts. True when empty."""
    deadline = time.monotonic() + timeout
    while process_group_members(pgid):
        if time.monotonic() > deadline:
            return False
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.02)
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def running_triton(**kwargs: Any) -> Iterator[TritonServer]:
    server = TritonServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.embeddings.tritonserver",
        description="Run Triton on the project's model repository (or render it with --prepare).",
    )
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--variant", choices=sorted(VARIANT_CONFIG_ROOTS), default="cpu")
    parser.add_argument("--encoder", type=Path, default=None, help="local Hugging Face folder")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--runtime", choices=["onnx", "torch"], default=None)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=240.0)
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--prepare", type=Path, default=None, help="only render into this folder")
    options = parser.parse_args(argv)
    if options.prepare is not None:
        prepared = prepare_repository(
            options.prepare,
            source=options.repository,
            variant=options.variant,
            encoder_path=options.encoder,
            cache_dir=options.cache_dir,
            runtime=options.runtime,
            max_tokens=options.max_tokens,
            threads=options.threads,
            max_batch_size=options.max_batch_size,
        )
        print(f"PREPARED {prepared.path} fingerprint={prepared.fingerprint}", flush=True)
        return 0
    server = TritonServer(
        repository=options.repository,
        variant=options.variant,
        encoder_path=options.encoder,
        cache_dir=options.cache_dir,
        runtime=options.runtime,
        max_tokens=options.max_tokens,
        threads=options.threads,
        max_batch_size=options.max_batch_size,
        host=options.host,
        http_port=options.http_port,
        grpc_port=options.grpc_port,
        metrics_port=options.metrics_port,
        startup_timeout=options.startup_timeout,
        log_path=options.log_file,
    )
    stop = threading.Event()
    started = False

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        if not started:  # abort a start in progress; ``finally`` below cleans up
            raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        server.start()
        started = True
        print(f"TRITON_GRPC {server.grpc_url}", flush=True)
        print(f"TRITON_HTTP {server.http_url}", flush=True)
        print(f"TRITON_METRICS http://{server.host}:{server.metrics_port}/metrics", flush=True)
        while not stop.wait(1.0):
            if not server.is_running():
                print("tritonserver exited:\n" + server.log_tail(), file=sys.stderr, flush=True)
                return 1
        return 0
    except TritonStartError as error:
        print(str(error), file=sys.stderr, flush=True)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
