"""Encoder versions without Triton: the bundle, its installation, and the follower's decisions.

Triton stands behind ``VersionControl`` here (a fake that tells which version folders it would
serve); the real server is in test_encoder_versions_triton.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from services.common.artifacts import (
    BundleCorrupt,
    BundleIncompatible,
    LocalFolderStore,
    bundle_key,
    code_version,
    read_manifest,
)
from services.common.registry import ActiveModel, InProcessModelRegistry
from services.embeddings.versions import (
    BASE_VERSION,
    BUNDLE_MARKER,
    ENCODER_KIND,
    EncoderVersion,
    EncoderVersionFollower,
    encoder_version,
    install_bundle,
    new_triton_version,
    save_encoder_bundle,
)


def _encoder_folder(root: Path, marker: str) -> Path:
    """A stand-in Hugging Face folder (the follower never reads the weights)."""
    folder = root / f"encoder-{marker}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 384, "marker": marker}))
    (folder / "model.safetensors").write_bytes(marker.encode() * 100)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _repository(root: Path) -> Path:
    model_dir = root / "models" / "text_encoder"
    (model_dir / BASE_VERSION).mkdir(parents=True)
    (model_dir / BASE_VERSION / "model.py").write_text("# the model code\n")
    return model_dir


class FakeTriton:
    """Serves the version folders present in ``model_dir`` after ``load_model``."""

    def __init__(self, model_dir: Path, fail_load: bool = False) -> None:
        self.model_dir = model_dir
        self.loaded: set[str] = {BASE_VERSION}
        self.loads = 0
        self.fail_load = fail_load

    async def version_ready(self, version: str, timeout: float) -> bool:
        return version in self.loaded

    async def load_model(self, timeout: float) -> None:
        self.loads += 1
        if self.fail_load:
            raise RuntimeError("triton refused the load")
        self.loaded = {p.name for p in self.model_dir.iterdir() if p.name.isdigit()}


def _bundle(store: LocalFolderStore, tmp_path: Path, marker: str, number: int) -> ActiveModel:
    manifest = save_encoder_bundle(
        store,
        _encoder_folder(tmp_path, marker),
        None,
        fingerprint=f"fp{marker}",
        triton_version=number,
        code_version=code_version(),
    )
    return ActiveModel(manifest.bundle_id, manifest.sha256)


def test_version_number_is_the_utc_time() -> None:
    moment = dt.datetime(2026, 12, 1, 6, 30, 15, tzinfo=dt.UTC)
    assert new_triton_version(moment) == 20261201063015


def test_the_base_version_number_is_refused(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    with pytest.raises(ValueError, match="base encoder"):
        _bundle(store, tmp_path, "a", 1)


def test_install_writes_a_whole_version_folder_once(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    model_dir = _repository(tmp_path)
    active = _bundle(store, tmp_path, "a", 20261201000001)
    version = install_bundle(store, active, model_dir)
    assert version == EncoderVersion(active.version, "20261201000001", "fpa")
    folder = model_dir / "20261201000001"
    assert (folder / "encoder" / "config.json").is_file()
    assert (folder / "model.py").read_text() == "# the model code\n"
    assert (folder / BUNDLE_MARKER).read_text().strip() == active.version
    # Nothing staged is left behind, and a second install changes nothing.
    assert not any((model_dir.parent / ".staging").iterdir())
    before = (folder / "encoder" / "model.safetensors").stat().st_mtime_ns
    assert install_bundle(store, active, model_dir) == version
    assert (folder / "encoder" / "model.safetensors").stat().st_mtime_ns == before


def test_a_tampered_bundle_is_not_installed(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    model_dir = _repository(tmp_path)
    active = _bundle(store, tmp_path, "a", 20261201000001)
    store.put(bundle_key(active.version, "encoder/model.safetensors"), b"altered")
    with pytest.raises(BundleCorrupt):
        install_bundle(store, active, model_dir)
    assert not (model_dir / "20261201000001").exists()


def test_a_bundle_of_another_kind_is_incompatible(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    active = _bundle(store, tmp_path, "a", 20261201000001)
    manifest = read_manifest(store, active.version)
    other = dataclasses.replace(manifest, models=[{"kind": "collaborative"}])
    with pytest.raises(BundleIncompatible, match="holds no text_encoder"):
        encoder_version(other)


async def test_follower_pins_the_published_version_once_triton_serves_it(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    model_dir = _repository(tmp_path)
    registry = InProcessModelRegistry()
    triton = FakeTriton(model_dir)
    follower = EncoderVersionFollower(registry, store, triton, model_dir)

    assert await follower.resolve(None) is None  # nothing published: the base version
    first = _bundle(store, tmp_path, "a", 20261201000001)
    await registry.publish(ENCODER_KIND, first, "test", "", None)
    pinned = await follower.resolve(None)
    assert pinned is not None and pinned.triton_version == "20261201000001"
    assert triton.loads == 1
    # Unchanged and served: no new load.
    assert await follower.resolve(pinned) == pinned
    assert triton.loads == 1

    # A second version; the first stays installed beside it (rollback = publish it again).
    second = _bundle(store, tmp_path, "b", 20261201000002)
    await registry.publish(ENCODER_KIND, second, "test", "", None)
    newer = await follower.resolve(pinned)
    assert newer is not None and newer.label == "20261201000002-fpb"
    assert {"1", "20261201000001", "20261201000002"} <= triton.loaded
    await registry.publish(ENCODER_KIND, first, "test", "rollback", None)
    assert await follower.resolve(newer) == pinned


async def test_follower_keeps_the_current_version_when_the_new_one_fails(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    model_dir = _repository(tmp_path)
    registry = InProcessModelRegistry()
    follower = EncoderVersionFollower(registry, store, FakeTriton(model_dir), model_dir)
    good = _bundle(store, tmp_path, "a", 20261201000001)
    await registry.publish(ENCODER_KIND, good, "test", "", None)
    current = await follower.resolve(None)
    assert current is not None

    # Corrupt: refused once, remembered (not downloaded again), the current version stays.
    bad = _bundle(store, tmp_path, "b", 20261201000002)
    store.put(bundle_key(bad.version, "encoder/config.json"), b"{}")
    await registry.publish(ENCODER_KIND, bad, "test", "", None)
    assert await follower.resolve(current) == current
    assert follower.metrics.refusals.labels("corrupt")._value.get() == 1
    assert await follower.resolve(current) == current
    assert follower.metrics.refusals.labels("corrupt")._value.get() == 1

    # Triton refuses to load it: the current version stays, and the next poll tries again.
    third = _bundle(store, tmp_path, "c", 20261201000003)
    await registry.publish(ENCODER_KIND, third, "test", "", None)
    refusing = EncoderVersionFollower(
        registry, store, FakeTriton(model_dir, fail_load=True), model_dir
    )
    assert await refusing.resolve(current) == current
    assert refusing.metrics.refusals.labels("unavailable")._value.get() == 1


async def test_without_a_repository_only_a_version_triton_has_is_served(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    model_dir = _repository(tmp_path)
    registry = InProcessModelRegistry()
    triton = FakeTriton(model_dir)
    active = _bundle(store, tmp_path, "a", 20261201000001)
    await registry.publish(ENCODER_KIND, active, "test", "", None)
    follower = EncoderVersionFollower(registry, store, triton, None)
    assert await follower.resolve(None) is None
    assert follower.metrics.refusals.labels("not_installable")._value.get() == 1
    # Someone else installed it (a shared repository): now it is served.
    install_bundle(store, active, model_dir)
    await triton.load_model(1.0)
    pinned = await follower.resolve(None)
    assert pinned is not None and pinned.bundle_id == active.version


async def test_a_version_lost_by_a_triton_restart_is_installed_again(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    model_dir = _repository(tmp_path)
    registry = InProcessModelRegistry()
    triton = FakeTriton(model_dir)
    follower = EncoderVersionFollower(registry, store, triton, model_dir)
    active = _bundle(store, tmp_path, "a", 20261201000001)
    await registry.publish(ENCODER_KIND, active, "test", "", None)
    pinned = await follower.resolve(None)
    assert pinned is not None
    # A fresh Triton with an empty repository (e.g. the run folder was not kept).
    shutil.rmtree(model_dir / pinned.triton_version)
    triton.loaded = {BASE_VERSION}
    assert await follower.resolve(pinned) == pinned
    assert (model_dir / pinned.triton_version / BUNDLE_MARKER).is_file()
    assert pinned.triton_version in triton.loaded


async def test_old_versions_are_removed_and_unloaded_after_a_switch(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    model_dir = _repository(tmp_path)
    registry = InProcessModelRegistry()
    triton = FakeTriton(model_dir)
    follower = EncoderVersionFollower(registry, store, triton, model_dir, versions_kept=2)
    bundles = [_bundle(store, tmp_path, m, 20261201000001 + n) for n, m in enumerate("abcd")]
    pinned: EncoderVersion | None = None
    for bundle in bundles:
        await registry.publish(ENCODER_KIND, bundle, "test", "", None)
        pinned = await follower.resolve(pinned)
    assert pinned is not None and pinned.triton_version == "20261201000004"
    # The served version and the one before it stay; older ones leave the folder and Triton.
    kept = {"1", "20261201000003", "20261201000004"}
    assert {p.name for p in model_dir.iterdir()} == kept
    assert triton.loaded == kept
    # A rollback to a removed version installs it again from the store; the version it
    # replaces stays (requests pinned to it may be in flight), the other one goes.
    await registry.publish(ENCODER_KIND, bundles[0], "test", "rollback", None)
    back = await follower.resolve(pinned)
    assert back is not None and back.triton_version == "20261201000001"
    assert triton.loaded == {"1", "20261201000001", "20261201000004"}


def test_fewer_than_two_kept_versions_is_a_start_up_error() -> None:
    from services.common.settings import SettingsError
    from services.embeddings.config import EmbeddingsSettings

    with pytest.raises(SettingsError, match="encoder_versions_kept"):
        EmbeddingsSettings(encoder_versions_kept=1)
