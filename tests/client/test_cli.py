"""The attnserve CLI, run in-process against the scripted server and a dead port."""

from __future__ import annotations

import time
from typing import Any

import pytest

from attnserve_client.cli import main


def test_generate_streams_the_text_to_stdout_and_the_summary_to_stderr(
    scripted_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "ROMEO:", "--target", scripted_server.address, "--model", "only-gpt"]
    argv += ["--max-new-tokens", "5", "--temperature", "0.8", "--top-k", "40", "--top-p", "0.9"]
    argv += ["--repetition-penalty", "1.1", "--stop", "A", "--stop", "B", "--seed", "3"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "hello"
    assert "finish_reason=stop" in err and "completion_tokens=2" in err and "seed=7" in err
    (request,) = scripted_server.script.requests
    params = request.parameters
    assert (params.max_new_tokens, params.top_k, params.seed, list(params.stop)) == (5, 40, 3, ["A", "B"])
    assert params.temperature == pytest.approx(0.8)


def test_generate_no_stream(scripted_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "ROMEO:", "--target", scripted_server.address, "--no-stream"]) == 0
    out, err = capsys.readouterr()
    assert out == "hello"
    assert "finish_reason=length" in err and "model=only-gpt" in err
    (request,) = scripted_server.script.requests
    assert not request.parameters.HasField("temperature")


def test_the_target_comes_from_the_environment(
    scripted_server: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTNSERVE_TARGET", scripted_server.address)
    assert main(["models"]) == 0
    out, _ = capsys.readouterr()
    header, row = out.splitlines()
    assert header.split()[:3] == ["NAME", "TASK", "VERSIONS"]
    assert row.split()[:2] == ["only-gpt", "text-generation"]


def test_health_exit_status(scripted_server: Any, dead_address: str) -> None:
    assert main(["health", "--target", scripted_server.address]) == 0
    assert main(["health", "--target", scripted_server.address, "--model", "only-gpt"]) == 1
    start = time.monotonic()
    assert main(["health", "--target", dead_address]) == 1
    assert time.monotonic() - start < 2  # no retries: a probe must answer fast


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
