"""What the embeddings domain needs from an encoder backend (Triton; fakes in tests)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The encoder as served right now."""

    name: str
    # What vectors are labelled with: changes whenever the encoder could give other vectors
    # (the serving version plus the encoder's fingerprint), e.g. "1-dbee8c41447a".
    version: str
    dimension: int
    max_batch_size: int
    # The backend's own version of the model (Triton's version folder), pinned on each request.
    backend_version: str = ""


class EncoderBackend(Protocol):
    """Turns texts into L2-normalised vectors; raises ``services.common.errors`` errors only."""

    async def ready(self, timeout: float) -> bool:
        """Server and model ready; never raises."""
        ...

    async def model_info(self, timeout: float) -> ModelInfo: ...

    async def encode(self, texts: Sequence[str], model: ModelInfo, timeout: float) -> Vectors:
        """(len(texts), model.dimension) float32, within ``timeout`` seconds or an error."""
        ...

    async def close(self) -> None: ...
