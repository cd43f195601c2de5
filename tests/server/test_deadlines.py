"""A deadline on a stream ends it with DEADLINE_EXCEEDED and stops the decoding: GenerateStream, and
v2 ModelStreamInfer (through tritonclient), against the real ``long_server`` (tests/conftest.py).

Bounded by work, not by wall time: the deadline is a quarter of what a full 1000-token run takes on
this machine now, so a stream that stopped at its deadline decoded well under the full run, however
fast or loaded the machine is. What the server decoded is read from GetModel's ``tokens_generated``
once /metrics shows no call of the model in flight (the server's own signal that the call ended).
"""

from __future__ import annotations

import functools
import queue
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from attnserve_client.pb import models_pb2, models_pb2_grpc, text_generation_pb2, text_generation_pb2_grpc

MODEL = "long-gpt"
FULL_RUN = 1000
SAMPLE = re.compile(r"^attnserve_requests_in_flight\{([^}]*)\} (\S+)$")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def long_channel(long_server_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(long_server_address) as channel:
        yield channel


@pytest.fixture(scope="module")
def metrics_url(long_server: Any) -> str:
    found = re.search(r"metrics on (http://\S+/metrics)", long_server.stderr())
    assert found, long_server.stderr()
    return found.group(1)


def request(max_new_tokens: int = FULL_RUN) -> text_generation_pb2.GenerateRequest:
    # Greedy decoding of this random model runs all the way without sampling end-of-text.
    return text_generation_pb2.GenerateRequest(
        model=MODEL,
        prompt="Hello",
        parameters=text_generation_pb2.GenerationParameters(max_new_tokens=max_new_tokens, temperature=0.0),
    )


@pytest.fixture(scope="module")
def deadline_s(long_channel: grpc.Channel) -> float:
    """A quarter of a full run, measured now; the run must reach its end (the premise)."""
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(long_channel)
    started = time.monotonic()
    assert stub.Generate(request(), timeout=120).usage.completion_tokens == FULL_RUN
    return (time.monotonic() - started) / 4


def settled_tokens(channel: grpc.Channel, url: str) -> int:
    """The model's tokens_generated once none of its calls is in flight."""
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(url, timeout=10) as response:
            lines = response.read().decode().splitlines()
        busy = sum(float(m.group(2)) for m in map(SAMPLE.match, lines) if m and f'model="{MODEL}"' in m.group(1))
        if not busy:
            break
        assert time.monotonic() < deadline, f"a call of {MODEL} was still in flight after 60 s"
        time.sleep(0.02)
    stub = models_pb2_grpc.ModelServiceStub(channel)
    return int(stub.GetModel(models_pb2.GetModelRequest(name=MODEL), timeout=10).counters.tokens_generated)


def test_a_deadline_ends_generate_stream_and_its_decoding(
    long_channel: grpc.Channel, metrics_url: str, deadline_s: float
) -> None:
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(long_channel)
    before = settled_tokens(long_channel, metrics_url)
    received = 0
    with pytest.raises(grpc.RpcError) as info:
        for chunk in stub.GenerateStream(request(), timeout=deadline_s):
            received += len(chunk.token_ids)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    decoded = settled_tokens(long_channel, metrics_url) - before
    assert received <= decoded < FULL_RUN * 3 / 4, f"{decoded} tokens decoded after a {deadline_s:.2f} s deadline"


def test_a_deadline_ends_model_stream_infer_and_its_decoding(
    long_server_address: str, long_channel: grpc.Channel, metrics_url: str, deadline_s: float
) -> None:
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    before = settled_tokens(long_channel, metrics_url)
    with triton.InferenceServerClient(long_server_address) as client:
        client.start_stream(
            callback=functools.partial(lambda sink, result, error: sink.put((result, error)), responses),
            stream_timeout=deadline_s,
        )
        try:
            prompt = triton.InferInput("text_input", [1], "BYTES")
            prompt.set_data_from_numpy(np.array([b"Hello"], dtype=object))
            client.async_stream_infer(
                MODEL, [prompt], request_id="long", parameters={"max_tokens": FULL_RUN, "temperature": 0.0}
            )
            while True:
                result, error = responses.get(timeout=60)
                if error is not None:
                    break
                assert not result.get_response().parameters["triton_final_response"].bool_param, (
                    "the stream ran to its end past its deadline"
                )
        finally:
            client.stop_stream(cancel_requests=True)
    assert "DEADLINE_EXCEEDED" in f"{error.status()} {error.message()}", error
    decoded = settled_tokens(long_channel, metrics_url) - before
    assert decoded < FULL_RUN * 3 / 4, f"{decoded} tokens decoded after a {deadline_s:.2f} s deadline"
