"""Longtail's Python client: a thin typed layer over the generated contracts.

It depends on grpcio, protobuf and googleapis-common-protos only (the `longtail-client` wheel);
the command line, data loaders, local suite runner and evaluation are server-side, in
`services.suite`.
"""

from longtail_client.client import LongtailClient, policy_spec

__all__ = ["LongtailClient", "policy_spec"]
