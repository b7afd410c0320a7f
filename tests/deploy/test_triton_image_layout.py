"""The Triton image's model layout and flags, on the real tritonserver binary (nvidia-pytriton).

deploy/images/triton/Dockerfile puts the CPU config at text_encoder/config.pbtxt and the GPU
variant at text_encoder/configs/gpu.pbtxt, and starts the server with the ENTRYPOINT's flags; the
prod-gpu overlay and compose.gpu.yaml add ``--model-config-name=gpu``. This starts the server on
that layout (a stand-in model.py, since the point is the configuration; the GPU variant's instance
kind switched to CPU, as this machine has no GPU) and checks which configuration Triton loaded.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_triton

ROOT = Path(__file__).resolve().parents[2]
TRITON = ROOT / "deploy" / "triton"
DOCKERFILE = ROOT / "deploy" / "images" / "triton" / "Dockerfile"

STAND_IN_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().shape[0]
            tensor = pb_utils.Tensor("EMBEDDING", np.zeros((n, 384), dtype=np.float32))
            out.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return out
"""


def _entrypoint_flags() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("ENTRYPOINT"))
    command: list[str] = json.loads(line.removeprefix("ENTRYPOINT"))
    assert command[0] == "tritonserver"
    return [flag for flag in command[1:] if not flag.startswith("--model-repository")]


def _repository(target: Path) -> Path:
    """/models as the Dockerfile lays it out (COPY text_encoder, COPY gpu config -> configs/)."""
    model = target / "models" / "text_encoder"
    (model / "1").mkdir(parents=True)
    (model / "configs").mkdir()
    shutil.copy2(TRITON / "text_encoder" / "config.pbtxt", model / "config.pbtxt")
    gpu = (TRITON / "gpu" / "text_encoder" / "config.pbtxt").read_text()
    assert "KIND_GPU" in gpu
    (model / "configs" / "gpu.pbtxt").write_text(gpu.replace("KIND_GPU", "KIND_CPU"))
    (model / "1" / "model.py").write_text(STAND_IN_MODEL)
    # What the compose file used to mount: a folder that is no model must not stop the server.
    (target / "models" / "gpu").mkdir()
    return target / "models"


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            body: bytes = answer.read()
            return body
    except OSError:
        return None


@contextlib.contextmanager
def _serve(tmp: Path, extra: list[str]) -> Iterator[dict[str, object]]:
    from services.embeddings.tritonserver import (
        TritonDistribution,
        free_ports,
        server_environment,
    )

    require_triton()  # absent Triton only; an import error or anything else fails loudly
    distribution = TritonDistribution.find()
    backends = distribution.make_backends(tmp / "backends")
    http, grpc_port, metrics = free_ports(3)
    log = (tmp / "triton.log").open("wb")
    process = subprocess.Popen(
        [
            str(distribution.binary),
            f"--model-repository={_repository(tmp)}",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name=ltlayout{http}_",
            "--http-address=127.0.0.1",
            f"--http-port={http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={metrics}",
            "--allow-gpu-metrics=false",
            *_entrypoint_flags(),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=server_environment(),
        cwd=tmp,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 120
        while _get(f"{base}/v2/health/ready") is None:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (tmp / "triton.log").read_text(errors="replace")[-3000:]
                # The binary runs here: a server that stops on these flags is a real failure.
                pytest.fail(f"tritonserver did not become ready:\n{tail}")
            time.sleep(0.5)
        body = _get(f"{base}/v2/models/text_encoder/config")
        assert body is not None
        config: dict[str, object] = json.loads(body)
        yield config
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.triton
@pytest.mark.slow
def test_default_loads_the_cpu_config_and_the_gpu_name_selects_the_gpu_variant(
    tmp_path: Path,
) -> None:
    for name, extra, batch in (("cpu", [], 64), ("gpu", ["--model-config-name=gpu"], 256)):
        folder = tmp_path / name
        folder.mkdir()
        with _serve(folder, extra) as config:
            assert config["max_batch_size"] == batch, (name, config)
