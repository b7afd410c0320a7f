"""The ranking engine: holds the serving state and swaps it atomically.

State = (catalogue snapshot with its index, collaborative model aligned with it). Reloads,
refreshes and model switches build the next state off the event loop and then replace one
reference; a request keeps the state it started with.

The collaborative model is the registry's active bundle (``model_registry.ModelFollower``): every
refresh, and ``follow_registry`` between refreshes, asks the registry and switches when the active
version changed and its bundle verifies; a refused bundle leaves the previous model serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
import random
import time
from collections.abc import Sequence

from services.common.deadlines import HasTimeRemaining
from services.common.errors import FailedPrecondition, InvalidArgument, ServiceError, Unavailable
from services.ranking.catalog import (
    CatalogLoader,
    CatalogSnapshot,
    InteractionSource,
    TextEncoder,
)
from services.ranking.collaborative import AlsParams, CollaborativeModel
from services.ranking.index import FloatArray, IndexParams
from services.ranking.model_registry import ModelFollower
from services.ranking.scorer import (
    CollaborativeView,
    HistoryItem,
    RankQuery,
    RankResult,
    ScorerConfig,
    VectorSource,
    rank,
)
from services.ranking.training import RankerTrainingParams, fit_models

log = logging.getLogger(__name__)

DEFAULT_CANDIDATE_COUNT = 100
MAX_CANDIDATE_COUNT = 1000
MAX_HISTORY = 1000
MAX_EXCLUSIONS = 10_000
# The embeddings service rejects longer texts; the encoder truncates far earlier anyway.
MAX_INTERESTS_CHARS = 8192
MAX_FACTORS = 1024
MAX_ITERATIONS = 1000
# Useful L2 regularisation of implicit ALS lies around 0.001-10; far larger values (1e30) make
# its float32 solver produce NaN factors, so they are refused up front.
MAX_REGULARIZATION = 1e6


@dataclasses.dataclass(frozen=True, eq=False)
class RankingState:
    snapshot: CatalogSnapshot
    collaborative: CollaborativeView | None

    @property
    def collaborative_version(self) -> str:
        return "" if self.collaborative is None else self.collaborative.model.version


@dataclasses.dataclass(frozen=True)
class RankRequest:
    user_id: str
    history: Sequence[HistoryItem]
    interests: str = ""
    candidate_count: int = 0
    exclude_item_ids: Sequence[str] = ()
    include_vectors: bool = False
    include_history: bool = False


class DegradedCause(enum.StrEnum):
    """Why an answer is of lower quality than the request would normally get (the wire names of
    ``RankCandidatesResponse.degraded_causes``)."""

    # No usable history, interests stated, and embeddings failed, ran out of time or returned a
    # zero vector: the user vector came from nowhere, the candidates are the popularity-and-tail
    # list.
    INTERESTS_NOT_EMBEDDED = "INTERESTS_NOT_EMBEDDED"
    # The interests were embedded by another model (or dimension) than the catalogue's vectors.
    INTERESTS_MODEL_MISMATCH = "INTERESTS_MODEL_MISMATCH"


@dataclasses.dataclass(frozen=True)
class RankOutcome:
    result: RankResult
    index_version: str
    collaborative_version: str
    # Empty: the answer is as good as this request can get.
    degraded_causes: tuple[DegradedCause, ...] = ()


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    collaborative_version: str
    user_count: int
    item_count: int
    interaction_count: int
    duration_seconds: float


@dataclasses.dataclass(frozen=True)
class RankingStatus:
    loaded: bool
    index_version: str = ""
    collaborative_version: str = ""
    indexed_item_count: int = 0
    index_kind: str = ""
    embedding_model_name: str = ""
    embedding_model_version: str = ""


def resolve_candidate_count(requested: int) -> int:
    """0 means the default (100); 1..1000 as asked; anything else is rejected."""
    if requested == 0:
        return DEFAULT_CANDIDATE_COUNT
    if requested < 0 or requested > MAX_CANDIDATE_COUNT:
        raise InvalidArgument(
            "CANDIDATE_COUNT_OUT_OF_RANGE",
            f"candidate_count must be in 0..{MAX_CANDIDATE_COUNT}, got {requested}",
            candidate_count=requested,
        )
    return requested


def validate_rank_request(request: RankRequest) -> RankRequest:
    """The request with its defaults applied; InvalidArgument for bad input."""
    if not request.user_id.strip():
        raise InvalidArgument("EMPTY_USER_ID", "user_id is required")
    count = resolve_candidate_count(request.candidate_count)
    if len(request.history) > MAX_HISTORY:
        raise InvalidArgument(
            "HISTORY_TOO_LARGE", f"at most {MAX_HISTORY} history entries", size=len(request.history)
        )
    if any(not entry.item_id for entry in request.history):
        raise InvalidArgument("EMPTY_ITEM_ID", "a history entry has an empty item_id")
    if len(request.exclude_item_ids) > MAX_EXCLUSIONS:
        raise InvalidArgument(
            "TOO_MANY_EXCLUSIONS",
            f"at most {MAX_EXCLUSIONS} excluded ids",
            size=len(request.exclude_item_ids),
        )
    return dataclasses.replace(request, candidate_count=count)


def resolve_als_params(
    base: AlsParams, factors: int, iterations: int, regularization: float
) -> AlsParams:
    """Training parameters from a request (0 = default), validated."""
    if not 0 <= factors <= MAX_FACTORS:
        raise InvalidArgument(
            "FACTORS_OUT_OF_RANGE", f"factors must be in 0..{MAX_FACTORS}", factors=factors
        )
    if not 0 <= iterations <= MAX_ITERATIONS:
        raise InvalidArgument(
            "ITERATIONS_OUT_OF_RANGE",
            f"iterations must be in 0..{MAX_ITERATIONS}",
            iterations=iterations,
        )
    if not math.isfinite(regularization) or not 0 <= regularization <= MAX_REGULARIZATION:
        raise InvalidArgument(
            "REGULARIZATION_OUT_OF_RANGE",
            f"regularization must be finite and in 0..{MAX_REGULARIZATION:g}",
            regularization=regularization,
        )
    return dataclasses.replace(
        base,
        factors=factors or base.factors,
        iterations=iterations or base.iterations,
        regularization=regularization or base.regularization,
    )


def _assemble(
    snapshot: CatalogSnapshot, model: CollaborativeModel | None, config: ScorerConfig
) -> RankingState:
    view = (
        None
        if model is None
        else CollaborativeView.build(model, snapshot, config.content_map_ridge)
    )
    return RankingState(snapshot, view)


class RankingEngine:
    """Serving state plus the operations that replace it."""

    def __init__(
        self,
        loader: CatalogLoader,
        interactions: InteractionSource,
        encoder: TextEncoder,
        models: ModelFollower,
        scorer_config: ScorerConfig | None = None,
        als_params: AlsParams | None = None,
        index_params: IndexParams | None = None,
        ranker_params: RankerTrainingParams | None = None,
        train_in_process: bool = True,
    ) -> None:
        self._loader = loader
        self._interactions = interactions
        self._encoder = encoder
        self._models = models
        # TrainModel (deprecated) fits here only when allowed; deployments run the training job.
        self._train_in_process = train_in_process
        self._config = scorer_config or ScorerConfig()
        self._als = als_params or AlsParams()
        self._index_params = index_params or IndexParams()
        # None turns the learned ranker off (training then stores the ALS model alone).
        self._ranker_params = ranker_params
        self._state: RankingState | None = None
        self._model: CollaborativeModel | None = None
        # One writer of the state at a time (reload, refresh, model swap after training).
        self._swap_lock = asyncio.Lock()
        self._train_lock = asyncio.Lock()

    @property
    def state(self) -> RankingState | None:
        return self._state

    @property
    def ready(self) -> bool:
        """Loaded at least once (an empty catalogue is ready; it just has no candidates)."""
        return self._state is not None

    @property
    def default_als_params(self) -> AlsParams:
        return self._als

    async def _load_model(
        self, deadline: HasTimeRemaining | None = None
    ) -> CollaborativeModel | None:
        """The registry's active model (the loaded one when unchanged, when the active bundle is
        refused, or when the registry cannot be asked: the catalogue still loads meanwhile)."""
        try:
            return await self._models.resolve(self._model, deadline)
        except (ServiceError, TimeoutError) as error:
            self._models.metrics.refusals.labels("unavailable").inc()
            log.warning(
                "model registry not reachable; keeping the current model",
                extra={"fields": {"error": type(error).__name__, "detail": str(error)}},
            )
            return self._model

    async def follow_registry(self, deadline: HasTimeRemaining | None = None) -> bool:
        """Switch to the registry's active model if it changed; True when the state was replaced.

        Cheap when nothing changed (one small registry call); the catalogue is not reloaded.
        """
        if self._state is None:
            return False
        async with self._swap_lock:
            current = self._state
            model = await self._load_model(deadline)
            if model is self._model:
                return False
            state = await asyncio.to_thread(_assemble, current.snapshot, model, self._config)
            self._swap(state, model)
            return True

    async def reload(self, deadline: HasTimeRemaining | None = None) -> RankingState:
        """Reload catalogue, index and the current collaborative model; swap them in."""
        async with self._swap_lock:
            model = await self._load_model(deadline)
            previous = None if self._state is None else self._state.snapshot
            snapshot = await self._loader.load(previous, deadline)
            state = await asyncio.to_thread(_assemble, snapshot, model, self._config)
            self._swap(state, model)
            return state

    async def refresh(self, deadline: HasTimeRemaining | None = None) -> bool:
        """Pick up catalogue or model changes; True when the state was replaced."""
        if self._state is None:
            await self.reload(deadline)
            return True
        async with self._swap_lock:
            current = self._state
            snapshot = await self._loader.refresh(current.snapshot, deadline)
            model = await self._load_model(deadline)
            if snapshot is None and model is self._model:
                return False
            state = await asyncio.to_thread(
                _assemble, snapshot or current.snapshot, model, self._config
            )
            self._swap(state, model)
            return True

    def _swap(self, state: RankingState, model: CollaborativeModel | None) -> None:
        old = self._state
        self._state = state
        self._model = model
        if (
            old is None
            or old.snapshot is not state.snapshot
            or old.collaborative_version != (state.collaborative_version)
        ):
            log.info(
                "ranking state swapped",
                extra={
                    "fields": {
                        "index_version": state.snapshot.version,
                        "index_kind": state.snapshot.index.kind,
                        "items": state.snapshot.size,
                        "delta_items": state.snapshot.index.delta_size,
                        "collaborative_version": state.collaborative_version,
                    }
                },
            )

    async def train(
        self, params: AlsParams | None = None, deadline: HasTimeRemaining | None = None
    ) -> TrainOutcome:
        """Fit in this process, write the bundle, publish it and serve it (the deprecated
        TrainModel path; ``python -m services.training`` does the same out of process)."""
        if not self._train_in_process:
            raise FailedPrecondition(
                "TRAINING_IS_A_JOB",
                "this deployment trains out of process: run the training job "
                "(longtail train, python -m services.training); TrainModel is deprecated",
            )
        params = params or self._als
        async with self._train_lock:
            batches = [b async for b in self._interactions.interaction_batches(deadline)]
            if not any(len(b.user_ids) for b in batches):
                raise FailedPrecondition("NO_INTERACTIONS", "there are no interactions to train on")
            # The ranker's features come from the served snapshot: pick up items indexed since
            # the last reload first (else a catalogue indexed just before training is missed).
            await self.refresh(deadline)
            state = self._state
            assert state is not None  # refresh loads the first state or raises
            fitted = await asyncio.to_thread(
                fit_models,
                state.snapshot,
                batches,
                params,
                self._config,
                self._index_params,
                self._ranker_params,
            )
            model = fitted.model
            await self._models.publish(
                fitted, "ranking TrainModel (in process)", "TrainModel RPC", deadline
            )
            async with self._swap_lock:
                if self._state is not None:
                    state = await asyncio.to_thread(
                        _assemble, self._state.snapshot, model, self._config
                    )
                    self._swap(state, model)
                else:
                    self._model = model
        return TrainOutcome(
            model.version,
            model.user_count,
            model.item_count,
            model.interaction_count,
            model.duration_seconds,
        )

    async def _interests_vector(
        self, interests: str, snapshot: CatalogSnapshot, deadline: HasTimeRemaining | None
    ) -> FloatArray | DegradedCause:
        """The interests in the catalogue's space, or why that is impossible (the request is then
        served the popularity-and-tail candidates, and marked degraded)."""
        try:
            encoded = await self._encoder.embed(interests[:MAX_INTERESTS_CHARS], deadline)
        except (ServiceError, TimeoutError) as error:
            log.warning(
                "interests not embedded; popularity and tail fallback",
                extra={"fields": {"error": type(error).__name__, "detail": str(error)}},
            )
            return DegradedCause.INTERESTS_NOT_EMBEDDED
        if snapshot.model is not None and encoded.model != snapshot.model:
            log.warning(
                "interests embedded by another model than the catalogue's; fallback",
                extra={
                    "fields": {
                        "encoder": f"{encoded.model.name}:{encoded.model.version}",
                        "catalogue": f"{snapshot.model.name}:{snapshot.model.version}",
                    }
                },
            )
            return DegradedCause.INTERESTS_MODEL_MISMATCH
        return encoded.vector

    async def rank(
        self, request: RankRequest, deadline: HasTimeRemaining | None = None
    ) -> RankOutcome:
        request = validate_rank_request(request)
        state = self._state
        if state is None:
            raise Unavailable("CATALOG_NOT_LOADED", "the catalogue snapshot is not loaded yet")
        snapshot = state.snapshot
        model = None if state.collaborative is None else state.collaborative.model
        usable_history = any(
            h.item_id in snapshot.rows or (model is not None and h.item_id in model.item_rows)
            for h in request.history
        )
        interests_vector: FloatArray | None = None
        causes: list[DegradedCause] = []
        wants_interests = (
            not usable_history and bool(request.interests.strip()) and snapshot.size > 0
        )
        if wants_interests:
            embedded = await self._interests_vector(request.interests, snapshot, deadline)
            if isinstance(embedded, DegradedCause):
                causes.append(embedded)
            else:
                interests_vector = embedded
        query = RankQuery(
            history=request.history,
            candidate_count=request.candidate_count,
            exclude_item_ids=request.exclude_item_ids,
            interests_vector=interests_vector,
            include_vectors=request.include_vectors,
            include_history=request.include_history,
        )
        started = time.perf_counter()
        ranker = None if model is None else model.ranker
        result = await asyncio.to_thread(
            rank, snapshot, state.collaborative, query, self._config, ranker
        )
        log.debug(
            "ranked",
            extra={
                "fields": {
                    "source": result.source.value,
                    "pool": result.pool_size,
                    "candidates": len(result.candidates),
                    "ms": round((time.perf_counter() - started) * 1000, 3),
                }
            },
        )
        if result.source is VectorSource.NONE and request.history:
            log.debug("no usable history for ranking", extra={"fields": {"user": request.user_id}})
        if interests_vector is not None and result.source is VectorSource.NONE:
            # Embedded, yet unusable by the scorer: another dimension, or a zero vector.
            causes.append(
                DegradedCause.INTERESTS_MODEL_MISMATCH
                if interests_vector.shape[0] != snapshot.dimension
                else DegradedCause.INTERESTS_NOT_EMBEDDED
            )
        return RankOutcome(
            result, snapshot.version, state.collaborative_version, degraded_causes=tuple(causes)
        )

    def status(self) -> RankingStatus:
        state = self._state
        if state is None:
            return RankingStatus(loaded=False)
        snapshot = state.snapshot
        return RankingStatus(
            loaded=True,
            index_version=snapshot.version,
            collaborative_version=state.collaborative_version,
            indexed_item_count=snapshot.size,
            index_kind=snapshot.index.kind,
            embedding_model_name=snapshot.model.name if snapshot.model else "",
            embedding_model_version=snapshot.model.version if snapshot.model else "",
        )

    async def follow_registry_forever(
        self, poll_seconds: float, jitter: float = 0.2, rng: random.Random | None = None
    ) -> None:
        """Poll the registry every ``poll_seconds`` x (1 +- ``jitter``) (replicas spread their
        polls) and switch models when the active version changes; errors keep the model."""
        rng = rng or random.Random()
        while True:
            await asyncio.sleep(poll_seconds * (1.0 + rng.uniform(-jitter, jitter)))
            try:
                await self.follow_registry()
            except Exception as error:
                log.warning(
                    "model registry poll failed; serving the previous model",
                    extra={"fields": {"error": type(error).__name__, "detail": str(error)}},
                )

    async def run_background(self, refresh_seconds: float, retry_seconds: float = 1.0) -> None:
        """Load until the first load succeeds, then refresh every ``refresh_seconds``."""
        delay = retry_seconds
        while self._state is None:
            try:
                await self.reload()
            except Exception as error:  # a dependency still starting: retry, never die
                log.warning(
                    "initial catalogue load failed; retrying",
                    extra={"fields": {"error": type(error).__name__, "detail": str(error)}},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(refresh_seconds, retry_seconds))
        if refresh_seconds <= 0:
            return
        while True:
            await asyncio.sleep(refresh_seconds)
            try:
                await self.refresh()
            except Exception as error:
                log.warning(
                    "catalogue refresh failed; serving the previous snapshot",
                    extra={"fields": {"error": type(error).__name__, "detail": str(error)}},
                )
