"""The only Triton caller: ``tritonclient`` over gRPC (asyncio).

Every call is bounded by the caller's time budget (``client_timeout``) and a dead or missing
Triton surfaces as ``Unavailable`` (status UNAVAILABLE) as soon as the connection is refused,
never as a hang. Batches larger than the model's ``max_batch_size`` are split and sent together,
so that Triton's dynamic batcher can keep its instances busy.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from services.common.errors import DeadlineExceeded, ServiceError, Unavailable
from services.embeddings.encoder import ModelInfo, Vectors
from services.embeddings.versions import BASE_VERSION, EncoderVersion

# The contract of deploy/triton/text_encoder (config.pbtxt): [n, 1] BYTES in, [n, dim] FP32 out.
INPUT_NAME = "TEXT"
INPUT_DATATYPE = "BYTES"
OUTPUT_NAME = "EMBEDDING"
DEFAULT_MODEL_NAME = "text_encoder"
# Config parameter the launcher fills with the encoder's fingerprint (see model.py).
FINGERPRINT_PARAMETER = "fingerprint"

_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    # Reconnect within about a second once Triton is back (restarts, rolling deploys).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
_UNAVAILABLE_STATUSES = {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}
# Extra seconds the asyncio guard grants past client_timeout before it gives up on its own.
_GUARD_SLACK = 0.5


def map_triton_error(error: InferenceServerException, model_name: str) -> ServiceError:
    """Triton's error (a gRPC status as a string) as a domain error for our caller."""
    status = str(error.status() or "")
    message = f"triton: {error.message()}"
    if status in _UNAVAILABLE_STATUSES:
        return Unavailable("TRITON_UNAVAILABLE", message, dependency="triton")
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return DeadlineExceeded("TRITON_DEADLINE_EXCEEDED", message, dependency="triton")
    lowered = message.lower()
    if "unknown model" in lowered or "not ready" in lowered or "not found" in lowered:
        # Loading, unloading or a version change: ask again once it has settled.
        return Unavailable("MODEL_NOT_READY", message, dependency="triton", model=model_name)
    return ServiceError("TRITON_FAILED", message, dependency="triton", status=status)


