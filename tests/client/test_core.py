"""The client core (attnserve_client.core): one definition of each method's plan, limit and signature.

The plans are driven here by hand, without a channel: each yields the calls it wants sent and is
sent back what a server would answer. The sync and async clients only carry them out; the other
tests in this folder check that they do, against the scripted and the real server.
"""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
from typing import Any

import grpc
import pytest

from attnserve_client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    OverloadedError,
    ServerError,
    UnavailableError,
    limits,
    methods,
)
from attnserve_client.cli import CONNECTION_OPTIONS, build_parser
from attnserve_client.core import Attempt, ClientCore, GenerationStream, Plan
from attnserve_client.health import ServingStatus
from attnserve_client.pb import models_pb2, text_generation_pb2
from attnserve_client.request import GENERATE_PARAMETERS, GenerationRequest

PUBLIC = [
    "__init__",
    "generate",
    "generate_stream",
    "classify",
    "classify_batch",
    "embed",
    "explain",
    "models",
    "get_model",
    "health",
]


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"fake {self._code.name}"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def _core(**kwargs: Any) -> ClientCore:
    settings: dict[str, Any] = {"timeout": 10.0, "retries": 2, "retry_overloaded": False, **kwargs}
    return ClientCore("unused:1", **settings)


def _generate_arguments(**overrides: Any) -> dict[str, Any]:
    """What ``locals()`` holds in ``generate``."""
    defaults = {name: p.default for name, p in inspect.signature(Client.generate).parameters.items()}
    return {**defaults, "self": None, "prompt": "ROMEO:", **overrides}


def _first(plan: Plan[Any]) -> Attempt:
    return plan.send(None)


def _result(plan: Plan[Any], outcome: object) -> Any:
    with pytest.raises(StopIteration) as done:
        plan.send(outcome)
    return done.value.value


@pytest.mark.parametrize("name", PUBLIC)
def test_the_sync_and_async_methods_have_the_same_parameters(name: str) -> None:
    sync = inspect.signature(getattr(Client, name)).parameters
    aio = inspect.signature(getattr(AsyncClient, name)).parameters
    assert list(sync.values()) == list(aio.values())


@pytest.mark.parametrize("client", [Client, AsyncClient])
@pytest.mark.parametrize("name", ["generate", "generate_stream"])
def test_generate_takes_exactly_the_request_s_arguments_with_its_defaults(client: type, name: str) -> None:
    # The methods hand their locals() to the core: a parameter missing from the request, or
    # with another default, would be silently dropped or changed.
    method = dict(inspect.signature(getattr(client, name)).parameters)
    create = inspect.signature(GenerationRequest.create).parameters
    assert list(method) == ["self", *GENERATE_PARAMETERS, "timeout"]
    assert all(method[p].default == create[p].default and method[p].kind == create[p].kind for p in create)


def test_every_cli_generate_option_is_an_argument_of_generate() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    generate = commands.choices["generate"]
    options = {a.dest for a in generate._actions} - {"help", "stream", *CONNECTION_OPTIONS}
    assert options <= set(GENERATE_PARAMETERS)
    assert options == set(GENERATE_PARAMETERS) - {"logprobs"}


def test_the_server_enforces_the_client_s_stop_limit() -> None:
    params = pytest.importorskip("attnserve_server.text.params")
    assert params.MAX_STOP_SEQUENCES is limits.MAX_STOP_SEQUENCES
    with pytest.raises(InvalidArgumentError, match=f"at most {limits.MAX_STOP_SEQUENCES}"):
        GenerationRequest.create("x", stop=["s"] * (limits.MAX_STOP_SEQUENCES + 1))


def test_the_stub_table_binds_every_method_on_sync_and_async_channels() -> None:
    paths = {rpc.path for rpc in methods.RPCS}
    assert methods.GENERATE_STREAM_RPC.streaming and len(paths) == len(methods.RPCS) == 8
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        assert set(methods.bind(channel)) == paths


