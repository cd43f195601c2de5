"""Fixtures shared by every test folder: a tiny real model repository and a real server process.

- ``tiny_repository``: a model repository (session-scoped) with one model, ``tiny-gpt``: the
  ``tiny`` GPT preset with random weights (``torch.manual_seed(0)``), a byte-level BPE tokenizer
  trained on a small multilingual corpus, and ``config.yaml`` with ``max_new_tokens_limit: 48``.
- ``server_address``: ``"127.0.0.1:<port>"`` of a real ``attnserve-server`` process serving
  ``tiny_repository`` (session-scoped), started on a free loopback port and SERVING.
- ``image_repository``: a model repository (session-scoped) with one image-classification model,
  ``tiny-digits``: the ``tiny`` ViT preset (1 × 16 × 16, labels "zero".."nine") with random
  weights, exported by attnserve-export's parity-checked ``export_classifier`` (see
  :func:`export_image_model`); ``image_server_address``: a real server serving it and ``tiny-gpt``.
- ``export_text_model`` / ``export_image_classifier``: build more models
  (``(root, name, **config_changes)`` / ``(root, name, channels=, size=, labels=, **preprocessing)``).
- ``long_repository`` / ``long_server`` / ``long_server_address``: ``long-gpt`` (1024-token context,
  4 layers of 256), whose 1000-token greedy generations run to the end and take seconds, and a real
  server (session-scoped) serving it: cancellation and deadlines have something to stop.
  ``long_decoding``: a :class:`DecodingProbe` of that server's /metrics (what its batcher decoded).
- ``server_launcher`` / ``session_server_launcher``: start more servers
  (``(repository, *extra_flags, env=..., wait=True)`` -> ``ServerProcess``); each is stopped with
  SIGTERM at the end of the test (or of the session).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

TINY_MODEL = "tiny-gpt"
IMAGE_MODEL = "tiny-digits"
IMAGE_LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SIZE = 16
TINY_MAX_NEW_TOKENS_LIMIT = 48
LONG_MODEL = "long-gpt"
SERVER_START_TIMEOUT_S = 60.0

# A few KB with accents, CJK, Cyrillic and emoji, so byte-level BPE learns merges that end in the
# middle of a multi-byte character and the server's incremental detokenizer is exercised.
CORPUS = (
    "ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
    "JULIET.\nO Romeo, Romeo, wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n"
    "HAMLET.\nTo be, or not to be, that is the question.\n\n"
    "Le café est très chaud; la crème brûlée est délicieuse. Où est le théâtre? À bientôt, garçon!\n"
    "Grüße aus München: Äpfel, Öl und Übermut. Straße, Fußgänger, schön.\n"
    "日本語のテキストです。東京は大きな都市です。こんにちは、世界。\n"
    "Привет, мир! Как дела? Спасибо, хорошо.\n"
    "Emoji: 🙂 🚀 🎭 ❤️ — naïve façade, jalapeño, smörgåsbord, €100, ½ price.\n\n"
)


@dataclass
class ServerProcess:
    """A running ``python -m attnserve_server`` child process."""

    address: str
    process: subprocess.Popen[bytes]
    stderr_path: Path
    args: list[str] = field(default_factory=list)

    def stderr(self) -> str:
        """Everything the server has logged so far."""
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def close(self) -> None:
        """SIGTERM a server that is still running, delete the log, and fail unless it exited with 0.

        A server that already exited (a test that expected it to, or stopped it itself) is not
        judged here; one that was running must shut down cleanly: a crash or a hang on SIGTERM
        (SIGKILLed after the timeout) is an error of the test that used it.
        """
        running = self.process.poll() is None
        code = self.terminate()
        log = self.stderr()
        self.stderr_path.unlink(missing_ok=True)
        if running and code != 0:
            raise AssertionError(f"server {self.address} exited with {code} on SIGTERM, not 0:\n{log}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(server: ServerProcess, timeout: float = SERVER_START_TIMEOUT_S) -> None:
    """Poll grpc.health.v1 until the server reports SERVING; fail with its stderr if it dies."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited with {server.process.returncode} before serving:\n{server.stderr()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                server.terminate()
                raise RuntimeError(f"server not SERVING after {timeout:.0f} s:\n{server.stderr()}")
            time.sleep(0.1)


