"""Invalid arguments are refused locally, before anything is sent, with a message that says what to fix."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest

from attnserve_client import AsyncClient, Client, InvalidArgumentError

INVALID: list[tuple[dict[str, Any], str]] = [
    ({"prompt": ""}, "prompt"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"max_new_tokens": 2**31}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_p": math.nan}, "top_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ["a", ""]}, "stop"),
    ({"stop": "\n"}, "stop"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"model": ""}, "model"),
]


def _call_args(overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    kwargs: dict[str, Any] = {"model": "only-gpt", **overrides}
    prompt = kwargs.pop("prompt", "ROMEO:")
    return prompt, kwargs


@pytest.mark.parametrize(("overrides", "name"), INVALID, ids=[f"{n}={v!r}" for (o, n) in INVALID for v in o.values()])
def test_sync_methods_refuse_invalid_arguments_before_sending(
    scripted_server: Any, overrides: dict[str, Any], name: str
) -> None:
    prompt, kwargs = _call_args(overrides)
    with Client(scripted_server.address) as client:
        with pytest.raises(InvalidArgumentError, match=name) as info:
            client.generate(prompt, **kwargs)
        # generate_stream validates when called, not when the iteration starts.
        with pytest.raises(InvalidArgumentError, match=name):
            client.generate_stream(prompt, **kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert scripted_server.script.calls == 0


@pytest.mark.parametrize(("overrides", "name"), INVALID[:4])
async def test_async_methods_refuse_invalid_arguments_before_sending(
    scripted_server: Any, overrides: dict[str, Any], name: str
) -> None:
    prompt, kwargs = _call_args(overrides)
    async with AsyncClient(scripted_server.address) as client:
        with pytest.raises(InvalidArgumentError, match=name):
            await client.generate(prompt, **kwargs)
        with pytest.raises(InvalidArgumentError, match=name):
            client.generate_stream(prompt, **kwargs)
    assert scripted_server.script.calls == 0


def test_edge_values_are_accepted(scripted_server: Any) -> None:
    with Client(scripted_server.address) as client:
        client.generate(
            "x", model="only-gpt", max_new_tokens=1, temperature=0, top_k=0, top_p=1, stop=["a", "b", "c", "d"], seed=0
        )
    assert scripted_server.script.calls == 1


def test_unset_parameters_are_left_out_so_the_model_defaults_apply(scripted_server: Any) -> None:
    with Client(scripted_server.address) as client:
        client.generate("ROMEO:", model="only-gpt", temperature=0.0, seed=0)
    (request,) = scripted_server.script.requests
    params = request.parameters
    # Zero is a real value here (greedy, seed 0), so it must be sent as present.
    assert params.HasField("temperature") and params.temperature == 0.0
    assert params.HasField("seed") and params.seed == 0
    for name in ("max_new_tokens", "top_k", "top_p", "repetition_penalty"):
        assert not params.HasField(name), name
    assert list(params.stop) == []
    assert not params.logprobs
    assert request.model_version == ""


def test_every_parameter_is_sent(scripted_server: Any) -> None:
    with Client(scripted_server.address) as client:
        client.generate(
            "ROMEO:",
            model="only-gpt",
            max_new_tokens=5,
            temperature=0.7,
            top_k=40,
            top_p=0.9,
            repetition_penalty=1.2,
            stop=["\n\n"],
            seed=123,
            logprobs=True,
            model_version="2",
        )
    (request,) = scripted_server.script.requests
    params = request.parameters
    assert (request.model, request.prompt, request.model_version) == ("only-gpt", "ROMEO:", "2")
    assert (params.max_new_tokens, params.top_k, params.seed) == (5, 40, 123)
    assert params.temperature == pytest.approx(0.7)
    assert params.top_p == pytest.approx(0.9)
    assert params.repetition_penalty == pytest.approx(1.2)
    assert list(params.stop) == ["\n\n"]
    assert params.logprobs


@pytest.mark.parametrize("timeout", [0, -1, math.inf])
def test_a_bad_timeout_is_refused(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        Client("127.0.0.1:1", timeout=timeout)


def test_a_negative_retry_count_is_refused() -> None:
    with pytest.raises(ValueError, match="retries"):
        Client("127.0.0.1:1", retries=-1)
