"""Server logs: text or JSON lines tagged with the request id; request content only at DEBUG."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from attnserve_client import Client, InvalidArgumentError
from attnserve_client.pb import text_generation_pb2, text_generation_pb2_grpc

TEXT = "tiny-gpt"
KEY = "x-request-id"
# Words the tokenizer has surely never seen, so they can only reach the log from the request.
SECRET_PROMPT = "zebra-quokka-8134 confidential"


def generate(address: str, request_id: str, prompt: str = SECRET_PROMPT, model: str = TEXT) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = text_generation_pb2_grpc.TextGenerationServiceStub(channel)
        request = text_generation_pb2.GenerateRequest(
            model=model, prompt=prompt, parameters=text_generation_pb2.GenerationParameters(max_new_tokens=2)
        )
        with contextlib.suppress(grpc.RpcError):  # the error is what some tests log
            stub.Generate(request, metadata=[(KEY, request_id)], timeout=30)


def stopped_log(server: Any) -> str:
    """Everything the server logged, once it has exited (so nothing is still buffered)."""
    assert server.terminate() == 0
    return str(server.stderr())


def test_json_logs_are_one_object_per_line(tiny_repository: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(tiny_repository, "--log-format", "json")
    generate(server.address, "json-ok")
    generate(server.address, "json-missing", model="no-such-model")
    lines = [line for line in stopped_log(server).splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
    ok = [r for r in records if r.get("request_id") == "json-ok"]
    assert ok, records
    access = ok[-1]
    assert access["level"] == "INFO"
    assert access["model"] == TEXT
    assert (access["method"], access["code"]) == ("Generate", "OK")
    assert access["duration_ms"] > 0
    missing = [r for r in records if r.get("request_id") == "json-missing"]
    assert missing and missing[-1]["code"] == "NOT_FOUND"
    assert "model" not in missing[-1]  # an unknown name is not echoed as the model
    assert any(r["message"].startswith("serving 1 model(s)") and "request_id" not in r for r in records)


def test_text_logs_tag_the_request_and_hold_no_content(
    tiny_repository: Path, server_launcher: Callable[..., Any]
) -> None:
    server = server_launcher(tiny_repository)
    generate(server.address, "text-ok")
    log = stopped_log(server)
    assert re.search(
        r"INFO attnserve_server\.api\.interceptor \[request_id=text-ok model=tiny-gpt\]: Generate OK in [\d.]+ ms", log
    ), log
    assert "zebra-quokka" not in log


def test_debug_logs_show_the_request(tiny_repository: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(tiny_repository, "--log-level", "debug")
    generate(server.address, "debug-1")
    log = stopped_log(server)
    lines = [line for line in log.splitlines() if "[request_id=debug-1" in line]
    assert any("Generate request:" in line and SECRET_PROMPT in line for line in lines), log


def test_image_bytes_are_never_logged(image_repository: Path, server_launcher: Callable[..., Any]) -> None:
    server = server_launcher(image_repository, "--log-level", "DEBUG")
    marker = b"IMAGEBYTESMARKER" * 4
    with Client(server.address, timeout=30) as client, pytest.raises(InvalidArgumentError):
        client.classify(marker, model="tiny-digits")
    log = stopped_log(server)
    assert "Classify request:" in log and "<64 bytes>" in log
    assert "IMAGEBYTESMARKER" not in log
