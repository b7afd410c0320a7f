"""``python -m services.embeddings``: serve EmbeddingsService (settings: LONGTAIL_EMBEDDINGS_*)."""

from services.common.server import run_service
from services.embeddings.app import build
from services.embeddings.config import ENV_PREFIX, EmbeddingsSettings

if __name__ == "__main__":
    run_service(ENV_PREFIX, EmbeddingsSettings, build, default_port=50052)
