"""Explain's bad input: INVALID_ARGUMENT (or NOT_FOUND / FAILED_PRECONDITION) with a message that says what
to fix, before any work; the server stays SERVING and answers the next good call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import png

Explain = Callable[..., Any]
INVALID = grpc.StatusCode.INVALID_ARGUMENT

CASES = [
    # (request fields, status, words the message must hold)
    (
        {"model": "ex-gpt-capped", "text": "The cat sat on the mat. " * 3, "layers": [0], "heads": [0]},
        INVALID,
        ["over the limit of 8 tokens", "shorten"],
    ),
    ({"model": "ex-gpt-capped", "text": "The cat"}, INVALID, ["4 maps", "cap of 2", "fewer layers or heads"]),
    ({"model": "ex-gpt", "text": "x" * 3_000_000}, INVALID, ["longer than", "shorten"]),
    ({"model": "ex-gpt", "text": "The cat", "layers": [2]}, INVALID, ["layers must be in [-2, 1]"]),
    ({"model": "ex-gpt", "text": "The cat", "layers": [0, -2]}, INVALID, ["same one twice"]),
    ({"model": "ex-gpt", "text": "The cat", "heads": [-1]}, INVALID, ["heads must be in [0, 1]"]),
    ({"model": "ex-gpt", "text": "The cat", "stage": 0}, INVALID, ["Swin models only"]),
    ({"model": "ex-gpt", "text": "The cat", "max_new_tokens": 3}, INVALID, ["encoder-decoder models only"]),
    ({"model": "ex-gpt", "text": ""}, INVALID, ["empty"]),
    ({"model": "ex-gpt", "image": png(1)}, INVALID, ["explains a text, not an image"]),
    ({"model": "ex-gpt"}, INVALID, ["send a text"]),
    ({"model": "ex-vit", "text": "a cat"}, INVALID, ["explains an image, not a text"]),
    ({"model": "ex-vit", "image": png(1)[:40]}, INVALID, ["image"]),
    ({"model": "ex-vit", "image": b"not an image at all"}, INVALID, ["image"]),
    ({"model": "ex-swin", "image": png(1, 20), "stage": 2}, INVALID, ["stage must be in [0, 1]"]),
    ({"model": "ex-swin", "image": png(1, 20), "query_row": 10}, INVALID, ["10 x 10 grid"]),
    ({"model": "ex-swin", "image": png(1, 20), "stage": 1, "query_col": 5}, INVALID, ["5 x 5 grid"]),
    ({"model": "ex-translator", "text": "123"}, INVALID, ["target-language tag"]),
    (
        {"model": "ex-translator", "text": "<2en> 12", "max_new_tokens": 500},
        INVALID,
        ["max_new_tokens must be in [1, 32]"],
    ),
    ({"model": "no-such-model", "text": "a"}, grpc.StatusCode.NOT_FOUND, ["no-such-model"]),
    ({"model": "ex-gpt", "text": "a", "model_version": "9"}, grpc.StatusCode.NOT_FOUND, ["version"]),
    (
        {"model": "ex-legacy", "image": png(1)},
        grpc.StatusCode.FAILED_PRECONDITION,
        ["no explain graph", "attnserve-export explain"],
    ),
]


@pytest.mark.parametrize(("fields", "code", "words"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_requests_are_refused_and_the_server_keeps_serving(
    explain: Explain, channel: grpc.Channel, fields: dict[str, Any], code: grpc.StatusCode, words: list[str]
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        explain(**fields)
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    for word in words:
        assert word in details, details
    assert len(details) < 600  # never the input echoed back
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert explain(model="ex-gpt", text="The cat", layers=[0]).text.attention.values


def test_maps_over_the_response_limit_are_refused_before_the_graph_runs(explain: Explain, reference: Any) -> None:
    # 2 layers x 2 heads of T x T floats pass 4 MiB at T = 512; the cap is 1000 tokens.
    words = [f"{i:x}" for i in range(4000)]
    count = next(n for n in range(100, 4000) if len(reference.tokenizer.encode(" ".join(words[:n])).ids) > 600)
    text = " ".join(words[:count])
    assert len(reference.tokenizer.encode(text).ids) < 1000
    with pytest.raises(grpc.RpcError) as info:
        explain(model="ex-gpt", text=text)
    assert info.value.code() == INVALID
    assert "4 MiB" in (info.value.details() or "") and "fewer layers or heads" in (info.value.details() or "")
    assert explain(model="ex-gpt", text=text, layers=[0], heads=[0]).text.attention.values  # 1 map fits


def test_a_client_that_cancels_midway_leaves_the_server_serving(channel: grpc.Channel, explain: Explain) -> None:
    from attnserve_client.pb import explain_pb2, explain_pb2_grpc

    stub = explain_pb2_grpc.ExplainServiceStub(channel)
    calls = [
        stub.Explain.future(explain_pb2.ExplainRequest(model="ex-translator", text="<2en> 4321", max_new_tokens=32))
        for _ in range(4)
    ]
    for call in calls:
        call.cancel()
    assert explain(model="ex-translator", text="<2en> 12", max_new_tokens=3).text2text.generated_tokens
