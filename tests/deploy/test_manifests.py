"""The Kubernetes manifests in docker/k8s: valid against the API schemas, consistent with each other
and with the image, and the KServe InferenceService valid against the KServe SDK's own models."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "docker" / "k8s"
DOCKERFILE = REPO / "docker" / "Dockerfile"
CORE = ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]
INFERENCE_SERVICE = K8S / "kserve" / "inferenceservice.yaml"
KSERVE_CHECK = Path(__file__).with_name("kserve_schema_check.py")
# The oldest Kubernetes the manifests target (the preStop `sleep` action is on by default from 1.30)
# and the newest that kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
GRPC_PORT = 50051
HEALTH_PORT = 50052
METRICS_PORT = 9464
# Where the manifests mount the Secrets with the certificate and the API key file.
SECRET_MOUNTS = {"/etc/attnserve/tls": "attnserve-tls", "/etc/attnserve/keys": "attnserve-api-keys"}

Manifest = dict[str, Any]


def load(path: Path) -> Manifest:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    return document


def pod_spec() -> Manifest:
    spec: Manifest = load(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    return spec


def server_container() -> Manifest:
    (container,) = pod_spec()["containers"]
    return container


def dockerfile_instruction(name: str) -> str:
    """The argument of the last ``name`` instruction of the Dockerfile's final stage."""
    values = re.findall(rf"^{name}\s+(.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert values, f"no {name} in {DOCKERFILE}"
    return str(values[-1]).strip()


# -- schema validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", CORE)
def test_core_manifest_is_valid_kubernetes(name: str, version: str) -> None:
    # strict: a property the API does not define is an error, not silently dropped.
    kubernetes_validate.validate(load(K8S / name), version, strict=True)


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda c: c["readinessProbe"].update(grpcc=c["readinessProbe"].pop("grpc")), id="misspelt-field"),
        pytest.param(lambda c: c["resources"]["limits"].update(cpu=[2]), id="wrong-type"),
        pytest.param(lambda c: c.pop("name"), id="missing-required"),
    ],
)
def test_a_broken_deployment_fails_validation(break_it: Callable[[Manifest], None]) -> None:
    deployment = load(K8S / "deployment.yaml")
    broken = copy.deepcopy(deployment)
    break_it(broken["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomization_applies_every_core_manifest() -> None:
    assert sorted(load(K8S / "kustomization.yaml")["resources"]) == sorted(CORE)


# -- consistency with the image and each other -----------------------------------------------------


def test_deployment_exposes_the_ports_the_image_exposes() -> None:
    exposed = {int(port) for port in dockerfile_instruction("EXPOSE").split()}
    ports = {port["name"]: port["containerPort"] for port in server_container()["ports"]}
    assert exposed == {GRPC_PORT, HEALTH_PORT, METRICS_PORT}
    assert ports == {"grpc": GRPC_PORT, "health": HEALTH_PORT, "metrics": METRICS_PORT}


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_ask_grpc_health_on_the_plaintext_health_port(probe: str) -> None:
    # Kubernetes' native grpc probe calls grpc.health.v1.Health/Check (service "": the whole server) in
    # plaintext and without a key: the gRPC port wants both, the health port neither.
    settings = server_container()[probe]
    assert settings["grpc"]["port"] == HEALTH_PORT
    assert settings["grpc"].get("service", "") == ""
    env = {item["name"]: item.get("value") for item in server_container()["env"]}
    assert env["ATTNSERVE_HEALTH_PORT"] == str(HEALTH_PORT)


def _secret_files(container: Manifest, pod: Manifest) -> dict[str, str]:
    """The env settings naming a file of a mounted Secret: variable -> secret name; fails on any other path."""
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    secrets = {volume["name"]: volume["secret"] for volume in pod["volumes"] if "secret" in volume}
    found = {}
    for item in container["env"]:
        if item["name"] in ("ATTNSERVE_TLS_CERT", "ATTNSERVE_TLS_KEY", "ATTNSERVE_API_KEY_FILE"):
            folder = item["value"].rsplit("/", 1)[0]
            (name,) = (n for n, mount in mounts.items() if mount["mountPath"] == folder)
            assert mounts[name]["readOnly"] is True and "subPath" not in mounts[name]  # subPath never updates
            found[item["name"]] = secrets[name]["secretName"]
    return found


@pytest.mark.parametrize("manifest", ["deployment", "inferenceservice"])
def test_tls_and_api_keys_come_from_mounted_secrets(manifest: str) -> None:
    if manifest == "deployment":
        container, pod = server_container(), pod_spec()
    else:
        pod = load(INFERENCE_SERVICE)["spec"]["predictor"]
        (container,) = pod["containers"]
    assert _secret_files(container, pod) == {
        "ATTNSERVE_TLS_CERT": "attnserve-tls",
        "ATTNSERVE_TLS_KEY": "attnserve-tls",
        "ATTNSERVE_API_KEY_FILE": "attnserve-api-keys",
    }
    # Mode 0440: readable by the pod's fsGroup, which must be the image's group.
    assert pod["securityContext"]["fsGroup"] == int(dockerfile_instruction("USER").split(":")[1])


def test_deployment_runs_locked_down_as_the_image_user() -> None:
    uid, gid = (int(part) for part in dockerfile_instruction("USER").split(":"))
    pod_security = pod_spec()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (uid, gid)
    security = server_container()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    # HOME and scratch space point at /tmp (see the Dockerfile); with a read-only root it needs a volume.
    mounts = {mount["mountPath"]: mount["name"] for mount in server_container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_resources_and_threads_follow_the_cpu_limit() -> None:
    resources = server_container()["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}, kind
    env = {item["name"]: item for item in server_container()["env"]}
    threads = env["ATTNSERVE_INTRA_OP_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads == {"resource": "limits.cpu", "divisor": "1"}


def test_pod_termination_outlasts_the_prestop_pause_and_the_drain() -> None:
    env = {item["name"]: item.get("value") for item in server_container()["env"]}
    pause = server_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env["ATTNSERVE_GRACE_PERIOD_S"])
    assert pod_spec()["terminationGracePeriodSeconds"] > pause + drain


def test_service_hpa_and_pdb_select_the_deployment() -> None:
    deployment = load(K8S / "deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {port["name"] for port in server_container()["ports"]}

    service = load(K8S / "service.yaml")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The health port is for the kubelet's probes, which reach the pod directly.
    assert {port["targetPort"] for port in service["spec"]["ports"]} == port_names - {"health"}

    pdb = load(K8S / "pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    target = load(K8S / "hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )


def test_inference_service_predictor_matches_the_deployment() -> None:
    predictor = load(INFERENCE_SERVICE)["spec"]["predictor"]
    (container,) = predictor["containers"]
    deployed = server_container()
    assert container["image"] == deployed["image"]
    assert container["securityContext"] == deployed["securityContext"]
    assert container["resources"] == deployed["resources"]
    # KServe routes gRPC to the container port named h2c.
    assert container["ports"] == [{"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"]["port"] == HEALTH_PORT
    assert container["livenessProbe"]["grpc"]["port"] == HEALTH_PORT


# -- the KServe InferenceService against the kserve SDK --------------------------------------------


@pytest.fixture(scope="module")
def kserve_python(skip_or_fail: Callable[[str], None]) -> Path:
    """The interpreter of .venv-kserve (`make install-kserve`): the SDK cannot share .venv-test."""
    python = Path(os.environ.get("ATTNSERVE_KSERVE_PYTHON", REPO / ".venv-kserve" / "bin" / "python"))
    if not python.exists():
        skip_or_fail(f"{python} does not exist")
    return python


def kserve_check(python: Path, manifest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), str(KSERVE_CHECK), str(manifest)], capture_output=True, text=True, timeout=120, check=False
    )


def test_inference_service_loads_into_the_kserve_models(kserve_python: Path) -> None:
    result = kserve_check(kserve_python, INFERENCE_SERVICE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok:")


def _rename(mapping: Manifest, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        pytest.param(
            lambda p: _rename(p, "containers", "container"),
            "V1beta1PredictorSpec has no field(s) container",
            id="misspelt-kserve-field",
        ),
        pytest.param(
            lambda p: _rename(p["containers"][0]["readinessProbe"]["grpc"], "port", "prot"),
            "V1GRPCAction has no field(s) prot",
            id="misspelt-pod-field",
        ),
        pytest.param(lambda p: p.update(minReplicas="one"), "minReplicas: expected int", id="wrong-type"),
        pytest.param(lambda p: p["containers"][0].pop("name"), "V1Container", id="missing-required"),
    ],
)
def test_a_broken_inference_service_fails(
    kserve_python: Path, tmp_path: Path, break_it: Callable[[Manifest], None], expected: str
) -> None:
    broken = load(INFERENCE_SERVICE)
    break_it(broken["spec"]["predictor"])
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(broken))
    result = kserve_check(kserve_python, manifest)
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stdout
