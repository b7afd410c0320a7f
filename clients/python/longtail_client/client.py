"""A thin, typed client for the suite: channels with retries and deadlines, and stubs.

    async with LongtailClient.connect(gateway="127.0.0.1:50050") as client:
        answer = await client.recommend("u1", k=10, policy=policy_spec("tail_quota"))

Every call carries a deadline (``timeout_seconds`` unless given); UNAVAILABLE is retried by the
channel's service config. Every call the client makes is idempotent, so a retry cannot double
anything: ``recommend`` gives each call a request_id when the caller gives none (the gateway
answers a repeated request_id from its impression log), Feedback counts once per served item and
kind, and the rest only read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from longtail.common.v1 import common_pb2
from longtail.embeddings.v1 import embeddings_service_pb2_grpc
from longtail.exposure.v1 import exposure_service_pb2, exposure_service_pb2_grpc
from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2_grpc
from longtail.ranking.v1 import ranking_service_pb2_grpc

DEFAULT_TARGETS = {
    "gateway": "127.0.0.1:50050",
    "profiles": "127.0.0.1:50051",
    "embeddings": "127.0.0.1:50052",
    "ranking": "127.0.0.1:50053",
    "exposure": "127.0.0.1:50054",
}

_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def policy_spec(
    name: str,
    params: Mapping[str, str | float | bool] | None = None,
    explore_slots: int = 0,
    seed: int | None = None,
) -> common_pb2.PolicySpec:
    """A PolicySpec from a policy name and its parameters, typed by the contract itself.

    Unknown names or parameters raise ValueError listing what exists.
    """
    spec = common_pb2.PolicySpec()
    oneof = common_pb2.PolicySpec.DESCRIPTOR.oneofs_by_name["policy"]
    fields = {field.name: field for field in oneof.fields}
    if name not in fields:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(fields))}")
    message = getattr(spec, name)
    message.SetInParent()
    for key, raw in (params or {}).items():
        field = message.DESCRIPTOR.fields_by_name.get(key)
        if field is None:
            known = ", ".join(f.name for f in message.DESCRIPTOR.fields) or "none"
            raise ValueError(f"policy {name!r} has no parameter {key!r}; parameters: {known}")
        if field.type == field.TYPE_BOOL:
            value: object = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true")
        elif field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
            value = float(raw)
        else:
            value = int(raw)
        setattr(message, key, value)
    if explore_slots:
        spec.explore.slots = explore_slots
    if seed is not None:
        spec.seed = seed
    return spec


@dataclass(frozen=True)
class Connection:
    target: str
    token: str | None = None
    tls_ca_file: Path | None = None


def open_client_channel(connection: Connection) -> grpc.aio.Channel:
    options = [
        ("grpc.service_config", _RETRY_SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    if connection.tls_ca_file is not None:
        credentials = grpc.ssl_channel_credentials(connection.tls_ca_file.read_bytes())
        if connection.token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(connection.token)
            )
        return grpc.aio.secure_channel(connection.target, credentials, options=options)
    channel = grpc.aio.insecure_channel(connection.target, options=options)
    return channel


class LongtailClient:
    """Stubs for every service of a running suite, sharing deadlines and credentials."""

    def __init__(
        self,
        targets: Mapping[str, str] | None = None,
        token: str | None = None,
        tls_ca_file: Path | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        merged = {**DEFAULT_TARGETS, **(targets or {})}
        self.timeout = timeout_seconds
        self._token = token
        self._channels = {
            name: open_client_channel(Connection(target, token, tls_ca_file))
            for name, target in merged.items()
        }
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self._channels["gateway"])
        self.profiles = profiles_service_pb2_grpc.ProfilesServiceStub(self._channels["profiles"])
        self.embeddings = embeddings_service_pb2_grpc.EmbeddingsServiceStub(
            self._channels["embeddings"]
        )
        self.ranking = ranking_service_pb2_grpc.RankingServiceStub(self._channels["ranking"])
        self.exposure = exposure_service_pb2_grpc.ExposureServiceStub(self._channels["exposure"])

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token for insecure local channels (TLS sends it itself)."""
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    async def __aenter__(self) -> LongtailClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        policy: common_pb2.PolicySpec | None = None,
        interests: str = "",
        request_id: str = "",
        include_seen: bool = False,
        timeout: float | None = None,
    ) -> gateway_service_pb2.RecommendResponse:
        request = gateway_service_pb2.RecommendRequest(
            user_id=user_id,
            k=k,
            interests=interests,
            # Ours when the caller gives none: a retried attempt then replays the logged list
            # instead of serving, and logging, a second one.
            request_id=request_id or uuid.uuid4().hex,
            include_seen=include_seen,
        )
        if policy is not None:
            request.policy.CopyFrom(policy)
        return await self.gateway.Recommend(
            request, timeout=timeout or self.timeout, metadata=self.metadata
        )

    async def feedback(
        self,
        request_id: str,
        item_id: str,
        kind: common_pb2.InteractionKind.ValueType = common_pb2.INTERACTION_KIND_CLICK,
        value: float = 0.0,
        timeout: float | None = None,
    ) -> gateway_service_pb2.FeedbackResponse:
        return await self.gateway.Feedback(
            gateway_service_pb2.FeedbackRequest(
                request_id=request_id, item_id=item_id, kind=kind, value=value
            ),
            timeout=timeout or self.timeout,
            metadata=self.metadata,
        )

    async def explain(
        self, request_id: str, timeout: float | None = None
    ) -> gateway_service_pb2.ExplainRecommendationResponse:
        return await self.gateway.ExplainRecommendation(
            gateway_service_pb2.ExplainRecommendationRequest(request_id=request_id),
            timeout=timeout or self.timeout,
            metadata=self.metadata,
        )

    async def policies(
        self, timeout: float | None = None
    ) -> exposure_service_pb2.ListPoliciesResponse:
        return await self.exposure.ListPolicies(
            exposure_service_pb2.ListPoliciesRequest(),
            timeout=timeout or self.timeout,
            metadata=self.metadata,
        )
