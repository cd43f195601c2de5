"""The attnserve CLI, run in-process against the scripted server and a dead port: what it sends, and
how it exits. What it prints of a real server's answers is checked in test_cli_real_server.py (output
made up by a test double proves nothing about the real thing)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from attnserve_client.cli import HEALTH_TIMEOUT, main


def test_generate_streams_the_text_to_stdout_and_the_summary_to_stderr(
    scripted_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "ROMEO:", "--target", scripted_server.address, "--model", "only-gpt"]
    argv += ["--max-new-tokens", "5", "--temperature", "0.8", "--top-k", "40", "--top-p", "0.9"]
    argv += ["--repetition-penalty", "1.1", "--stop", "A", "--stop", "B", "--seed", "3"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out and "finish_reason=" in err  # the text on stdout, the summary on stderr
    (request,) = scripted_server.script.requests
    params = request.parameters
    assert (params.max_new_tokens, params.top_k, params.seed, list(params.stop)) == (5, 40, 3, ["A", "B"])
    assert params.temperature == pytest.approx(0.8)


def test_generate_no_stream(scripted_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "ROMEO:", "--target", scripted_server.address, "--no-stream"]) == 0
    (request,) = scripted_server.script.requests
    assert request.model == "only-gpt"  # the only text model, found with ListModels
    assert not request.parameters.HasField("temperature")


def test_the_target_comes_from_the_environment(
    scripted_server: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTNSERVE_TARGET", scripted_server.address)
    assert main(["models"]) == 0
    assert scripted_server.script.calls == 1  # the ListModels call went to the environment's target
    assert capsys.readouterr().out.split()[:3] == ["NAME", "TASK", "VERSIONS"]


def test_health_exit_status(scripted_server: Any, dead_address: str, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["health", "--target", scripted_server.address]) == 0
    assert main(["health", "--target", scripted_server.address, "--model", "only-gpt"]) == 1  # NOT_SERVING
    caplog.set_level(logging.INFO, logger="attnserve_client")
    start = time.monotonic()
    assert main(["health", "--target", dead_address]) == 1
    # One attempt, no retries (counted, not timed): the orchestrator running the probe retries on its own.
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    # A refused connection answers at once; a probe that waited out its own deadline instead would fail
    # here. The bound is that deadline, so a loaded machine has seconds of margin.
    assert time.monotonic() - start < HEALTH_TIMEOUT


def test_an_invalid_argument_is_one_line_on_stderr(scripted_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "ROMEO:", "--target", scripted_server.address, "--temperature", "-1"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("attnserve: error: temperature must be >= 0")
    assert len(err.splitlines()) == 1
    assert scripted_server.script.calls == 0


def test_an_unreachable_server_is_one_line_on_stderr(dead_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--target", dead_address, "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert "(UNAVAILABLE)" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [[], ["generate"], ["models", "--timeout", "0"], ["generate", "x", "--max-new-tokens", "many"], ["bogus"]],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err
