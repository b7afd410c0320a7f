"""The artefact store: model bundles as immutable, checksummed files behind one interface.

Two stores implement ``ArtifactStore`` (keys are ``/``-separated relative paths):

- ``LocalFolderStore``: a folder (the embedded default, one machine); each file is written to a
  temporary name and renamed, so a reader never sees half a file.
- ``S3ArtifactStore``: S3-compatible object storage (AWS S3, SeaweedFS, MinIO, …) through
  ``obstore``; a PUT is atomic per object. Credentials come from the standard ``AWS_*`` variables
  (a Kubernetes Secret) unless given.

A **bundle** is ``bundles/<bundle_id>/<file>…`` plus ``bundles/<bundle_id>/manifest.json``. The
manifest is written last and lists every file with its size and SHA-256: a bundle without a
manifest is incomplete (a writer was killed), is never listed and never loads; a file whose bytes
do not match the manifest makes the whole bundle refused (``BundleCorrupt``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

BUNDLES = "bundles"
MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1
# Bundle ids and file names: no "..", no absolute paths, nothing a shell or URL would mangle.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class ArtifactError(Exception):
    """The store could not be read or written (unreachable, refused): worth retrying."""


class ArtifactNotFound(ArtifactError):
    """No object under that key."""


class BundleRefused(Exception):
    """A bundle that must not be served; retrying the same bundle gives the same answer."""


class BundleCorrupt(BundleRefused):
    """A bundle's bytes or manifest are not what its manifest promises (truncated, altered)."""


class BundleIncompatible(BundleRefused):
    """A sound bundle this code cannot serve (another format, other features, missing model)."""


class ArtifactStore(Protocol):
    """Immutable objects under relative keys."""

    @property
    def location(self) -> str:
        """Where the store points (for logs and manifests), without credentials."""
        ...

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; ``ArtifactNotFound`` when absent."""
        ...

    def list_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder-like prefix, ``a/b``), recursively, sorted."""
        ...

    def delete(self, keys: list[str]) -> None: ...


def _check_key(key: str) -> str:
    if not _SAFE_PATH.match(key):
        raise ValueError(f"bad artefact key {key!r}")
    return key


class LocalFolderStore:
    """Objects as files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        return str(self.root.resolve())

    def put(self, key: str, data: bytes) -> None:
        path = self.root / _check_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return (self.root / _check_key(key)).read_bytes()
        except FileNotFoundError as error:
            raise ArtifactNotFound(key) from error
        except OSError as error:
            raise ArtifactError(f"cannot read {key}: {error}") from error

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / _check_key(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in base.rglob("*")
            if path.is_file() and not path.name.startswith(".tmp-")
        )

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self.root / _check_key(key)
            path.unlink(missing_ok=True)
            # Folders emptied by the delete go too (a pruned bundle leaves no empty folder).
            for parent in path.parents:
                if parent == self.root or self.root not in parent.parents:
                    break
                try:
                    parent.rmdir()
                except OSError:  # not empty (or already gone)
                    break


class S3ArtifactStore:
    """Objects in an S3-compatible bucket, under an optional prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str = "",
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        from obstore.store import S3Store

        config: dict[str, Any] = {"region": region}
        if endpoint:
            # Path-style requests: SeaweedFS and MinIO serve buckets under the path, not a host.
            config.update(endpoint=endpoint, virtual_hosted_style_request=False)
        if access_key_id is not None and secret_access_key is not None:
            config.update(access_key_id=access_key_id, secret_access_key=secret_access_key)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options={
                "allow_http": endpoint.startswith("http://"),
                "timeout": f"{timeout_seconds}s",
                "connect_timeout": "5s",
            },
            retry_config={"max_retries": 3, "retry_timeout": dt.timedelta(seconds=timeout_seconds)},
        )

    @property
    def location(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} ({self.endpoint})" if self.endpoint else where

    def put(self, key: str, data: bytes) -> None:
        import obstore
        from obstore.exceptions import BaseError

        try:
            obstore.put(self._store, _check_key(key), data)
        except (BaseError, OSError) as error:
            raise ArtifactError(f"cannot write {key} to {self.location}: {error}") from error

    def get(self, key: str) -> bytes:
        import obstore
        from obstore.exceptions import BaseError, NotFoundError

        try:
            return bytes(obstore.get(self._store, _check_key(key)).bytes())
        except (NotFoundError, FileNotFoundError) as error:  # obstore raises the builtin
            raise ArtifactNotFound(key) from error
        except (BaseError, OSError) as error:
            raise ArtifactError(f"cannot read {key} from {self.location}: {error}") from error

    def list_keys(self, prefix: str) -> list[str]:
        import obstore
        from obstore.exceptions import BaseError

        try:
            found = [
                meta["path"]
                for chunk in obstore.list(self._store, _check_key(prefix) if prefix else None)
                for meta in chunk
            ]
        except (BaseError, OSError) as error:
            raise ArtifactError(f"cannot list {prefix} in {self.location}: {error}") from error
        return sorted(found)

    def delete(self, keys: list[str]) -> None:
        import obstore
        from obstore.exceptions import BaseError

        if not keys:
            return
        try:
            obstore.delete(self._store, [_check_key(key) for key in keys])
        except (BaseError, OSError) as error:
            raise ArtifactError(f"cannot delete from {self.location}: {error}") from error


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    """Where bundles live; the same fields for the training job and the ranking replicas."""

    # Local folder of the embedded default.
    folder: Path = Path(".longtail/artifacts")
    # ``s3://bucket/prefix``: use S3-compatible object storage instead of the folder.
    url: str = ""
    # The S3 endpoint (``http://seaweedfs:8333``); empty = AWS.
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"


