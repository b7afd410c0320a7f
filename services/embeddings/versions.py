"""Encoder versions: a fine-tuned encoder as a bundle, installed into Triton, pinned when published.

The lifecycle (issue 12), the same as ranking's models (issue 9):

1. The training job fine-tunes the encoder and writes a bundle of kind ``text_encoder`` to the
   artefact store (``save_encoder_bundle``): the Hugging Face folder under ``encoder/`` and its
   ONNX export ``model.onnx``; the manifest names the Triton version the bundle becomes (a number,
   the UTC time of training as ``YYYYMMDDHHMMSS``: unique and increasing without asking anyone)
   and the encoder's fingerprint. Then it publishes the bundle in the registry.
2. The embeddings service follows the registry (``EncoderVersionFollower``). For the active
   bundle it checks the download against the manifest's checksums, writes it into Triton's model
   repository as the version folder ``text_encoder/<version>/`` (staged next to the repository,
   then renamed: Triton never sees half a folder), asks Triton to load it (explicit model control;
   the versions already served keep serving while it loads), and pins every request to it once
   Triton reports it ready. Until then, and whenever anything fails, the previous version keeps
   serving.
3. Vectors carry ``<version>-<fingerprint>`` as their model version, so ``longtail index``
   re-embeds the catalogue after a switch; rolling back is publishing an older bundle.

Version 1 is the base encoder of the repository's config; with nothing published it is served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from services.common.artifacts import (
    ArtifactError,
    ArtifactStore,
    BundleCorrupt,
    BundleIncompatible,
    BundleRefused,
    Manifest,
    read_bundle,
    read_manifest,
    write_bundle,
)
from services.common.registry import ActiveModel, ModelRegistry

log = logging.getLogger(__name__)

# The registry's model kind of the text encoder.
ENCODER_KIND = "text_encoder"
# The repository's own version: the base encoder named by the model config.
BASE_VERSION = "1"
# Inside a bundle (and a version folder): the Hugging Face folder and the ONNX export; the names
# model.py looks for (VERSION_ENCODER_DIR, VERSION_ONNX_FILE there).
ENCODER_DIR = "encoder"
ONNX_FILE = "model.onnx"
MODEL_FILE = "model.py"
# Written last into a version folder: which bundle it holds.
BUNDLE_MARKER = "bundle.txt"
STAGING_DIR = ".staging"


@dataclasses.dataclass(frozen=True)
class EncoderVersion:
    """A published encoder as served: the bundle, its Triton version folder, its fingerprint."""

    bundle_id: str
    triton_version: str
    fingerprint: str

    @property
    def label(self) -> str:
        """What its vectors are labelled with (``ModelInfo.version``)."""
        return f"{self.triton_version}-{self.fingerprint}"


def new_triton_version(now: dt.datetime | None = None) -> int:
    """A version number from the UTC time, e.g. 20261201063015 (fits Triton's int64)."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return int(moment.strftime("%Y%m%d%H%M%S"))


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file of a folder, by its relative path (hidden files left out)."""
    files: dict[str, bytes] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if not any(part.startswith(".") for part in relative.split("/")):
            files[relative] = path.read_bytes()
    return files


def save_encoder_bundle(
    store: ArtifactStore,
    encoder_folder: Path,
    onnx_file: Path | None,
    *,
    fingerprint: str,
    triton_version: int,
    code_version: str,
    base: str = "",
    data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Manifest:
    """Write a fine-tuned encoder as a bundle (files first, the manifest last)."""
    if triton_version <= int(BASE_VERSION):
        raise ValueError(f"version {BASE_VERSION} is the base encoder; use a later one")
    files = {
        f"{ENCODER_DIR}/{name}": content for name, content in folder_files(encoder_folder).items()
    }
    if f"{ENCODER_DIR}/config.json" not in files:
        raise ValueError(f"{encoder_folder} is not a Hugging Face folder (no config.json)")
    if onnx_file is not None:
        files[ONNX_FILE] = onnx_file.read_bytes()
    bundle_id = f"text-encoder-{triton_version}-{fingerprint}"
    entry = {
        "kind": ENCODER_KIND,
        "version": bundle_id,
        "triton_version": triton_version,
        "fingerprint": fingerprint,
        "base": base,
    }
    return write_bundle(
        store,
        bundle_id,
        files,
        code_version=code_version,
        models=[entry],
        data=dict(data or {}),
        metrics=dict(metrics or {}),
    )


def encoder_version(manifest: Manifest) -> EncoderVersion:
    """The encoder a bundle holds; ``BundleIncompatible`` when it holds none."""
    for entry in manifest.models:
        if entry.get("kind") == ENCODER_KIND:
            try:
                number = int(entry["triton_version"])
                fingerprint = str(entry["fingerprint"])
            except (KeyError, TypeError, ValueError) as error:
                raise BundleCorrupt(f"{manifest.bundle_id}: bad encoder entry: {error}") from error
            if number <= int(BASE_VERSION) or not fingerprint.isalnum():
                raise BundleCorrupt(f"{manifest.bundle_id}: bad encoder entry {entry}")
            return EncoderVersion(manifest.bundle_id, str(number), fingerprint)
    raise BundleIncompatible(f"{manifest.bundle_id} holds no {ENCODER_KIND}")


def installed_bundle(model_dir: Path, version: EncoderVersion) -> bool:
    marker = model_dir / version.triton_version / BUNDLE_MARKER
    return marker.is_file() and marker.read_text().strip() == version.bundle_id


def install_bundle(store: ArtifactStore, active: ActiveModel, model_dir: Path) -> EncoderVersion:
    """Download and verify the bundle, then make it the version folder under ``model_dir``.

    Idempotent: a folder already holding this bundle is kept. The folder appears whole (staged
    beside the repository, renamed into place) with a copy of the base version's ``model.py``.
    """
    manifest, files = read_bundle(store, active.version, active.manifest_sha256)
    version = encoder_version(manifest)
    if installed_bundle(model_dir, version):
        return version
    model_code = model_dir / BASE_VERSION / MODEL_FILE
    if not model_code.is_file():
        raise FileNotFoundError(f"{model_code} is missing: {model_dir} is no text_encoder model")
    staging = model_dir.parent / STAGING_DIR / f"{version.triton_version}-{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    try:
        for name, content in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        shutil.copy2(model_code, staging / MODEL_FILE)
        (staging / BUNDLE_MARKER).write_text(version.bundle_id + "\n")
        target = model_dir / version.triton_version
        if target.exists():  # another bundle under the same number: replaced, never merged
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def prune_versions(model_dir: Path, keep: Sequence[str], kept: int) -> list[str]:
    """Deletes the fine-tuned version folders of ``model_dir`` except those in ``keep`` (the
    served version and the one served before it, whose last requests may still be in flight) and
    the newest others, up to ``kept`` in all; the base version is never touched. Returns the
    removed versions, oldest first."""
    installed = sorted(
        int(path.name) for path in model_dir.iterdir() if path.is_dir() and path.name.isdigit()
    )
    tuned = [str(number) for number in installed if str(number) != BASE_VERSION]
    keeping = {version for version in keep if version in tuned}
    for version in reversed(tuned):  # newest first
        if len(keeping) >= kept:
            break
        keeping.add(version)
    removed = [version for version in tuned if version not in keeping]
    for version in removed:
        shutil.rmtree(model_dir / version)
    return removed


class VersionControl(Protocol):
    """What the follower needs of Triton (``TritonEncoderClient``; fakes in unit tests)."""

    async def version_ready(self, version: str, timeout: float) -> bool: ...

    async def load_model(self, timeout: float) -> None: ...


class FollowerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.refusals = Counter(
            "longtail_encoder_version_refusals_total",
            "Published encoder bundles not (yet) served, by reason: corrupt, incompatible, "
            "unavailable (store, registry or Triton; retried at the next poll), not_installable "
            "(no model repository to write to and Triton lacks the version).",
            ["reason"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "longtail_encoder_version_swaps_total",
            "Encoder versions this replica switched to (rollbacks included).",
            registry=self.registry,
        )


class EncoderVersionFollower:
    """Which encoder version to serve: the published one once Triton serves it, else the last.

    ``repository`` is Triton's model folder for ``text_encoder`` as this process sees it (the
    managed server's, or a volume shared with Triton); without one, a published version is served
    only if Triton already has it.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        store: ArtifactStore | None,
        triton: VersionControl,
        repository: Path | None,
        metrics: FollowerMetrics | None = None,
        timeout: float = 120.0,
        versions_kept: int = 2,
    ) -> None:
        if versions_kept < 2:
            raise ValueError("versions_kept must be at least 2 (the served and the previous one)")
        self.versions_kept = versions_kept
        self.registry = registry
        self.store = store
        self.triton = triton
        self.repository = repository
        self.metrics = metrics or FollowerMetrics()
        self.timeout = timeout
        self._refused: set[ActiveModel] = set()

    async def resolve(self, current: EncoderVersion | None) -> EncoderVersion | None:
        """The version to pin (None = the base version). Raises only when the registry cannot
        be asked (the caller keeps its pin and asks again later)."""
        active = await self.registry.active(ENCODER_KIND, None)
        if active is None:
            if current is not None:
                self.metrics.swaps.inc()
                log.info("no encoder published: serving the base version")
            return None
        same = current is not None and current.bundle_id == active.version
        if same and current is not None and await self._ready(current.triton_version):
            return current
        # A new version, or this one is gone from Triton (restarted, unloaded): install, load.
        if active in self._refused:
            return current
        try:
            version = await self._install(active)
        except BundleRefused as error:
            reason = "incompatible" if isinstance(error, BundleIncompatible) else "corrupt"
            self._refused.add(active)
            return self._keep(current, active, reason, error)
        except (ArtifactError, OSError) as error:
            return self._keep(current, active, "unavailable", error)
        except _NotInstallable as error:
            return self._keep(current, active, "not_installable", error)
        if not await self._ready(version.triton_version):
            try:
                await self.triton.load_model(self.timeout)
            except Exception as error:  # Triton refused or is down: retried at the next poll
                return self._keep(current, active, "unavailable", error)
            if not await self._ready(version.triton_version):
                return self._keep(current, active, "unavailable", "loaded but not ready")
        if current != version:
            self.metrics.swaps.inc()
            log.info(
                "encoder version switched",
                extra={"fields": {"bundle": version.bundle_id, "version": version.label}},
            )
            await self._prune(version, current)
        return version

    async def _prune(self, serving: EncoderVersion, previous: EncoderVersion | None) -> None:
        """Removes the version folders beyond ``versions_kept`` and has Triton unload them.
        Best effort: a failure leaves extra versions loaded, never the served one missing."""
        if self.repository is None:
            return
        try:
            removed = await asyncio.to_thread(
                prune_versions,
                self.repository,
                [v.triton_version for v in (serving, previous) if v is not None],
                self.versions_kept,
            )
            if removed:
                await self.triton.load_model(self.timeout)  # re-reads the folder: unloads them
                log.info("old encoder versions removed", extra={"fields": {"versions": removed}})
        except Exception as error:
            log.warning("old encoder versions not removed", extra={"fields": {"error": str(error)}})

    async def _ready(self, triton_version: str) -> bool:
        try:
            return await self.triton.version_ready(triton_version, min(self.timeout, 5.0))
        except Exception:
            return False

    async def _install(self, active: ActiveModel) -> EncoderVersion:
        if self.store is None:
            raise _NotInstallable("no artefact store is configured")
        store = self.store
        if self.repository is None:
            # Nowhere to write: serve it only if Triton already has this very version.
            manifest_version = await asyncio.to_thread(_version_of, store, active)
            if await self._ready(manifest_version.triton_version):
                return manifest_version
            raise _NotInstallable(
                "Triton does not serve the version and no model repository is configured"
            )
        repository = self.repository
        return await asyncio.to_thread(install_bundle, store, active, repository)

    def _keep(
        self, current: EncoderVersion | None, active: ActiveModel, reason: str, error: object
    ) -> EncoderVersion | None:
        self.metrics.refusals.labels(reason).inc()
        log.warning(
            "published encoder not served; keeping the current version",
            extra={
                "fields": {
                    "bundle": active.version,
                    "reason": reason,
                    "detail": str(error),
                    "serving": current.label if current else BASE_VERSION,
                }
            },
        )
        return current


class _NotInstallable(Exception):
    pass


def _version_of(store: ArtifactStore, active: ActiveModel) -> EncoderVersion:
    return encoder_version(read_manifest(store, active.version, active.manifest_sha256))
