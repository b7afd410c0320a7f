"""Rendering the model repository and the server's environment (no server started here)."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import pytest

from services.embeddings.tritonserver import (
    DEFAULT_REPOSITORY,
    TritonDistribution,
    free_ports,
    load_model_module,
    prepare_repository,
    server_environment,
    set_output_dimension,
    set_parameter,
)


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
