"""The training job's encoder stage (issue 12): fine-tune, export, check, bundle, publish, re-index.

1. ``reading``: every item's text (``services.suite.indexing.item_text``, what the encoder reads
   when serving) and every interaction, through profiles.
2. ``fine-tuning``: ``services.training.encoder.fine_tune_encoder`` from the base weights.
3. ``exporting``: the ONNX graph Triton runs (``model.py``'s ``export_onnx``), checked against the
   PyTorch model on real item texts (max difference <= ``ONNX_TOLERANCE``, else nothing is
   published).
4. ``writing`` + ``publishing``: a ``text_encoder`` bundle (``services/embeddings/versions.py``)
   made active in the registry.
5. ``switching``: wait until the embeddings service serves it (it installs and loads the version
   into Triton), then ``indexing``: re-embed the catalogue with it.

Killed before step 4 ends, nothing is published and the served encoder stays what it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from longtail.embeddings.v1 import embeddings_service_pb2
from longtail.profiles.v1 import profiles_service_pb2
from services.common.artifacts import ArtifactStore, Manifest, code_version
from services.common.registry import ActiveModel, ProfilesModelRegistry
from services.embeddings.versions import (
    ENCODER_KIND,
    EncoderVersion,
    encoder_version,
    new_triton_version,
    save_encoder_bundle,
)
from services.training.config import TrainingSettings
from services.training.encoder import EncoderTuningConfig, fine_tune_encoder

log = logging.getLogger("longtail.training")

# ONNX export vs PyTorch, max absolute difference on unit vectors (the serving contract's 1e-5).
ONNX_TOLERANCE = 1e-5
# Item texts the export is checked on.
CHECK_TEXTS = 64


@dataclasses.dataclass(frozen=True)
class _Event:
    user_id: str
    item_id: str
    occurred_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class EncoderStageReport:
    version: EncoderVersion
    manifest: Manifest
    published: bool
    seconds: dict[str, float]
    tuning: dict[str, Any]
    onnx_max_difference: float
    reindexed: int

    def summary(self) -> dict[str, Any]:
        return {
            "bundle": self.version.bundle_id,
            "vectors_version": self.version.label,
            "published": self.published,
            "bundle_bytes": self.manifest.size_bytes,
            "seconds": self.seconds,
            "onnx_max_difference": self.onnx_max_difference,
            "reindexed_items": self.reindexed,
            "tuning": self.tuning,
        }


async def read_item_texts(profiles: Any, timeout: float) -> dict[str, str]:
    from services.suite.indexing import item_text

    texts: dict[str, str] = {}
    token = ""
    while True:
        page = await profiles.ListItems(
            profiles_service_pb2.ListItemsRequest(page_size=1000, page_token=token),
            timeout=timeout,
        )
        texts.update((item.item_id, item_text(item)) for item in page.items)
        token = page.next_page_token
        if not token:
            return texts


async def read_events(profiles: Any, timeout: float) -> list[_Event]:
    events: list[_Event] = []
    token = ""
    while True:
        page = await profiles.ListInteractions(
            profiles_service_pb2.ListInteractionsRequest(page_size=5000, page_token=token),
            timeout=timeout,
        )
        events.extend(
            _Event(i.user_id, i.item_id, i.occurred_at.ToDatetime(dt.UTC))
            for i in page.interactions
        )
        token = page.next_page_token
        if not token:
            return events


def export_checked(folder: Path, target: Path, texts: list[str]) -> float:
    """Export to ONNX and return the max difference to PyTorch; raises above the tolerance."""
    from services.embeddings.tritonserver import load_model_module

    module = load_model_module()
    module.export_onnx(folder, target)
    reference = module.Encoder(folder, runtime="torch").encode(texts)
    exported = module.Encoder(folder, runtime="onnx", onnx_path=target).encode(texts)
    difference = float(np.abs(np.asarray(reference) - np.asarray(exported)).max())
    if not difference <= ONNX_TOLERANCE:
        raise RuntimeError(f"the ONNX export differs from PyTorch by {difference:.2e}")
    return difference


async def run_encoder_stage(
    job: TrainingSettings,
    profiles: Any,
    embeddings: Any,
    store: ArtifactStore,
    timeout: float,
    stage: Callable[..., None],
    progress: bool = False,
) -> EncoderStageReport:
    seconds: dict[str, float] = {}
    mark = time.perf_counter()
    stage("reading", what="item texts and interactions")
    texts = await read_item_texts(profiles, timeout)
    events = await read_events(profiles, timeout)
    seconds["read"] = round(time.perf_counter() - mark, 3)

    from services.embeddings.tritonserver import load_model_module

    module = load_model_module()
    base = Path(module.resolve_encoder_path(job.encoder_base))
    defaults = EncoderTuningConfig()
    config = dataclasses.replace(
        defaults, seed=job.encoder_seed, steps=job.encoder_steps or defaults.steps
    )
    with tempfile.TemporaryDirectory(prefix="longtail-encoder-") as scratch:
        folder = Path(scratch) / "encoder"
        mark = time.perf_counter()
        stage("fine-tuning", items=len(texts), interactions=len(events), steps=config.steps)
        tuning = await asyncio.to_thread(
            fine_tune_encoder, base, texts, events, folder, config, progress
        )
        seconds["fine_tune"] = round(time.perf_counter() - mark, 3)

        mark = time.perf_counter()
        stage("exporting")
        sample = [text for text in sorted(texts.values()) if text.strip()][:CHECK_TEXTS]
        onnx = Path(scratch) / "model.onnx"
        difference = await asyncio.to_thread(export_checked, folder, onnx, sample)
        seconds["export"] = round(time.perf_counter() - mark, 3)

        mark = time.perf_counter()
        fingerprint = str(module.model_fingerprint(folder))
        stage("writing", store=store.location)
        manifest = await asyncio.to_thread(
            save_encoder_bundle,
            store,
            folder,
            onnx,
            fingerprint=fingerprint,
            triton_version=new_triton_version(),
            code_version=code_version(),
            base=str(base),
            data={"items": len(texts), "interactions": len(events)},
            metrics={f"validation_{k}": v for k, v in tuning.validation.items()},
        )
        seconds["write"] = round(time.perf_counter() - mark, 3)
    version = encoder_version(manifest)
    reindexed = 0
    if job.publish:
        mark = time.perf_counter()
        stage("publishing", version=manifest.bundle_id)
        await ProfilesModelRegistry(profiles, timeout=timeout).publish(
            ENCODER_KIND,
            ActiveModel(manifest.bundle_id, manifest.sha256),
            job.published_by or f"training job on {socket.gethostname()}",
            job.reason,
            None,
        )
        stage("switching", vectors_version=version.label)
        await wait_until_served(embeddings, version, job.encoder_switch_timeout_seconds)
        seconds["switch"] = round(time.perf_counter() - mark, 3)

        mark = time.perf_counter()
        stage("indexing")
        from services.suite.indexing import index_catalogue

        result = await index_catalogue(profiles, embeddings, progress=progress)
        reindexed = int(result["embedded"])
        seconds["index"] = round(time.perf_counter() - mark, 3)
    summary = tuning.summary()
    return EncoderStageReport(
        version, manifest, job.publish, seconds, summary, difference, reindexed
    )


async def wait_until_served(embeddings: Any, version: EncoderVersion, timeout: float) -> None:
    """Until the embeddings service reports this version (it polls the registry, installs the
    bundle into Triton and loads it); TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        try:
            info = await embeddings.GetModelInfo(
                embeddings_service_pb2.GetModelInfoRequest(), timeout=30
            )
            seen = info.model_version
            if info.ready and seen == version.label:
                return
        except Exception as error:  # the service may be restarting: ask again
            log.info("embeddings not answering yet", extra={"fields": {"detail": str(error)}})
        await asyncio.sleep(1.0)
    raise TimeoutError(
        f"the embeddings service still serves {seen or 'nothing'} after {timeout:.0f} s, "
        f"not {version.label}: is it following the registry (LONGTAIL_EMBEDDINGS_PROFILES_TARGET)?"
    )
