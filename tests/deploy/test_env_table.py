"""deploy/env_table.py: one row per variable a service reads, and the README's copy is current."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _env_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("env_table", ROOT / "deploy" / "env_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_settings_field_of_every_service_is_one_row() -> None:
    table = _env_table()
    names = [row.variable.strip("`") for row in table.rows()]
    assert len(names) == len(set(names))
    expected: set[str] = set()
    shared = [getattr(importlib.import_module(m), c) for m, c in table.SHARED]
    services = [(*entry, True) for entry in table.SERVICES]
    services += [(*entry, False) for entry in table.HTTP_SERVICES]
    for service, module, name, grpc_server in services:
        own = getattr(importlib.import_module(module), name)
        for cls in (*shared, own) if grpc_server else (own,):
            expected |= {
                f"LONGTAIL_{service.upper()}_{f.name.upper()}" for f in dataclasses.fields(cls)
            }
    assert set(names) == expected
    # The dashboard serves HTTP: no gRPC server settings, no metrics port.
    assert "LONGTAIL_DASHBOARD_PROFILES_TARGET" in expected
    assert "LONGTAIL_DASHBOARD_METRICS_PORT" not in expected
    assert (
        "LONGTAIL_GATEWAY_METRICS_PORT" in expected and "LONGTAIL_PROFILES_DATABASE_URL" in expected
    )


def test_comments_become_meanings_and_defaults_are_shown() -> None:
    rows = {row.variable.strip("`"): row for row in _env_table().rows()}
    url = rows["LONGTAIL_PROFILES_DATABASE_URL"]
    assert "SQLite" in url.meaning and "sqlite:///" in url.default
    assert rows["LONGTAIL_GATEWAY_TLS_CERT_FILE"].default == "unset"
    assert rows["LONGTAIL_PROFILES_MIGRATE_ON_START"].default == "`true`"
    # A comment above two fields covers the one it names, not the next unrelated one.
    assert "cold" in rows["LONGTAIL_RANKING_MIN_COLD_SHARE"].meaning
    assert "Seconds" not in rows["LONGTAIL_GATEWAY_TLS_CERT_FILE"].meaning


def test_the_readme_table_is_current() -> None:
    table = _env_table()
    readme = (ROOT / "README.md").read_text()
    start = readme.index(table.BEGIN) + len(table.BEGIN)
    current = readme[start : readme.index(table.END)].strip("\n") + "\n"
    assert current == table.render(), "run: .venv/bin/python deploy/env_table.py --write"


def test_the_script_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "env_table.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("| variable | default | meaning |")
    assert "`LONGTAIL_EXPOSURE_DEFAULT_POLICY`" in result.stdout
