"""The committed stubs (attnserve.v1 in the client, inference.* in the server) must be what `make proto`
generates from proto/, with the pinned generator of .venv-proto (requirements/proto.txt)."""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUB_DIRS = (REPO / "client" / "attnserve_client" / "pb", REPO / "server" / "attnserve_server" / "kserve" / "pb")
# `make install-proto` (a prerequisite of `make test`) makes it; .venv-test has another grpcio-tools.
PROTO_PYTHON = Path(os.environ.get("ATTNSERVE_PROTO_PYTHON", REPO / ".venv-proto" / "bin" / "python"))


def test_committed_stubs_match_the_proto_files() -> None:
    if not PROTO_PYTHON.exists():
        pytest.fail(f"{PROTO_PYTHON} does not exist: `make install-proto` (or `make test`) creates it")
    result = subprocess.run(
        [str(PROTO_PYTHON), str(REPO / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"stale stubs, run `make proto`:\n{result.stderr[-4000:]}"


def _versions(pattern: str, files: list[Path]) -> set[tuple[int, ...]]:
    found = set()
    for path in files:
        match = re.search(pattern, path.read_text(), flags=re.M)
        assert match, f"{pattern!r} not in {path}"
        found.add(tuple(int(part) for part in match.group(1).split(".")))
    return found


def _lower_bound(pyproject: Path, package: str) -> tuple[int, ...]:
    match = re.search(rf'^\s*"{re.escape(package)}>=([0-9.]+)[,"]', pyproject.read_text(), flags=re.M)
    assert match, f"no {package}>= in {pyproject}"
    return tuple(int(part) for part in match.group(1).split("."))


def test_the_declared_lower_bounds_are_what_the_stubs_check_at_import() -> None:
    """Generated code refuses a protobuf older than its gencode version and a grpcio older than
    GRPC_GENERATED_VERSION. The client asks for exactly those, no more: protobuf-6 gencode lets it share
    a venv with packages that pin protobuf<7 (tritonclient[grpc], the kserve SDK)."""
    stubs = [*STUB_DIRS[0].glob("*.py"), *STUB_DIRS[1].glob("*.py")]
    gencode = _versions(r"^# Protobuf Python Version: (\S+)$", [p for p in stubs if p.name.endswith("_pb2.py")])
    grpc_generated = _versions(r"^GRPC_GENERATED_VERSION = '(\S+)'$", [p for p in stubs if p.name.endswith("_grpc.py")])
    assert len(gencode) == 1 and len(grpc_generated) == 1, (gencode, grpc_generated)
    (protobuf_floor,), (grpcio_floor,) = gencode, grpc_generated
    assert protobuf_floor[0] == 6
    assert _lower_bound(REPO / "client" / "pyproject.toml", "protobuf") == protobuf_floor
    assert _lower_bound(REPO / "client" / "pyproject.toml", "grpcio") == grpcio_floor
    assert _lower_bound(REPO / "server" / "pyproject.toml", "grpcio") >= grpcio_floor


def test_stubs_import_from_the_client_package() -> None:
    from attnserve_client.pb import models_pb2, text_generation_pb2

    assert text_generation_pb2.DESCRIPTOR.package == "attnserve.v1"
    assert "ModelService" in models_pb2.DESCRIPTOR.services_by_name
    # The optional sampling fields must carry presence, so that unset means "model default".
    params = text_generation_pb2.GenerationParameters()
    assert not params.HasField("temperature")
    params.temperature = 0.0
    assert params.HasField("temperature")
