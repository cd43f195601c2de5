"""A cancelled client or a passed deadline stops decoding within a step or two.

Observed from outside through /metrics (``long_decoding``, tests/conftest.py): the tokens the
continuous batcher decoded, read once no call is in flight and no sequence is left in the batch.
(GetModel's tokens_generated counts the tokens handed to RPCs, so it would miss a batcher that went
on decoding for a client that had gone.) long-gpt decodes its 1000-token generations without sampling
end-of-text, so they run to the end unless something stops them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc

MODEL = "long-gpt"
FULL_RUN = 1000


@pytest.fixture(scope="module")
def long_channel(long_server_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(long_server_address) as channel:
        yield channel


def long_request() -> text_generation_pb2.GenerateRequest:
    # Greedy decoding of this random model runs all the way without sampling end-of-text.
    return text_generation_pb2.GenerateRequest(
        model=MODEL,
        prompt="Hello",
        parameters=text_generation_pb2.GenerationParameters(max_new_tokens=FULL_RUN, temperature=0.0),
    )


def test_cancelled_stream_stops_decoding(long_channel: grpc.Channel, long_decoding: Any) -> None:
    before = long_decoding.settled()
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(long_channel)
    responses = stub.GenerateStream(long_request(), timeout=60)
    received = sum(len(next(responses).token_ids) for _ in range(5))
    responses.cancel()
    after = long_decoding.settled()
    # Bound by work, not by time: the tokens decoded between the cancel and the server noticing
    # depend on how loaded the machine is, but decoding that went on would reach the full run.
    # (The first token comes from the prefill, every later one from a decode step.)
    assert received - 1 <= after - before < FULL_RUN * 3 / 4, "decoding went on after the client cancelled"


def test_deadline_stops_decoding(long_channel: grpc.Channel, long_decoding: Any) -> None:
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(long_channel)
    # The deadline is a quarter of what a full run takes on this machine now, so the bound below
    # holds on a fast machine and a slow one alike (a loaded machine only decodes fewer tokens).
    started = time.monotonic()
    assert stub.Generate(long_request(), timeout=120).usage.completion_tokens == FULL_RUN
    deadline_s = (time.monotonic() - started) / 4
    before = long_decoding.settled()
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(long_request(), timeout=deadline_s)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = long_decoding.settled()
    generated = after - before
    assert generated < FULL_RUN * 3 / 4, f"{generated} tokens decoded after a {deadline_s:.2f} s deadline"


def test_full_run_takes_much_longer_than_the_cancel(long_channel: grpc.Channel) -> None:
    # The premise of the two tests above: without cancellation the same request runs to the end.
    stub = text_generation_pb2_grpc.TextGenerationServiceStub(long_channel)
    request = long_request()
    request.parameters.max_new_tokens = 200
    reply = stub.Generate(request, timeout=60)
    assert reply.usage.completion_tokens == 200
    assert reply.finish_reason == text_generation_pb2.FINISH_REASON_LENGTH
