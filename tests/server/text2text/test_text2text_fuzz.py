"""Arbitrary sources and parameters against the encoder–decoder: never INTERNAL or UNKNOWN, always serving."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc

MODEL = "tiny-translator"
TAGS = ("<2en>", "<2de>", "<2fr>", "<2nl>", "<2xx>", "<s>", "</s>", "<pad>", "")
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)

sources = st.builds(
    lambda tag, sep, body: f"{tag}{sep}{body}",
    st.sampled_from(TAGS),
    st.sampled_from(("", " ", "  ", "\n", "\t")),
    st.one_of(
        st.text(max_size=80),
        st.sampled_from(("vier", "three thousand", "</s></s>", "<2en> <2de>", "\x00", "é" * 40, "drei " * 30)),
    ),
)
parameters = st.builds(
    text_generation_pb2.GenerationParameters,
    max_new_tokens=st.one_of(st.none(), st.integers(-5, 2000)),
    temperature=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
    top_k=st.one_of(st.none(), st.integers(-3, 1000)),
    top_p=st.one_of(st.none(), st.floats(-1, 2, width=32)),
    seed=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
)


@pytest.fixture(scope="module")
def stub(translator: Any) -> Any:
    channel = grpc.insecure_channel(translator.address)
    yield text_generation_pb2_grpc.TextGenerationServiceStub(channel)
    channel.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=sources, params=parameters, stream=st.booleans())
def test_arbitrary_requests_never_fail_internally(stub: Any, source: str, params: Any, stream: bool) -> None:
    request = text_generation_pb2.GenerateRequest(model=MODEL, prompt=source, parameters=params)
    if params.max_new_tokens == 0 or not params.HasField("max_new_tokens"):
        request.parameters.max_new_tokens = 4  # keep each call short; defaults are checked elsewhere
    try:
        if stream:
            for _ in stub.GenerateStream(request, timeout=30):
                pass
        else:
            stub.Generate(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() not in BAD_CODES, f"{error.code()}: {error.details()}"
        assert len(error.details() or "") < 1000
