"""``python -m services.ranking``: the ranking service (env prefix ``LONGTAIL_RANKING_``)."""

import os

# Before numpy/scipy/faiss load their BLAS: one thread per call (see app._single_threaded_blas).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from services.common.server import run_service
from services.ranking.app import RankingSettings, build

if __name__ == "__main__":
    run_service("LONGTAIL_RANKING_", RankingSettings, build, default_port=50053)
