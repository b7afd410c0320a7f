"""The sequential user tower as ranking serves it: its ONNX graph run with onnxruntime (no torch).

The tower (trained by ``services.ranking.user_tower``) reads the last ``max_length`` item vectors
of a history, oldest first, and gives a unit user vector in the item-vector space: a candidate
source (ANN over the item vectors, the tail and cold pools) and the ``tower_user`` feature of the
learned ranker. It travels in the ranking bundle with ALS and the ranker, because the ranker's
features are computed with it: they are published, served and rolled back together.

Why in ranking and not in Triton (the design card puts models in Triton): the tower's input is
the history's item vectors, which ranking holds; through Triton every Recommend would add two
gRPC hops (ranking -> embeddings -> Triton) and 50 x 384 floats each way, about 1 ms of CPU for a
model that takes ~0.2 ms to run here. The graph is plain ONNX: Triton can serve it unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

INPUT_HISTORY = "history"
INPUT_LENGTHS = "lengths"
OUTPUT = "user_vector"


class TowerRunner:
    """One ONNX session; ``vector`` for one history (most recent first, as ranking holds it)."""

    def __init__(self, onnx: bytes, description: dict[str, Any]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One request's tower is tiny: one thread, no spinning pool competing with the server.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session: Any = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        shape = self.session.get_inputs()[0].shape
        self.max_length = int(shape[1])
        self.dimension = int(shape[2])
        self.description = description
        self.onnx = onnx

    @classmethod
    def from_files(cls, onnx: bytes, config: bytes) -> TowerRunner:
        return cls(onnx, json.loads(config))

    def config_bytes(self) -> bytes:
        return json.dumps(self.description, indent=2, sort_keys=True).encode()

    def vector(self, recent_first: FloatArray) -> FloatArray | None:
        """The user vector from item vectors, most recent first; None without any."""
        if recent_first.shape[0] == 0 or recent_first.shape[1] != self.dimension:
            return None
        oldest_first = recent_first[: self.max_length][::-1]
        history = np.zeros((1, self.max_length, self.dimension), dtype=np.float32)
        history[0, self.max_length - oldest_first.shape[0] :] = oldest_first
        lengths = np.asarray([oldest_first.shape[0]], dtype=np.int64)
        out = self.session.run([OUTPUT], {INPUT_HISTORY: history, INPUT_LENGTHS: lengths})[0]
        vector = np.asarray(out[0], dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm <= 1e-12:
            return None
        result: FloatArray = vector / np.float32(norm)
        return result