class TritonEncoderClient:
    """``EncoderBackend`` over Triton's gRPC API."""

    def __init__(self, url: str, model_name: str = DEFAULT_MODEL_NAME) -> None:
        self.url = url
        self.model_name = model_name
        self._client = triton_aio.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)
        # The published encoder version every request is pinned to (None: the base version).
        self._pinned: EncoderVersion | None = None

    def pin(self, version: EncoderVersion | None) -> None:
        """Serve ``version`` from now on (None: the repository's base version)."""
        self._pinned = version

    @property
    def pinned(self) -> EncoderVersion | None:
        return self._pinned

    async def version_ready(self, version: str, timeout: float) -> bool:
        """Triton serves this version of the model now."""
        ready = await self._bounded(
            self._client.is_model_ready(
                self.model_name, model_version=version, client_timeout=timeout
            ),
            timeout,
        )
        return bool(ready)

    async def load_model(self, timeout: float) -> None:
        """Ask Triton (explicit model control) to load the model again: it picks up new version
        folders; the versions it serves keep serving while it loads, and stay if the load fails."""
        await self._bounded(
            self._client.load_model(self.model_name, client_timeout=timeout), timeout
        )

    async def _bounded(self, call: Any, timeout: float) -> Any:
        """Await a tritonclient call; its own client_timeout should fire first, the guard is
        there so that nothing here can outlive the budget."""
        if timeout <= 0:
            call.close()  # never started
            raise DeadlineExceeded("DEADLINE_EXHAUSTED", "no time left to call triton")
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # races with the call finishing, and a swallowed cancel leaves the readiness loop
            # (and so the server's stop) waiting forever.
            async with asyncio.timeout(timeout + _GUARD_SLACK):
                return await call
        except InferenceServerException as error:
            raise map_triton_error(error, self.model_name) from error
        except TimeoutError as error:
            raise DeadlineExceeded(
                "TRITON_DEADLINE_EXCEEDED", f"triton did not answer within {timeout:.3f} s"
            ) from error

    async def ready(self, timeout: float) -> bool:
        try:
            server = await self._bounded(
                self._client.is_server_ready(client_timeout=timeout), timeout
            )
            if not server:
                return False
            model = await self._bounded(
                self._client.is_model_ready(self.model_name, client_timeout=timeout), timeout
            )
            return bool(model)
        except ServiceError:
            return False

    async def model_info(self, timeout: float) -> ModelInfo:
        deadline = time.monotonic() + timeout
        metadata = await self._bounded(
            self._client.get_model_metadata(self.model_name, client_timeout=timeout), timeout
        )
        remaining = deadline - time.monotonic()
        response = await self._bounded(
            self._client.get_model_config(self.model_name, client_timeout=remaining), remaining
        )
        config = response.config
        output = next(o for o in config.output if o.name == OUTPUT_NAME)
        pinned = self._pinned
        if pinned is not None:
            backend_version, label = pinned.triton_version, pinned.label
        else:
            # The base version when served (later folders are fine-tuned encoders, served only
            # once published), else the newest (a hand-made repository).
            versions = sorted(metadata.versions, key=lambda v: (len(v), v))
            backend_version = BASE_VERSION if BASE_VERSION in versions or not versions else ""
            backend_version = backend_version or versions[-1]
            parameters = {key: value.string_value for key, value in config.parameters.items()}
            fingerprint = parameters.get(FINGERPRINT_PARAMETER) or _parameters_hash(parameters)
            label = f"{backend_version}-{fingerprint}"
        return ModelInfo(
            name=self.model_name,
            version=label,
            dimension=int(output.dims[-1]),
            max_batch_size=max(1, int(config.max_batch_size)),
            backend_version=backend_version,
        )

    async def encode(self, texts: Sequence[str], model: ModelInfo, timeout: float) -> Vectors:
        if not texts:
            return np.zeros((0, model.dimension), dtype=np.float32)
        size = model.max_batch_size
        chunks = [texts[start : start + size] for start in range(0, len(texts), size)]
        deadline = time.monotonic() + timeout
        if len(chunks) == 1:
            return await self._infer(chunks[0], model, deadline)
        tasks = [asyncio.ensure_future(self._infer(chunk, model, deadline)) for chunk in chunks]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            # One chunk failed (or we were cancelled): the others are of no use any more. The
            # first error is raised as itself, not wrapped, so that it maps to its status.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return np.concatenate(parts, axis=0)

    async def _infer(self, texts: Sequence[str], model: ModelInfo, deadline: float) -> Vectors:
        data = np.array([text.encode("utf-8") for text in texts], dtype=np.object_).reshape(-1, 1)
        request = InferInput(INPUT_NAME, list(data.shape), INPUT_DATATYPE)
        request.set_data_from_numpy(data)
        remaining = deadline - time.monotonic()
        result = await self._bounded(
            self._client.infer(
                self.model_name,
                [request],
                model_version=model.backend_version,
                outputs=[InferRequestedOutput(OUTPUT_NAME)],
                client_timeout=remaining,
            ),
            remaining,
        )
        vectors = result.as_numpy(OUTPUT_NAME)
        if vectors is None or vectors.shape != (len(texts), model.dimension):
            shape = None if vectors is None else vectors.shape
            raise ServiceError(
                "TRITON_BAD_OUTPUT", f"triton answered {shape}, expected {len(texts)} vectors"
            )
        return np.asarray(vectors, dtype=np.float32)

    async def close(self) -> None:
        await self._client.close()


def _parameters_hash(parameters: dict[str, str]) -> str:
    """A stand-in fingerprint for a hand-written config without one."""
    text = ";".join(f"{key}={parameters[key]}" for key in sorted(parameters))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
