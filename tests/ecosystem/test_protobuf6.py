"""The client's tests on the oldest runtimes it supports: tests/client again, in .venv-pb6.

This session runs them on .venv-test's newest protobuf 7; .venv-pb6 (`make install-pb6`,
requirements/pb6.txt) has protobuf 6.33.5 and grpcio 1.81.1, the lower bounds of
client/pyproject.toml, and the server, which the fixtures start with .venv-pb6's interpreter too.
The models are exported by this session's interpreter (see pb6_run.py): .venv-pb6 has no torch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import __version__ as protobuf_version

REPO = Path(__file__).resolve().parents[2]
PB6_PYTHON = Path(os.environ.get("ATTNSERVE_PB6_PYTHON", REPO / ".venv-pb6" / "bin" / "python"))
PB6_REQUIREMENTS = REPO / "requirements" / "pb6.txt"
RUNNER = Path(__file__).with_name("pb6_run.py")

pytestmark = pytest.mark.ecosystem


def _names(requirements: list[str]) -> set[str]:
    """Normalised distribution names of requirement lines."""
    return {re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]).lower() for line in requirements}


def _pinned(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)$", PB6_REQUIREMENTS.read_text(), flags=re.M)
    assert match, f"{PB6_REQUIREMENTS} pins no {name}"
    return match.group(1)


def test_pb6_requirements_hold_every_server_dependency() -> None:
    """The Makefile installs the server into .venv-pb6 with --no-deps (its grpcio-health-checking and
    -reflection pins need protobuf 7); requirements/pb6.txt must list what it needs instead."""
    block = re.search(r"^dependencies = \[(.*?)^\]", (REPO / "server" / "pyproject.toml").read_text(), re.M | re.S)
    assert block
    server = _names(re.findall(r'"([^"]+)"', block.group(1))) - {"attnserve-client"}
    lines = [line.strip() for line in PB6_REQUIREMENTS.read_text().splitlines()]
    listed = _names([line for line in lines if line and not line.startswith("#")])
    assert server <= listed, f"add to {PB6_REQUIREMENTS.name}: {sorted(server - listed)}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_client_tests_pass_on_protobuf_6(
    require_venv: Callable[[Path, str], Path], record_ecosystem: Callable[[str, str], None]
) -> None:
    python = require_venv(PB6_PYTHON, "install-pb6")
    runtimes = subprocess.run(
        [str(python), "-c", "import google.protobuf, grpc; print(google.protobuf.__version__, grpc.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert runtimes == [_pinned("protobuf"), _pinned("grpcio")]
    # Between the two runs, both protobuf majors the client supports.
    assert protobuf_version.startswith("7."), protobuf_version

    # Nothing of this session's configuration: PYTEST_ADDOPTS may name other tests, PYTHONPATH other code.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "PYTHONPATH"}
    env["ATTNSERVE_EXPORT_PYTHON"] = sys.executable
    result = subprocess.run(
        [str(python), str(RUNNER), "tests/client", "-q", "-rfE", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    summary = lines[-1] if lines else "(no output)"
    record_ecosystem(
        f"tests/client on protobuf {runtimes[0]}, grpcio {runtimes[1]} (.venv-pb6); this run: "
        f"protobuf {protobuf_version}, grpcio {grpc.__version__}",
        summary,
    )
    assert result.returncode == 0, f"tests/client failed in {python}:\n{result.stdout[-12000:]}{result.stderr[-3000:]}"
    assert re.search(r"\d+ passed", summary), summary
