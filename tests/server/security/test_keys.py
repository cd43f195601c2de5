"""Scoped API keys against a real server: every scope allowed and denied, rate limits, the key file
reloaded while the server runs, and the key itself never in the logs or the metrics.

The keys are made by ``attnserve-server keys add`` (the command under test too), which prints each
key once, as its last line. Methods are called with raw bytes (an empty message is a valid request
of any type), so that one table covers both APIs: a call that passes the key check then fails or
succeeds on its own merits, but never with UNAUTHENTICATED or PERMISSION_DENIED.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from attnserve_client import AsyncClient, AuthenticationError, Client, OverloadedError, PermissionDeniedError
from attnserve_client.cli import main as cli

from .conftest import Guarded

MODEL = "tiny-gpt"
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
BURST = 3

# Every method the issue names, with the scope it needs (None: open, no key needed).
T, M, IC, V2 = (
    "/attnserve.v1.TextGenerationService/",
    "/attnserve.v1.ModelService/",
    "/attnserve.v1.ImageClassificationService/",
    "/inference.GRPCInferenceService/",
)
SCOPED: dict[str, str | None] = {
    T + "Generate": "infer",
    T + "GenerateStream": "infer",
    IC + "Classify": "infer",
    "/attnserve.v1.EmbeddingService/Embed": "infer",
    "/attnserve.v1.ExplainService/Explain": "infer",
    V2 + "ModelInfer": "infer",
    V2 + "ModelStreamInfer": "infer",
    M + "ListModels": "models:read",
    M + "GetModel": "models:read",
    V2 + "ModelMetadata": "models:read",
    V2 + "ModelConfig": "models:read",
    V2 + "ModelStatistics": "models:read",
    V2 + "ModelReady": "models:read",
    V2 + "RepositoryIndex": "models:read",
    V2 + "ServerMetadata": "models:read",
    V2 + "RepositoryModelLoad": "models:control",
    V2 + "RepositoryModelUnload": "models:control",
    "/grpc.health.v1.Health/Check": None,
    V2 + "ServerLive": None,
    V2 + "ServerReady": None,
}
UNARY_STREAM = {T + "GenerateStream"}
STREAM_STREAM = {V2 + "ModelStreamInfer"}
KEY_SCOPES = {"infer": "infer", "reader": "models:read", "control": "models:control"}


def add_key(key_file: Path, name: str, *flags: str) -> str:
    """``attnserve-server keys add``; returns the key, the last line of its output."""
    done = subprocess.run(
        [sys.executable, "-m", "attnserve_server", "keys", "add", name, "--key-file", str(key_file), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = done.stdout.splitlines()[-1]
    assert key.startswith("attn_") and key not in key_file.read_text()
    return key


def keys_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attnserve_server", "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def call(channel: grpc.Channel, method: str, key: str | None) -> grpc.StatusCode:
    """Call ``method`` with an empty request (and ``key``); the status code it ends with."""
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    identity = {"request_serializer": None, "response_deserializer": None}
    try:
        if method in UNARY_STREAM:
            list(channel.unary_stream(method, **identity)(b"", timeout=30, metadata=metadata))
        elif method in STREAM_STREAM:
            list(channel.stream_stream(method, **identity)(iter([b""]), timeout=30, metadata=metadata))
        else:
            channel.unary_unary(method, **identity)(b"", timeout=30, metadata=metadata)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@dataclass(frozen=True)
class Keyed:
    server: Guarded
    key_file: Path
    keys: dict[str, str]  # name -> key

    def metrics(self) -> str:
        found = re.search(r"metrics on (http://\S+/metrics)", self.server.stderr())
        assert found, self.server.stderr()
        with urllib.request.urlopen(found[1], timeout=10) as response:
            return str(response.read().decode())


@pytest.fixture
def keyed(tmp_path: Path, tiny_repository: Path, guarded_launcher: Callable[..., Guarded]) -> Keyed:
    key_file = tmp_path / "keys.yaml"
    keys = {name: add_key(key_file, name, "--scopes", scope) for name, scope in KEY_SCOPES.items()}
    keys["limited"] = add_key(key_file, "limited", "--scopes", "models:read", "--rate", "0.001", "--burst", str(BURST))
    # explicit control mode: the repository RPCs are served (and an empty name is simply NOT_FOUND).
    flags = ["--api-key-file", str(key_file), "--model-control-mode", "explicit", "--load-model", MODEL]
    server = guarded_launcher(tiny_repository, *flags, "--log-level", "DEBUG")
    return Keyed(server, key_file, keys)


@pytest.fixture
def channel(keyed: Keyed) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(keyed.server.address) as chan:
        yield chan


def test_every_method_needs_its_scope(keyed: Keyed, channel: grpc.Channel) -> None:
    problems = []
    for method, scope in SCOPED.items():
        without = call(channel, method, None)
        if (scope is None) == (without == grpc.StatusCode.UNAUTHENTICATED):
            problems.append(f"{method} without a key: {without.name}")
        for name, granted in KEY_SCOPES.items():
            code = call(channel, method, keyed.keys[name])
            allowed = scope is None or scope == granted
            if allowed == (code in AUTH_CODES) or (not allowed and code != grpc.StatusCode.PERMISSION_DENIED):
                problems.append(f"{method} with a {granted} key: {code.name}")
    assert not problems, "\n".join(problems)


def test_refusals_say_why_and_name_the_missing_scope(keyed: Keyed) -> None:
    with Client(keyed.server.address, retries=0) as anonymous, pytest.raises(AuthenticationError) as missing:
        anonymous.models()
    assert "authorization: Bearer <key>" in missing.value.details
    assert missing.value.request_id  # the request interceptor still tagged the refused call
    with (
        Client(keyed.server.address, api_key="attn_not-a-key", retries=0) as unknown,
        pytest.raises(AuthenticationError, match="unknown API key"),
    ):
        unknown.models()
    with Client(keyed.server.address, api_key=keyed.keys["reader"]) as reader:
        assert [model.name for model in reader.models()] == [MODEL]
        with pytest.raises(PermissionDeniedError, match="lacks the scope 'infer'") as denied:
            reader.generate("ROMEO:", model=MODEL, max_new_tokens=2)
        assert "'reader'" in denied.value.details
    with grpc.insecure_channel(keyed.server.address) as chan:
        metadata = (("authorization", f"Basic {keyed.keys['reader']}"),)
        with pytest.raises(grpc.RpcError) as basic:
            chan.unary_unary(M + "ListModels")(b"", timeout=10, metadata=metadata)
        assert basic.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "must be 'Bearer <key>'" in (basic.value.details() or "")


def test_the_rate_limit_refuses_the_call_after_the_burst(keyed: Keyed) -> None:
    # 0.001 requests/s: no token comes back during the test, whatever the machine's speed.
    with Client(keyed.server.address, api_key=keyed.keys["limited"], retries=0) as client:
        for _ in range(BURST):
            client.models()
        with pytest.raises(OverloadedError, match="over its rate limit"):
            client.models()
    with Client(keyed.server.address, api_key=keyed.keys["reader"]) as other:
        other.models()  # the limit is the key's own


async def test_the_async_client_sends_its_key(keyed: Keyed) -> None:
    async with AsyncClient(keyed.server.address, api_key=keyed.keys["infer"]) as client:
        generation = await client.generate("ROMEO:", model=MODEL, max_new_tokens=3, seed=1)
        assert generation.usage.completion_tokens == 3
        chunks = [chunk async for chunk in client.generate_stream("ROMEO:", model=MODEL, max_new_tokens=3, seed=1)]
        assert "".join(chunk.text for chunk in chunks) == generation.text


def test_the_key_file_is_reloaded_while_the_server_runs(keyed: Keyed) -> None:
    late = add_key(keyed.key_file, "late", "--scopes", "models:read")
    with Client(keyed.server.address, api_key=late, retries=0) as client:
        assert [model.name for model in client.models()] == [MODEL]
        assert keys_command("remove", "late", "--key-file", str(keyed.key_file)).returncode == 0
        with pytest.raises(AuthenticationError):
            client.models()

    # A broken edit is reported, and the keys read before stay in force.
    good = keyed.key_file.read_text()
    keyed.key_file.write_text("keys: [{name: x}]\n")
    with Client(keyed.server.address, api_key=keyed.keys["reader"]) as client:
        client.models()
        assert "keys read before stay in force" in keyed.server.stderr()
        keyed.key_file.write_text(good)
        client.models()


def test_names_not_keys_reach_the_logs_and_the_metrics(keyed: Keyed) -> None:
    with Client(keyed.server.address, api_key=keyed.keys["infer"]) as client:
        client.generate("ROMEO:", model=MODEL, max_new_tokens=2)
    with (
        Client(keyed.server.address, api_key=keyed.keys["reader"], retries=0) as reader,
        pytest.raises(PermissionDeniedError),
    ):
        reader.generate("ROMEO:", model=MODEL, max_new_tokens=2)
    wrong = keyed.keys["infer"][:-4] + "abcd"
    with Client(keyed.server.address, api_key=wrong, retries=0) as client, pytest.raises(AuthenticationError):
        client.generate("ROMEO:", model=MODEL, max_new_tokens=2)

    lines = [
        r"\[request_id=\S+ model=tiny-gpt key=infer\]: Generate OK in",
        r"key=reader\]: Generate PERMISSION_DENIED in",
        r"\]: Generate UNAUTHENTICATED in",
    ]
    series = [
        'attnserve_requests_total{code="OK",key="infer",method="Generate",model="tiny-gpt"} 1.0',
        # A refused request is never parsed, so it names no model.
        'attnserve_requests_total{code="PERMISSION_DENIED",key="reader",method="Generate",model=""} 1.0',
        'attnserve_requests_total{code="UNAUTHENTICATED",key="",method="Generate",model=""} 1.0',
    ]
    # The server logs and counts a call just after its answer has gone out: wait for the last of them.
    deadline = time.monotonic() + 30
    while True:
        log, metrics = keyed.server.stderr(), keyed.metrics()
        seen = all(re.search(line, log) for line in lines) and all(line in metrics for line in series)
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for line in lines:
        assert re.search(line, log), line
    for line in series:
        assert line in metrics, line
    for secret in (*keyed.keys.values(), wrong):
        assert secret not in log and secret not in metrics


def test_health_answers_on_the_plaintext_port_and_needs_no_key(keyed: Keyed) -> None:
    with Client(keyed.server.health_address, retries=0) as probe:
        assert probe.health()
        assert probe.health(MODEL)
    with Client(keyed.server.address, retries=0) as anonymous:
        assert anonymous.health()  # health stays open on the main port too
        with pytest.raises(AuthenticationError):
            anonymous.models()
    # The health port serves health and nothing else.
    with grpc.insecure_channel(keyed.server.health_address) as chan:
        assert call(chan, M + "ListModels", keyed.keys["reader"]) == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_is_off_with_keys_unless_asked_for(
    keyed: Keyed, tmp_path: Path, tiny_repository: Path, guarded_launcher: Callable[..., Guarded]
) -> None:
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    with grpc.insecure_channel(keyed.server.address) as chan:
        assert call(chan, reflection, keyed.keys["reader"]) == grpc.StatusCode.UNIMPLEMENTED
    on = guarded_launcher(tiny_repository, "--api-key-file", str(keyed.key_file), "--reflection")
    with grpc.insecure_channel(on.address) as chan:
        assert call(chan, reflection, None) == grpc.StatusCode.UNAUTHENTICATED
        assert call(chan, reflection, keyed.keys["reader"]) == grpc.StatusCode.OK


def test_the_cli_reads_the_key_from_the_environment(
    keyed: Keyed, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATTNSERVE_TARGET", keyed.server.address)
    assert cli(["models"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("ATTNSERVE_API_KEY", keyed.keys["reader"])
    assert cli(["models"]) == 0
    assert MODEL in capsys.readouterr().out
    assert cli(["models", "--api-key", keyed.keys["infer"]]) == 1  # the flag wins
    assert "lacks the scope 'models:read'" in capsys.readouterr().err


def test_a_bad_key_file_stops_the_server(
    tmp_path: Path, tiny_repository: Path, server_launcher: Callable[..., object]
) -> None:
    key_file = tmp_path / "keys.yaml"
    key_file.write_text("keys:\n- name: a\n  sha256: nothex\n  scopes: [infer]\n")
    server = server_launcher(tiny_repository, "--api-key-file", str(key_file), wait=False)
    assert server.process.wait(60) == 1  # type: ignore[attr-defined]
    assert "keys.0.sha256" in server.stderr()  # type: ignore[attr-defined]


def test_keys_add_refuses_a_taken_name_and_unknown_scopes(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    add_key(key_file, "ci", "--scopes", "infer,models:read", "--rate", "10")
    assert '"sha256"' in key_file.read_text()  # .json: written as JSON
    taken = keys_command("add", "ci", "--scopes", "infer", "--key-file", str(key_file))
    assert taken.returncode == 1 and "already holds a key named 'ci'" in taken.stderr
    bogus = keys_command("add", "x", "--scopes", "admin", "--key-file", str(key_file))
    assert bogus.returncode == 2 and "infer, models:read, models:control" in bogus.stderr
    listed = keys_command("list", "--key-file", str(key_file))
    assert listed.stdout.split() == ["ci", "infer,models:read", "10/s", "burst", "10"]
