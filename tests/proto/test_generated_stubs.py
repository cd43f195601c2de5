"""The committed attnserve.v1 stubs must be what `make proto` generates from proto/."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_proto_files() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"stale stubs, run `make proto`:\n{result.stderr[-4000:]}"


def test_stubs_import_from_the_client_package() -> None:
    from attnserve_client.pb import models_pb2, text_generation_pb2

    assert text_generation_pb2.DESCRIPTOR.package == "attnserve.v1"
    assert "ModelService" in models_pb2.DESCRIPTOR.services_by_name
    # The optional sampling fields must carry presence, so that unset means "model default".
    params = text_generation_pb2.GenerationParameters()
    assert not params.HasField("temperature")
    params.temperature = 0.0
    assert params.HasField("temperature")
