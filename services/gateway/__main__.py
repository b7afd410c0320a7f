"""``python -m services.gateway``: serve the gateway (settings from LONGTAIL_GATEWAY_*)."""

from services.common.server import run_service
from services.gateway.app import build
from services.gateway.config import GatewaySettings

if __name__ == "__main__":
    run_service("LONGTAIL_GATEWAY_", GatewaySettings, build, default_port=50050)
