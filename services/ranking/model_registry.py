"""Where ranking's models come from: the registry (which bundle is active) and the artefact store
(the bundle itself).

The registry clients (``ModelRegistry`` and its two implementations) live in
``services.common.registry``, shared with the embeddings service and the training job (they are
re-exported here). ``ModelFollower`` turns "the active version is X" into a verified
``CollaborativeModel``, downloading and checking off the event loop, and remembers bundles it
refused so that a corrupt bundle costs one download, not one per poll.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, Counter

from services.common.artifacts import (
    ArtifactError,
    ArtifactStore,
    BundleIncompatible,
    BundleRefused,
    Manifest,
    code_version,
)
from services.common.deadlines import HasTimeRemaining
from services.common.registry import ActiveModel as ActiveModel
from services.common.registry import InProcessModelRegistry as InProcessModelRegistry
from services.common.registry import ModelRegistry as ModelRegistry
from services.common.registry import ProfilesModelRegistry as ProfilesModelRegistry
from services.ranking.bundle import MODEL_KIND, load_bundle, save_bundle
from services.ranking.collaborative import CollaborativeModel
from services.ranking.training import FittedModels

log = logging.getLogger(__name__)


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
