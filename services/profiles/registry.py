"""The model registry: which artefact bundle is active per model kind, with who, when and why.

Every publication is a new row of ``model_publications`` (never updated): the active version of a
kind is its latest row, the rows before it are the history an operator reads and rolls back to.
Rolling back is publishing an earlier version again (marked ``rollback``). The registry records
names only: whether a bundle exists and is sound is checked by whoever loads it (the ranking
replicas verify the manifest's checksums), since profiles never talks to the artefact store.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.common.errors import InvalidArgument, NotFound
from services.profiles.models import ModelPublication
from services.profiles.store import Database

_KIND = re.compile(r"^[a-z0-9_]{1,64}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA256 = re.compile(r"^([0-9a-f]{64})?$")
MAX_PUBLISHED_BY = 255
MAX_REASON = 2000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class Publication:
    publication_id: int
    model_kind: str
    version: str
    manifest_sha256: str
    published_by: str
    reason: str
    published_at: dt.datetime
    rollback: bool


@dataclasses.dataclass(frozen=True)
class PublicationPage:
    entries: list[Publication]
    next_page_token: str


def _record(row: ModelPublication) -> Publication:
    return Publication(
        row.publication_id,
        row.model_kind,
        row.version,
        row.manifest_sha256,
        row.published_by,
        row.reason,
        row.published_at,
        row.rollback,
    )


def _check_kind(kind: str) -> str:
    if not _KIND.match(kind):
        raise InvalidArgument(
            "INVALID_MODEL_KIND",
            "model_kind must be 1-64 lower-case letters, digits or '_'",
            model_kind=kind[:100],
        )
    return kind


def _check_version(version: str, field: str = "version") -> str:
    if not _VERSION.match(version):
        raise InvalidArgument(
            "INVALID_MODEL_VERSION",
            f"{field} must be 1-200 letters, digits, '.', '_' or '-', starting with a letter or "
            "digit",
            field=field,
        )
    return version


def _check_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(
            "TEXT_TOO_LONG", f"{field} is longer than {limit} characters", field=field
        )
    if "\x00" in value:  # PostgreSQL refuses NUL in text; SQLite must refuse it alike
        raise InvalidArgument("NUL_CHARACTER", f"{field} contains a NUL character", field=field)
    return value


def _latest(session: Session, kind: str) -> ModelPublication | None:
    return session.scalars(
        sa.select(ModelPublication)
        .where(ModelPublication.model_kind == kind)
        .order_by(ModelPublication.publication_id.desc())
        .limit(1)
    ).first()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ModelRegistry:
    """The registry's operations over the profiles store (each one transaction)."""

    def __init__(self, database: Database, now: Callable[[], dt.datetime] = _now) -> None:
        self._db = database
        self._now = now

    def _insert(
        self,
        session: Session,
        kind: str,
        version: str,
        manifest_sha256: str,
        published_by: str,
        reason: str,
        rollback: bool,
    ) -> Publication:
        row = ModelPublication(
            model_kind=kind,
            version=version,
            manifest_sha256=manifest_sha256,
            published_by=published_by,
            reason=reason,
            published_at=self._now(),
            rollback=rollback,
        )
        session.add(row)
        session.flush()
        return _record(row)

    async def publish(
        self, kind: str, version: str, manifest_sha256: str, published_by: str, reason: str
    ) -> Publication:
        """Make ``version`` the active bundle of ``kind`` (publishing the active one again is
        recorded too: the history says who confirmed it and why)."""
        _check_kind(kind)
        _check_version(version)
        if not _SHA256.match(manifest_sha256):
            raise InvalidArgument(
                "INVALID_MANIFEST_SHA256", "manifest_sha256 must be empty or 64 lower-case hex"
            )
        _check_text(published_by, "published_by", MAX_PUBLISHED_BY)
        _check_text(reason, "reason", MAX_REASON)
        return await self._db.run(
            lambda session: self._insert(
                session, kind, version, manifest_sha256, published_by, reason, False
            ),
            write=True,
        )

    async def active(self, kind: str) -> Publication | None:
        _check_kind(kind)

        def read(session: Session) -> Publication | None:
            row = _latest(session, kind)
            return None if row is None else _record(row)

        return await self._db.run(read)

    async def history(self, kind: str, page_size: int, page_token: str) -> PublicationPage:
        """Publications, newest first (of ``kind``, or of every kind when empty)."""
        if kind:
            _check_kind(kind)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument("INVALID_PAGE_SIZE", f"page_size must be in 0..{MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        before: int | None = None
        if page_token:
            if not page_token.isdigit() or len(page_token) > 19:
                raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not one this RPC gave")
            before = int(page_token)

        def read(session: Session) -> PublicationPage:
            query = sa.select(ModelPublication)
            if kind:
                query = query.where(ModelPublication.model_kind == kind)
            if before is not None:
                query = query.where(ModelPublication.publication_id < before)
            rows = session.scalars(
                query.order_by(ModelPublication.publication_id.desc()).limit(size + 1)
            ).all()
            entries = [_record(row) for row in rows[:size]]
            token = str(entries[-1].publication_id) if len(rows) > size else ""
            return PublicationPage(entries, token)

        return await self._db.run(read)

    async def rollback(
        self, kind: str, to_version: str, published_by: str, reason: str
    ) -> Publication:
        """Publish an earlier version of ``kind`` again; empty ``to_version``: the version that
        was active before the current one."""
        _check_kind(kind)
        if to_version:
            _check_version(to_version, "to_version")
        _check_text(published_by, "published_by", MAX_PUBLISHED_BY)
        _check_text(reason, "reason", MAX_REASON)

        def roll_back(session: Session) -> Publication:
            current = _latest(session, kind)
            if current is None:
                raise NotFound(
                    "NO_ACTIVE_MODEL", f"nothing was published for {kind}", model_kind=kind
                )
            query = sa.select(ModelPublication).where(ModelPublication.model_kind == kind)
            if to_version:
                query = query.where(ModelPublication.version == to_version)
            else:
                query = query.where(ModelPublication.version != current.version)
            target = session.scalars(
                query.order_by(ModelPublication.publication_id.desc()).limit(1)
            ).first()
            if target is None:
                raise NotFound(
                    "MODEL_VERSION_NOT_PUBLISHED",
                    f"no earlier version of {kind} to roll back to"
                    if not to_version
                    else f"{to_version} was never published for {kind}",
                    model_kind=kind,
                )
            return self._insert(
                session,
                kind,
                target.version,
                target.manifest_sha256,
                published_by,
                reason,
                True,
            )

        return await self._db.run(roll_back, write=True)
