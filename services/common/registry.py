"""The model registry as its followers and publishers see it (ranking replicas, the embeddings
service, the training job): profiles' PublishModel / GetActiveModel over gRPC in a deployment
(``ProfilesModelRegistry``), or ``InProcessModelRegistry`` where no profiles service runs (tests, a
ranking over injected sources). The registry itself (the table, its rules) lives in profiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import grpc

from longtail.profiles.v1 import profiles_service_pb2
from services.common.deadlines import HasTimeRemaining, outbound_timeout
from services.common.errors import from_upstream


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

    async def publications(
        self, kind: str = "", deadline: HasTimeRemaining | None = None
    ) -> list[tuple[str, str]]:
        """Every publication (of ``kind``; empty: all kinds) as (kind, version), newest first."""
        pairs: list[tuple[str, str]] = []
        token = ""
        while True:
            try:
                answer = await self._profiles.ListModelPublications(
                    profiles_service_pb2.ListModelPublicationsRequest(
                        model_kind=kind, page_size=1000, page_token=token
                    ),
                    timeout=outbound_timeout(deadline, self._timeout),
                )
            except grpc.aio.AioRpcError as error:
                raise from_upstream(error, "profiles") from error
            pairs.extend((p.model_kind, p.version) for p in answer.publications)
            token = answer.next_page_token
            if not token:
                return pairs

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
