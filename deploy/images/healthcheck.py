"""Container health check: exit 0 when the local server reports SERVING on grpc.health.v1.

    python /app/healthcheck.py [PORT]        (default: $LONGTAIL_HEALTHCHECK_PORT, set by the image)

Used by the compose file, and by the prod-gpu overlay's exec probes: the kubelet's native gRPC
probes speak plaintext only, so with TLS on they cannot reach the server. With
``LONGTAIL_HEALTHCHECK_TLS_CA`` (a CA file) the check uses TLS, verifying the certificate for
``LONGTAIL_HEALTHCHECK_TLS_NAME`` (a name in its SANs, e.g. the Service name). Health is exempt
from the bearer token.
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
    target = f"127.0.0.1:{port}"
    ca_file = os.environ.get("LONGTAIL_HEALTHCHECK_TLS_CA", "")
    if ca_file:
        with open(ca_file, "rb") as handle:
            credentials = grpc.ssl_channel_credentials(handle.read())
        name = os.environ.get("LONGTAIL_HEALTHCHECK_TLS_NAME", "localhost")
        options = [("grpc.ssl_target_name_override", name)]
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
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