def open_store(settings: StoreSettings) -> ArtifactStore:
    """The store the settings name; S3 credentials from ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` (obstore reads them, and ``AWS_SESSION_TOKEN``, itself)."""
    if not settings.url:
        return LocalFolderStore(settings.folder)
    if not settings.url.startswith("s3://"):
        raise ValueError(f"unsupported artefact store url {settings.url!r} (s3://bucket/prefix)")
    bucket, _, prefix = settings.url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {settings.url!r}")
    return S3ArtifactStore(
        bucket,
        prefix,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
    )


# ----------------------------------------------------------------------------- bundles


def code_version() -> str:
    """What code wrote a bundle: ``LONGTAIL_CODE_VERSION`` (set by the image build), else the git
    commit of this checkout (``+dirty`` with local changes), else the package version."""
    explicit = os.environ.get("LONGTAIL_CODE_VERSION", "").strip()
    if explicit:
        return explicit
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"git:{commit}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"longtail {version('longtail')}"
        except PackageNotFoundError:
            return "unknown"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_bundle_id(bundle_id: str) -> str:
    if not _SAFE_ID.match(bundle_id):
        raise ValueError(f"bad bundle id {bundle_id!r}")
    return bundle_id


@dataclasses.dataclass(frozen=True)
class BundleFile:
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a bundle holds and where it came from.

    ``models``: one entry per model kind in the bundle (``{"kind", "version", …}``);
    ``data``: the training window and counts; ``metrics``: validation metrics; ``files``: every
    file but the manifest, with its size and SHA-256.
    """

    bundle_id: str
    created_at: str
    code_version: str
    models: list[dict[str, Any]]
    data: dict[str, Any]
    metrics: dict[str, Any]
    files: dict[str, BundleFile]
    format: int = BUNDLE_FORMAT

    @property
    def kinds(self) -> list[str]:
        return [str(model["kind"]) for model in self.models]

    @property
    def sha256(self) -> str:
        """Of the manifest's bytes as stored: what the registry records and replicas compare."""
        return sha256(self.to_json())

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> bytes:
        body = dataclasses.asdict(self)
        return json.dumps(body, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            body = json.loads(raw)
            if body.get("format") != BUNDLE_FORMAT:
                raise BundleIncompatible(f"unsupported bundle format {body.get('format')!r}")
            return cls(
                bundle_id=check_bundle_id(str(body["bundle_id"])),
                created_at=str(body["created_at"]),
                code_version=str(body["code_version"]),
                models=list(body["models"]),
                data=dict(body["data"]),
                metrics=dict(body["metrics"]),
                files={
                    _check_key(str(name)): BundleFile(int(f["size"]), str(f["sha256"]))
                    for name, f in dict(body["files"]).items()
                },
            )
        except BundleRefused:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise BundleCorrupt(f"unreadable manifest: {error}") from error


def bundle_key(bundle_id: str, name: str) -> str:
    return f"{BUNDLES}/{check_bundle_id(bundle_id)}/{_check_key(name)}"


def write_bundle(
    store: ArtifactStore,
    bundle_id: str,
    files: Mapping[str, bytes],
    *,
    code_version: str,
    models: list[dict[str, Any]],
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Manifest:
    """Write the files, then the manifest: until the manifest is stored the bundle does not exist.

    A bundle id is written once; an existing complete bundle is ``FileExistsError``.
    """
    check_bundle_id(bundle_id)
    if MANIFEST in files:
        raise ValueError("the manifest is written by write_bundle itself")
    if bundle_exists(store, bundle_id):
        raise FileExistsError(f"bundle {bundle_id} already stored")
    entries: dict[str, BundleFile] = {}
    for name, content in files.items():
        store.put(bundle_key(bundle_id, name), content)
        entries[name] = BundleFile(len(content), sha256(content))
    manifest = Manifest(
        bundle_id=bundle_id,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        code_version=code_version,
        models=models,
        data=data or {},
        metrics=metrics or {},
        files=entries,
    )
    store.put(bundle_key(bundle_id, MANIFEST), manifest.to_json())
    return manifest


def bundle_exists(store: ArtifactStore, bundle_id: str) -> bool:
    try:
        store.get(bundle_key(bundle_id, MANIFEST))
    except ArtifactNotFound:
        return False
    return True


def read_manifest(store: ArtifactStore, bundle_id: str, expected_sha256: str = "") -> Manifest:
    """The bundle's manifest; ``ArtifactNotFound`` when the bundle is absent or incomplete,
    ``BundleCorrupt`` when ``expected_sha256`` is given and the manifest's bytes differ."""
    raw = store.get(bundle_key(bundle_id, MANIFEST))
    if expected_sha256 and sha256(raw) != expected_sha256:
        raise BundleCorrupt(f"{bundle_id}: the manifest differs from the one published")
    manifest = Manifest.from_json(raw)
    if manifest.bundle_id != bundle_id:
        raise BundleCorrupt(f"manifest of {bundle_id} names {manifest.bundle_id}")
    return manifest


def read_bundle(
    store: ArtifactStore, bundle_id: str, manifest_sha256: str = ""
) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest (checked against ``manifest_sha256`` when given) and every file, each checked
    against the manifest's size and SHA-256.

    ``BundleCorrupt`` when a file is missing, truncated or altered; ``ArtifactError`` when the
    store could not be read.
    """
    manifest = read_manifest(store, bundle_id, manifest_sha256)
    contents: dict[str, bytes] = {}
    for name, expected in manifest.files.items():
        try:
            content = store.get(bundle_key(bundle_id, name))
        except ArtifactNotFound as error:
            raise BundleCorrupt(f"{bundle_id}: {name} is missing") from error
        if len(content) != expected.size:
            raise BundleCorrupt(
                f"{bundle_id}: {name} has {len(content)} bytes, the manifest says {expected.size}"
            )
        if sha256(content) != expected.sha256:
            raise BundleCorrupt(f"{bundle_id}: {name} does not match its SHA-256")
        contents[name] = content
    return manifest, contents


def list_bundles(store: ArtifactStore) -> list[str]:
    """Complete bundles (those with a manifest), by id."""
    suffix = "/" + MANIFEST
    return sorted(
        key[len(BUNDLES) + 1 : -len(suffix)]
        for key in store.list_keys(BUNDLES)
        if key.endswith(suffix) and key.count("/") == 2
    )


def incomplete_bundles(store: ArtifactStore) -> list[str]:
    """Bundle prefixes without a manifest (a writer died or is still writing)."""
    seen = {key.split("/")[1] for key in store.list_keys(BUNDLES) if key.count("/") >= 2}
    return sorted(seen - set(list_bundles(store)))


@dataclasses.dataclass(frozen=True)
class PrunePlan:
    """What ``plan_prune`` keeps and deletes, by bundle id."""

    # Published and inside the rollback window of their kind (the active version first).
    kept: list[str]
    # Published, but older than the window: deleted.
    deleted: list[str]
    # Complete bundles never published (``--no-publish``, or a publish that failed): deleted only
    # when asked, else kept.
    unpublished: list[str]


def plan_prune(
    bundles: list[str],
    publications: list[tuple[str, str]],
    keep: int,
    *,
    delete_unpublished: bool = False,
) -> PrunePlan:
    """Which stored bundles to delete.

    ``publications`` are the registry's (model kind, version) pairs, newest first. Per kind the
    ``keep`` most recently published distinct versions stay (the active one and the rollback
    targets); a bundle published under several kinds stays when any kind keeps it.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1: the active version of each kind always stays")
    window: dict[str, list[str]] = {}
    published: set[str] = set()
    for kind, version in publications:
        published.add(version)
        versions = window.setdefault(kind, [])
        if version not in versions and len(versions) < keep:
            versions.append(version)
    stored = set(bundles)
    kept_ids = {version for versions in window.values() for version in versions}
    kept = sorted(stored & kept_ids)
    unpublished = sorted(stored - published)
    deleted = sorted((stored & published) - kept_ids)
    if delete_unpublished:
        deleted = sorted(set(deleted) | set(unpublished))
    return PrunePlan(kept, deleted, unpublished)


def delete_bundles(store: ArtifactStore, bundle_ids: list[str]) -> int:
    """Delete whole bundles, the manifest first (an interrupted delete leaves an incomplete bundle,
    which never loads, never a manifest whose files are gone); the number of files deleted."""
    count = 0
    for bundle_id in bundle_ids:
        store.delete([bundle_key(bundle_id, MANIFEST)])
        prefix = f"{BUNDLES}/{check_bundle_id(bundle_id)}/"
        keys = [key for key in store.list_keys(f"{BUNDLES}/{bundle_id}") if key.startswith(prefix)]
        store.delete(keys)
        count += len(keys) + 1
    return count
