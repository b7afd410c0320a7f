"""Container health check: exit 0 when the local server reports SERVING on grpc.health.v1.

    python /app/healthcheck.py [PORT]        (default: $LONGTAIL_HEALTHCHECK_PORT, set by the image)

compose's healthcheck runs it (compose has no gRPC health check of its own). Plaintext only: with
TLS on the main port, point it at the plaintext health-only port
(``LONGTAIL_<NAME>_HEALTH_PORT``), which is also what the kubelet's native gRPC probes use.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2


def main() -> int:
    port = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LONGTAIL_HEALTHCHECK_PORT", "")
    if not port:
        print("usage: healthcheck.py PORT", file=sys.stderr)
        return 2
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            answer: health_pb2.HealthCheckResponse = check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError as error:
            print(f"health check failed: {error.code().name}", file=sys.stderr)
            return 1
    serving = answer.status == health_pb2.HealthCheckResponse.SERVING
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
    return 0 if serving else 1


if __name__ == "__main__":
    raise SystemExit(main())
