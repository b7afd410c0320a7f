"""``python -m services.profiles``: serve ProfilesService (settings from LONGTAIL_PROFILES_*)."""

from services.common.server import run_service
from services.profiles.app import build
from services.profiles.config import ProfilesSettings

if __name__ == "__main__":
    run_service("LONGTAIL_PROFILES_", ProfilesSettings, build, default_port=50051)
