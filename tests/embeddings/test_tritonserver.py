"""Rendering the model repository and the server's environment, process-group clean-up, and an
aborted start (the one test here that launches the server, marked)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

from services.embeddings.tritonserver import (
    DEFAULT_REPOSITORY,
    TritonDistribution,
    TritonServer,
    TritonStartError,
    free_ports,
    load_model_module,
    prepare_repository,
    process_group_members,
    server_environment,
    set_output_dimension,
    set_parameter,
    wait_group_gone,
)
from tests.conftest import require_triton

# Generous bounds for a busy machine.
BOUND = 120.0


def test_set_parameter_replaces_or_appends() -> None:
    config = 'parameters: { key: "runtime" value: { string_value: "onnx" } }\n'
    assert 'string_value: "torch"' in set_parameter(config, "runtime", "torch")
    assert "onnx" not in set_parameter(config, "runtime", "torch")
    added = set_parameter(config, "cache_dir", '/a "quoted" path')
    assert 'key: "cache_dir" value: { string_value: "/a \\"quoted\\" path" }' in added
    assert 'string_value: "onnx"' in added


def test_output_dimension_follows_the_encoder() -> None:
    config = (DEFAULT_REPOSITORY / "text_encoder" / "config.pbtxt").read_text()
    changed = set_output_dimension(config, 768)
    assert "dims: [ 768 ]" in changed and "dims: [ 1 ]" in changed


@pytest.mark.parametrize(
    ("variant", "kind", "batch"), [("cpu", "KIND_CPU", 64), ("gpu", "KIND_GPU", 256)]
)
def test_prepare_repository_fills_parameters(
    tmp_path: Path, variant: str, kind: str, batch: int
) -> None:
    prepared = prepare_repository(
        tmp_path / "repo", variant=variant, cache_dir=tmp_path / "cache", export=False
    )
    model_dir = prepared.path / "text_encoder"
    config = (model_dir / "config.pbtxt").read_text()
    assert (model_dir / "1" / "model.py").read_bytes() == (
        DEFAULT_REPOSITORY / "text_encoder" / "1" / "model.py"
    ).read_bytes()
    assert kind in config and f"max_batch_size: {batch}" in config
    assert f'string_value: "{prepared.fingerprint}"' in config
    assert f'string_value: "{prepared.encoder_path}"' in config
    assert f'string_value: "{(tmp_path / "cache").resolve()}"' in config
    assert len(prepared.fingerprint) == 12
    # The model's fingerprint changes with the token limit (other vectors).
    module = load_model_module()
    assert module.model_fingerprint(prepared.encoder_path, 128) != prepared.fingerprint


def test_environment_puts_this_interpreter_first() -> None:
    env = server_environment({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x"})
    libs = env["LD_LIBRARY_PATH"].split(":")
    assert libs[0] == sysconfig.get_config_var("LIBDIR")
    assert str(TritonDistribution.find().libs) in libs and "/opt/x" in libs
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["HF_HUB_OFFLINE"] == "1"


def test_free_ports_are_distinct() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(port > 0 for port in ports)


def test_a_group_whose_leader_died_is_emptied() -> None:
    """What a crashed server leaves (its stub, orphaned in its group) goes with the group."""
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 600 & echo $!; wait"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert leader.stdout is not None
    orphan = int(leader.stdout.readline())
    assert sorted(process_group_members(leader.pid)) == sorted([leader.pid, orphan])
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait()
    assert process_group_members(leader.pid) == [orphan]  # the premise: an orphan is left
    os.killpg(leader.pid, signal.SIGKILL)
    assert wait_group_gone(leader.pid, BOUND)
    assert process_group_members(leader.pid) == []


@pytest.mark.triton
@pytest.mark.slow
def test_an_aborted_start_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop during a start (the supervisor's case): the launched server and its group go."""
    require_triton()
    server = TritonServer(log_path=tmp_path / "triton.log", startup_timeout=BOUND)
    abort = threading.Event()
    launched: list[int] = []
    launch = server._launch

    def launch_then_abort(backends: Path) -> None:
        launch(backends)
        assert server.pid is not None
        launched.append(server.pid)
        abort.set()  # as another thread would, while the start waits for readiness

    monkeypatch.setattr(server, "_launch", launch_then_abort)
    with pytest.raises(TritonStartError, match="start aborted"):
        server.start(abort)
    assert launched, "the server was never launched"
    assert process_group_members(launched[0]) == []
    assert not server.is_running() and server.run_dir is None
