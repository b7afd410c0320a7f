"""Domain errors and the one mapper from errors to gRPC statuses with a google.rpc ErrorInfo.

Servicers and domain modules raise these; the error interceptor turns them into statuses so that
no servicer handles status codes itself.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "longtail.dev"


class ServiceError(Exception):
    """An error with a canonical code and a machine-readable reason (UPPER_SNAKE_CASE)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {key: str(value) for key, value in metadata.items()}


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


# A status travels in trailers, which gRPC caps (8 KiB by default; 16 KiB of metadata on the
# client): an echoed input (a 20,000-character id) must not make the error itself undeliverable
# (RESOURCE_EXHAUSTED at the caller instead of our reason). Clipped here, the one place every
# status is built; at these sizes the details stay under ~4 KiB, base64 included.
MAX_STATUS_MESSAGE_CHARS = 1024
MAX_STATUS_METADATA_ENTRIES = 16
MAX_STATUS_METADATA_KEY_CHARS = 64
MAX_STATUS_METADATA_VALUE_CHARS = 128


def to_status(error: ServiceError) -> grpc.Status:
    """The rich status (code, message, ErrorInfo detail) for a domain error, clipped to fit."""
    metadata = {
        _clip(key, MAX_STATUS_METADATA_KEY_CHARS): _clip(value, MAX_STATUS_METADATA_VALUE_CHARS)
        for key, value in sorted(error.metadata.items())[:MAX_STATUS_METADATA_ENTRIES]
    }
    info = error_details_pb2.ErrorInfo(
        reason=_clip(error.reason, MAX_STATUS_METADATA_KEY_CHARS), domain=DOMAIN, metadata=metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name),
        message=_clip(error.message, MAX_STATUS_MESSAGE_CHARS),
        details=[detail],
    )
    return rpc_status.to_status(status)


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo carried by a failed call, if any (for clients and tests)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


# What a translated upstream error may carry back: its status travels in our trailers, which
# gRPC caps (8 KiB by default), so a long upstream message or value must not make our own status
# undeliverable. At these sizes the status details stay under 3 KiB, base64 included.
MAX_UPSTREAM_MESSAGE_CHARS = 512
MAX_UPSTREAM_METADATA_ENTRIES = 10
MAX_UPSTREAM_METADATA_KEY_CHARS = 64
MAX_UPSTREAM_METADATA_VALUE_CHARS = 128

_KINDS: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}
# Reasons for failures that carry none of ours (connection refused, a deadline that expired on
# the wire, another domain's error).
_DEPENDENCY_REASONS = {
    grpc.StatusCode.UNAVAILABLE: "DEPENDENCY_UNAVAILABLE",
    grpc.StatusCode.CANCELLED: "DEPENDENCY_UNAVAILABLE",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DEPENDENCY_DEADLINE_EXCEEDED",
    grpc.StatusCode.INVALID_ARGUMENT: "DEPENDENCY_REJECTED_ARGUMENT",
    grpc.StatusCode.NOT_FOUND: "DEPENDENCY_NOT_FOUND",
    grpc.StatusCode.ALREADY_EXISTS: "DEPENDENCY_CONFLICT",
    grpc.StatusCode.FAILED_PRECONDITION: "DEPENDENCY_FAILED_PRECONDITION",
}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _upstream_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The upstream's ErrorInfo when it is one of ours (a reason means something only within its
    domain, and ours is the one our callers know); None otherwise, or when undecodable."""
    try:
        info = error_info(error)
    except Exception:  # malformed status details must not turn a dependency error into a crash
        return None
    if info is None or info.domain != DOMAIN or not info.reason:
        return None
    return info


def from_upstream(error: grpc.aio.AioRpcError, dependency: str) -> ServiceError:
    """Translate a failed outbound call into a domain error for our own caller.

    The code follows the upstream's: UNAVAILABLE and CANCELLED become UNAVAILABLE;
    DEADLINE_EXCEEDED, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS and FAILED_PRECONDITION stay;
    anything else is INTERNAL with the upstream code in the metadata. The reason is the
    upstream's own when it sent one of ours (``PARAMETER_OUT_OF_RANGE`` with the parameter's
    name, ``STORE_UNAVAILABLE``), with its metadata: our caller acts on the cause, not on the hop
    that relayed it. Only a failure that carries no reason of ours gets a ``DEPENDENCY_*``
    reason. Either way ``dependency`` in the metadata names the service we called
    (``ranking/profiles`` when that one had named its own).
    """
    code = error.code()
    message = _clip(f"{dependency}: {error.details() or ''}", MAX_UPSTREAM_MESSAGE_CHARS)
    upstream = _upstream_info(error)
    metadata: dict[str, str] = {}
    if upstream is None:
        reason = _DEPENDENCY_REASONS.get(code, "DEPENDENCY_FAILED")
        metadata["dependency"] = dependency
    else:
        reason = _clip(upstream.reason, MAX_UPSTREAM_METADATA_KEY_CHARS)
        kept = sorted((k, v) for k, v in upstream.metadata.items() if k != "dependency")
        for key, value in kept[:MAX_UPSTREAM_METADATA_ENTRIES]:
            metadata[_clip(key, MAX_UPSTREAM_METADATA_KEY_CHARS)] = _clip(
                value, MAX_UPSTREAM_METADATA_VALUE_CHARS
            )
        inner = upstream.metadata.get("dependency")
        metadata["dependency"] = _clip(
            f"{dependency}/{inner}" if inner else dependency, MAX_UPSTREAM_METADATA_VALUE_CHARS
        )
    kind = _KINDS.get(code)
    if kind is None:
        kind = ServiceError  # INTERNAL to our caller; the upstream's code stays visible
        metadata["code"] = code.name
    translated = kind(reason, message)
    # Set, not passed as keywords: upstream keys such as "reason" or "message" must not clash
    # with the constructor's parameters.
    translated.metadata = metadata
    return translated
