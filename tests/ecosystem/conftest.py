"""Fixtures of the ecosystem tests: the client in venvs of its neighbours, and in the oldest runtimes it supports.

- ``ecosystem_venv(name, requirements)``: a venv holding ``attnserve-client`` (a plain, non-editable
  install of ./client, as ``pip install attnserve-client`` would give) together with ``requirements``,
  resolved by pip in one go. It is cached under ``.venv-ecosystem/`` keyed by the requirement set
  (``requirements``, client/pyproject.toml and the Python version); when only the client's source
  changed, the client alone is reinstalled. The first build takes a minute or more (the kserve
  SDK's is the largest); later runs reuse it.
- ``require_venv(python, target)``: the interpreter of a venv that a Makefile target makes
  (.venv-pb6); skips on a developer's machine without it and fails in CI, where `make test` makes it.
- ``record_ecosystem(name, value)``: a line of the "ecosystem" section of pytest's terminal summary
  (venv build times and sizes, the protobuf-6 run's counts), so that CI logs show them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "client"
CACHE = REPO / ".venv-ecosystem"
PIP_TIMEOUT_S = 900
RECORDS = pytest.StashKey[dict[str, str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RECORDS] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    records = config.stash.get(RECORDS, {})
    if records:
        terminalreporter.section("ecosystem")
        for name, value in records.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def record_ecosystem(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``record_ecosystem(name, value)``: show ``name: value`` in the terminal summary."""

    def record(name: str, value: str) -> None:
        request.config.stash[RECORDS][name] = value

    return record


@pytest.fixture(scope="session")
def require_venv() -> Callable[[Path, str], Path]:
    """``require_venv(python, make_target)`` -> ``python``, or skip (fail in CI) when it does not exist."""

    def require(python: Path, target: str) -> Path:
        if python.exists():
            return python
        reason = f"{python} does not exist: `make {target}` makes it"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (and `make test` runs that first)")
        pytest.skip(reason)

    return require


@dataclass(frozen=True)
class EcosystemVenv:
    """A cached venv with attnserve-client and its neighbours."""

    path: Path
    # What happened this run: "built in 52 s", "reused", "reused, client reinstalled".
    how: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def size_mb(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file() and not p.is_symlink()) >> 20


def _client_sources() -> list[Path]:
    """The files that make up the client distribution (build outputs and caches left out)."""
    skip = {"build", "dist", "__pycache__"}
    return sorted(
        p
        for p in CLIENT.rglob("*")
        if p.is_file()
        and not skip.intersection(p.relative_to(CLIENT).parts)
        and not any(part.endswith(".egg-info") for part in p.relative_to(CLIENT).parts)
    )


def _client_digest() -> str:
    digest = hashlib.sha256()
    for path in _client_sources():
        digest.update(str(path.relative_to(CLIENT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _pip(python: Path, *args: str) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-6000:]}")


def _install_client(python: Path, *pip_args: str) -> None:
    """Install a copy of ./client (so pip builds nothing inside the work tree)."""
    with tempfile.TemporaryDirectory(prefix="attnserve-client-") as tmp:
        copy = Path(tmp) / "client"
        shutil.copytree(
            CLIENT, copy, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc")
        )
        _pip(python, *pip_args, str(copy))


def build_ecosystem_venv(name: str, requirements: Sequence[str]) -> EcosystemVenv:
    """The cached venv ``.venv-ecosystem/<name>-<key>`` (see the module docstring), built when missing."""
    key_material = json.dumps(
        [list(sys.version_info[:2]), sorted(requirements), (CLIENT / "pyproject.toml").read_text()]
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:12]
    path = CACHE / f"{name}-{key}"
    python = path / "bin" / "python"
    complete, client_stamp = path / ".complete", path / ".attnserve-client.sha256"
    CACHE.mkdir(exist_ok=True)
    # One builder at a time, should two test sessions run at once.
    with (CACHE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete.exists():
            if client_stamp.read_text() == _client_digest():
                return EcosystemVenv(path, "reused")
            _install_client(python, "--no-deps", "--force-reinstall")
            client_stamp.write_text(_client_digest())
            return EcosystemVenv(path, "reused, attnserve-client reinstalled")
        # Older keys of this name (another requirement set) and any half-built venv go.
        for stale in CACHE.glob(f"{name}-*"):
            shutil.rmtree(stale)
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
        _pip(python, "--upgrade", "pip")
        digest = _client_digest()
        _install_client(python, *requirements)
        client_stamp.write_text(digest)
        complete.write_text(f"{' '.join(requirements)}\n")
        return EcosystemVenv(path, f"built in {time.monotonic() - start:.0f} s")


@pytest.fixture(scope="session")
def ecosystem_venv() -> Callable[[str, Sequence[str]], EcosystemVenv]:
    """``ecosystem_venv(name, requirements)`` -> :class:`EcosystemVenv` (cached; see the module docstring)."""
    return build_ecosystem_venv
