"""The attnserve CLI end to end: a subprocess against the real server."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from attnserve_client import Client

MODEL = "tiny-gpt"
PROMPT = "ROMEO.\nBut soft"
CONSOLE_SCRIPT = Path(sysconfig.get_path("scripts")) / "attnserve"


def run(*args: str, target: str | None = None, console_script: bool = False) -> subprocess.CompletedProcess[bytes]:
    command = [str(CONSOLE_SCRIPT)] if console_script else [sys.executable, "-m", "attnserve_client"]
    env = {k: v for k, v in os.environ.items() if k != "ATTNSERVE_TARGET"}
    env["PYTHONIOENCODING"] = "utf-8"
    if target is not None:
        env["ATTNSERVE_TARGET"] = target
    return subprocess.run([*command, *args], capture_output=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_generate_prints_the_same_text_as_the_client(server_address: str, stream: bool) -> None:
    with Client(server_address) as client:
        expected = client.generate(PROMPT, model=MODEL, max_new_tokens=20, temperature=0.8, top_k=50, seed=9)
    args = ["generate", PROMPT, "--model", MODEL, "--max-new-tokens", "20", "--temperature", "0.8"]
    args += ["--top-k", "50", "--seed", "9", "--target", server_address]
    result = run(*args, *([] if stream else ["--no-stream"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.text.encode()
    summary = result.stderr.decode()
    assert f"finish_reason={expected.finish_reason}" in summary
    assert f"completion_tokens={expected.usage.completion_tokens}" in summary
    assert "seed=9" in summary


def test_models_lists_the_served_model(server_address: str) -> None:
    result = run("models", target=server_address, console_script=True)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.decode().splitlines()
    assert header.split()[0] == "NAME"
    assert [row.split()[:2] for row in rows] == [[MODEL, "text-generation"]]


def test_health_exit_status(server_address: str, dead_address: str) -> None:
    assert run("health", "--target", server_address, console_script=True).returncode == 0
    assert run("health", "--model", MODEL, target=server_address).returncode == 0
    assert run("health", "--model", "no-such-model", target=server_address).returncode == 1
    assert run("health", "--timeout", "1", target=dead_address).returncode == 1


def test_an_error_is_one_line_without_a_traceback(server_address: str) -> None:
    result = run("generate", PROMPT, "--model", "no-such-model", "--target", server_address)
    assert result.returncode == 1
    assert result.stdout == b""
    err = result.stderr.decode()
    assert err.startswith("attnserve: error: ") and "(NOT_FOUND)" in err
    assert len(err.splitlines()) == 1
