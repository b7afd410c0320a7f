"""Pruning the artefact store: each model kind keeps its last published versions (the active one
and the rollback targets); older bundles go, manifest first; never-published and incomplete
bundles stay unless asked. Against a real profiles registry and both stores."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from longtail.profiles.v1 import profiles_service_pb2 as ppb
from services.common.artifacts import (
    MANIFEST,
    ArtifactStore,
    LocalFolderStore,
    bundle_key,
    delete_bundles,
    incomplete_bundles,
    list_bundles,
    plan_prune,
    read_bundle,
    write_bundle,
)
from tests.training.world import ServedProfiles

FILES = {"model/weights.bin": b"w" * 1000, "model/meta.json": b"{}"}


def _write(store: ArtifactStore, bundle_id: str) -> None:
    write_bundle(store, bundle_id, FILES, code_version="test", models=[])


def test_plan_keeps_the_last_published_versions_of_each_kind() -> None:
    publications = [  # newest first
        ("collaborative", "c4"),
        ("collaborative", "c2"),  # a rollback to c2
        ("text_encoder", "e2"),
        ("collaborative", "c3"),
        ("collaborative", "c2"),
        ("text_encoder", "e1"),
        ("collaborative", "c1"),
    ]
    stored = ["c1", "c2", "c3", "c4", "e1", "e2", "draft"]
    plan = plan_prune(stored, publications, keep=2)
    assert plan.kept == ["c2", "c4", "e1", "e2"]
    assert plan.deleted == ["c1", "c3"]
    assert plan.unpublished == ["draft"]
    assert plan_prune(stored, publications, keep=1).deleted == ["c1", "c2", "c3", "e1"]
    assert "draft" in plan_prune(stored, publications, 2, delete_unpublished=True).deleted
    # A published version whose bundle is already gone is simply not in the plan.
    assert plan_prune(["c4"], publications, keep=1).kept == ["c4"]
    with pytest.raises(ValueError, match="keep"):
        plan_prune(stored, publications, keep=0)


def test_deleting_bundles_removes_every_file_and_leaves_the_others_whole(
    store: ArtifactStore, tmp_path: Path
) -> None:
    for bundle_id in ("a", "b", "c"):
        _write(store, bundle_id)
    deleted = delete_bundles(store, ["a", "c"])
    assert deleted == 2 * (len(FILES) + 1)
    assert list_bundles(store) == ["b"]
    assert incomplete_bundles(store) == []  # nothing of "a" or "c" is left behind
    assert read_bundle(store, "b")[1] == FILES
    if isinstance(store, LocalFolderStore):  # no empty folders either
        assert sorted(p.name for p in (tmp_path / "artifacts" / "bundles").iterdir()) == ["b"]


async def test_prune_bundles_command_keeps_each_kinds_window(
    profiles: ServedProfiles, tmp_path: Path
) -> None:
    folder = tmp_path / "cli-artifacts"
    store = LocalFolderStore(folder)
    for kind, version in (
        ("collaborative", "als-1"),
        ("collaborative", "als-2"),
        ("text_encoder", "enc-1"),
        ("collaborative", "als-3"),
    ):
        _write(store, version)
        await profiles.stub.PublishModel(
            ppb.PublishModelRequest(
                model_kind=kind, version=version, published_by="pytest", reason="test"
            )
        )
    _write(store, "als-draft")  # written with --no-publish
    store.put(bundle_key("half-written", "model/weights.bin"), b"w")  # no manifest yet

    async def prune(*extra: str) -> str:
        command = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "longtail"),
            "--profiles",
            profiles.target,
            "prune-bundles",
            "--keep",
            "2",
            "--artifact-dir",
            str(folder),
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await command.communicate()
        assert command.returncode == 0, err.decode()
        return out.decode()

    dry = await prune("--dry-run")
    assert "1 bundles would be deleted" in dry
    assert len(list_bundles(store)) == 5
    out = await prune()
    assert "deleted 1 bundles" in out
    assert list_bundles(store) == ["als-2", "als-3", "als-draft", "enc-1"]
    assert incomplete_bundles(store) == ["half-written"]
    assert (folder / bundle_key("half-written", "model/weights.bin")).is_file()
    await prune("--delete-unpublished")
    assert list_bundles(store) == ["als-2", "als-3", "enc-1"]
    assert not (folder / bundle_key("als-1", MANIFEST)).exists()
    # The active version still loads.
    assert read_bundle(store, await profiles.active())[1] == FILES
