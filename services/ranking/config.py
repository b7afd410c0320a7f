"""Ranking service settings (environment prefix ``LONGTAIL_RANKING_``)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from services.common.artifacts import StoreSettings
from services.common.settings import SettingsError
from services.ranking.collaborative import AlsParams
from services.ranking.index import IndexParams
from services.ranking.scorer import ScorerConfig
from services.ranking.training import RankerTrainingParams

_POOL_FIELDS = (
    "content_pool",
    "tail_pool",
    "cold_pool",
    "short_term_pool",
    "tower_pool",
    "tower_cold_pool",
    "mapped_cold_pool",
)


@dataclasses.dataclass(frozen=True)
class RankingSettings:
    profiles_target: str = "127.0.0.1:50051"
    embeddings_target: str = "127.0.0.1:50052"
    # The artefact store of model bundles (bundles/<version>/…): this folder (the embedded
    # default), unless artifact_store_url names S3-compatible storage (s3://bucket/prefix; the
    # credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    artifact_dir: Path = Path(".longtail/artifacts")
    artifact_store_url: str = ""
    # The S3 endpoint, e.g. http://seaweedfs:8333 (empty: AWS), and its region.
    artifact_s3_endpoint: str = ""
    artifact_s3_region: str = "us-east-1"
    # Seconds between two polls of the model registry (each +-20% jitter): a published version
    # is served by every replica within about 1.2x this plus the bundle's download.
    model_poll_seconds: float = 10.0
    # Deprecated TrainModel fits in the serving process (the embedded default); false: it is
    # refused (FAILED_PRECONDITION, TRAINING_IS_A_JOB) and the training job does it.
    train_in_process: bool = True
    # Exact search up to this many items, HNSW above (see IndexParams for the measurements).
    exact_index_max_items: int = 20_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 200
    # Evidence prior of the collaborative/content blend: a_i = n_i / (n_i + kappa).
    kappa: float = 20.0
    # Fit a learned ranker with every TrainModel (on a time-split validation slice of the stored
    # interactions) and score candidates with it; off: the kappa blend below scores them.
    # Measured on MovieLens (per-user time split, K=10): the blend gave NDCG@10 0.051, the
    # ranker 0.15 (ALS alone 0.114).
    learned_ranker: bool = True
    # Users whose candidate pools the ranker is fitted on (a deterministic sample above this).
    ranker_max_users: int = 3000
    # Fit the sequential user tower with the ranker (a candidate source and a ranker feature;
    # trained by whoever fits: the training job, or the deprecated in-process TrainModel).
    user_tower: bool = True
    # Share of the interacted items made cold in the ranker's training slice, so that it learns
    # how relevant cold items look (0: every positive of the slice is warm). The most the ranker
    # can lean to cold items: how far it does (the weight of those cold positives, 1/3 to 1) is
    # chosen on held-out users of the slice, within 2% of the best warm NDCG@10.
    ranker_cold_item_share: float = 0.3
    # Minimum tail / cold shares of the returned candidates (when the pool has them): the
    # exposure policies pick tail items from these; the order stays by score.
    min_tail_share: float = 0.3
    min_cold_share: float = 0.1
    # Candidate source sizes, as multiples of the requested candidate count (each at least 20;
    # 0 switches the source off and saves its index walk: ~1.1 CPU-ms at 100k items on HNSW).
    # Content neighbours of the user's history vector over all items.
    content_pool: float = 1.0
    # Content neighbours among tail items (on HNSW read off the all-items answer when that holds
    # enough tail items, else a walk of its own).
    tail_pool: float = 0.5
    # Content neighbours among cold items (same rule as the tail pool).
    cold_pool: float = 0.25
    # Neighbours of the mean of the last three history items (a short-term interest).
    short_term_pool: float = 0.5
    # Neighbours of the sequential user tower's vector over all items (with a tower).
    tower_pool: float = 1.0
    # Neighbours of the tower's vector among cold items (with a tower).
    tower_cold_pool: float = 0.25
    # With a tower, the content sources (all items, tail, cold) search with the tower's vector
    # instead of the history's mean vector (same sizes; the mean vector still scores candidates):
    # one walk fewer at 100k items, lists as good on movielens-latest-small (README).
    tower_replaces_content: bool = True
    # Cold items whose text, mapped into the collaborative space (a ridge map from item vectors
    # to ALS item factors fitted on the model's items), scores best against the user's factor.
    mapped_cold_pool: float = 0.25
    # Seconds between catalogue refreshes (new items, new stats, new model); 0 turns them off.
    refresh_seconds: float = 30.0
    # Default deadlines of outbound calls made without a caller deadline (background work).
    profiles_timeout_seconds: float = 30.0
    embeddings_timeout_seconds: float = 2.0
    # Threads of the ALS solver (the target machines have 2 cores).
    als_threads: int = 2
    client_tls_ca_file: Path | None = None
    client_auth_token: str | None = None

    def __post_init__(self) -> None:
        bad = [
            name
            for name in _POOL_FIELDS
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0)
        ]
        if bad:
            raise SettingsError(
                "configuration error: candidate source sizes must be finite and >= 0: "
                + ", ".join(f"{name}={getattr(self, name)}" for name in bad)
            )

    def index_params(self) -> IndexParams:
        return IndexParams(
            exact_max_items=self.exact_index_max_items,
            hnsw_m=self.hnsw_m,
            hnsw_ef_construction=self.hnsw_ef_construction,
            hnsw_ef_search=self.hnsw_ef_search,
        )

    def scorer_config(self) -> ScorerConfig:
        return ScorerConfig(
            kappa=self.kappa,
            min_tail_share=self.min_tail_share,
            min_cold_share=self.min_cold_share,
            content_pool=self.content_pool,
            tail_pool=self.tail_pool,
            cold_pool=self.cold_pool,
            short_term_pool=self.short_term_pool,
            tower_pool=self.tower_pool,
            tower_cold_pool=self.tower_cold_pool,
            tower_replaces_content=self.tower_replaces_content,
            mapped_cold_pool=self.mapped_cold_pool,
        )

    def ranker_params(self) -> RankerTrainingParams | None:
        if not self.learned_ranker:
            return None
        return RankerTrainingParams(
            max_users=self.ranker_max_users,
            tower=self.user_tower,
            cold_item_share=self.ranker_cold_item_share,
        )

    def als_params(self) -> AlsParams:
        return AlsParams(num_threads=self.als_threads)

    def store_settings(self) -> StoreSettings:
        return StoreSettings(
            folder=self.artifact_dir,
            url=self.artifact_store_url,
            s3_endpoint=self.artifact_s3_endpoint,
            s3_region=self.artifact_s3_region,
        )
