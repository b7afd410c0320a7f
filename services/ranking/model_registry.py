"""Where ranking's models come from: the registry (which bundle is active) and the artefact store
(the bundle itself).

``ModelRegistry`` is the registry as ranking sees it: profiles' PublishModel / GetActiveModel over
gRPC in a deployment (``ProfilesModelRegistry``), or ``InProcessModelRegistry`` when ranking runs
over injected sources (tests, no profiles service). ``ModelFollower`` turns "the active version
is X" into a verified ``CollaborativeModel``, downloading and checking off the event loop, and
remembers bundles it refused so that a corrupt bundle costs one download, not one per poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter

from longtail.profiles.v1 import profiles_service_pb2
from services.common.artifacts import (
    ArtifactError,
    ArtifactStore,
    BundleIncompatible,
    BundleRefused,
    Manifest,
    code_version,
)
from services.common.deadlines import HasTimeRemaining, outbound_timeout
from services.common.errors import from_upstream
from services.ranking.bundle import MODEL_KIND, load_bundle, save_bundle
from services.ranking.collaborative import CollaborativeModel
from services.ranking.training import FittedModels

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ActiveModel:
    version: str
    # SHA-256 of the bundle's manifest as published ("" = not given: not checked).
    manifest_sha256: str = ""


class ModelRegistry(Protocol):
    async def active(self, kind: str, deadline: HasTimeRemaining | None) -> ActiveModel | None: ...

    async def publish(
        self,
        kind: str,
        active: ActiveModel,
        published_by: str,
        reason: str,
        deadline: HasTimeRemaining | None,
    ) -> None: ...


class ProfilesModelRegistry:
    """The registry in the profiles store, over its gRPC API."""

    def __init__(self, profiles: Any, timeout: float = 10.0) -> None:
        self._profiles = profiles
        self._timeout = timeout

    async def active(self, kind: str, deadline: HasTimeRemaining | None) -> ActiveModel | None:
        try:
            answer = await self._profiles.GetActiveModel(
                profiles_service_pb2.GetActiveModelRequest(model_kind=kind),
                timeout=outbound_timeout(deadline, self._timeout),
            )
        except grpc.aio.AioRpcError as error:
            raise from_upstream(error, "profiles") from error
        if not answer.HasField("publication"):
            return None
        return ActiveModel(answer.publication.version, answer.publication.manifest_sha256)

    async def publish(
        self,
        kind: str,
        active: ActiveModel,
        published_by: str,
        reason: str,
        deadline: HasTimeRemaining | None,
    ) -> None:
        try:
            await self._profiles.PublishModel(
                profiles_service_pb2.PublishModelRequest(
                    model_kind=kind,
                    version=active.version,
                    manifest_sha256=active.manifest_sha256,
                    published_by=published_by,
                    reason=reason,
                ),
                timeout=outbound_timeout(deadline, self._timeout),
            )
        except grpc.aio.AioRpcError as error:
            raise from_upstream(error, "profiles") from error


class InProcessModelRegistry:
    """A registry held in this process: for a ranking built over injected sources (no profiles
    service), where nothing else could follow it anyway."""

    def __init__(self) -> None:
        self._active: dict[str, ActiveModel] = {}

    async def active(self, kind: str, deadline: HasTimeRemaining | None) -> ActiveModel | None:
        return self._active.get(kind)

    async def publish(
        self,
        kind: str,
        active: ActiveModel,
        published_by: str,
        reason: str,
        deadline: HasTimeRemaining | None,
    ) -> None:
        self._active[kind] = active


class FollowerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.refusals = Counter(
            "longtail_model_bundle_refusals_total",
            "Active bundles this replica refused to serve (it kept the previous model), by "
            "reason: corrupt (checksum, size, missing file), incompatible (format, features), "
            "unavailable (store or registry unreachable; retried at the next poll).",
            ["reason"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "longtail_model_swaps_total",
            "Collaborative model versions this replica switched to.",
            registry=self.registry,
        )


class ModelFollower:
    """The active collaborative bundle, downloaded and verified; ``current`` when unchanged."""

    def __init__(
        self,
        registry: ModelRegistry,
        store: ArtifactStore,
        metrics: FollowerMetrics | None = None,
        kind: str = MODEL_KIND,
    ) -> None:
        self.registry = registry
        self.store = store
        self.metrics = metrics or FollowerMetrics()
        self.kind = kind
        # Bundles refused for what they are (not for an outage): never downloaded again.
        self._refused: set[ActiveModel] = set()

    async def resolve(
        self, current: CollaborativeModel | None, deadline: HasTimeRemaining | None = None
    ) -> CollaborativeModel | None:
        """The model to serve: the active one when it loads and verifies, else ``current``.

        Raises only when the registry cannot be asked (the caller keeps serving and retries).
        """
        active = await self.registry.active(self.kind, deadline)
        if active is None or (current is not None and current.version == active.version):
            return current
        if active in self._refused:
            return current
        try:
            manifest, model = await asyncio.to_thread(
                load_bundle, self.store, active.version, active.manifest_sha256
            )
        except BundleRefused as error:
            reason = "incompatible" if isinstance(error, BundleIncompatible) else "corrupt"
            self._refused.add(active)
            self.metrics.refusals.labels(reason).inc()
            log.error(
                "active model bundle refused; serving the previous model",
                extra={
                    "fields": {
                        "version": active.version,
                        "reason": reason,
                        "detail": str(error),
                        "serving": "" if current is None else current.version,
                    }
                },
            )
            return current
        except ArtifactError as error:  # the store is unreachable, or the bundle not there yet
            self.metrics.refusals.labels("unavailable").inc()
            log.warning(
                "active model bundle not loaded; retrying at the next poll",
                extra={"fields": {"version": active.version, "detail": str(error)}},
            )
            return current
        self.metrics.swaps.inc()
        log.info(
            "model bundle loaded",
            extra={
                "fields": {
                    "version": model.version,
                    "bytes": manifest.size_bytes,
                    "code_version": manifest.code_version,
                }
            },
        )
        return model

    async def publish(
        self,
        fitted: FittedModels,
        published_by: str,
        reason: str,
        deadline: HasTimeRemaining | None = None,
    ) -> Manifest:
        """Write ``fitted`` as a bundle (manifest last), then make it the active version."""
        manifest = await asyncio.to_thread(
            save_bundle,
            self.store,
            fitted.model,
            code_version=code_version(),
            data=fitted.data,
            metrics=fitted.metrics,
        )
        await self.registry.publish(
            self.kind,
            ActiveModel(manifest.bundle_id, manifest.sha256),
            published_by,
            reason,
            deadline,
        )
        return manifest
