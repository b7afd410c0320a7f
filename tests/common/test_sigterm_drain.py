"""Graceful SIGTERM: health NOT_SERVING, new calls refused, the call in flight finishes.

The process tests run ``tests.common.drain_service`` through ``run_service`` (the entry point of
every ``python -m services.<name>``) and talk to it over its stdio pipes: ``STARTED <user>`` on its
stdout says a held call is inside the handler, a line on its stdin lets that call answer.
Every wait has a deadline far beyond what the step needs: it only bounds a hung test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from longtail.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from services.common.server import start_service
from services.common.settings import ServerSettings
from tests.common.drain_service import PREFIX, SERVICE_NAME, HoldingGateway, definition

REPO = Path(__file__).resolve().parents[2]
# Bounds steps that take milliseconds: generous so that a loaded machine never trips them.
STEP = 120.0


@contextlib.asynccontextmanager
async def drain_process(
    tmp_path: Path, grace_seconds: float
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = dict(os.environ)
    env.update(
        {
            f"{PREFIX}PORT": "0",
            f"{PREFIX}GRACE_SECONDS": str(grace_seconds),
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "clients" / "python")]),
        }
    )
    # A file, not a pipe: nobody reads stderr while the test runs, and a full pipe would block.
    with (tmp_path / "stderr.log").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.common.drain_service",
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def next_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), STEP)).decode().strip()


async def listening(process: asyncio.subprocess.Process) -> str:
    line = await next_line(process)
    assert line.startswith("LISTENING "), line
    return line.split()[1]


def recommend(channel: grpc.aio.Channel, user_id: str) -> Any:
    stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
    return stub.Recommend(gateway_service_pb2.RecommendRequest(user_id=user_id, k=1), timeout=STEP)


async def test_sigterm_goes_not_serving_refuses_new_calls_and_drains_the_call_in_flight(
    tmp_path: Path,
) -> None:
    # A grace far longer than the test: the held call can only end by being released.
    async with drain_process(tmp_path, grace_seconds=600) as process:
        target = await listening(process)
        async with grpc.aio.insecure_channel(target) as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)
            # Watched from before the signal: the change reaches an established stream whether
            # or not the server still takes new calls by then.
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            first = await asyncio.wait_for(watch.read(), STEP)
            assert first.status == health_pb2.HealthCheckResponse.SERVING

            held = asyncio.ensure_future(recommend(channel, "held"))
            assert await next_line(process) == "STARTED held"

            process.send_signal(signal.SIGTERM)
            after = await asyncio.wait_for(watch.read(), STEP)
            assert after.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # The watch is a call in flight too: ended here so the drain waits for `held` only.
            watch.cancel()

            # run_service marks health NOT_SERVING and then stops the server with no await in
            # between that could let the watch's write go first (grpc_health's set and the
            # server's shutdown both run on to the core call without suspending), so by now
            # the server takes no new call. UNAVAILABLE is what clients retry elsewhere.
            async with grpc.aio.insecure_channel(target) as fresh:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await recommend(fresh, "late")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
            assert not held.done()

            assert process.stdin is not None
            process.stdin.write(b"released\n")
            await process.stdin.drain()
            answer = await asyncio.wait_for(held, STEP)
            assert (answer.request_id, answer.policy_name) == ("released", "held")

        assert await asyncio.wait_for(process.wait(), STEP) == 0
        # The refused call never reached the handler.
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.read(), STEP) == b""


async def test_a_call_outliving_the_grace_is_cut_off_and_the_process_still_exits(
    tmp_path: Path,
) -> None:
    async with drain_process(tmp_path, grace_seconds=0.2) as process:
        target = await listening(process)
        async with grpc.aio.insecure_channel(target) as channel:
            held = asyncio.ensure_future(recommend(channel, "held"))
            assert await next_line(process) == "STARTED held"
            process.send_signal(signal.SIGTERM)
            # Never released: only the end of the grace can end this call.
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await asyncio.wait_for(held, STEP)
            # grpc cancels what is left with UNAVAILABLE: a client may retry it elsewhere.
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE, cut.value.details()
        assert await asyncio.wait_for(process.wait(), STEP) == 0


async def test_stop_in_process_waits_for_the_call_in_flight() -> None:
    release = asyncio.StreamReader()
    started = asyncio.Event()
    servicer = HoldingGateway(release, announce=lambda _user: started.set())
    running = await start_service(definition(servicer), ServerSettings(port=0, grace_seconds=600))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            first = await asyncio.wait_for(watch.read(), STEP)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            held = asyncio.ensure_future(recommend(channel, "held"))
            await asyncio.wait_for(started.wait(), STEP)

            stopping = asyncio.ensure_future(running.stop())
            after = await asyncio.wait_for(watch.read(), STEP)
            assert after.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            assert not held.done()

            release.feed_data(b"released\n")
            answer = await asyncio.wait_for(held, STEP)
            assert answer.request_id == "released"
            # Returns once the drain is over: the grace (600 s) was not waited out.
            await asyncio.wait_for(stopping, STEP)
    finally:
        await running.stop(0)
