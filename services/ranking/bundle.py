"""The ranking models as a bundle in the artefact store, and back.

One bundle holds what ranking serves together: the collaborative model (ALS item factors, item
ids, item counts) and, when fitted, the learned ranker whose features include that model's scores
and the sequential user tower's (ONNX), so they are published, served and rolled back as one.
The bundle id is the collaborative version (``als-<time>-<digest>``), which is what
``RankCandidates`` reports as ``collaborative_version``. User factors are not stored: serving
folds users in from their history.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import numpy as np

from services.common.artifacts import (
    ArtifactStore,
    BundleCorrupt,
    BundleIncompatible,
    Manifest,
    read_bundle,
    write_bundle,
)
from services.ranking.collaborative import ARTIFACT_FORMAT, AlsParams, CollaborativeModel
from services.ranking.learned import LearnedRanker
from services.ranking.tower import TowerRunner

# The registry's model kind ranking replicas follow.
MODEL_KIND = "collaborative"
RANKER_KIND = "learned_ranker"

_FACTORS = "collaborative/item_factors.npy"
_COUNTS = "collaborative/item_counts.npy"
_ITEM_IDS = "collaborative/item_ids.json"
_RANKER = "learned_ranker/ranker.json"
_TOWER = "user_tower/model.onnx"
_TOWER_CONFIG = "user_tower/config.json"
TOWER_KIND = "user_tower"


def _npy(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def bundle_files(model: CollaborativeModel) -> dict[str, bytes]:
    files = {
        _FACTORS: _npy(model.item_factors),
        _COUNTS: _npy(model.item_counts),
        _ITEM_IDS: json.dumps(model.item_ids).encode(),
    }
    if model.ranker is not None:
        files[_RANKER] = model.ranker.to_json().encode()
    if model.tower is not None:
        files[_TOWER] = model.tower.onnx
        files[_TOWER_CONFIG] = model.tower.config_bytes()
    return files


def model_entries(model: CollaborativeModel) -> list[dict[str, Any]]:
    """The manifest's ``models``: kind, version and what each was fitted with."""
    entries: list[dict[str, Any]] = [
        {
            "kind": MODEL_KIND,
            "version": model.version,
            "format": ARTIFACT_FORMAT,
            "params": dataclasses.asdict(model.params),
            "users": model.user_count,
            "items": model.item_count,
            "interactions": model.interaction_count,
            "fit_seconds": round(model.duration_seconds, 3),
        }
    ]
    if model.ranker is not None:
        entries.append(
            {
                "kind": RANKER_KIND,
                "version": f"{model.version}-ranker",
                "features": list(model.ranker.feature_names),
                "info": {k: v for k, v in model.ranker.info.items() if k != "validation"},
            }
        )
    if model.tower is not None:
        entries.append(
            {
                "kind": TOWER_KIND,
                "version": f"{model.version}-tower",
                "info": model.tower.description,
            }
        )
    return entries


def save_bundle(
    store: ArtifactStore,
    model: CollaborativeModel,
    *,
    code_version: str,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``model`` (and its ranker) as the bundle ``model.version``; manifest last."""
    return write_bundle(
        store,
        model.version,
        bundle_files(model),
        code_version=code_version,
        models=model_entries(model),
        data=data,
        metrics=metrics,
    )


def model_from_bundle(manifest: Manifest, files: dict[str, bytes]) -> CollaborativeModel:
    """The model a verified bundle holds; ``BundleIncompatible`` when this code cannot serve it."""
    entry = next((m for m in manifest.models if m.get("kind") == MODEL_KIND), None)
    if entry is None:
        raise BundleIncompatible(f"bundle {manifest.bundle_id} holds no {MODEL_KIND} model")
    if entry.get("format") != ARTIFACT_FORMAT:
        raise BundleIncompatible(f"unsupported {MODEL_KIND} format {entry.get('format')!r}")
    try:
        params = AlsParams(**entry["params"])
        ranker = LearnedRanker.from_json(files[_RANKER].decode()) if _RANKER in files else None
        tower = (
            TowerRunner.from_files(files[_TOWER], files[_TOWER_CONFIG]) if _TOWER in files else None
        )
        return CollaborativeModel(
            str(entry["version"]),
            json.loads(files[_ITEM_IDS]),
            np.load(io.BytesIO(files[_FACTORS]), allow_pickle=False),
            np.load(io.BytesIO(files[_COUNTS]), allow_pickle=False),
            params,
            interaction_count=int(entry.get("interactions", 0)),
            duration_seconds=float(entry.get("fit_seconds", 0.0)),
            created_at=manifest.created_at,
            ranker=ranker,
            tower=tower,
        )
    except KeyError as error:
        raise BundleCorrupt(f"bundle {manifest.bundle_id} lacks {error}") from error
    except (ValueError, TypeError, RuntimeError) as error:
        # Other feature names, shapes that disagree, parameters this code does not know, a tower
        # graph onnxruntime cannot load.
        raise BundleIncompatible(f"bundle {manifest.bundle_id}: {error}") from error


def load_bundle(
    store: ArtifactStore, bundle_id: str, manifest_sha256: str = ""
) -> tuple[Manifest, CollaborativeModel]:
    """Download, verify and decode (blocking: run it off the event loop)."""
    manifest, files = read_bundle(store, bundle_id, manifest_sha256)
    return manifest, model_from_bundle(manifest, files)
