"""Configuration from the environment, read once into frozen dataclasses.

A settings class is a frozen dataclass; each field is read from ``<PREFIX><FIELD_NAME>`` (upper
case). Fields without a default are required; every missing or malformed variable is named in one
``SettingsError``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """One or more environment variables are missing or malformed."""


def _convert(raw: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw == "":
            return None
        return _convert(raw, args[0])
    if kind is bool:
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if kind is Path:
        return Path(raw)
    if kind is str:
        return raw
    if origin is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    raise TypeError(f"unsupported settings type {kind!r}")


def env_name(prefix: str, field: str) -> str:
    return f"{prefix}{field}".upper()


def load_settings(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from the environment; raise one ``SettingsError`` naming every problem."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = env_name(prefix, field.name)
        has_default = (
            field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
        )
        if name not in env:
            if not has_default:
                problems.append(f"{name} is required")
            continue
        try:
            values[field.name] = _convert(env[name], hints[field.name])
        except (TypeError, ValueError) as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise SettingsError("configuration error: " + "; ".join(problems))
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """How a service listens. Read with the service's prefix, e.g. ``LONGTAIL_PROFILES_PORT``."""

    host: str = "127.0.0.1"
    # Unset: the service's own port (gateway 50050, profiles 50051, embeddings 50052, ranking
    # 50053, exposure 50054); 0 picks a free port (tests). The bound port is logged.
    port: int = 0
    # Seconds in-flight calls get to finish after SIGTERM (health goes NOT_SERVING first).
    grace_seconds: float = 5.0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Plaintext port answering grpc.health.v1 only (no other service, no reflection), with the
    # main port's status, NOT_SERVING while draining: for the kubelet's gRPC probes, which cannot
    # speak TLS. Unset: no health port; 0: a free port (tests). Deployments use 9465.
    health_port: int | None = None
    # When set, every call but health checks must carry ``authorization: Bearer <token>``.
    auth_token: str | None = None
    log_level: str = "INFO"


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    """How a service calls another one (its target, TLS and token)."""

    target: str
    tls_ca_file: Path | None = None
    auth_token: str | None = None
    # Default deadline for calls made without a caller deadline (CLI, background jobs).
    timeout_seconds: float = 5.0
