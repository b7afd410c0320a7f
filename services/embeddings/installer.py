"""``python -m services.embeddings.installer``: install the published encoder into Triton's model
repository, beside Triton (a sidecar in Triton's Kubernetes pod).

Where the embeddings service cannot write Triton's repository (Kubernetes: Triton and embeddings
are separate pods, and a ReadWriteMany volume is not a given), this process runs in Triton's pod
with the repository as a volume both containers mount (an emptyDir seeded from the Triton image).
It runs the same ``EncoderVersionFollower`` as the embeddings service: every poll it asks the
registry for the published ``text_encoder`` bundle, downloads and verifies it, writes the version
folder (staged, then renamed), has Triton load it, and removes versions beyond
``LONGTAIL_EMBEDDINGS_ENCODER_VERSIONS_KEPT``. The embeddings replicas, without the repository,
pin the published version as soon as Triton serves it.

Settings are the embeddings service's (``LONGTAIL_EMBEDDINGS_*``): ``TRITON_URL`` (Triton in the
same pod: 127.0.0.1:8001), ``TRITON_REPOSITORY`` and ``PROFILES_TARGET`` (both required here),
the artefact store, ``ENCODER_POLL_SECONDS``, client TLS and token; ``INSTALLER_METRICS_PORT``
serves the follower's counters. Errors are logged and retried at the next poll; the process only
ends on a signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
from collections.abc import Sequence

from prometheus_client import start_http_server

from longtail.profiles.v1 import profiles_service_pb2_grpc
from services.common.artifacts import open_store
from services.common.channels import open_channel
from services.common.logging import configure_logging
from services.common.registry import ProfilesModelRegistry
from services.common.settings import ClientSettings, SettingsError, load_settings
from services.embeddings.config import ENV_PREFIX, EmbeddingsSettings
from services.embeddings.triton import TritonEncoderClient
from services.embeddings.versions import EncoderVersion, EncoderVersionFollower, FollowerMetrics

log = logging.getLogger(__name__)


def check_settings(settings: EmbeddingsSettings) -> None:
    missing = [
        f"{ENV_PREFIX}{name.upper()}"
        for name, value in (
            ("triton_repository", settings.triton_repository),
            ("profiles_target", settings.profiles_target),
        )
        if not value
    ]
    if missing:
        raise SettingsError(
            "configuration error: the installer needs "
            + " and ".join(missing)
            + " (the repository it installs into, the registry it follows)"
        )


async def run_installer(
    settings: EmbeddingsSettings,
    metrics: FollowerMetrics | None = None,
    polls: int | None = None,
) -> EncoderVersion | None:
    """Follow the registry every ``encoder_poll_seconds`` (+-20%); ``polls`` bounds the loop
    (tests), None runs until cancelled. Returns the version installed last (None: the base)."""
    check_settings(settings)
    assert settings.triton_repository is not None
    channel = open_channel(
        ClientSettings(
            target=settings.profiles_target,
            tls_ca_file=settings.client_tls_ca_file,
            auth_token=settings.client_auth_token,
        )
    )
    triton = TritonEncoderClient(settings.triton_url, settings.model_name)
    follower = EncoderVersionFollower(
        ProfilesModelRegistry(profiles_service_pb2_grpc.ProfilesServiceStub(channel)),
        open_store(settings.store_settings()),
        triton,
        settings.triton_repository / settings.model_name,
        metrics,
        versions_kept=settings.encoder_versions_kept,
    )
    rng = random.Random()
    installed: EncoderVersion | None = None
    done = 0
    try:
        while polls is None or done < polls:
            try:
                installed = await follower.resolve(installed)
            except Exception as error:  # the registry cannot be asked: keep, retry
                log.warning(
                    "encoder registry poll failed; retrying at the next poll",
                    extra={"fields": {"error": type(error).__name__, "detail": str(error)}},
                )
            done += 1
            if polls is None or done < polls:
                await asyncio.sleep(settings.encoder_poll_seconds * (1.0 + rng.uniform(-0.2, 0.2)))
    finally:
        with contextlib.suppress(Exception):
            await triton.close()
        await channel.close()
    return installed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.embeddings.installer", description=__doc__
    )
    parser.parse_args(argv)
    try:
        settings = load_settings(EmbeddingsSettings, ENV_PREFIX)
        check_settings(settings)
    except SettingsError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
    configure_logging("encoder-installer", "INFO")
    metrics = FollowerMetrics()
    if settings.installer_metrics_port:
        start_http_server(settings.installer_metrics_port, registry=metrics.registry)
    log.info(
        "encoder installer following the registry",
        extra={
            "fields": {
                "repository": str(settings.triton_repository),
                "triton": settings.triton_url,
                "poll_seconds": settings.encoder_poll_seconds,
            }
        },
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_installer(settings, metrics))


if __name__ == "__main__":
    main()
