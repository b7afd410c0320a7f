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


def to_status(error: ServiceError) -> grpc.Status:
    """The rich status (code, message, ErrorInfo detail) for a domain error."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=error.message, details=[detail]
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


def from_upstream(error: grpc.aio.AioRpcError, dependency: str) -> ServiceError:
    """Translate a failed outbound call into a domain error for our own caller."""
    code = error.code()
    message = f"{dependency}: {error.details()}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return Unavailable("DEPENDENCY_UNAVAILABLE", message, dependency=dependency)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("DEPENDENCY_DEADLINE_EXCEEDED", message, dependency=dependency)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument("DEPENDENCY_REJECTED_ARGUMENT", message, dependency=dependency)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound("DEPENDENCY_NOT_FOUND", message, dependency=dependency)
    return ServiceError("DEPENDENCY_FAILED", message, dependency=dependency, code=code.name)
