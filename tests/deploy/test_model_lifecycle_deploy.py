"""Deployment of the model lifecycle: ranking replicas with an autoscaler in production, the
training CronJob, the artefact store from configuration and a Secret, and compose's train and
S3 store services."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import yaml  # type: ignore[import-untyped]

from services.training.config import TrainingSettings
from tests.deploy.dockerfile import Dockerfile
from tests.deploy.test_manifests import (
    COMPOSE,
    ROOT,
    _check_compose,
    container,
    env_of,
    env_table,
    of_kind,
    render,
)

TRAINING_VARIABLES = {
    f"LONGTAIL_TRAINING_{field.name.upper()}" for field in dataclasses.fields(TrainingSettings)
}
STORE_SECRET_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def _cronjob_container(docs: tuple[dict[str, object], ...]) -> dict[str, object]:
    cronjob = of_kind(docs, "CronJob")["ranking-training"]
    return container(cronjob["spec"]["jobTemplate"])


def test_training_cronjob_runs_the_job_from_the_ranking_image_with_known_settings() -> None:
    known = env_table().variables() | TRAINING_VARIABLES | STORE_SECRET_KEYS
    for rendering in ("base", "overlays/dev-cpu", "overlays/prod-gpu"):
        docs = render(rendering)
        training = _cronjob_container(docs)
        ranking = container(of_kind(docs, "Deployment")["ranking"])
        assert training["command"] == ["python", "-m", "services.training"]
        assert training["image"] == ranking["image"]
        env = {entry["name"]: entry for entry in training["env"]}  # type: ignore[attr-defined]
        assert set(env) <= known, set(env) - known
        assert env["LONGTAIL_RANKING_PROFILES_TARGET"]["value"] == "profiles:50051"
        cronjob = of_kind(docs, "CronJob")["ranking-training"]
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


def test_prod_runs_two_ranking_replicas_on_s3_with_cpu_autoscalers() -> None:
    docs = render("overlays/prod-gpu")
    ranking = of_kind(docs, "Deployment")["ranking"]
    assert ranking["spec"]["replicas"] >= 2
    assert ranking["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "PersistentVolumeClaim" not in {doc["kind"] for doc in docs}
    for env in (env_of(ranking), {e["name"]: e for e in _cronjob_container(docs)["env"]}):  # type: ignore[attr-defined]
        assert env["LONGTAIL_RANKING_ARTIFACT_STORE_URL"]["value"].startswith("s3://")
        for key in STORE_SECRET_KEYS:
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "longtail-artifacts"
    assert env_of(ranking)["LONGTAIL_RANKING_TRAIN_IN_PROCESS"]["value"] == "false"
    autoscalers = of_kind(docs, "HorizontalPodAutoscaler")
    deployments = of_kind(docs, "Deployment")
    for name in ("ranking", "gateway", "exposure"):
        hpa = autoscalers[name]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["minReplicas"] == deployments[name]["spec"]["replicas"] < hpa["maxReplicas"]
        assert hpa["metrics"][0]["resource"]["name"] == "cpu"
        assert "cpu" in container(deployments[name])["resources"]["requests"]
    # Headless: the gateway's round-robin channel sees every ranking pod.
    assert of_kind(docs, "Service")["ranking"]["spec"]["clusterIP"] == "None"


def test_dev_keeps_the_artefact_volume() -> None:
    docs = render("overlays/dev-cpu")
    assert "ranking-artifacts" in of_kind(docs, "PersistentVolumeClaim")
    env = env_of(of_kind(docs, "Deployment")["ranking"])
    assert "LONGTAIL_RANKING_ARTIFACT_STORE_URL" not in env


def test_compose_train_and_s3_store() -> None:
    result = _check_compose(COMPOSE / "compose.yaml", COMPOSE / "compose.s3.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    services = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["services"]
    train = services["train"]
    assert train["profiles"] == ["train"]
    assert train["entrypoint"] == ["python", "-m", "services.training"]
    assert train["build"] == services["ranking"]["build"]
    assert train["volumes"] == services["ranking"]["volumes"]
    assert services["seaweedfs"]["profiles"] == ["s3"]
    assert (COMPOSE / "seaweedfs" / "s3.json").is_file()
    s3 = yaml.safe_load((COMPOSE / "compose.s3.yaml").read_text())["services"]
    assert s3["ranking"]["environment"] == s3["train"]["environment"]
    assert s3["ranking"]["environment"]["LONGTAIL_RANKING_ARTIFACT_S3_ENDPOINT"].startswith(
        "http://seaweedfs:"
    )


def test_the_job_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.training", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "training" in result.stdout


def test_compose_shares_tritons_model_repository_with_embeddings() -> None:
    # A published fine-tuned encoder is installed by embeddings as a version folder that Triton
    # then loads: both mount one volume at Triton's repository, the image's model files belong
    # to the user both run as, and embeddings reads the bundles where train writes them.
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["services"]
    triton, embeddings = compose["triton"], compose["embeddings"]
    assert "triton-models:/models" in triton["volumes"]
    assert "triton-models:/models" in embeddings["volumes"]
    env = embeddings["environment"]
    assert env["LONGTAIL_EMBEDDINGS_TRITON_REPOSITORY"] == "/models"
    assert env["LONGTAIL_EMBEDDINGS_PROFILES_TARGET"] == "profiles:50051"
    assert "profiles" in embeddings["depends_on"]
    ranking_store = Dockerfile(
        ROOT / "deploy" / "images" / "Dockerfile", {"SERVICE": "ranking"}
    ).env()["LONGTAIL_RANKING_ARTIFACT_DIR"]
    assert env["LONGTAIL_EMBEDDINGS_ARTIFACT_DIR"] == ranking_store
    for service in ("ranking", "train"):
        (mount,) = compose[service]["volumes"]
        volume, path = mount.split(":")[:2]
        assert f"{volume}:{path}:ro" in embeddings["volumes"]
        assert ranking_store.startswith(path + "/")
    image = (ROOT / "deploy" / "images" / "triton" / "Dockerfile").read_text()
    copies = [line for line in image.splitlines() if line.startswith("COPY") and "/models" in line]
    assert copies and all("--chown=10001:10001" in line for line in copies)
    assert "USER 10001:10001" in image and "chown 10001:10001 /models" in image
    s3 = yaml.safe_load((COMPOSE / "compose.s3.yaml").read_text())["services"]
    assert (
        s3["embeddings"]["environment"]["LONGTAIL_EMBEDDINGS_ARTIFACT_STORE_URL"]
        == s3["ranking"]["environment"]["LONGTAIL_RANKING_ARTIFACT_STORE_URL"]
    )


def test_kubernetes_installs_published_encoders_beside_triton() -> None:
    # Triton and embeddings are separate pods: the encoder installer runs in Triton's pod, both
    # containers mount the pod's `models` volume at Triton's repository (seeded from the image
    # first), and the installer reads the bundles where the training job writes them.
    known = env_table().variables() | STORE_SECRET_KEYS
    for rendering in ("base", "overlays/dev-cpu", "overlays/prod-gpu"):
        docs = render(rendering)
        deployments = of_kind(docs, "Deployment")
        pod = deployments["triton"]["spec"]["template"]["spec"]
        containers = {c["name"]: c for c in pod["containers"]}
        triton, installer = containers["triton"], containers["encoder-installer"]
        (seed,) = pod["initContainers"]
        assert seed["image"] == triton["image"]
        assert seed["command"] == ["cp", "-a", "/models/.", "/repository/"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["models"]
        assert {"name": "models", "mountPath": "/repository"} in seed["volumeMounts"]
        for member in (triton, installer):
            assert {"name": "models", "mountPath": "/models"} in member["volumeMounts"]
            assert member["securityContext"]["readOnlyRootFilesystem"] is True
        assert installer["command"] == ["python", "-m", "services.embeddings.installer"]
        assert installer["image"] == container(deployments["embeddings"])["image"]
        env = {e["name"]: e for e in installer["env"]}
        assert set(env) <= known, set(env) - known
        triton_grpc = {p["name"]: p["containerPort"] for p in triton["ports"]}["grpc"]
        assert env["LONGTAIL_EMBEDDINGS_TRITON_URL"]["value"] == f"127.0.0.1:{triton_grpc}"
        assert env["LONGTAIL_EMBEDDINGS_TRITON_REPOSITORY"]["value"] == "/models"
        assert env["LONGTAIL_EMBEDDINGS_PROFILES_TARGET"]["value"] == "profiles:50051"
        ranking = env_of(deployments["ranking"])
        if rendering == "overlays/prod-gpu":
            url = "LONGTAIL_EMBEDDINGS_ARTIFACT_STORE_URL"
            assert env[url]["value"] == ranking["LONGTAIL_RANKING_ARTIFACT_STORE_URL"]["value"]
            for key in STORE_SECRET_KEYS:
                assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "longtail-artifacts"
            assert env["LONGTAIL_EMBEDDINGS_CLIENT_TLS_CA_FILE"]["value"].endswith("ca.crt")
            assert "artifacts" not in volumes
        else:
            store = ranking["LONGTAIL_RANKING_ARTIFACT_DIR"]["value"]
            assert env["LONGTAIL_EMBEDDINGS_ARTIFACT_DIR"]["value"] == store
            claim = volumes["artifacts"]["persistentVolumeClaim"]
            assert claim == {"claimName": "ranking-artifacts", "readOnly": True}
            mount = next(m for m in installer["volumeMounts"] if m["name"] == "artifacts")
            assert mount["readOnly"] is True and store.startswith(mount["mountPath"] + "/")
        # The embeddings replicas follow the registry but write nothing of Triton's.
        embeddings = env_of(deployments["embeddings"])
        assert embeddings["LONGTAIL_EMBEDDINGS_PROFILES_TARGET"]["value"] == "profiles:50051"
        assert "LONGTAIL_EMBEDDINGS_TRITON_REPOSITORY" not in embeddings
