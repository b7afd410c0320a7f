"""Alembic migrations of the profiles store (run through ``services.profiles.store.migrate``)."""