def launch_server(
    repository: Path, *extra_args: str, env: dict[str, str] | None = None, wait: bool = True
) -> ServerProcess:
    """Start a real server on a free loopback port (and, with ``wait``, until it is SERVING)."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "attnserve_server",
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # Many servers run at once: each takes a free metrics port (a later --metrics-port wins).
        "--metrics-port",
        "0",
        *extra_args,
    ]
    stderr_fd, stderr_name = tempfile.mkstemp(prefix="attnserve-server-", suffix=".log")
    # Same process group as pytest, so a Ctrl-C reaches the servers too.
    process = subprocess.Popen(args, stdout=stderr_fd, stderr=stderr_fd, env={**os.environ, **(env or {})})
    os.close(stderr_fd)
    server = ServerProcess(address=f"127.0.0.1:{port}", process=process, stderr_path=Path(stderr_name), args=args)
    if wait:
        wait_until_serving(server)
    return server


def export_model(
    root: Path,
    name: str,
    *,
    max_new_tokens_limit: int | None = None,
    kv_cache_layout: str = "shared_buffer",
    **changes: Any,
) -> Path:
    """Export a random-weight GPT (``tiny`` preset with ``changes``) as ``root/name/1`` in the given graph layout."""
    import torch

    from attnserve_export.gpt import GPT, PRESETS
    from attnserve_export.onnx_export import export_gpt
    from attnserve_export.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer([CORPUS * 8], vocab_size=400)
    config = PRESETS["tiny"].with_(vocab_size=tokenizer.get_vocab_size(with_added_tokens=True), **changes)
    torch.manual_seed(0)
    model = GPT(config)
    model_dir = root / name
    export_gpt(
        model,
        tokenizer,
        model_dir / "1",
        description=f"{name}: random weights for tests",
        provenance={"seed": 0},
        kv_cache_layout=kv_cache_layout,
    )
    if max_new_tokens_limit is not None:
        (model_dir / "config.yaml").write_text(f"max_new_tokens_limit: {max_new_tokens_limit}\n")
    return model_dir


def export_image_model(
    root: Path,
    name: str,
    *,
    channels: int = 1,
    size: int = IMAGE_SIZE,
    labels: tuple[str, ...] = IMAGE_LABELS,
    **preprocessing: Any,
) -> Path:
    """Export a random-weight ViT (``tiny`` preset resized to ``channels`` × ``size`` × ``size`` and
    ``len(labels)`` classes, ``torch.manual_seed(0)``) as ``root/name/1``, with attnserve-export's
    parity-checked ``export_classifier``, so the repository entry is exactly what the exporter writes.

    Preprocessing defaults: ``resize`` policy, bicubic, mean 0.5 / std 0.5 per channel;
    ``preprocessing`` overrides any ``ImageSpec`` field (``resample``, ``resize_policy``,
    ``crop_ratio``, ``mean``, ``std``).
    """
    import dataclasses

    import numpy as np
    import torch

    from attnserve_export.image_data import ImageSpec
    from attnserve_export.image_export import export_classifier
    from attnserve_export.vit import PRESETS, ViT

    config = dataclasses.replace(PRESETS["tiny"], image_size=size, in_channels=channels, num_classes=len(labels))
    fields: dict[str, Any] = {"resample": "bicubic", "mean": (0.5,) * channels, "std": (0.5,) * channels}
    fields.update({k: tuple(v) if isinstance(v, list) else v for k, v in preprocessing.items()})
    spec = ImageSpec(channels=channels, height=size, width=size, **fields)
    torch.manual_seed(0)
    model = ViT(config)
    parity_images = np.random.default_rng(0).standard_normal((8, channels, size, size)).astype(np.float32)
    export_classifier(
        model,
        spec,
        list(labels),
        parity_images,
        root / name / "1",
        description=f"{name}: random-weight tiny ViT for tests",
        provenance={"seed": 0, "preset": "tiny"},
    )
    return root / name


@pytest.fixture(scope="session")
def export_image_classifier() -> Callable[..., Path]:
    """``export_image_classifier(root, name, channels=1, size=16, labels=..., **metadata changes)`` -> model dir."""
    return export_image_model


@pytest.fixture(scope="session")
def image_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding ``tiny-digits`` (see :func:`export_image_model`)."""
    root = tmp_path_factory.mktemp("image-models")
    export_image_model(root, IMAGE_MODEL)
    return root


@pytest.fixture(scope="session")
def image_server_address(image_repository: Path, tiny_repository: Path) -> Iterator[str]:
    """A real server serving ``tiny-digits`` and ``tiny-gpt`` (a copy: the server refuses links that leave
    its repository), so task mix-ups can be tested."""
    shutil.copytree(tiny_repository / TINY_MODEL, image_repository / TINY_MODEL)
    server = launch_server(image_repository)
    yield server.address
    server.close()