def test_generate_without_a_model_lists_the_models_then_generates() -> None:
    plan = _core()._generate_plan(_generate_arguments(temperature=0.5, stop=["\n"]))
    attempt = _first(plan)
    assert (attempt.method, attempt.wait) == (methods.LIST_MODELS, 0.0)
    assert 9 < attempt.deadline.left() <= 10
    info = models_pb2.ModelInfo(name="only-gpt", task="text-generation")
    attempt = plan.send(models_pb2.ListModelsResponse(models=[info]))
    assert attempt.method == methods.GENERATE
    message = attempt.message
    assert isinstance(message, text_generation_pb2.GenerateRequest)
    assert (message.model, message.prompt, list(message.parameters.stop)) == ("only-gpt", "ROMEO:", ["\n"])
    assert message.parameters.temperature == 0.5 and not message.parameters.HasField("top_k")
    response = text_generation_pb2.GenerateResponse(
        text="hi", model="only-gpt", finish_reason=text_generation_pb2.FINISH_REASON_LENGTH
    )
    assert _result(plan, response).text == "hi"


def test_a_plan_retries_unavailable_with_a_backoff_then_raises_the_typed_error() -> None:
    plan = _core(retries=2)._generate_plan(_generate_arguments(model="m"))
    assert _first(plan).wait == 0.0
    first_retry = plan.send(FakeRpcError(grpc.StatusCode.UNAVAILABLE))
    second_retry = plan.send(FakeRpcError(grpc.StatusCode.UNAVAILABLE))
    assert 0 < first_retry.wait < second_retry.wait
    with pytest.raises(UnavailableError, match="fake UNAVAILABLE"):
        plan.send(FakeRpcError(grpc.StatusCode.UNAVAILABLE))


def test_overloaded_is_retried_only_when_asked() -> None:
    plan = _core()._models_plan(None)
    _first(plan)
    with pytest.raises(OverloadedError):
        plan.send(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED))
    plan = _core(retry_overloaded=True)._models_plan(None)
    _first(plan)
    assert plan.send(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED)).wait > 0


def test_invalid_arguments_raise_before_any_attempt() -> None:
    with pytest.raises(InvalidArgumentError, match="top_p"):
        _first(_core()._generate_plan(_generate_arguments(top_p=2.0)))
    with pytest.raises(InvalidArgumentError, match="name"):
        _first(_core()._get_model_plan("", None))
    with pytest.raises(ValueError, match="timeout"):
        _first(_core()._models_plan(-1))


@pytest.mark.parametrize(
    ("outcome", "serving"),
    [
        (ServingStatus.SERVING, True),
        (ServingStatus.NOT_SERVING, False),
        (FakeRpcError(grpc.StatusCode.NOT_FOUND), False),
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE), False),
    ],
)
def test_health_is_one_attempt_with_a_short_deadline(outcome: object, serving: bool) -> None:
    plan = _core(timeout=60.0)._health_plan("", None)
    attempt = _first(plan)
    assert attempt.method == methods.HEALTH_CHECK_RPC.path and attempt.deadline.left() <= 3
    assert _result(plan, outcome) is serving


def test_health_raises_what_it_cannot_answer() -> None:
    plan = _core()._health_plan("m", 1.0)
    _first(plan)
    with pytest.raises(ServerError, match="fake UNIMPLEMENTED"):
        plan.send(FakeRpcError(grpc.StatusCode.UNIMPLEMENTED))


def test_a_stream_is_validated_at_once_and_retried_only_before_its_first_chunk() -> None:
    with pytest.raises(InvalidArgumentError, match="stop"):
        GenerationStream(_core(), _generate_arguments(stop="\n"))
    stream = GenerationStream(_core(retries=3), _generate_arguments(model="m", logprobs=True))
    message = _result(stream.start(), None)
    assert message.model == "m" and message.parameters.logprobs
    assert stream.retry_wait(FakeRpcError(grpc.StatusCode.UNAVAILABLE)) > 0
    first = stream.chunk(text_generation_pb2.GenerateStreamResponse(text="a", seed=5, token_ids=[1], logprobs=[-1]))
    second = stream.chunk(text_generation_pb2.GenerateStreamResponse(text="b", seed=5))
    assert (first.seed, second.seed, first.logprobs) == (5, None, (-1.0,))
    with pytest.raises(UnavailableError):
        stream.retry_wait(FakeRpcError(grpc.StatusCode.UNAVAILABLE))


def test_the_limits_load_without_grpc() -> None:
    # The server's engines import them and must not load grpc (tests/server/test_layering.py).
    code = (
        "import sys, attnserve_client.limits\n"
        "print(','.join(m for m in sys.modules if m.split('.')[0] == 'grpc' or m.startswith('google.protobuf')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == ""
