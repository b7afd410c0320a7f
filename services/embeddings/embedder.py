"""The embeddings domain: limits, the cache, empty texts, the model's identity.

- At most ``MAX_TEXTS_PER_REQUEST`` texts a call, each at most ``MAX_TEXT_CHARS`` characters
  (Unicode code points); beyond that INVALID_ARGUMENT (TOO_MANY_TEXTS / TEXT_TOO_LONG), and an
  empty list is INVALID_ARGUMENT (NO_TEXTS). Longer-than-the-encoder texts are not an error: the
  encoder truncates at its token limit (256 word pieces for MiniLM).
- An empty or whitespace-only text gives the zero vector without a trip to the encoder (the
  model does the same for direct Triton callers).
- Vectors are cached by (model name, model version, sha256(text)); the model's identity is read
  from the backend and refreshed every ``info_ttl`` seconds, by the readiness probe, and after a
  failed call, so that a new encoder version is noticed and its vectors are never mixed with the
  old ones.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from services.common.errors import InvalidArgument, Unavailable
from services.embeddings.cache import EmbeddingCache, cache_key
from services.embeddings.encoder import EncoderBackend, ModelInfo, Vectors

MAX_TEXTS_PER_REQUEST = 1024
MAX_TEXT_CHARS = 8192


@dataclasses.dataclass(frozen=True)
class Limits:
    max_texts: int = MAX_TEXTS_PER_REQUEST
    max_text_chars: int = MAX_TEXT_CHARS


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    vectors: Vectors  # (n, dimension) float32, in the order of the texts
    model: ModelInfo
    cache_hits: int


class Embedder:
    def __init__(
        self,
        backend: EncoderBackend,
        cache: EmbeddingCache | None = None,
        limits: Limits = Limits(),
        info_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.cache = cache if cache is not None else EmbeddingCache(0)
        self.limits = limits
        self.info_ttl = info_ttl
        self._clock = clock
        self._info: ModelInfo | None = None
        self._info_expires = -math.inf

    @property
    def last_model_info(self) -> ModelInfo | None:
        """The model as last seen (it may be stale while the backend is down)."""
        return self._info

    def validate(self, texts: Sequence[str]) -> None:
        if not texts:
            raise InvalidArgument("NO_TEXTS", "give at least one text")
        if len(texts) > self.limits.max_texts:
            raise InvalidArgument(
                "TOO_MANY_TEXTS",
                f"{len(texts)} texts in one call; at most {self.limits.max_texts}",
                count=len(texts),
                limit=self.limits.max_texts,
            )
        for index, text in enumerate(texts):
            if len(text) > self.limits.max_text_chars:
                raise InvalidArgument(
                    "TEXT_TOO_LONG",
                    f"text {index} has {len(text)} characters; at most "
                    f"{self.limits.max_text_chars}",
                    index=index,
                    length=len(text),
                    limit=self.limits.max_text_chars,
                )

    async def model_info(self, timeout: float, refresh: bool = False) -> ModelInfo:
        if refresh or self._info is None or self._clock() >= self._info_expires:
            try:
                info = await self.backend.model_info(timeout)
            except Exception:
                self.forget_model_info()  # ask again next time
                raise
            self._info, self._info_expires = info, self._clock() + self.info_ttl
        return self._info

    def forget_model_info(self) -> None:
        """Read the model's identity again before the next call (kept for ``describe``)."""
        self._info_expires = -math.inf

    async def ready(self, timeout: float = 1.0) -> bool:
        """Readiness probe: the backend serves the model (and its identity is fresh)."""
        if not await self.backend.ready(timeout):
            self.forget_model_info()
            return False
        try:
            await self.model_info(timeout, refresh=True)
        except Exception:
            return False
        return True

    async def describe(self, timeout: float) -> tuple[ModelInfo, bool]:
        """The model and whether it is ready now; the last known model while it is not."""
        ready = await self.backend.ready(timeout)
        if ready:
            try:
                return await self.model_info(timeout), True
            except Unavailable:
                ready = False
        if self._info is None:
            raise Unavailable("MODEL_UNAVAILABLE", "the encoder is not ready and was never seen")
        return self._info, False

    async def embed(self, texts: Sequence[str], timeout: float) -> EmbedResult:
        self.validate(texts)
        deadline = self._clock() + timeout
        info = await self.model_info(timeout)
        vectors = np.zeros((len(texts), info.dimension), dtype=np.float32)
        hits = 0
        # Distinct non-empty texts that the cache does not hold, with where they go.
        missing: dict[str, list[int]] = {}
        for index, text in enumerate(texts):
            if not text.strip():
                continue  # the zero vector, on purpose
            if text in missing:
                missing[text].append(index)
                continue
            cached = self.cache.get(cache_key(info.name, info.version, text))
            if cached is not None:
                vectors[index] = cached
                hits += 1
            else:
                missing[text] = [index]
        if missing:
            batch = list(missing)
            try:
                encoded = await self.backend.encode(batch, info, deadline - self._clock())
            except Unavailable:
                self.forget_model_info()  # it may come back as another version
                raise
            for text, vector in zip(batch, encoded, strict=True):
                vectors[missing[text]] = vector
                self.cache.put(cache_key(info.name, info.version, text), vector)
        return EmbedResult(vectors=vectors, model=info, cache_hits=hits)
