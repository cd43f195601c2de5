"""Build the server image with podman and run it as a user would, following
shared/notes/containers.md: a Debian bookworm base made with debootstrap (cached in podman's
storage), wheels built on the host and installed in the build with --no-index, `--format docker`
so that the HEALTHCHECK survives, then `--read-only`, a published port and the image's own user.
The client talks to the container from outside; SIGTERM must end it cleanly within its grace period.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from attnserve_client import AttnserveError, AuthenticationError, Client, UnavailableError

# The first test's setup makes the base image and builds the image: minutes on a fresh machine.
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
BASE_IMAGE = "localhost/attnserve-base:py311"
IMAGE = "localhost/attnserve:test"
OPENVINO_IMAGE = "localhost/attnserve:test-openvino"
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
GRPC_PORT = 50051
HEALTH_PORT = 50052
GRACE_PERIOD_S = 5.0
# The target for what the image adds on top of its base.
MAX_ADDED_BYTES = 250_000_000
# What the OpenVINO variant may add to the plain image, once pruned (the wheel installs about 180 MB).
MAX_OPENVINO_ADDED_BYTES = 120_000_000
START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Podman:
    """podman with the settings these machines need: the config file and runc, on every call."""

    executable: str

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True, stdin: IO[bytes] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.executable, "--runtime", "runc", *args],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
        )
        if check and result.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def inspect(self, *args: str) -> dict[str, Any]:
        (data,) = json.loads(self(*args).stdout)
        return dict(data)

    def image_size(self, image: str) -> int:
        return int(self.inspect("image", "inspect", image)["Size"])


def debian_mirror() -> str:
    """The Debian mirror apt uses here: the first `URIs:` of the main (not security) archive.

    Read at run time and never written anywhere, so no registry host ends up in the repository.
    """
    for stanza in APT_SOURCES.read_text().split("\n\n"):
        fields = dict(line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#"))
        uri = fields.get("URIs", "").split()
        suites = fields.get("Suites", "").split()
        if uri and "bookworm" in suites:
            return uri[0]
    pytest.fail(f"no bookworm archive in {APT_SOURCES}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def podman(require_executable: Callable[[str], str]) -> Podman:
    require_executable("runc")
    return Podman(require_executable("podman"))


@pytest.fixture(scope="module")
def base_image(
    podman: Podman,
    require_executable: Callable[[str], str],
    skip_or_fail: Callable[[str], None],
    tmp_path_factory: pytest.TempPathFactory,
    record_measurement: Callable[[str, str], None],
) -> str:
    """Debian bookworm with python3 and python3-venv, made once and then kept in podman's storage."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        record_measurement("base image", f"{BASE_IMAGE} (cached)")
        return BASE_IMAGE
    debootstrap = require_executable("debootstrap")
    if os.geteuid() != 0:
        skip_or_fail("debootstrap needs root to build the base image")
    started = time.monotonic()
    rootfs = tmp_path_factory.mktemp("base") / "rootfs"
    subprocess.run(
        [debootstrap, "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs), debian_mirror()],
        check=True,
        capture_output=True,
        timeout=600,
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    path = "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin"
    podman("import", "--change", path, "-", BASE_IMAGE, stdin=tar.stdout, timeout=300)
    tar.stdout.close()
    assert tar.wait(60) == 0
    subprocess.run(["rm", "-rf", str(rootfs)], check=True)
    record_measurement("base image", f"{BASE_IMAGE} made with debootstrap in {time.monotonic() - started:.0f} s")
    return BASE_IMAGE


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, record_measurement: Callable[[str, str], None]) -> Path:
    """Wheels that pip made here on the host, shared by both images: the server with its OpenVINO extra,
    the client, and setuptools (the build stage builds the two distributions in pip's isolated build env)."""
    started = time.monotonic()
    wheels = tmp_path_factory.mktemp("wheelhouse")
    distributions = [str(REPO / "client"), f"{REPO / 'server'}[openvino]", "setuptools>=68"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), *distributions],
        check=True,
        capture_output=True,
        timeout=600,
    )
    record_measurement("wheels (host pip wheel, both images)", f"{time.monotonic() - started:.0f} s")
    return wheels


