"""Shared by the deployment tests: where things are, tools that must exist, and a summary line.

The container test records what it measured (image size over its base, durations) with
:func:`record_measurement`; they are printed in pytest's terminal summary, so CI logs show them.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

MEASUREMENTS = pytest.StashKey[dict[str, str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[MEASUREMENTS] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    measured = config.stash.get(MEASUREMENTS, {})
    if measured:
        terminalreporter.section("deployment measurements")
        for name, value in measured.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def record_measurement(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``record_measurement(name, value)``: show ``name: value`` in the terminal summary."""

    def record(name: str, value: str) -> None:
        request.config.stash[MEASUREMENTS][name] = value

    return record


def missing(reason: str) -> None:
    """Skip on a developer's machine without the tool; fail in CI, where `make test` installs it."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must have it: `make test` installs it)")
    pytest.skip(f"{reason}; `make test` installs it")


@pytest.fixture(scope="session")
def skip_or_fail() -> Callable[[str], None]:
    """:func:`missing`, for test modules (which cannot import this conftest)."""
    return missing


@pytest.fixture(scope="session")
def require_executable() -> Callable[[str], str]:
    """``require_executable(name)`` -> its path, or skip (fail in CI) when it is not installed."""

    def require(name: str) -> str:
        # Console scripts of this interpreter's venv first: pytest may run without the venv on PATH.
        path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
        if path is None:
            missing(f"{name} is not installed")
        assert path is not None
        return path

    return require
