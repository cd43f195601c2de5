"""The Dockerfile passes hadolint, and the compose file runs the image the way the image expects."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
PROMETHEUS = REPO / "docker" / "prometheus.yml"


def hadolint(require_executable: Callable[[str], str], dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_executable("hadolint"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.train"])
def test_dockerfile_passes_hadolint(require_executable: Callable[[str], str], dockerfile: str) -> None:
    result = hadolint(require_executable, REPO / "docker" / dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        # Ending as root throws away the non-root user.
        pytest.param(lambda text: text.replace("ENTRYPOINT", "USER root\nENTRYPOINT"), "DL3002", id="root-user"),
        # A shell-form ENTRYPOINT runs the server under sh, which does not pass SIGTERM on.
        pytest.param(
            lambda text: text.replace('ENTRYPOINT ["attnserve-server"]', "ENTRYPOINT attnserve-server"),
            "DL3025",
            id="shell-form-entrypoint",
        ),
    ],
)
def test_hadolint_rejects_a_broken_dockerfile(
    require_executable: Callable[[str], str], tmp_path: Path, change: Callable[[str], str], rule: str
) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(change(DOCKERFILE.read_text()))
    result = hadolint(require_executable, broken)
    assert result.returncode != 0
    assert rule in result.stdout


def compose_server() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return dict(services["attnserve"])


def test_compose_publishes_grpc_and_metrics_on_this_host_only() -> None:
    exposed = set(re.findall(r"^EXPOSE\s+(.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)[-1].split())
    published = {mapping.split(":")[-1]: mapping for mapping in compose_server()["ports"]}
    assert exposed == {"50051", "50052", "9464"}
    # The health port is for the healthcheck, which runs inside the container.
    assert set(published) == exposed - {"50052"}
    assert published["9464"] == "127.0.0.1:9464:9464"  # plaintext, and its series name the API keys


def test_compose_serves_tls_and_keys_from_a_mounted_secrets_folder() -> None:
    server = compose_server()
    env = server["environment"]
    (secrets,) = [volume for volume in server["volumes"] if volume["target"] == "/etc/attnserve"]
    assert (
        secrets["read_only"] is True and (COMPOSE.parent / secrets["source"]).resolve() == REPO / "docker" / "secrets"
    )
    for name in ("ATTNSERVE_TLS_CERT", "ATTNSERVE_TLS_KEY", "ATTNSERVE_API_KEY_FILE"):
        assert env[name].startswith("/etc/attnserve/"), name
    assert "docker/secrets/" in (REPO / ".gitignore").read_text().splitlines()
    health = server["healthcheck"]["test"]
    assert health[health.index("--target") + 1] == f"127.0.0.1:{env['ATTNSERVE_HEALTH_PORT']}"


def test_compose_runs_read_only_with_limits_and_a_health_check() -> None:
    server = compose_server()
    assert server["read_only"] is True
    assert any(mount.startswith("/tmp") for mount in server["tmpfs"])
    assert server["cap_drop"] == ["ALL"]
    assert server["healthcheck"]["test"][:3] == ["CMD", "attnserve", "health"]
    limits = server["deploy"]["resources"]["limits"]
    assert set(limits) == {"cpus", "memory"}
    (models,) = [volume for volume in server["volumes"] if volume["target"] == "/models"]
    assert (COMPOSE.parent / models["source"]).resolve() == REPO / "models"


def test_compose_prometheus_profile_scrapes_the_server() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    (config,) = prometheus["volumes"]
    assert (COMPOSE.parent / config["source"]).resolve() == PROMETHEUS
    (job,) = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["attnserve:9464"]
