"""The whole suite with TLS and bearer tokens switched on, as the production overlay runs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longtail.ranking.v1 import ranking_service_pb2
from longtail_client.client import LongtailClient
from services.suite import datasets
from services.suite.indexing import index_catalogue
from services.suite.local import LocalSuite, SuiteConfig
from tests.conftest import missing, require_triton
from tests.e2e.suite_env import CALL_TIMEOUT, GENEROUS_ENV, START_TIMEOUT

pytestmark = [pytest.mark.triton, pytest.mark.slow]

TOKEN = "s3cret-token"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        missing("openssl", "openssl is not installed (make setup installs it)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_and_token_on_every_service(tmp_path: Path) -> None:
    require_triton()
    cert, key = _self_signed(tmp_path)
    config = SuiteConfig(
        workdir=tmp_path / "suite",
        auth_token=TOKEN,
        tls_cert_file=cert,
        tls_key_file=key,
        tls_ca_file=cert,
        # Generous hop ceilings: the no-fallback assertion below must not depend on load.
        extra_env=GENEROUS_ENV,
        start_timeout_seconds=START_TIMEOUT,
    )
    # Past require_triton(), a suite that does not start is a defect: it raises, never skips.
    async with LocalSuite(config) as suite:
        async with LongtailClient(
            suite.targets, token=TOKEN, tls_ca_file=cert, timeout_seconds=CALL_TIMEOUT
        ) as client:
            data = datasets.make_demo_catalogue(120, 30, seed=5)
            await datasets.upload(data, client.profiles, progress=False)
            await index_catalogue(client.profiles, client.embeddings, progress=False)
            await client.ranking.TrainModel(ranking_service_pb2.TrainModelRequest(), timeout=120)
            await client.ranking.ReloadModels(ranking_service_pb2.ReloadModelsRequest(), timeout=60)
            user = data.interactions[0].user_id
            # Every hop (gateway → profiles, ranking → embeddings, exposure) is TLS + token.
            answer = await client.recommend(user, 5)
            assert len(answer.items) == 5 and not answer.fallback

        request = gateway_service_pb2.RecommendRequest(user_id=user, k=5)
        credentials = grpc.ssl_channel_credentials(cert.read_bytes())
        async with grpc.aio.secure_channel(suite.target("gateway"), credentials) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Recommend(request, timeout=CALL_TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            wrong = (("authorization", "Bearer wrong"),)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Recommend(request, timeout=CALL_TIMEOUT, metadata=wrong)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A plaintext client cannot talk to a TLS server at all (a generous deadline: a hang
        # would show as DEADLINE_EXCEEDED, not pass as UNAVAILABLE).
        async with grpc.aio.insecure_channel(suite.target("gateway")) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            token = (("authorization", f"Bearer {TOKEN}"),)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Recommend(request, timeout=CALL_TIMEOUT, metadata=token)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
