"""Generate the Python stubs: attnserve.v1 into the client, KServe v2 (``inference``) into the server.

protoc writes absolute imports (``from attnserve.v1 import x_pb2``) that only
work if ``attnserve`` is a top-level package. The stubs live inside the client
instead (``attnserve_client.pb``), so the imports are rewritten after
generation. The ``inference.*`` stubs go to ``attnserve_server.kserve.pb`` and
register their descriptors in a private pool rather than the process-wide one:
tritonclient ships the same ``inference.*`` symbols, and both sets in one
default pool would clash ("duplicate symbol"). Run with ``make proto``;
``--check`` exits non-zero when the committed stubs differ from freshly
generated ones.

The generator is pinned (requirements/proto.txt) and runs in a venv of its own,
``.venv-proto`` (``make install-proto``): grpcio-tools 1.81.1 is the newest
that writes protobuf-6 gencode, which imports on protobuf 6.33.5+ and on 7.x,
while the test venv keeps protobuf 7. Any other grpcio-tools is refused, as it
would write different stubs.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
GENERATOR_REQUIREMENTS = REPO / "requirements" / "proto.txt"


@dataclass(frozen=True)
class Target:
    """One proto package and where its stubs go."""

    proto_package: str  # e.g. "attnserve.v1"
    stub_dir: Path
    stub_package: str
    init_text: str
    # Register descriptors in the stub package's own pool (``POOL`` in its __init__) instead of the default one.
    private_pool: bool = False

    @property
    def proto_dir(self) -> Path:
        return PROTO_ROOT.joinpath(*self.proto_package.split("."))


KSERVE_INIT = '''"""Generated KServe v2 (``inference``) protobuf and gRPC stubs. Do not edit: run `make proto`.

They live in their own descriptor pool, so that a process may also import tritonclient, whose
stubs define the same ``inference.*`` symbols in the default pool.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''

TARGETS = (
    Target(
        "attnserve.v1",
        REPO / "client" / "attnserve_client" / "pb",
        "attnserve_client.pb",
        '"""Generated attnserve.v1 protobuf and gRPC stubs. Do not edit: run `make proto`."""\n',
    ),
    Target(
        "inference",
        REPO / "server" / "attnserve_server" / "kserve" / "pb",
        "attnserve_server.kserve.pb",
        KSERVE_INIT,
        private_pool=True,
    ),
)
# The attnserve.v1 stubs, as before (kept for callers of this module).
STUB_DIR = TARGETS[0].stub_dir


def generate(out_dir: Path, target: Target = TARGETS[0]) -> None:
    """Run protoc on every proto of the target's package and write fixed-up stubs into out_dir."""
    protos = sorted(target.proto_dir.glob("*.proto"))
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *(str(p.relative_to(PROTO_ROOT)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for produced in sorted(Path(raw).joinpath(*target.proto_package.split(".")).iterdir()):
            text = produced.read_text()
            package = re.escape(target.proto_package)
            text = re.sub(rf"^from {package} import", f"from {target.stub_package} import", text, flags=re.M)
            if target.private_pool:
                text = text.replace(
                    "# @@protoc_insertion_point(imports)\n",
                    f"# @@protoc_insertion_point(imports)\nfrom {target.stub_package} import POOL as _POOL\n",
                )
                text = text.replace("_descriptor_pool.Default().AddSerializedFile(", "_POOL.AddSerializedFile(")
            (out_dir / produced.name).write_text(text)
    (out_dir / "__init__.py").write_text(target.init_text)


def pinned_generator_version() -> str:
    """The ``grpcio-tools==X`` version pinned in requirements/proto.txt."""
    match = re.search(r"^grpcio-tools==(\S+)\s*$", GENERATOR_REQUIREMENTS.read_text(), flags=re.M)
    if match is None:
        raise SystemExit(f"{GENERATOR_REQUIREMENTS} pins no grpcio-tools==VERSION")
    return match.group(1)


def check_generator_version() -> None:
    """Refuse to run with a grpcio-tools other than the pinned one: its stubs would differ."""
    pinned, installed = pinned_generator_version(), importlib.metadata.version("grpcio-tools")
    if installed != pinned:
        raise SystemExit(
            f"grpcio-tools {installed} is installed in {sys.prefix}, but the stubs are generated with {pinned} "
            f"(requirements/proto.txt): run `make proto` / `make proto-check`, which use .venv-proto"
        )


def stale_files(committed: Path, fresh: Path) -> list[str]:
    """Names of stub files that differ between the two directories."""
    names = {p.name for p in committed.glob("*.py*")} | {p.name for p in fresh.glob("*.py*")}
    stale = []
    for name in sorted(names):
        a, b = committed / name, fresh / name
        if not a.exists() or not b.exists() or a.read_text() != b.read_text():
            stale.append(name)
            if a.exists() and b.exists():
                old, new = a.read_text().splitlines(True), b.read_text().splitlines(True)
                diff = difflib.unified_diff(old, new, str(a), str(b))
                sys.stderr.writelines(diff)
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report whether the committed stubs are stale")
    args = parser.parse_args()
    check_generator_version()
    if not args.check:
        for target in TARGETS:
            generate(target.stub_dir, target)
        return 0
    stale: list[str] = []
    for target in TARGETS:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp), target)
            stale += [f"{target.stub_package}.{name}" for name in stale_files(target.stub_dir, Path(tmp))]
    if stale:
        print(f"stale generated stubs: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
