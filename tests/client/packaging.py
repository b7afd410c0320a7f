"""The clients as a backend installs them: the `longtail-client` wheel and the Node tarball.

Every install here is offline, from caches that ``make setup`` fills by running this module
(``python -m tests.client.packaging``):

- ``.cache/wheelhouse``: the wheel's dependencies at the versions the suite itself runs (this
  venv's), their own dependencies, and the wheel's build backend (setuptools), so that the wheel is
  built with build isolation and installed with ``pip --no-index``;
- ``.cache/npm``: an npm cache of its own, filled by installing the Node client's runtime
  dependencies without a lockfile, the way a backend installing the tarball resolves them. npm's
  default cache after ``npm ci`` is not enough: ``npm ci`` fetches tarballs by the lockfile, and an
  install of the tarball needs the registry documents (packuments) too (ENOTCACHED offline). Only
  ``make setup`` writes to this cache, so an offline install resolves the same versions as the
  fill did and finds their tarballs.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON_CLIENT = ROOT / "clients" / "python"
NODE_CLIENT = ROOT / "clients" / "node"
CACHE = ROOT / ".cache"
WHEELHOUSE = CACHE / "wheelhouse"
NPM_CACHE = CACHE / "npm"
# Written last by fill_caches(): its absence means `make setup` has not filled them.
FILLED = CACHE / ".filled"

# What a client-only environment may hold besides pip's own: the wheel and its dependency tree.
CLIENT_DISTRIBUTIONS = frozenset(
    {"longtail-client", "grpcio", "protobuf", "googleapis-common-protos", "typing-extensions"}
)


def _client_pyproject() -> dict[str, object]:
    with (PYTHON_CLIENT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match is not None, requirement
    return match[0]


def suite_pins() -> list[str]:
    """The client's dependencies pinned to the versions installed here (those the suite runs)."""
    project = _client_pyproject()["project"]
    assert isinstance(project, dict)
    return [f"{_name(r)}=={importlib.metadata.version(_name(r))}" for r in project["dependencies"]]


def build_requirements() -> list[str]:
    build_system = _client_pyproject()["build-system"]
    assert isinstance(build_system, dict)
    return list(build_system["requires"])


def npm() -> str:
    """npm, with the Node client's development packages installed (`make setup` runs npm ci)."""
    from tests.conftest import missing

    found = shutil.which("npm")
    if found is None or shutil.which("node") is None:
        missing("node", "node and npm are not installed")
    assert found is not None
    if not (NODE_CLIENT / "node_modules" / ".package-lock.json").exists():
        subprocess.run(
            [found, "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True, timeout=600
        )
    return found


def _run(command: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    """Runs a command; a failure shows what it printed."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output[-4000:]}"
    return output


def fill_caches() -> None:
    """Downloads (online) what the offline installs of the tests need; `make setup` runs it."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--dest",
            str(WHEELHOUSE),
            *suite_pins(),
            *build_requirements(),
        ],
        check=True,
    )
    npm_path = shutil.which("npm")
    assert npm_path is not None, "npm is not installed (make tools)"
    manifest = json.loads((NODE_CLIENT / "package.json").read_text())
    with tempfile.TemporaryDirectory(prefix="longtail-npm-fill-") as folder:
        # Only the runtime dependencies, and no lockfile: resolved as a backend's install would.
        Path(folder, "package.json").write_text(
            json.dumps({"private": True, "dependencies": manifest["dependencies"]})
        )
        subprocess.run(
            [
                npm_path,
                "install",
                "--cache",
                str(NPM_CACHE),
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--no-package-lock",
            ],
            cwd=folder,
            check=True,
            timeout=600,
        )
    FILLED.touch()


def require_caches() -> None:
    import pytest

    if not FILLED.exists():
        pytest.fail(f"{FILLED} is missing: run `make setup` (it fills the offline caches)")


def build_wheel(out: Path) -> Path:
    """`pip wheel` of clients/python, offline, from a copy (nothing is written in the checkout)."""
    require_caches()
    if not (PYTHON_CLIENT / "longtail" / "gateway" / "v1" / "gateway_service_pb2.py").exists():
        import pytest

        pytest.fail("the generated contracts are missing: run `make protos`")
    source = out / "source"
    shutil.copytree(
        PYTHON_CLIENT,
        source,
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".generated"),
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-index",
            "--find-links",
            str(WHEELHOUSE),
            "--wheel-dir",
            str(out),
            str(source),
        ]
    )
    (wheel,) = out.glob("longtail_client-*.whl")
    return wheel


def client_venv(folder: Path, wheel: Path) -> Path:
    """A fresh virtualenv (not even pip) holding the wheel and its dependencies; its python."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(folder)])
    python = folder / "bin" / "python"
    # This environment's pip installs into the new one; the constraints pin what the suite runs.
    constraints = folder / "constraints.txt"
    constraints.write_text("\n".join(suite_pins()) + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-index",
            "--find-links",
            str(WHEELHOUSE),
            "--constraint",
            str(constraints),
            str(wheel),
        ]
    )
    return python


def run_isolated(
    python: Path, code: str, cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Runs code in that interpreter in isolated mode (-I: no PYTHONPATH, no user site, and not
    the current folder on sys.path), from a folder outside the checkout."""
    return subprocess.run(
        [str(python), "-I", "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions(python: Path, cwd: Path) -> set[str]:
    """What is installed in that interpreter's environment (canonical names)."""
    result = run_isolated(
        python,
        "import importlib.metadata as m\nprint(*(d.metadata['Name'] for d in m.distributions()))",
        cwd,
    )
    assert result.returncode == 0, result.stderr
    return {canonical_name(name) for name in result.stdout.split()}


@dataclass(frozen=True)
class NodePackage:
    tarball: Path
    files: frozenset[str]


def pack_node_client(out: Path) -> NodePackage:
    """`npm pack` of clients/node (its prepack builds it and copies the protos in)."""
    _run([npm(), "pack", "--pack-destination", str(out)], cwd=NODE_CLIENT)
    (tarball,) = out.glob("*.tgz")
    with tarfile.open(tarball) as archive:
        files = frozenset(name.removeprefix("package/") for name in archive.getnames())
    return NodePackage(tarball, files)


def install_node_tarball(tarball: Path, folder: Path) -> None:
    """Installs the tarball into an empty folder as a backend would, offline (.cache/npm)."""
    require_caches()
    folder.mkdir(parents=True, exist_ok=True)
    _run(
        [
            npm(),
            "install",
            "--offline",
            "--cache",
            str(NPM_CACHE),
            "--no-audit",
            "--no-fund",
            str(tarball),
        ],
        cwd=folder,
    )


if __name__ == "__main__":
    fill_caches()
