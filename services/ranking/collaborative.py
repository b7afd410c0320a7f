"""The collaborative model: implicit-feedback ALS (``implicit``, CPU).

A fitted model travels as a bundle in the artefact store (``bundle.py``), which the registry
names as active and every ranking replica loads and verifies (``model_registry.py``).

Serving never looks a user up: the user factor is folded in from the request's history with the
item factors fixed (the same least-squares step ALS itself runs for users), so users who arrived
after training, and the newest part of everyone's history, count at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import logging
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse

from services.ranking.learned import LearnedRanker
from services.ranking.tower import TowerRunner

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
RowArray = npt.NDArray[np.int64]

# Format of the collaborative model's files in a bundle (bundle.py).
ARTIFACT_FORMAT = 1

# Interaction kinds (longtail.common.v1.InteractionKind numbers; kept numeric so that this module
# is usable without the generated contracts). Stronger signals weigh more in ALS confidence.
KIND_VIEW = 1
KIND_CLICK = 2
KIND_PURCHASE = 3
KIND_RATING = 4
_KIND_WEIGHTS = {KIND_VIEW: 1.0, KIND_CLICK: 1.5, KIND_PURCHASE: 3.0}


def interaction_weight(kind: int, value: float = 0.0) -> float:
    """Confidence weight of one interaction (every rating is a positive, stronger when higher).

    A rating ``value`` on a 0-5 scale maps to 1..2; unknown kinds weigh 1.
    """
    if kind == KIND_RATING:
        return 1.0 + min(max(value, 0.0), 5.0) / 5.0
    return _KIND_WEIGHTS.get(kind, 1.0)


@dataclasses.dataclass(frozen=True)
class AlsParams:
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    # Confidence = alpha * summed interaction weight (Hu, Koren & Volinsky 2008).
    alpha: float = 2.0
    # Fixed seed: the same interactions give the same factors.
    random_state: int = 20_261_127
    # The machines have 2 cores; more threads only contend.
    num_threads: int = 2


@dataclasses.dataclass(frozen=True)
class InteractionBatch:
    """Interactions in columns: (user_ids[i], item_ids[i], weights[i])."""

    user_ids: Sequence[str]
    item_ids: Sequence[str]
    weights: Sequence[float] | npt.NDArray[np.float64]
    # Seconds since the epoch of each interaction (the learned ranker's time split needs them);
    # None when the source does not know them.
    timestamps: Sequence[float] | npt.NDArray[np.float64] | None = None


class CollaborativeModel:
    """Trained item factors plus what serving needs to fold users in."""

    def __init__(
        self,
        version: str,
        item_ids: Sequence[str],
        item_factors: FloatArray,
        item_counts: RowArray,
        params: AlsParams,
        *,
        user_ids: Sequence[str] = (),
        user_factors: FloatArray | None = None,
        interaction_count: int = 0,
        duration_seconds: float = 0.0,
        created_at: str = "",
        ranker: LearnedRanker | None = None,
        tower: TowerRunner | None = None,
    ) -> None:
        if item_factors.shape[0] != len(item_ids) or item_counts.shape[0] != len(item_ids):
            raise ValueError("item factors, counts and ids differ in length")
        self.version = version
        self.item_ids = list(item_ids)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.item_counts = np.asarray(item_counts, dtype=np.int64)
        self.params = params
        self.user_ids = list(user_ids)
        self.user_factors = user_factors
        self.interaction_count = interaction_count
        self.duration_seconds = duration_seconds
        self.created_at = created_at
        # The learned ranker fitted with this model (None: serving uses the hand-set blend).
        self.ranker = ranker
        # The sequential user tower the ranker's features were computed with (None: no tower).
        self.tower = tower
        self.item_rows = {item_id: row for row, item_id in enumerate(self.item_ids)}
        factors = self.item_factors.astype(np.float64)
        # Y^T Y + lambda I: the shared part of every user's normal equations.
        self._gram = factors.T @ factors + params.regularization * np.eye(factors.shape[1])

    @property
    def factors(self) -> int:
        return int(self.item_factors.shape[1])

    @property
    def item_count(self) -> int:
        return len(self.item_ids)

    @property
    def user_count(self) -> int:
        return len(self.user_ids)

    def fold_in(self, rows: RowArray, weights: npt.ArrayLike) -> FloatArray | None:
        """The user factor for a history given as model item rows and interaction weights.

        Solves (Y^T C_u Y + lambda I) x = Y^T C_u p_u, written as
        (Y^T Y + lambda I + Y_h^T (C_h - I) Y_h) x = Y_h^T c_h — what implicit's
        ``recalculate_user`` computes. Repeated items have their weights summed.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape[0] == 0:
            return None
        unique, inverse = np.unique(rows, return_inverse=True)
        summed = np.bincount(inverse, weights=np.asarray(weights, dtype=np.float64))
        confidence = self.params.alpha * summed
        history = self.item_factors[unique].astype(np.float64)
        lhs = self._gram + (history.T * (confidence - 1.0)) @ history
        rhs = history.T @ confidence
        try:
            solution = np.linalg.solve(lhs, rhs)
        except np.linalg.LinAlgError:
            solution = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        return solution.astype(np.float32)

    def scores(self, user_factor: FloatArray) -> FloatArray:
        """Predicted preference of the user for every model item (row order)."""
        result: FloatArray = self.item_factors @ user_factor
        return result


