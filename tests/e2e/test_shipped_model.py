"""The newcomer's path, end to end: the shipped repository served by the `attnserve-server`
console script (configured through ATTNSERVE_* variables, as `make serve` and the container do),
called through the `attnserve` CLI and the Python client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from attnserve_client import Client, FinishReason

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
SHIPPED = "shakespeare-gpt"
BIN = Path(sys.executable).parent


def latest_version_dir(name: str) -> Path:
    return max((p for p in (MODELS / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`attnserve-server` on the shipped ./models, configured only through the environment."""
    port = free_port()
    log = tmp_path_factory.mktemp("shipped") / "server.log"
    env = {
        **os.environ,
        "ATTNSERVE_MODEL_REPOSITORY": str(MODELS),
        "ATTNSERVE_HOST": "127.0.0.1",
        "ATTNSERVE_PORT": str(port),
    }
    with log.open("wb") as out:
        process = subprocess.Popen([str(BIN / "attnserve-server")], env=env, stdout=out, stderr=out)
    address = f"127.0.0.1:{port}"
    try:
        with Client(address, timeout=2.0, retries=0) as client:
            deadline = time.monotonic() + 60
            while not client.health():
                assert process.poll() is None, f"server exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"server not serving after 60 s:\n{log.read_text()}"
                time.sleep(0.2)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()


def run_cli(*args: str, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "attnserve"), *args, "--target", target], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_shipped_model_is_small_and_meets_its_quality_target() -> None:
    version_dir = latest_version_dir(SHIPPED)
    size = sum(p.stat().st_size for p in version_dir.iterdir())
    assert size <= 25 * 1024 * 1024, f"{version_dir} is {size / 2**20:.1f} MiB"
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["task"] == "text-generation"
    assert metadata["provenance"]["training"]["test_bpc"] <= 2.3


def test_cli_health_and_models(shipped_server: str) -> None:
    health = run_cli("health", target=shipped_server)
    assert health.returncode == 0, health.stderr
    models = run_cli("models", target=shipped_server)
    assert models.returncode == 0, models.stderr
    assert SHIPPED in models.stdout


def test_cli_streams_what_the_client_returns_for_the_same_seed(shipped_server: str) -> None:
    args = ("ROMEO:", "--model", SHIPPED, "--max-new-tokens", "60", "--temperature", "0.8", "--seed", "7")
    cli = run_cli("generate", *args, target=shipped_server)
    assert cli.returncode == 0, cli.stderr
    with Client(shipped_server) as client:
        result = client.generate("ROMEO:", model=SHIPPED, max_new_tokens=60, temperature=0.8, seed=7)
    assert result.text.strip()
    assert cli.stdout.rstrip("\n") == result.text.rstrip("\n")


def test_samples_read_like_a_play(shipped_server: str) -> None:
    with Client(shipped_server) as client:
        texts = [client.generate("KING.\n", model=SHIPPED, max_new_tokens=150, seed=seed).text for seed in range(3)]
    joined = "\n".join(texts)
    lines = [line for line in joined.splitlines() if line.strip()]
    assert len(lines) >= 6, joined  # verse comes in short lines
    # Speaker names: Gutenberg's plays set them as an upper-case line ending in a full stop.
    speakers = [line for line in lines if line.strip().rstrip(".").isupper() and len(line.strip()) > 2]
    assert speakers, joined


def test_a_stop_string_from_the_greedy_text_ends_it_early(shipped_server: str) -> None:
    with Client(shipped_server) as client:
        full = client.generate("JULIET.\n", model=SHIPPED, max_new_tokens=40, temperature=0.0)
        words = [w for w in full.text.split() if len(w) >= 3]
        assert words, full.text
        stop = words[len(words) // 2]
        cut = client.generate("JULIET.\n", model=SHIPPED, max_new_tokens=40, temperature=0.0, stop=[stop])
    assert cut.finish_reason is FinishReason.STOP
    assert stop not in cut.text
    assert full.text.startswith(cut.text)
