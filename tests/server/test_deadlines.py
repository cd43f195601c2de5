"""A deadline on a stream ends it with DEADLINE_EXCEEDED and stops the decoding: GenerateStream, and
v2 ModelStreamInfer (through tritonclient), against the real ``long_server`` (tests/conftest.py).

Bounded by work, not by wall time: the deadline is a quarter of what a full 1000-token run takes on
this machine now, so a stream that stopped at its deadline decoded well under the full run, however
fast or loaded the machine is. What the server's batcher decoded is read from /metrics once no call of
the model is in flight and no sequence is left in its batch (``long_decoding``, tests/conftest.py).
"""

from __future__ import annotations

import functools
import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc

MODEL = "long-gpt"
FULL_RUN = 1000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def long_channel(long_server_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(long_server_address) as channel:
        yield channel


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
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(long_channel)  # type: ignore[no-untyped-call]
    started = time.monotonic()
    assert stub.Generate(request(), timeout=120).usage.completion_tokens == FULL_RUN
    return (time.monotonic() - started) / 4


def test_a_deadline_ends_generate_stream_and_its_decoding(
    long_channel: grpc.Channel, long_decoding: Any, deadline_s: float
) -> None:
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(long_channel)  # type: ignore[no-untyped-call]
    before = long_decoding.settled()
    received = 0
    with pytest.raises(grpc.RpcError) as info:
        for chunk in stub.GenerateStream(request(), timeout=deadline_s):
            received += len(chunk.token_ids)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    decoded = long_decoding.settled() - before
    # The first token comes from the prefill, every later one from a decode step.
    assert received - 1 <= decoded < FULL_RUN * 3 / 4, f"{decoded} tokens decoded after a {deadline_s:.2f} s deadline"


def test_a_deadline_ends_model_stream_infer_and_its_decoding(
    long_server_address: str, long_decoding: Any, deadline_s: float
) -> None:
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    before = long_decoding.settled()
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
    decoded = long_decoding.settled() - before
    assert decoded < FULL_RUN * 3 / 4, f"{decoded} tokens decoded after a {deadline_s:.2f} s deadline"
