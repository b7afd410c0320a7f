"""Shared fixtures: the PostgreSQL database and the rule that required parts fail, never skip."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def missing(kind: str, reason: str) -> None:
    """Fail when ``LONGTAIL_REQUIRE_<KIND>=1`` (CI, ``make test``), else skip with the reason."""
    if os.environ.get(f"LONGTAIL_REQUIRE_{kind.upper()}") == "1":
        pytest.fail(f"{kind} is required here but unusable: {reason}", pytrace=False)
    pytest.skip(reason)


def require_triton() -> None:
    """Skip-or-fail (``missing``) only when Triton is *absent*: the nvidia-pytriton distribution
    with its ``tritonserver`` binary is not installed. Call it before starting anything that runs
    Triton, and let every other start-up failure (a model that does not load, a port taken, a
    service that crashes) raise: those are defects, never "Triton missing"."""
    from services.embeddings.tritonserver import TritonDistribution, TritonStartError

    try:
        TritonDistribution.find()
    except TritonStartError as error:
        missing("triton", str(error))


CHROMIUM = "/usr/bin/chromium"


def require_browser() -> str:
    """Skip-or-fail (``missing``, kind ``browser``) only when the browser test's tools are
    *absent*: Debian's Chromium (``make tools``) or the Playwright package (dev extra). Returns
    the browser's path; a browser that is there but fails to start is a defect and raises."""
    import importlib.util

    if not os.access(CHROMIUM, os.X_OK):
        missing("browser", f"{CHROMIUM} is not installed (make tools installs Debian's chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing("browser", "the playwright package is not installed (pip install -e '.[dev]')")
    return CHROMIUM


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session, dropped afterwards."""
    import sqlalchemy as sa

    admin_url = os.environ.get("LONGTAIL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_ADMIN_URL)
    name = f"longtail_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        missing("postgres", f"cannot create a database at {admin_url}: {error}")
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
