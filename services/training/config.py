"""Settings of the training job (``LONGTAIL_TRAINING_*``).

The job fits with the very settings ranking serves with (``LONGTAIL_RANKING_*``: profiles and
embeddings targets, the artefact store, ALS threads, index and scorer parameters), so a bundle's
features are computed exactly as serving computes them; these are the job's own.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    # ALS parameters; 0 = ranking's defaults.
    factors: int = 0
    iterations: int = 0
    regularization: float = 0.0
    # Make the new bundle the active version in the registry (false: write it only; publish it
    # later with the registry's PublishModel).
    publish: bool = True
    # Who and why, recorded with the publication (empty published_by: "training job on <host>").
    published_by: str = ""
    reason: str = "scheduled training"
