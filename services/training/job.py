"""One training run, in its own process: read through profiles, fit, write a bundle, publish.

Steps, each logged as ``training stage`` with its name (with ``encoder`` set, the encoder stage
of ``services.training.encoder_stage`` runs first: fine-tune, publish, re-embed the catalogue):
1. ``reading``: the catalogue (items, vectors of the embeddings service's model, stats) and every
   interaction, through the profiles service (and embeddings.GetModelInfo); no SQL here.
2. ``fitting``: ALS on every interaction and the learned ranker on the per-user time split,
   with ranking's own code (``services.ranking.training.fit_models``) and settings.
3. ``writing``: the bundle (files, then the manifest) into the artefact store.
4. ``publishing``: the registry's PublishModel makes it the active version.

Killed at any point before step 4 ends, the job publishes nothing: the active version stays what
it was, and a bundle without its manifest does not exist for anyone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from longtail.embeddings.v1 import embeddings_service_pb2_grpc
from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.artifacts import Manifest, code_version, open_store
from services.common.channels import open_channel
from services.common.logging import configure_logging
from services.common.registry import ActiveModel, ProfilesModelRegistry
from services.common.settings import ClientSettings, load_settings
from services.ranking.bundle import MODEL_KIND, save_bundle
from services.ranking.catalog import CatalogLoader, ProfilesCatalogSource, ProfilesInteractionSource
from services.ranking.config import RankingSettings
from services.ranking.engine import resolve_als_params
from services.ranking.torch_training import peak_rss_mb
from services.ranking.training import fit_models
from services.training.config import TrainingSettings
from services.training.encoder_stage import EncoderStageReport, run_encoder_stage

log = logging.getLogger("longtail.training")

RANKING_PREFIX = "LONGTAIL_RANKING_"
TRAINING_PREFIX = "LONGTAIL_TRAINING_"


@dataclasses.dataclass(frozen=True)
class TrainingReport:
    version: str
    manifest: Manifest
    published: bool
    store: str
    seconds: dict[str, float]
    # Peak resident memory of this process (the job's own high-water mark).
    peak_rss_mb: float
    # The encoder stage, when the job fine-tuned the encoder first.
    encoder: EncoderStageReport | None = None

    def summary(self) -> dict[str, Any]:
        return {
            **({"encoder": self.encoder.summary()} if self.encoder else {}),
            "version": self.version,
            "published": self.published,
            "store": self.store,
            "bundle_bytes": self.manifest.size_bytes,
            "seconds": self.seconds,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "data": self.manifest.data,
            "metrics": self.manifest.metrics,
        }


def _stage(name: str, **fields: object) -> None:
    log.info("training stage", extra={"fields": {"stage": name, **fields}})


async def run_training(ranking: RankingSettings, job: TrainingSettings) -> TrainingReport:
    """One run; raises on failure (nothing published then)."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def client(target: str) -> ClientSettings:
        return ClientSettings(
            target=target,
            tls_ca_file=ranking.client_tls_ca_file,
            auth_token=ranking.client_auth_token,
        )

    store = open_store(ranking.store_settings())
    params = resolve_als_params(
        ranking.als_params(), job.factors, job.iterations, job.regularization
    )
    profiles_channel = open_channel(client(ranking.profiles_target))
    embeddings_channel = open_channel(client(ranking.embeddings_target))
    try:
        profiles = profiles_service_pb2_grpc.ProfilesServiceStub(profiles_channel)
        embeddings = embeddings_service_pb2_grpc.EmbeddingsServiceStub(embeddings_channel)
        timeout = ranking.profiles_timeout_seconds
        encoder = None
        if job.encoder:
            mark = time.perf_counter()
            encoder = await run_encoder_stage(job, profiles, embeddings, store, timeout, _stage)
            seconds["encoder"] = round(time.perf_counter() - mark, 3)
        reading = time.perf_counter()
        _stage("reading", profiles=ranking.profiles_target)
        loader = CatalogLoader(
            ProfilesCatalogSource(profiles, embeddings, timeout=timeout), ranking.index_params()
        )
        snapshot = await loader.load(None)
        source = ProfilesInteractionSource(profiles, timeout=timeout)
        batches = [batch async for batch in source.interaction_batches(None)]
        interactions = sum(len(b.user_ids) for b in batches)
        if not interactions:
            raise SystemExit("there are no interactions to train on")
        seconds["read"] = round(time.perf_counter() - reading, 3)

        mark = time.perf_counter()
        _stage("fitting", items=snapshot.size, interactions=interactions)
        fitted = await asyncio.to_thread(
            fit_models,
            snapshot,
            batches,
            params,
            ranking.scorer_config(),
            ranking.index_params(),
            ranking.ranker_params(),
        )
        seconds["fit"] = round(time.perf_counter() - mark, 3)

        mark = time.perf_counter()
        _stage("writing", version=fitted.model.version, store=store.location)
        manifest = await asyncio.to_thread(
            save_bundle,
            store,
            fitted.model,
            code_version=code_version(),
            data=fitted.data,
            metrics=fitted.metrics,
        )
        seconds["write"] = round(time.perf_counter() - mark, 3)

        if job.publish:
            mark = time.perf_counter()
            _stage("publishing", version=manifest.bundle_id)
            await ProfilesModelRegistry(profiles, timeout=timeout).publish(
                MODEL_KIND,
                ActiveModel(manifest.bundle_id, manifest.sha256),
                job.published_by or f"training job on {socket.gethostname()}",
                job.reason,
                None,
            )
            seconds["publish"] = round(time.perf_counter() - mark, 3)
        seconds["total"] = round(time.perf_counter() - started, 3)
        report = TrainingReport(
            manifest.bundle_id,
            manifest,
            job.publish,
            store.location,
            seconds,
            peak_rss_mb(),
            encoder,
        )
        _stage("done", **report.summary())
        return report
    finally:
        await profiles_channel.close()
        await embeddings_channel.close()


def main(argv: Sequence[str] | None = None) -> None:
    """The container entry point: settings from the environment, a JSON report on stdout, exit 0
    on success and 1 on failure."""
    parser = argparse.ArgumentParser(prog="python -m services.training", description=__doc__)
    parser.parse_args(argv)
    configure_logging("training", os.environ.get(f"{TRAINING_PREFIX}LOG_LEVEL", "INFO"))
    ranking = load_settings(RankingSettings, RANKING_PREFIX)
    job = load_settings(TrainingSettings, TRAINING_PREFIX)
    try:
        report = asyncio.run(run_training(ranking, job))
    except Exception as error:
        log.error(
            "training failed; nothing published",
            extra={"fields": {"error": type(error).__name__, "detail": str(error)}},
        )
        sys.exit(1)
    print(json.dumps(report.summary(), indent=2, default=str))
