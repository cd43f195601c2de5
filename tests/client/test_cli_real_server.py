"""The attnserve CLI end to end: a subprocess against the real server."""

from __future__ import annotations

import os
import re
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
    assert f"prompt_tokens={expected.usage.prompt_tokens}" in summary
    assert f"model={MODEL}" in summary and f"version={expected.model_version}" in summary
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
    assert re.search(r"\[request id [0-9a-f]{32}\]$", err.strip()), err
    assert len(err.splitlines()) == 1


IMAGE_MODEL = "tiny-digits"


def test_classify_prints_a_table_of_the_clients_predictions(image_server_address: str, tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    for i, fmt in enumerate(("png", "jpg")):
        path = tmp_path / f"digit{i}.{fmt}"
        Image.new("L", (32, 32), 40 * (i + 1)).save(path)
        paths.append(path)
    with Client(image_server_address) as client:
        expected = client.classify_batch(paths, model=IMAGE_MODEL, top_k=3)
    args = ["classify", *map(str, paths), "--model", IMAGE_MODEL, "--top-k", "3"]
    result = run(*args, target=image_server_address, console_script=True)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.decode().splitlines()
    assert header.split() == ["IMAGE", "RANK", "LABEL", "INDEX", "SCORE"]
    assert len(rows) == 6
    for row, (path, rank, p) in zip(
        rows, [(path, r, p) for path, ps in zip(paths, expected, strict=True) for r, p in enumerate(ps, 1)], strict=True
    ):
        assert row.split() == [str(path), str(rank), p.label, str(p.index), f"{p.score:.4f}"]


def test_classify_errors_are_one_line(image_server_address: str, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = run("classify", str(bad), "--model", IMAGE_MODEL, target=image_server_address)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.startswith("attnserve: error: image 0 is not a PNG") and "(INVALID_ARGUMENT)" in err
    assert len(err.splitlines()) == 1


def test_models_shows_image_models_too(image_server_address: str) -> None:
    result = run("models", target=image_server_address)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.decode().splitlines()[1:]}
    assert "image-classification" in rows[IMAGE_MODEL]
    assert "1x16x16, 10 classes" in rows[IMAGE_MODEL]
    assert "text-generation" in rows[MODEL]