def build_image(podman: Podman, base_image: str, wheelhouse: Path, tag: str, *build_args: str) -> None:
    """docker/Dockerfile built on the local base, with the host's wheels and no index."""
    podman(
        "build",
        "--format", "docker",
        "--network", "host",
        "--file", str(REPO / "docker" / "Dockerfile"),
        "--build-arg", f"BASE_IMAGE={base_image}",
        "--build-arg", "PIP_WHEEL_ARGS=--no-index --find-links /wheelhouse",
        *[flag for arg in build_args for flag in ("--build-arg", arg)],
        "--volume", f"{wheelhouse}:/wheelhouse:ro",
        "--tag", tag,
        str(REPO),
        timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def image(podman: Podman, base_image: str, wheelhouse: Path, record_measurement: Callable[[str, str], None]) -> str:
    """The server image (ONNX Runtime only)."""
    started = time.monotonic()
    build_image(podman, base_image, wheelhouse, IMAGE)
    added = podman.image_size(IMAGE) - podman.image_size(base_image)
    record_measurement("image build (podman build)", f"{time.monotonic() - started:.0f} s")
    record_measurement("image size over its base", f"{added / 1e6:.1f} MB (target <= {MAX_ADDED_BYTES / 1e6:.0f} MB)")
    return IMAGE


@pytest.fixture(scope="module")
def inspected(podman: Podman, image: str) -> dict[str, Any]:
    """`podman image inspect` of the image (podman keeps the HEALTHCHECK beside Config, not in it)."""
    return podman.inspect("image", "inspect", image)


@pytest.fixture(scope="module")
def config(inspected: dict[str, Any]) -> dict[str, Any]:
    return dict(inspected["Config"])


@dataclass(frozen=True)
class Container:
    name: str
    target: str
    health_target: str


@pytest.fixture
def start_container(podman: Podman, image: str, config: dict[str, Any]) -> Iterator[Callable[..., Container]]:
    """``start_container(*env, volumes=(), using=image)`` runs the image with its whole filesystem read-only (no
    writable /tmp either), as its declared user, the gRPC port and the plaintext health port published
    on free loopback ports, and waits on the health port until the server reports SERVING."""
    names: list[str] = []

    def start(*env: str, volumes: tuple[str, ...] = (), using: str = image) -> Container:
        port, health_port = free_port(), free_port()
        name = f"attnserve-test-{os.getpid()}-{len(names)}"
        names.append(name)
        env_flags = [flag for item in env for flag in ("--env", item)]
        volume_flags = [flag for volume in volumes for flag in ("--volume", volume)]
        podman(
            "run", "--detach", "--name", name,
            # Like Docker's --read-only: podman would otherwise mount writable tmpfs on /tmp and /run.
            "--read-only", "--read-only-tmpfs=false",
            "--user", config["User"],
            "--publish", f"127.0.0.1:{port}:{GRPC_PORT}",
            "--publish", f"127.0.0.1:{health_port}:{HEALTH_PORT}",
            *env_flags,
            *volume_flags,
            using,
        )  # fmt: skip
        target, health_target = f"127.0.0.1:{port}", f"127.0.0.1:{health_port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        with Client(health_target, timeout=2.0, retries=0) as client:
            while not client.health():
                state = podman.inspect("container", "inspect", name)["State"]
                if not state["Running"] or time.monotonic() > deadline:
                    logs = podman("logs", name, check=False)
                    pytest.fail(
                        f"not SERVING after {START_TIMEOUT_S} s (running: {state['Running']}, "
                        f"exit code {state['ExitCode']}):\n{logs.stdout}{logs.stderr}"
                    )
                time.sleep(0.5)
        return Container(name, target, health_target)

    yield start
    for name in names:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_image_adds_at_most_250_mb_to_its_base(podman: Podman, image: str, base_image: str) -> None:
    added = podman.image_size(image) - podman.image_size(base_image)
    assert added <= MAX_ADDED_BYTES, f"the image adds {added / 1e6:.1f} MB to its base"


def test_image_declares_a_non_root_user_ports_and_a_health_check(
    inspected: dict[str, Any], config: dict[str, Any]
) -> None:
    user = config["User"].split(":")[0]
    assert user not in ("", "0", "root")
    # Present only because the build used --format docker: OCI images drop HEALTHCHECK.
    assert "attnserve health" in " ".join(inspected["Healthcheck"]["Test"])
    assert config["StopSignal"] == "SIGTERM"
    assert set(config["ExposedPorts"]) == {"50051/tcp", "50052/tcp", "9464/tcp"}
    assert config["Entrypoint"] == ["attnserve-server"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["ATTNSERVE_HOST"] == "0.0.0.0"
    assert env["ATTNSERVE_MODEL_REPOSITORY"] == "/models"
    assert env["ATTNSERVE_HEALTH_PORT"] == "50052"
    assert config["Labels"]["org.opencontainers.image.title"] == "attnserve"


def test_runtime_stage_has_no_torch_compiler_or_pip(podman: Podman, image: str) -> None:
    probe = (
        "import importlib.util as u, shutil, json; "
        "print(json.dumps({'torch': u.find_spec('torch') is not None, 'pip': u.find_spec('pip') is not None, "
        "'compilers': [c for c in ('cc', 'gcc', 'g++', 'clang') if shutil.which(c)], "
        "'server': u.find_spec('attnserve_server') is not None}))"
    )
    result = podman("run", "--rm", "--read-only", "--entrypoint", "python", image, "-c", probe)
    contents = json.loads(result.stdout.strip().splitlines()[-1])
    assert contents == {"torch": False, "pip": False, "compilers": [], "server": True}


def test_onnx_runtime_threads_follow_the_container_cpu_quota(podman: Podman, image: str) -> None:
    # What every model session gets with the default --intra-op-threads 0, read inside the container.
    probe = "from attnserve_server.runtime import session_options; print(session_options().intra_op_num_threads)"

    def threads(*flags: str) -> int:
        result = podman("run", "--rm", "--read-only", *flags, "--entrypoint", "python", image, "-c", probe)
        return int(result.stdout.strip().splitlines()[-1])

    assert threads() == len(os.sched_getaffinity(0))  # no quota: the host's CPUs
    assert threads("--cpus", "1") == 1
    assert threads("--cpus", "0.5") == 1  # a fraction of a CPU still needs one thread


def digit_images(count: int) -> tuple[list[bytes], list[int]]:
    """The first ``count`` digits of scikit-learn's set as 64x64 grey PNGs, as a user would make them."""
    digits = load_digits()
    images = []
    for values in digits.images[:count]:
        grey = np.clip(np.round(values * 255 / 16), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey, mode="L").resize((64, 64), Image.Resampling.BICUBIC).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images, [int(label) for label in digits.target[:count]]


def test_served_from_the_container_through_the_client(
    podman: Podman, start_container: Callable[..., Container]
) -> None:
    container = start_container()
    with Client(container.target, timeout=60.0) as client:
        result = client.generate("ROMEO:", model="shakespeare-gpt", max_new_tokens=24, seed=7)
        assert result.usage.completion_tokens == 24
        assert result.text.strip()

        images, labels = digit_images(20)
        predictions = client.classify_batch(images, model="digits-vit", top_k=1)
        correct = sum(top[0].index == label for top, label in zip(predictions, labels, strict=True))
        # The model reaches 98.6 % on the test split; these 20 are from its training split.
        assert correct >= 19, f"{correct}/20"

    # The image's own HEALTHCHECK command, run inside the read-only container as its user.
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0


def test_served_over_tls_with_an_api_key_from_mounted_secrets(
    podman: Podman, start_container: Callable[..., Container], tmp_path: Path
) -> None:
    """The documented setup: docker/dev-certs.sh and `attnserve-server keys add` write a secrets folder,
    mounted read-only at /etc/attnserve; clients outside call over TLS with the key."""
    secrets = tmp_path / "secrets"
    subprocess.run([str(REPO / "docker" / "dev-certs.sh"), str(secrets)], check=True, capture_output=True, timeout=60)
    add = ["keys", "add", "outside", "--scopes", "infer", "--key-file", str(secrets / "api-keys.yaml")]
    added = subprocess.run(
        [sys.executable, "-m", "attnserve_server", *add], check=True, capture_output=True, text=True, timeout=60
    )
    key = added.stdout.splitlines()[-1]
    # The container's user (uid 10001) reads the key; in production the file belongs to it (chown 10001).
    (secrets / "tls.key").chmod(0o644)
    secrets.chmod(0o755)
    container = start_container(
        "ATTNSERVE_TLS_CERT=/etc/attnserve/tls.crt",
        "ATTNSERVE_TLS_KEY=/etc/attnserve/tls.key",
        "ATTNSERVE_API_KEY_FILE=/etc/attnserve/api-keys.yaml",
        volumes=(f"{secrets}:/etc/attnserve:ro",),
    )
    with Client(container.target, ca=secrets / "ca.crt", api_key=key, timeout=60.0) as client:
        result = client.generate("ROMEO:", model="shakespeare-gpt", max_new_tokens=8, seed=7)
        assert result.usage.completion_tokens == 8
    with Client(container.target, ca=secrets / "ca.crt", retries=0) as anonymous, pytest.raises(AuthenticationError):
        anonymous.generate("ROMEO:", model="shakespeare-gpt", max_new_tokens=8)
    with Client(container.target, api_key=key, retries=0, timeout=5.0) as plaintext, pytest.raises(UnavailableError):
        plaintext.generate("ROMEO:", model="shakespeare-gpt", max_new_tokens=8)
    # The image's HEALTHCHECK asks the plaintext health port, so it passes with TLS on.
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0
    logs = podman("logs", container.name)
    assert key not in logs.stdout + logs.stderr
    assert "(TLS, 1 API key(s)" in logs.stdout + logs.stderr


def _log_time(logs: str, message: str) -> datetime:
    """When the server logged ``message`` (its own clock: no podman or client overhead in between)."""
    found = re.search(rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}) \S+ \S+: {re.escape(message)}", logs, re.M)
    assert found, f"no {message!r} in the log:\n{logs}"
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")


def test_sigterm_stops_a_busy_container_cleanly_within_the_grace_period(
    podman: Podman, start_container: Callable[..., Container]
) -> None:
    """SIGTERM reaches a server with generations running and queued: it drains what it can within its
    grace period, cancels the rest, and exits 0 before podman would SIGKILL it."""
    # One generation at a time, so the others queue: the work outlasts the grace period by design.
    container = start_container(
        f"ATTNSERVE_GRACE_PERIOD_S={GRACE_PERIOD_S}",
        "ATTNSERVE_MAX_ACTIVE_SEQUENCES=1",
        "ATTNSERVE_MAX_WAITING_SEQUENCES=256",
    )
    tokens = 64
    with Client(container.target, timeout=300.0) as client:
        started = time.monotonic()
        client.generate("ROMEO:", model="shakespeare-gpt", max_new_tokens=tokens, temperature=0)
        one = time.monotonic() - started
        # Three grace periods of work, measured on this machine now: the drain cannot finish it all.
        count = min(256, max(4, math.ceil(3 * GRACE_PERIOD_S / one)))
        before = client.get_model("shakespeare-gpt").counters.requests
        outcomes: list[tuple[int, str | None]] = []

        def generate() -> None:
            received, error = 0, None
            try:
                for chunk in client.generate_stream(
                    "ROMEO:", model="shakespeare-gpt", max_new_tokens=tokens, temperature=0
                ):
                    received += len(chunk.token_ids)
            except AttnserveError as exc:
                error = type(exc).__name__
            outcomes.append((received, error))

        threads = [threading.Thread(target=generate) for _ in range(count)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while client.get_model("shakespeare-gpt").counters.requests < before + count:  # all admitted: busy
            assert time.monotonic() < deadline, "the generations were not admitted"
            time.sleep(0.05)
        # `podman stop` sends the image's STOPSIGNAL (SIGTERM), waits --time seconds, then SIGKILLs (137).
        # The margin beyond the grace period is for the interpreter's own exit on a loaded machine.
        podman("stop", "--time", str(int(GRACE_PERIOD_S) + 25), container.name, timeout=120)
        for thread in threads:
            thread.join(timeout=60)
    state = podman.inspect("container", "inspect", container.name)["State"]
    output = podman("logs", container.name)
    logs = output.stdout + output.stderr
    assert state["ExitCode"] == 0, logs  # exited by itself after SIGTERM, not killed
    # The drain, on the server's own clock: within the grace period, plus what closing the models takes.
    drained = (_log_time(logs, "stopped") - _log_time(logs, "shutting down")).total_seconds()
    assert drained < GRACE_PERIOD_S + 5, f"the drain took {drained:.1f} s"
    assert len(outcomes) == count
    finished = [received for received, error in outcomes if error is None]
    cut = [error for _, error in outcomes if error is not None]
    assert finished and all(received == tokens for received in finished), outcomes  # drained ones run to the end
    assert cut, f"all {count} generations finished: the grace period cut none"  # the rest were cancelled


# --- the OpenVINO variant -------------------------------------------------------------------


@pytest.fixture(scope="module")
def openvino_image(
    podman: Podman, base_image: str, wheelhouse: Path, image: str, record_measurement: Callable[[str, str], None]
) -> str:
    """The same Dockerfile with the server's OpenVINO extra, on the same base and the same wheels."""
    started = time.monotonic()
    build_image(podman, base_image, wheelhouse, OPENVINO_IMAGE, "SERVER_EXTRAS=[openvino]")
    over_base = podman.image_size(OPENVINO_IMAGE) - podman.image_size(base_image)
    over_plain = podman.image_size(OPENVINO_IMAGE) - podman.image_size(image)
    built = f"{time.monotonic() - started:.0f} s"
    record_measurement("OpenVINO image build (podman build, the CI time it adds)", built)
    record_measurement("OpenVINO image size over its base", f"{over_base / 1e6:.1f} MB")
    record_measurement(
        "OpenVINO image size over the plain image",
        f"{over_plain / 1e6:.1f} MB (target <= {MAX_OPENVINO_ADDED_BYTES / 1e6:.0f} MB)",
    )
    return OPENVINO_IMAGE


def test_openvino_image_adds_at_most_120_mb_to_the_plain_image(podman: Podman, openvino_image: str, image: str) -> None:
    added = podman.image_size(openvino_image) - podman.image_size(image)
    assert added <= MAX_OPENVINO_ADDED_BYTES, f"the OpenVINO image adds {added / 1e6:.1f} MB to the plain one"


OPENVINO_CONTENTS_PROBE = """
import importlib.util as u, json, pathlib, openvino
root = pathlib.Path(openvino.__file__).parent
print(json.dumps({
    "libs": sorted(p.name for p in (root / "libs").iterdir() if ".so" in p.name),
    "frontends": sorted(p.name for p in (root / "frontend").iterdir() if p.is_dir() and p.name != "__pycache__"),
    "tools": (root / "tools").exists(),
    "telemetry": u.find_spec("openvino_telemetry") is not None,
    "headers": (root / "include").exists(),
}))
"""


def test_openvino_image_keeps_only_what_serving_loads(podman: Podman, openvino_image: str) -> None:
    probe = ("run", "--rm", "--read-only", "--entrypoint", "python", openvino_image, "-c", OPENVINO_CONTENTS_PROBE)
    result = podman(*probe)
    contents = json.loads(result.stdout.strip().splitlines()[-1])
    libs = contents["libs"]
    assert "libopenvino_intel_cpu_plugin.so" in libs and any(n.startswith("libopenvino_onnx_frontend") for n in libs)
    gone = (
        *("gpu_plugin", "npu_plugin", "auto_plugin", "hetero_plugin", "auto_batch_plugin"),
        *("tensorflow", "paddle", "pytorch", "jax", "gguf"),
    )
    assert not [n for n in libs if any(part in n for part in gone)], libs
    assert contents["frontends"] == ["onnx"]
    assert contents == {**contents, "tools": False, "telemetry": False, "headers": False}


def test_openvino_image_serves_the_digit_models_on_openvino_bf16(
    podman: Podman, openvino_image: str, start_container: Callable[..., Container], tmp_path: Path
) -> None:
    """The fp32 versions of the shipped digit models, mounted with a config.yaml that asks for OpenVINO."""
    repository = tmp_path / "models"
    for model in ("digits-vit", "digits-swin"):
        shutil.copytree(REPO / "models" / model / "1", repository / model / "1")
        (repository / model / "config.yaml").write_text("backend: openvino\nprecision: bf16\n")
    for path in [repository, *repository.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    container = start_container(
        "ATTNSERVE_MODEL_REPOSITORY=/openvino-models",
        volumes=(f"{repository}:/openvino-models:ro",),
        using=openvino_image,
    )
    images, labels = digit_images(20)
    with Client(container.target, timeout=60.0) as client:
        for model in ("digits-vit", "digits-swin"):
            predictions = client.classify_batch(images, model=model, top_k=1)
            correct = sum(top[0].index == label for top, label in zip(predictions, labels, strict=True))
            assert correct >= 19, f"{model}: {correct}/20"
    logs = podman("logs", container.name)
    text = logs.stdout + logs.stderr
    assert "OpenVINO (bf16) agrees with ONNX Runtime" in text, text
    assert "OpenVINO bf16" in text
