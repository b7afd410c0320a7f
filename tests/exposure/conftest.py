"""Fixtures of the exposure tests: the real profiles service over SQLite and PostgreSQL
(``served``, parametrised by ``store_url``), shared with the profiles tests."""

from tests.profiles.conftest import served, store_url

__all__ = ["served", "store_url"]
