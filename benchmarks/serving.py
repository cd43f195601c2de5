"""Starting a real attnserve server for a benchmark: a subprocess on a free loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from attnserve_client import Client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    repository: Path,
    *flags: str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    program: Sequence[str] = ("-m", "attnserve_server"),
    health_port: bool = False,
) -> tuple[subprocess.Popen[bytes], str]:
    """``attnserve-server`` on ``repository`` with ``flags``; returns once its health is SERVING.

    With ``health_port`` the server also gets a plaintext ``--health-port``, and health is asked
    there: for a server whose gRPC port wants TLS or an API key.

    ``env`` replaces the server's environment (for example a PYTHONPATH that runs another revision).
    ``program`` is what the Python interpreter runs: the server module, or a script that wraps it
    (``benchmarks/leaky_server.py``).

    Its output goes to a temporary log file (named if it fails to start), so that it never
    interleaves with the benchmark's JSON on stdout.
    """
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="attnserve-bench-", suffix=".log", delete=False)  # noqa: SIM115
    command = [sys.executable, *program, "--model-repository", str(repository),
               "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--log-level", "WARNING",
               *flags]  # fmt: skip
    probe = f"127.0.0.1:{port}"
    if health_port:
        probe_port = free_port()
        command += ["--health-port", str(probe_port)]
        probe = f"127.0.0.1:{probe_port}"
    process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    address = f"127.0.0.1:{port}"
    with Client(probe, timeout=2.0, retries=0) as client:
        deadline = time.monotonic() + timeout
        while not client.health():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"attnserve did not start; its log: {log.name}")
            time.sleep(0.2)
    return process, address
