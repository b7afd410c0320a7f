"""Settings of the embeddings service (env prefix ``LONGTAIL_EMBEDDINGS_``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from services.common.artifacts import StoreSettings
from services.common.settings import SettingsError

ENV_PREFIX = "LONGTAIL_EMBEDDINGS_"
DEFAULT_PORT = 50052


@dataclasses.dataclass(frozen=True)
class EmbeddingsSettings:
    # Triton's gRPC endpoint (host:port) and the model to call there.
    triton_url: str = "127.0.0.1:8001"
    model_name: str = "text_encoder"
    # Vectors kept in the LRU cache (384 floats = 1.5 KiB each); 0 disables the cache.
    cache_size: int = 50_000
    # Budget for a Triton call when our caller set no deadline (batch jobs, the CLI).
    request_timeout_seconds: float = 30.0
    # Budget of one readiness check (server ready + model ready + model config).
    ready_timeout_seconds: float = 1.0
    # How long the model's identity (version, dimension) is trusted before it is read again.
    model_info_ttl_seconds: float = 5.0
    # Start Triton inside this process (local runs): then triton_url is ignored.
    manage_triton: bool = False
    # With manage_triton: a local Hugging Face folder (default: the bundled all-MiniLM-L6-v2).
    triton_encoder_path: Path | None = None
    triton_startup_timeout_seconds: float = 240.0
    # The published encoder (issue 12): the registry in profiles names the active fine-tuned
    # encoder bundle; empty = serve the base version only.
    profiles_target: str = ""
    # Seconds between two registry polls; a published encoder serves within about this plus its
    # download and load.
    encoder_poll_seconds: float = 10.0
    # Triton's model repository as this process sees it (the folder holding text_encoder/), where
    # published encoders are installed as version folders; with manage_triton, the managed
    # server's. Empty: a published version is served only when Triton already has it.
    triton_repository: Path | None = None
    # Fine-tuned versions kept installed (Triton loads every version folder: each costs a copy of
    # the encoder in its memory), at least 2: the served one, the one served before it, then the
    # newest others up to this count; older folders are removed and unloaded after a switch (a
    # rollback to one installs it again from the artefact store). The base version 1 stays.
    encoder_versions_kept: int = 2
    # The encoder installer beside Triton (python -m services.embeddings.installer): serve its
    # counters (longtail_encoder_version_*) on this port; unset: none.
    installer_metrics_port: int | None = None
    # The artefact store of bundles (as for ranking and the training job).
    artifact_dir: Path = Path(".longtail/artifacts")
    artifact_store_url: str = ""
    artifact_s3_endpoint: str = ""
    artifact_s3_region: str = "us-east-1"
    # TLS and token for the calls to profiles.
    client_tls_ca_file: Path | None = None
    client_auth_token: str | None = None

    def __post_init__(self) -> None:
        if self.encoder_versions_kept < 2:
            raise SettingsError(
                "configuration error: encoder_versions_kept must be >= 2 (the served version and "
                "the one before it)"
            )

    def store_settings(self) -> StoreSettings:
        return StoreSettings(
            folder=self.artifact_dir,
            url=self.artifact_store_url,
            s3_endpoint=self.artifact_s3_endpoint,
            s3_region=self.artifact_s3_region,
        )
