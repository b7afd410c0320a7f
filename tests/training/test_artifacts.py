"""Bundles round-trip through the local folder and a real S3-compatible server (SeaweedFS), and
a bundle whose bytes differ from its manifest is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.artifacts import (
    MANIFEST,
    ArtifactNotFound,
    ArtifactStore,
    BundleCorrupt,
    LocalFolderStore,
    StoreSettings,
    bundle_key,
    incomplete_bundles,
    list_bundles,
    open_store,
    read_bundle,
    write_bundle,
)
from tests.s3server import SeaweedS3

FILES = {
    "collaborative/item_factors.npy": bytes(range(256)) * 4096,  # 1 MiB
    "collaborative/item_ids.json": b'["a", "b"]',
    "ranker/ranker.json": b"{}",
}


def _write(store: ArtifactStore, bundle_id: str = "b-1") -> None:
    write_bundle(
        store,
        bundle_id,
        FILES,
        code_version="test",
        models=[{"kind": "collaborative", "version": bundle_id}],
        data={"interactions": 3},
        metrics={"ndcg@10": 0.1},
    )


def test_bundle_round_trips(store: ArtifactStore) -> None:
    _write(store)
    manifest, contents = read_bundle(store, "b-1")
    assert contents == FILES
    assert manifest.kinds == ["collaborative"]
    assert manifest.data == {"interactions": 3}
    assert manifest.size_bytes == sum(len(v) for v in FILES.values())
    assert list_bundles(store) == ["b-1"]
    with pytest.raises(FileExistsError):
        _write(store)


def test_missing_bundle_is_not_found(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        read_bundle(store, "absent")


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: b"X" + data[1:],  # same size, other bytes
    ],
    ids=["truncated", "altered"],
)
def test_corrupt_file_is_refused(store: ArtifactStore, damage) -> None:
    _write(store)
    key = bundle_key("b-1", "collaborative/item_factors.npy")
    store.put(key, damage(store.get(key)))
    with pytest.raises(BundleCorrupt):
        read_bundle(store, "b-1")


def test_missing_file_and_bad_manifest_are_refused(store: ArtifactStore) -> None:
    _write(store, "b-2")
    store.delete([bundle_key("b-2", "ranker/ranker.json")])
    with pytest.raises(BundleCorrupt, match="missing"):
        read_bundle(store, "b-2")
    _write(store, "b-3")
    store.put(bundle_key("b-3", MANIFEST), b"{not json")
    with pytest.raises(BundleCorrupt):
        read_bundle(store, "b-3")


def test_bundle_without_manifest_does_not_exist(store: ArtifactStore) -> None:
    """What a writer killed before the manifest leaves: never listed, never read."""
    store.put(bundle_key("half", "collaborative/item_factors.npy"), b"partial")
    assert list_bundles(store) == []
    assert incomplete_bundles(store) == ["half"]
    with pytest.raises(ArtifactNotFound):
        read_bundle(store, "half")


def test_open_store_reads_the_settings(tmp_path: Path, seaweed: SeaweedS3, monkeypatch) -> None:
    assert isinstance(open_store(StoreSettings(folder=tmp_path)), LocalFolderStore)
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    store = open_store(StoreSettings(url="s3://longtail/settings", s3_endpoint=seaweed.endpoint))
    _write(store, "b-9")
    assert list_bundles(store) == ["b-9"]
    with pytest.raises(ValueError):
        open_store(StoreSettings(url="gs://elsewhere"))
