"""``python -m services.ranking``: the ranking service (env prefix ``LONGTAIL_RANKING_``)."""

from services.common.server import run_service
from services.ranking.app import RankingSettings, build

if __name__ == "__main__":
    run_service("LONGTAIL_RANKING_", RankingSettings, build)
