"""Longtail's Python client: a thin typed layer over the generated contracts, and the CLI."""

from longtail_client.client import LongtailClient, policy_spec

__all__ = ["LongtailClient", "policy_spec"]
