"""Prometheus metrics of a real server: make requests through the client, scrape /metrics over HTTP."""

from __future__ import annotations

import io
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from attnserve_client import Client, InvalidArgumentError, ModelNotFoundError
from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc

TEXT = "tiny-gpt"
IMAGE = "tiny-digits"


def metrics_url(server_log: str) -> str:
    """The /metrics URL the server logged (it was started with --metrics-port 0)."""
    found = re.search(r"metrics on (http://\S+/metrics)", server_log)
    assert found, f"no metrics line in the server log:\n{server_log}"
    return found.group(1)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of the exposition, keyed by (sample name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def settled_scrape(url: str, done: Callable[[Samples], bool], timeout: float = 10) -> Samples:
    """Scrape until ``done(samples)`` or ``timeout`` seconds: counters that the server moves as it
    finishes a call may move just after the client has its answer."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def request_labels(labels: dict[str, str]) -> dict[str, str]:
    """The per-request metrics (those with a ``method``) also carry ``key``: ``""`` on a server without API keys."""
    return {"key": "", **labels} if "method" in labels else labels


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """One sample's value; 0 if the series does not exist (yet)."""
    return samples.get((name, frozenset(request_labels(labels).items())), 0.0)


def buckets(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> list[float]:
    """A histogram's cumulative bucket counts, in increasing ``le`` order."""
    found = []
    for (sample, sample_labels), count in samples.items():
        d = dict(sample_labels)
        le = d.pop("le", None)
        if sample == f"{name}_bucket" and d == request_labels(labels) and le is not None:
            found.append((float(le), count))
    return [count for _, count in sorted(found)]


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 20), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def both_models(tmp_path_factory: pytest.TempPathFactory, tiny_repository: Path, image_repository: Path) -> Path:
    root = tmp_path_factory.mktemp("observed-models")
    shutil.copytree(tiny_repository / TEXT, root / TEXT)  # copies: links out of a repository are refused
    shutil.copytree(image_repository / IMAGE, root / IMAGE)
    return root


@pytest.fixture
def observed(both_models: Path, server_launcher: Callable[..., Any]) -> Iterator[tuple[Client, str]]:
    """A fresh server (so every counter starts at zero), its client and its /metrics URL."""
    server = server_launcher(both_models)
    with Client(server.address, timeout=30) as client:
        yield client, metrics_url(server.stderr())


def test_loaded_models_and_their_versions(observed: tuple[Client, str]) -> None:
    _, url = observed
    samples = scrape(url)
    assert value(samples, "attnserve_model_loaded", model=TEXT, version="1", task="text-generation") == 1
    assert value(samples, "attnserve_model_loaded", model=IMAGE, version="1", task="image-classification") == 1


def test_requests_move_the_counters_and_histograms(observed: tuple[Client, str]) -> None:
    client, url = observed
    unary = client.generate("ROMEO.", model=TEXT, max_new_tokens=6, temperature=0, seed=1)
    streamed = list(client.generate_stream("JULIET.", model=TEXT, max_new_tokens=5, temperature=0, seed=2))
    usage = streamed[-1].usage
    assert usage is not None
    client.classify_batch([png(1), png(2), png(3)], model=IMAGE)
    with pytest.raises(ModelNotFoundError):
        client.generate("x", model="no-such-model")
    with pytest.raises(InvalidArgumentError):
        client.classify(b"not an image at all", model=IMAGE)

    # A text request's queue and compute times are recorded by its model's scheduler thread as the
    # sequence leaves the batch, which may be just after the client has read the last chunk, and a
    # call's counter moves as the server finishes it, which may be just after the client has its
    # status: wait for those public signals (bounded) before asserting.
    s = settled_scrape(
        url,
        lambda s: (
            all(
                value(s, f"attnserve_request_{kind}_time_seconds_count", model=TEXT) == 2
                for kind in ("queue", "compute")
            )
            and value(s, "attnserve_requests_total", model=IMAGE, method="Classify", code="INVALID_ARGUMENT") >= 1
        ),
    )
    requests = "attnserve_requests_total"
    assert value(s, requests, model=TEXT, method="Generate", code="OK") == 1
    assert value(s, requests, model=TEXT, method="GenerateStream", code="OK") == 1
    assert value(s, requests, model=IMAGE, method="Classify", code="OK") == 1
    assert value(s, requests, model=IMAGE, method="Classify", code="INVALID_ARGUMENT") == 1
    # An unknown model name never becomes a label value: clients cannot grow the series at will.
    assert value(s, requests, model="", method="Generate", code="NOT_FOUND") == 1
    assert not any(dict(labels).get("model") == "no-such-model" for _, labels in s)

    prompt = unary.usage.prompt_tokens + usage.prompt_tokens
    generated = unary.usage.completion_tokens + usage.completion_tokens
    assert value(s, "attnserve_prompt_tokens_total", model=TEXT) == prompt
    assert value(s, "attnserve_generation_tokens_total", model=TEXT) == generated
    assert value(s, "attnserve_time_to_first_token_seconds_count", model=TEXT) == 2
    assert value(s, "attnserve_time_to_first_token_seconds_sum", model=TEXT) > 0
    # One gap between each two successive tokens of a request.
    assert value(s, "attnserve_inter_token_latency_seconds_count", model=TEXT) == generated - 2
    assert value(s, "attnserve_inter_token_latency_seconds_sum", model=TEXT) > 0

    # Queue and compute time are separate histograms; every request that reached the model is in both
    # (the image that failed to decode never entered its model's batcher queue).
    for model, admitted in ((TEXT, 2), (IMAGE, 1)):
        assert value(s, "attnserve_request_queue_time_seconds_count", model=model) == admitted
        assert value(s, "attnserve_request_compute_time_seconds_count", model=model) == admitted
        assert value(s, "attnserve_request_compute_time_seconds_sum", model=model) > 0

    # The one successful Classify ran its three images as one batch.
    assert value(s, "attnserve_batch_size_count", model=IMAGE) == 1
    assert value(s, "attnserve_batch_size_sum", model=IMAGE) == 3
    batch_buckets = buckets(s, "attnserve_batch_size", model=IMAGE)
    assert batch_buckets[:2] == [0, 0]  # le=1, le=2
    assert batch_buckets[2:] == [1] * (len(batch_buckets) - 2)  # le=4 and above

    duration = buckets(s, "attnserve_request_duration_seconds", model=TEXT, method="Generate")
    assert duration == sorted(duration) and duration[-1] == 1  # cumulative, +Inf holds the one request
    e2e = value(s, "attnserve_request_duration_seconds_sum", model=TEXT, method="Generate")
    assert 0 < e2e < 30
    for method in ("Generate", "GenerateStream"):
        assert value(s, "attnserve_requests_in_flight", model=TEXT, method=method) == 0


def test_end_to_end_latency_covers_queue_and_compute(observed: tuple[Client, str]) -> None:
    client, url = observed
    client.generate("HAMLET.", model=TEXT, max_new_tokens=8, seed=3)
    s = scrape(url)
    e2e = value(s, "attnserve_request_duration_seconds_sum", model=TEXT, method="Generate")
    queue = value(s, "attnserve_request_queue_time_seconds_sum", model=TEXT)
    compute = value(s, "attnserve_request_compute_time_seconds_sum", model=TEXT)
    assert compute > 0
    assert queue + compute <= e2e


def test_metrics_can_be_turned_off(both_models: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(both_models, "--no-metrics")
    log = server.stderr()
    assert "metrics on" not in log
    with Client(server.address, timeout=30) as client:
        assert client.health()


def test_a_taken_metrics_port_stops_the_server(both_models: Path, server_launcher: Callable[..., Any]) -> None:
    first = server_launcher(both_models)
    port = metrics_url(first.stderr()).rsplit(":", 1)[1].split("/")[0]
    second = server_launcher(both_models, "--metrics-port", port, wait=False)
    deadline = time.monotonic() + 60
    while second.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert second.process.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in second.stderr()


def test_a_cancelled_stream_is_in_flight_then_counted_as_cancelled(
    long_repository: Path, server_launcher: Callable[..., Any]
) -> None:
    """long-gpt takes seconds for 1000 tokens, so the stream is surely still running after its first chunk."""
    server = server_launcher(long_repository)
    url = metrics_url(server.stderr())
    labels = {"model": "long-gpt", "method": "GenerateStream"}
    with grpc.insecure_channel(server.address) as channel:
        stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
        request = text_generation_pb2.GenerateRequest(
            model="long-gpt",
            prompt="The café",
            parameters=text_generation_pb2.GenerationParameters(max_new_tokens=1000, temperature=0.0),
        )
        responses = stub.GenerateStream(request, timeout=60)
        next(responses)
        assert value(scrape(url), "attnserve_requests_in_flight", **labels) == 1
        responses.cancel()
    deadline = time.monotonic() + 10
    while True:
        s = scrape(url)
        if value(s, "attnserve_requests_total", code="CANCELLED", **labels) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert value(s, "attnserve_requests_total", code="CANCELLED", **labels) == 1
    assert value(s, "attnserve_requests_in_flight", **labels) == 0
    assert value(s, "attnserve_requests_total", code="OK", **labels) == 0
    assert 1 <= value(s, "attnserve_generation_tokens_total", model="long-gpt") < 1000


def test_v2_inference_calls_are_counted(observed: tuple[Client, str]) -> None:
    import tritonclient.grpc as triton  # the independent v2 client
    from tritonclient.utils import InferenceServerException

    client, url = observed
    address = client.target
    tensor = triton.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([png(4), png(5)], dtype=object))
    with triton.InferenceServerClient(address) as v2:
        v2.infer(IMAGE, [tensor])
        with pytest.raises(InferenceServerException):
            v2.infer("no-such-model", [tensor])
    # The failed call's counter moves as the server finishes it, maybe just after the client has its status.
    s = settled_scrape(
        url, lambda s: value(s, "attnserve_requests_total", model="", method="ModelInfer", code="NOT_FOUND") >= 1
    )
    assert value(s, "attnserve_requests_total", model=IMAGE, method="ModelInfer", code="OK") == 1
    assert value(s, "attnserve_requests_total", model="", method="ModelInfer", code="NOT_FOUND") == 1
    assert value(s, "attnserve_batch_size_count", model=IMAGE) == 1
