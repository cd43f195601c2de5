"""TextGenerationService through a real server process and the raw generated stubs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import grpc
import pytest
from tokenizers import Tokenizer

from attnserve_client.pb import models_pb2, models_pb2_grpc, text_generation_pb2, text_generation_pb2_grpc
from attnserve_server.settings import ServerSettings

MODEL = "tiny-gpt"
TIMEOUT = 30.0
Params = text_generation_pb2.GenerationParameters
Request = text_generation_pb2.GenerateRequest
FR = text_generation_pb2


def request(prompt: str = "The café", model: str = MODEL, version: str = "", **params: Any) -> Request:
    return Request(model=model, prompt=prompt, parameters=Params(**params), model_version=version)


def stream(
    stub: text_generation_pb2_grpc.TextGenerationServiceStub, req: Request
) -> list[text_generation_pb2.GenerateStreamResponse]:
    return list(stub.GenerateStream(req, timeout=TIMEOUT))


def joined(chunks: list[text_generation_pb2.GenerateStreamResponse]) -> tuple[str, list[int], list[float]]:
    return (
        "".join(c.text for c in chunks),
        [t for c in chunks for t in c.token_ids],
        [lp for c in chunks for lp in c.logprobs],
    )


def test_stream_and_unary_agree_for_the_same_seed(
    text_stub: text_generation_pb2_grpc.TextGenerationServiceStub,
) -> None:
    req = request(max_new_tokens=30, temperature=1.0, top_k=0, top_p=1.0, seed=42, logprobs=True)
    unary = text_stub.Generate(req, timeout=TIMEOUT)
    chunks = stream(text_stub, req)
    text, ids, logprobs = joined(chunks)
    assert (text, ids) == (unary.text, list(unary.token_ids))
    assert logprobs == pytest.approx(list(unary.logprobs))
    assert len(unary.logprobs) == len(unary.token_ids) == unary.usage.completion_tokens
    assert unary.seed == 42 and chunks[0].seed == 42
    assert chunks[-1].usage == unary.usage
    assert chunks[-1].finish_reason == unary.finish_reason != FR.FINISH_REASON_UNSPECIFIED
    assert all(c.finish_reason == FR.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    assert all(not c.HasField("usage") for c in chunks[:-1])
    assert all(c.model == MODEL and c.model_version == "1" for c in chunks)
    assert unary.model == MODEL and unary.model_version == "1"


def test_same_seed_same_text_and_other_seeds_differ(
    text_stub: text_generation_pb2_grpc.TextGenerationServiceStub,
) -> None:
    def ids(seed: int) -> list[int]:
        return list(
            text_stub.Generate(request(max_new_tokens=20, temperature=1.0, seed=seed), timeout=TIMEOUT).token_ids
        )

    assert ids(1) == ids(1)
    assert len({tuple(ids(s)) for s in range(2, 6)}) > 1


def test_server_picks_and_reports_a_seed(text_stub: text_generation_pb2_grpc.TextGenerationServiceStub) -> None:
    first = text_stub.Generate(request(max_new_tokens=10, temperature=1.0), timeout=TIMEOUT)
    again = text_stub.Generate(request(max_new_tokens=10, temperature=1.0, seed=first.seed), timeout=TIMEOUT)
    assert again.token_ids == first.token_ids


def test_greedy_ignores_the_seed(text_stub: text_generation_pb2_grpc.TextGenerationServiceStub) -> None:
    a = text_stub.Generate(request(max_new_tokens=10, temperature=0.0, seed=1), timeout=TIMEOUT)
    b = text_stub.Generate(request(max_new_tokens=10, temperature=0.0, seed=2), timeout=TIMEOUT)
    assert a.token_ids == b.token_ids


def test_logprobs_only_when_asked(text_stub: text_generation_pb2_grpc.TextGenerationServiceStub) -> None:
    reply = text_stub.Generate(request(max_new_tokens=5, seed=0), timeout=TIMEOUT)
    assert len(reply.token_ids) > 0
    assert list(reply.logprobs) == []
    with_lp = text_stub.Generate(request(max_new_tokens=5, seed=0, logprobs=True), timeout=TIMEOUT)
    assert all(lp <= 0 and math.isfinite(lp) for lp in with_lp.logprobs)


def test_max_new_tokens_gives_length(text_stub: text_generation_pb2_grpc.TextGenerationServiceStub) -> None:
    # Greedy decoding is deterministic: this prompt's continuation runs to the 48-token cap without
    # end-of-text (the premise, asserted), so 7 tokens must stop on the length, after exactly 7.
    longest = text_stub.Generate(request(max_new_tokens=48, temperature=0.0), timeout=TIMEOUT)
    assert longest.finish_reason == FR.FINISH_REASON_LENGTH, "premise: no end-of-text in the greedy continuation"
    reply = text_stub.Generate(request(max_new_tokens=7, temperature=0.0), timeout=TIMEOUT)
    assert reply.finish_reason == FR.FINISH_REASON_LENGTH
    assert reply.usage.completion_tokens == 7
    assert list(reply.token_ids) == list(longest.token_ids[:7])
    assert reply.usage.prompt_tokens > 0


def _find_stop(text: str) -> str | None:
    """A 2-character stop string from the middle of ``text``, made of complete printable characters."""
    for i in range(3, len(text) - 2):
        candidate = text[i : i + 2]
        if candidate.isprintable() and "\ufffd" not in candidate and not candidate.isspace():
            return candidate
    return None


def test_stop_string_cuts_the_output(text_stub: text_generation_pb2_grpc.TextGenerationServiceStub) -> None:
    # A random model's text: take a stop string from a generation, then ask for it again.
    for seed in range(50):
        base: dict[str, Any] = {"max_new_tokens": 40, "temperature": 1.0, "seed": seed}
        full = text_stub.Generate(request(**base), timeout=TIMEOUT)
        stop = _find_stop(full.text)
        if stop is not None:
            break
    else:
        pytest.fail("no generation long enough to take a stop string from")
    expected = full.text[: full.text.index(stop)]

    cut = text_stub.Generate(request(**base, stop=[stop, "\x00never"]), timeout=TIMEOUT)
    assert cut.text == expected
    assert cut.finish_reason == FR.FINISH_REASON_STOP
    # The tokens of the stop string are reported, the text is not.
    assert list(cut.token_ids) == list(full.token_ids[: len(cut.token_ids)])

    chunks = stream(text_stub, request(**base, stop=[stop]))
    text, _, _ = joined(chunks)
    assert text == expected
    assert all(stop not in c.text for c in chunks)
    assert chunks[-1].finish_reason == FR.FINISH_REASON_STOP


def test_end_of_text(text_stub: text_generation_pb2_grpc.TextGenerationServiceStub, model_stub: Any) -> None:
    eos = model_stub.GetModel(models_pb2.GetModelRequest(name=MODEL), timeout=TIMEOUT).text_generation.eos_token
    assert eos
    # A random model samples its end-of-text token now and then: find a seed where it does.
    for seed in range(200):
        reply = text_stub.Generate(request(max_new_tokens=48, temperature=2.0, seed=seed), timeout=TIMEOUT)
        if reply.finish_reason == FR.FINISH_REASON_END_OF_TEXT:
            assert eos not in reply.text
            assert reply.usage.completion_tokens == len(reply.token_ids)
            return
    pytest.fail("no seed produced the end-of-text token")


def test_prompt_filling_the_context_window(
    text_stub: text_generation_pb2_grpc.TextGenerationServiceStub, model_stub: models_pb2_grpc.ModelServiceStub
) -> None:
    context = model_stub.GetModel(
        models_pb2.GetModelRequest(name=MODEL), timeout=TIMEOUT
    ).text_generation.context_length
    prompt = "abc " * context  # far more tokens than the window
    with pytest.raises(grpc.RpcError) as info:
        text_stub.Generate(request(prompt=prompt, max_new_tokens=1), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context window" in (info.value.details() or "")

    # Near the end of the window, an unset max_new_tokens is shortened to fit.
    probe = text_stub.Generate(request(prompt="abc " * 8, max_new_tokens=1), timeout=TIMEOUT)
    per_repeat = probe.usage.prompt_tokens / 8
    repeats = int((context - 3) / per_repeat)
    reply = text_stub.Generate(request(prompt="abc " * repeats, temperature=0.0), timeout=TIMEOUT)
    # The greedy continuation of this prompt has no end-of-text, so it fills the window exactly.
    assert reply.finish_reason == FR.FINISH_REASON_LENGTH
    assert reply.usage.completion_tokens >= 1
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == context


def test_explicit_max_new_tokens_beyond_the_window_is_refused(
    text_stub: text_generation_pb2_grpc.TextGenerationServiceStub, model_stub: models_pb2_grpc.ModelServiceStub
) -> None:
    context = model_stub.GetModel(
        models_pb2.GetModelRequest(name=MODEL), timeout=TIMEOUT
    ).text_generation.context_length
    probe = text_stub.Generate(request(prompt="abc " * 8, max_new_tokens=1), timeout=TIMEOUT)
    prompt_tokens = probe.usage.prompt_tokens
    with pytest.raises(grpc.RpcError) as info:
        text_stub.Generate(request(prompt="abc " * 8, max_new_tokens=context - prompt_tokens + 1), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


INVALID = [
    ({"prompt": ""}, "prompt"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -5}, "max_new_tokens"),
    ({"max_new_tokens": 49}, "at most 48"),  # config.yaml's max_new_tokens_limit
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_p": math.nan}, "top_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"repetition_penalty": -math.inf}, "repetition_penalty"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"stop": ["ok", ""]}, "empty"),
]


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(("fields", "message"), INVALID, ids=[f"{k}={v}" for (f, _) in INVALID for k, v in f.items()])
def test_invalid_arguments(
    text_stub: text_generation_pb2_grpc.TextGenerationServiceStub,
    fields: dict[str, Any],
    message: str,
    streaming: bool,
) -> None:
    params = {k: v for k, v in fields.items() if k != "prompt"}
    req = request(prompt=fields.get("prompt", "hello"), **params)
    with pytest.raises(grpc.RpcError) as info:
        if streaming:
            stream(text_stub, req)
        else:
            text_stub.Generate(req, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(("model", "version"), [("no-such-model", ""), (MODEL, "7"), (MODEL, "latest")])
def test_unknown_model_or_version_is_not_found(
    text_stub: text_generation_pb2_grpc.TextGenerationServiceStub, model: str, version: str, streaming: bool
) -> None:
    req = request(model=model, version=version, max_new_tokens=1)
    with pytest.raises(grpc.RpcError) as info:
        if streaming:
            stream(text_stub, req)
        else:
            text_stub.Generate(req, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_explicit_version(text_stub: text_generation_pb2_grpc.TextGenerationServiceStub) -> None:
    reply = text_stub.Generate(request(version="1", max_new_tokens=2), timeout=TIMEOUT)
    assert reply.model_version == "1"


def _splits_a_character(tokenizer: Tokenizer, ids: list[int]) -> bool:
    """Whether decoding token by token would go wrong: some prefix of ``ids`` decodes to text that is not
    a prefix of the whole decoding (it ends in a U+FFFD that a later token completes into a character)."""
    whole = tokenizer.decode(ids)
    return any(not whole.startswith(tokenizer.decode(ids[:k])) for k in range(1, len(ids)))


def test_a_character_split_across_tokens_is_streamed_whole(
    text_stub: text_generation_pb2_grpc.TextGenerationServiceStub, tiny_repository: Path
) -> None:
    """Byte-level BPE tokens end in the middle of multi-byte characters: the stream must hold such bytes
    back until the character is complete, never send a U+FFFD for them."""
    tokenizer = Tokenizer.from_file(str(tiny_repository / MODEL / "1" / "tokenizer.json"))
    # Sampling at a high temperature produces odd byte tokens; find a seed whose output has a character
    # that only a later token completes.
    for seed in range(100):
        req = request(prompt="日本語 🙂 Grüße", max_new_tokens=30, temperature=1.5, seed=seed)
        unary = text_stub.Generate(req, timeout=TIMEOUT)
        if _splits_a_character(tokenizer, list(unary.token_ids)):
            break
    else:
        pytest.fail("no seed generated a character split across tokens")
    chunks = stream(text_stub, req)
    text, ids, _ = joined(chunks)
    assert ids == list(unary.token_ids)
    # Every chunk's text is what the whole decoding has at that place: no U+FFFD for a split character.
    assert text == tokenizer.decode(ids) == unary.text
    assert sum(len(c.token_ids) for c in chunks) == chunks[-1].usage.completion_tokens


def test_prompt_over_the_message_size_is_refused_by_grpc(
    text_stub: text_generation_pb2_grpc.TextGenerationServiceStub,
) -> None:
    over_the_limit = ServerSettings.model_fields["max_message_bytes"].default + 1024
    with pytest.raises(grpc.RpcError) as info:
        text_stub.Generate(request(prompt="x" * over_the_limit), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x08tiny-gpt" + b"\x12\x02\xff\xfe",  # model "tiny-gpt", prompt with invalid UTF-8
        b"\xff\xff\xff",  # not a protobuf message at all
    ],
    ids=["bad-utf8", "corrupt"],
)
@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
def test_unparseable_request_is_invalid_argument(channel: grpc.Channel, raw: bytes, method: str) -> None:
    # Other languages' clients can send bytes that Python's protobuf refuses to parse.
    path = f"/attnserve.v1.TextGenerationService/{method}"
    with pytest.raises(grpc.RpcError) as info:
        if method == "Generate":
            channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)(raw, timeout=TIMEOUT)
        else:
            list(
                channel.unary_stream(path, request_serializer=bytes, response_deserializer=bytes)(raw, timeout=TIMEOUT)
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "attnserve.v1.GenerateRequest" in (info.value.details() or "")
