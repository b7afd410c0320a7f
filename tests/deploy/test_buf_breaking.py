"""``buf breaking`` catches contract changes that would break deployed clients (Python, Node).

Each case works on a temporary copy of protos/ (with buf.yaml) compared against the repository's
own protos/, so the check is proved to fail on a breaking change and to pass otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_PROTO = Path("protos/longtail/gateway/v1/gateway_service.proto")


def _buf() -> str:
    local = Path(sys.executable).parent / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    if found is None:
        pytest.fail("buf is not installed: pip install -e '.[dev]' (buf-bin)", pytrace=False)
    return found


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "contracts"
    shutil.copytree(ROOT / "protos", copy / "protos")
    shutil.copy2(ROOT / "buf.yaml", copy / "buf.yaml")
    return copy


def _breaking(candidate: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_buf(), "breaking", str(candidate), "--against", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def _edit(copy: Path, old: str, new: str) -> None:
    path = copy / GATEWAY_PROTO
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_an_unchanged_copy_passes(tmp_path: Path) -> None:
    result = _breaking(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_renumbered_field_is_caught(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    _edit(copy, "int32 k = 2;", "int32 k = 9;")
    result = _breaking(copy)
    assert result.returncode != 0
    assert "RecommendRequest" in result.stdout and '"2"' in result.stdout


def test_a_renamed_rpc_is_caught(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    _edit(copy, "rpc Feedback(", "rpc SendFeedback(")
    result = _breaking(copy)
    assert result.returncode != 0
    assert "Feedback" in result.stdout


def test_an_added_field_passes(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    _edit(copy, "  bool include_seen = 6;\n", "  bool include_seen = 6;\n  string locale = 99;\n")
    result = _breaking(copy)
    assert result.returncode == 0, result.stdout + result.stderr