def _threadpool_limits(limit: int) -> contextlib.AbstractContextManager[Any]:
    # implicit's solver does its own threading; OpenBLAS threads on top of it only contend.
    try:
        import threadpoolctl  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - installed with implicit
        return contextlib.nullcontext()
    limits: contextlib.AbstractContextManager[Any] = threadpoolctl.threadpool_limits(limit, "blas")
    return limits


def train_als(
    batches: Iterable[InteractionBatch], params: AlsParams | None = None, version: str | None = None
) -> CollaborativeModel:
    """Fit ALS on all interactions (CPU-heavy: call it off the event loop).

    Raises ``ValueError`` when there are no interactions.
    """
    from implicit.cpu.als import AlternatingLeastSquares

    params = params or AlsParams()
    started = time.perf_counter()
    users: list[str] = []
    items: list[str] = []
    weight_parts: list[npt.NDArray[np.float64]] = []
    for batch in batches:
        users.extend(batch.user_ids)
        items.extend(batch.item_ids)
        weight_parts.append(np.asarray(batch.weights, dtype=np.float64))
    if not users:
        raise ValueError("no interactions to train on")
    weights = np.concatenate(weight_parts)
    # Sorted id maps make the matrix, and so the factors, independent of the paging order.
    user_ids, user_index = np.unique(np.asarray(users, dtype=object), return_inverse=True)
    item_ids, item_index = np.unique(np.asarray(items, dtype=object), return_inverse=True)
    matrix = scipy.sparse.csr_matrix(
        (weights.astype(np.float32), (user_index, item_index)),
        shape=(len(user_ids), len(item_ids)),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    item_counts = np.bincount(item_index, minlength=len(item_ids)).astype(np.int64)

    with _threadpool_limits(1), warnings.catch_warnings():
        # OpenBLAS 0.3.30 (scipy's) can report its old thread count in a worker thread after
        # the limit above is set; implicit then warns although the limit is in place. The process
        # entry point also sets OPENBLAS_NUM_THREADS=1 before any BLAS loads.
        warnings.filterwarnings("ignore", message="OpenBLAS is configured", category=RuntimeWarning)
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations,
            calculate_training_loss=False,
            num_threads=params.num_threads,
            random_state=params.random_state,
        )
        model.fit(matrix, show_progress=False)
    item_factors = np.asarray(model.item_factors, dtype=np.float32)
    user_factors = np.asarray(model.user_factors, dtype=np.float32)
    duration = time.perf_counter() - started
    if version is None:
        digest = hashlib.sha256(item_factors.tobytes()).hexdigest()[:8]
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
        version = f"als-{stamp}-{digest}"
    return CollaborativeModel(
        version,
        [str(i) for i in item_ids],
        item_factors,
        item_counts,
        params,
        user_ids=[str(u) for u in user_ids],
        user_factors=user_factors,
        interaction_count=len(users),
        duration_seconds=duration,
        created_at=datetime.datetime.now(datetime.UTC).isoformat(),
    )
