"""attnserve-client installs and works next to tritonclient[grpc] and the kserve SDK, which pin protobuf<7.

For each neighbour pip resolves ./client and the neighbour's release in one go into a venv of their own
(``ecosystem_venv``, cached under .venv-ecosystem/), as a user's ``pip install attnserve-client
"tritonclient[grpc]"`` would; there neighbours_check.py imports both and calls a real server
(``server_address``: tiny-gpt, run by .venv-test's interpreter) with each.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

CHECK = Path(__file__).with_name("neighbours_check.py")
TINY_MODEL = "tiny-gpt"
NEIGHBOURS = {"tritonclient": "tritonclient[grpc]==2.73.0", "kserve": "kserve==0.21.0"}

pytestmark = pytest.mark.ecosystem


@pytest.mark.slow
# The first build of a venv installs a few hundred MB (kserve's); later runs reuse it.
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("neighbour", NEIGHBOURS)
def test_the_client_works_next_to(
    neighbour: str,
    ecosystem_venv: Callable[[str, Sequence[str]], Any],
    server_address: str,
    record_ecosystem: Callable[[str, str], None],
) -> None:
    requirement = NEIGHBOURS[neighbour]
    venv = ecosystem_venv(neighbour, [requirement])
    record_ecosystem(f"venv of attnserve-client + {requirement}", f"{venv.how}, {venv.size_mb()} MB")
    result = subprocess.run(
        [str(venv.python), str(CHECK), neighbour, server_address, TINY_MODEL],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr[-6000:]
    report = json.loads(result.stdout.splitlines()[-1])

    versions = report["versions"]
    assert versions[neighbour] == requirement.rpartition("==")[2]
    # The neighbour's protobuf<7 held, and the client's stubs run on that runtime.
    assert versions["protobuf"].startswith("6."), versions
    assert report["runtime"] == {"protobuf": versions["protobuf"], "grpcio": versions["grpcio"]}
    assert report["stubs"][1] == "attnserve/v1/text_generation.proto"
    assert Path(report["client_file"]).is_relative_to(venv.path), "not the client installed in the venv"
    assert report["attnserve"]["models"] == [TINY_MODEL]
    assert report["attnserve"]["text"]
    if neighbour == "tritonclient":
        triton = report["tritonclient"]
        assert triton["live"] is True
        assert triton["metadata"] == {"name": TINY_MODEL, "inputs": [["text_input", "BYTES"]]}
        # Greedy decoding: the KServe v2 call gives the attnserve call's completion.
        assert triton["text"] == report["attnserve"]["text"]
    else:
        assert report["kserve"] == {"live": True, "model_ready": True}
