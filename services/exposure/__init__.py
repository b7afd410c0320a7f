"""Exposure service: re-ranking policies that choose the final k, each item with a reason."""
