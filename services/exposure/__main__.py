"""``python -m services.exposure``: serve the policies (settings from LONGTAIL_EXPOSURE_*)."""

from services.common.server import run_service
from services.exposure.app import build
from services.exposure.config import ExposureSettings

if __name__ == "__main__":
    run_service("LONGTAIL_EXPOSURE_", ExposureSettings, build, default_port=50054)