@pytest.fixture(scope="session")
def export_text_model() -> Callable[..., Path]:
    """``export_text_model(root, name, max_new_tokens_limit=None, kv_cache_layout=..., **GPTConfig changes)``."""
    return export_model


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding ``tiny-gpt`` (see the module docstring)."""
    root = tmp_path_factory.mktemp("models")
    export_model(root, TINY_MODEL, max_new_tokens_limit=TINY_MAX_NEW_TOKENS_LIMIT)
    return root


@pytest.fixture(scope="session")
def server_address(tiny_repository: Path) -> Iterator[str]:
    """Address of a real server process serving ``tiny_repository``."""
    server = launch_server(tiny_repository)
    yield server.address
    server.close()


@pytest.fixture(scope="session")
def long_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with ``long-gpt``: a 1024-token context, slow enough (a few ms per token) that a full
    1000-token generation takes seconds, so cancellation has something to stop."""
    root = tmp_path_factory.mktemp("long-models")
    export_model(root, LONG_MODEL, max_new_tokens_limit=1000, context_length=1024, num_layers=4, num_heads=4, dim=256)
    return root


@pytest.fixture(scope="session")
def long_server(long_repository: Path, session_server_launcher: Callable[..., ServerProcess]) -> ServerProcess:
    """A server for ``long_repository``, separate from ``server_address`` (its log names its /metrics URL)."""
    return session_server_launcher(long_repository)


@pytest.fixture(scope="session")
def long_server_address(long_server: ServerProcess) -> str:
    """``long_server``'s address."""
    return long_server.address


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")


def metrics_url(server: ServerProcess) -> str:
    """The /metrics URL the server logged (it was started with --metrics-port 0)."""
    found = re.search(r"metrics on (http://\S+/metrics)", server.stderr())
    assert found, f"no metrics line in the server log:\n{server.stderr()}"
    return found.group(1)


def model_metric(url: str, name: str, model: str) -> float:
    """The sum of ``name``'s samples labelled ``model`` on the /metrics page at ``url`` (0 if none)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    total = 0.0
    for line in lines:
        sample = _SAMPLE.match(line)
        if sample and sample.group(1) == name and f'model="{model}"' in sample.group(2).split(","):
            total += float(sample.group(3))
    return total


@dataclass
class DecodingProbe:
    """What a text model's continuous batcher has decoded, read from the server's /metrics.

    ``settled()`` waits until no call of the model is in flight (``attnserve_requests_in_flight``)
    and every sequence admitted to the batch has left it (one ``attnserve_request_compute_time_seconds``
    observation per sequence that leaves, one ``attnserve_request_queue_time_seconds`` per sequence
    admitted), then returns the decode-step tokens so far (``attnserve_batch_size_sum``: one per
    sequence per decode call). Unlike GetModel's ``tokens_generated``, which counts the tokens handed to
    RPCs, this sees a batcher that goes on decoding for a client that has gone.
    """

    url: str
    model: str
    timeout_s: float = 60.0

    def settled(self) -> int:
        deadline = time.monotonic() + self.timeout_s
        while True:
            busy = model_metric(self.url, "attnserve_requests_in_flight", self.model)
            admitted = model_metric(self.url, "attnserve_request_queue_time_seconds_count", self.model)
            left = model_metric(self.url, "attnserve_request_compute_time_seconds_count", self.model)
            if not busy and admitted == left:
                return int(model_metric(self.url, "attnserve_batch_size_sum", self.model))
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.model}: {busy} calls in flight, {admitted - left} sequences decoding")
            time.sleep(0.02)


@pytest.fixture(scope="session")
def long_decoding(long_server: ServerProcess) -> DecodingProbe:
    """A :class:`DecodingProbe` of ``long-gpt`` on ``long_server``."""
    return DecodingProbe(metrics_url(long_server), LONG_MODEL)


@pytest.fixture(scope="session")
def decoding_probe() -> Callable[[ServerProcess, str], DecodingProbe]:
    """Makes a :class:`DecodingProbe` of any text model on any server (test modules cannot import this file)."""
    return lambda server, model: DecodingProbe(metrics_url(server), model)


def _launcher() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def launch(
        repository: Path, *extra_args: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> ServerProcess:
        server = launch_server(repository, *extra_args, env=env, wait=wait)
        started.append(server)
        return server

    yield launch
    failures = []
    for server in started:  # every server is stopped, even after one failed to stop cleanly
        try:
            server.close()
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError("\n\n".join(failures))


@pytest.fixture
def server_launcher() -> Iterator[Callable[..., ServerProcess]]:
    """Start extra servers for one test; they are stopped (SIGTERM) afterwards."""
    yield from _launcher()


@pytest.fixture(scope="session")
def session_server_launcher() -> Iterator[Callable[..., ServerProcess]]:
    """Start extra servers shared by many tests; they are stopped (SIGTERM) at the end of the session."""
    yield from _launcher()
