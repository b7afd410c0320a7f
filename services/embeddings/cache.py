"""An in-process LRU cache of embeddings keyed by (model name, model version, sha256(text)).

The model version is part of the key, so a new encoder never gets an old vector: after a model
change every text is a miss. Stored vectors are read-only, so no caller can corrupt an entry.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from services.embeddings.encoder import Vectors

CacheKey = tuple[str, str, bytes]


def cache_key(model_name: str, model_version: str, text: str) -> CacheKey:
    return (model_name, model_version, hashlib.sha256(text.encode("utf-8")).digest())


class EmbeddingCache:
    """Least-recently-used, at most ``max_entries`` vectors (0 disables it)."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, Vectors] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Vectors | None:
        vector = self._entries.get(key)
        if vector is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return vector

    def put(self, key: CacheKey, vector: Vectors) -> None:
        if self.max_entries == 0:
            return
        stored = np.array(vector, dtype=np.float32, copy=True)
        stored.setflags(write=False)
        self._entries[key] = stored
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
