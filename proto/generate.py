"""Generate the attnserve.v1 Python stubs into the client package.

protoc writes absolute imports (``from attnserve.v1 import x_pb2``) that only
work if ``attnserve`` is a top-level package. The stubs live inside the client
instead (``attnserve_client.pb``), so the imports are rewritten after
generation. Run with ``make proto``; ``--check`` exits non-zero when the
committed stubs differ from freshly generated ones.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PROTO_PACKAGE_DIR = PROTO_ROOT / "attnserve" / "v1"
STUB_DIR = REPO / "client" / "attnserve_client" / "pb"
STUB_PACKAGE = "attnserve_client.pb"
INIT_TEXT = '"""Generated attnserve.v1 protobuf and gRPC stubs. Do not edit: run `make proto`."""\n'


def generate(out_dir: Path) -> None:
    """Run protoc on every attnserve.v1 proto and write fixed-up stubs into out_dir."""
    protos = sorted(PROTO_PACKAGE_DIR.glob("*.proto"))
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
        for produced in sorted((Path(raw) / "attnserve" / "v1").iterdir()):
            text = produced.read_text()
            text = re.sub(r"^from attnserve\.v1 import", f"from {STUB_PACKAGE} import", text, flags=re.M)
            (out_dir / produced.name).write_text(text)
    (out_dir / "__init__.py").write_text(INIT_TEXT)


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
    if not args.check:
        generate(STUB_DIR)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = stale_files(STUB_DIR, Path(tmp))
    if stale:
        print(f"stale generated stubs: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
