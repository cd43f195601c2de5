"""An encoder–decoder through the real server and the real client: the same Generate RPCs as a GPT."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
import torch

from attnserve_client import AsyncClient, Client, InvalidArgumentError
from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc
from attnserve_export.number_data import BOS, EOS

MODEL = "tiny-translator"
SOURCES = ["<2en> vierhundert", "<2de> three thousand and twelve", "<2fr> zeven", "<2nl> quatre-vingt-dix-sept mille"]


@torch.no_grad()
def reference_greedy(translator: Any, source: str, max_new_tokens: int) -> list[int]:
    """Greedy token ids from the PyTorch module, without a cache: the plain teacher-forced forward pass."""
    model, tokenizer = translator.model, translator.tokenizer
    src = torch.tensor([tokenizer.encode(source).ids])
    tokens = [tokenizer.token_to_id(BOS)]
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(src, torch.ones_like(src), torch.tensor([tokens]))
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token == tokenizer.token_to_id(EOS):
            break
        tokens.append(token)
    return out


def test_get_model_reports_the_task_the_contexts_and_the_tags(translator: Any) -> None:
    with Client(translator.address) as client:
        info = client.get_model(MODEL)
    assert info.task == "text2text-generation"
    assert info.text_generation is None and info.text2text_generation is not None
    t2t = info.text2text_generation
    assert (t2t.source_context_length, t2t.target_context_length) == (32, 1024)
    assert t2t.target_tags == ("<2en>", "<2de>", "<2fr>", "<2nl>")
    assert t2t.defaults.temperature == 0.0 and t2t.max_new_tokens_limit == 1023


@pytest.mark.parametrize("source", SOURCES[:2])
def test_greedy_output_is_the_pytorch_modules(translator: Any, source: str) -> None:
    with Client(translator.address) as client:
        result = client.generate(source, model=MODEL, max_new_tokens=12, temperature=0.0)
    assert list(result.token_ids) == reference_greedy(translator, source, 12)


def test_unary_and_streamed_outputs_agree_for_the_same_seed(translator: Any) -> None:
    with Client(translator.address) as client:
        unary = client.generate(SOURCES[1], model=MODEL, max_new_tokens=16, temperature=1.0, top_k=20, seed=7)
        chunks = list(
            client.generate_stream(SOURCES[1], model=MODEL, max_new_tokens=16, temperature=1.0, top_k=20, seed=7)
        )
    assert [t for c in chunks for t in c.token_ids] == list(unary.token_ids)
    assert "".join(c.text for c in chunks) == unary.text


async def test_greedy_output_is_the_same_alone_and_batched_with_sources_of_other_lengths(translator: Any) -> None:
    async with AsyncClient(translator.address) as client:
        alone = [
            await client.generate(s, model=MODEL, max_new_tokens=10 + i, temperature=0.0) for i, s in enumerate(SOURCES)
        ]
        together = await asyncio.gather(
            *(client.generate(s, model=MODEL, max_new_tokens=10 + i, temperature=0.0) for i, s in enumerate(SOURCES))
        )
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]


def test_the_kserve_v2_generate_convention_works(translator: Any) -> None:
    from attnserve_server.kserve.pb import grpc_service_pb2, grpc_service_pb2_grpc

    with grpc.insecure_channel(translator.address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(grpc_service_pb2.ModelMetadataRequest(name=MODEL), timeout=10)
        assert metadata.platform and [i.name for i in metadata.inputs]
        request = grpc_service_pb2.ModelInferRequest(model_name=MODEL)
        tensor = request.inputs.add(name=metadata.inputs[0].name, datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(SOURCES[0].encode())
        request.parameters["max_tokens"].int64_param = 8
        request.parameters["temperature"].double_param = 0.0
        reply = stub.ModelInfer(request, timeout=30)
    with Client(translator.address) as client:
        expected = client.generate(SOURCES[0], model=MODEL, max_new_tokens=8, temperature=0.0).text
    assert reply.outputs[0].contents.bytes_contents[0].decode() == expected


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        ("<2en> " + "drei " * 40, {}, "encoder reads at most 32"),
        ("<2xx> vierhundert", {}, "<2en>, <2de>, <2fr>, <2nl>"),
        ("vierhundert", {}, "must start with a target-language tag"),
        ("<2xx>" + "y" * 10_000, {}, "..."),
        ("<2en> vier", {"max_new_tokens": 5000}, "max_new_tokens"),
        ("<2en> vier", {"temperature": -1.0}, "temperature"),
    ],
)
def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(
    translator: Any, source: str, kwargs: dict[str, Any], message: str
) -> None:
    with Client(translator.address) as client:
        with pytest.raises(InvalidArgumentError) as info:
            client.generate(source, model=MODEL, **kwargs)
        assert message in str(info.value)
        assert len(str(info.value)) < 400  # nothing unbounded is echoed back
        assert client.health(MODEL)


def long_request() -> text_generation_pb2.GenerateRequest:
    return text_generation_pb2.GenerateRequest(
        model=MODEL,
        prompt=SOURCES[2],
        parameters=text_generation_pb2.GenerationParameters(max_new_tokens=1000, temperature=0.0),
    )


def test_a_full_run_goes_to_the_length_limit(translator: Any) -> None:
    # The premise of the two tests below: uncancelled, this request decodes 1000 tokens.
    with grpc.insecure_channel(translator.address) as channel:
        reply = text_generation_pb2_grpc.TextGenerationServiceStub(channel).Generate(long_request(), timeout=120)
    assert reply.usage.completion_tokens == 1000


def test_a_cancelled_stream_stops_decoding(translator: Any) -> None:
    before = translator.decoded_tokens()
    with grpc.insecure_channel(translator.address) as channel:
        responses = text_generation_pb2_grpc.TextGenerationServiceStub(channel).GenerateStream(
            long_request(), timeout=60
        )
        received = sum(len(next(responses).token_ids) for _ in range(5))
        responses.cancel()
    decoded = translator.decoded_tokens() - before
    assert received - 1 <= decoded < 750, "decoding went on after the client cancelled"


def test_a_passed_deadline_stops_decoding(translator: Any) -> None:
    with grpc.insecure_channel(translator.address) as channel:
        stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
        started = time.monotonic()
        stub.Generate(long_request(), timeout=120)
        deadline_s = (time.monotonic() - started) / 4
        before = translator.decoded_tokens()
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(long_request(), timeout=deadline_s)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert translator.decoded_tokens() - before < 750
