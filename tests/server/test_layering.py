"""The server's layering, checked on the code itself: engines load without grpc, modules stay small."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import attnserve_server

SERVER_ROOT = Path(attnserve_server.__file__).parent
# The engines and what they stand on: the task packages, the model format, the task table.
GRPC_FREE = (
    "attnserve_server.text",
    "attnserve_server.text2text",
    "attnserve_server.vision",
    "attnserve_server.model_format",
    "attnserve_server.embeddings",
)
GRPC_FREE_MODULES = ("attnserve_server.task_table", "attnserve_server.repository", "attnserve_server.handlers")
MAX_MODULE_LINES = 400


def _modules(package: str) -> list[str]:
    path = SERVER_ROOT.joinpath(*package.split(".")[1:])
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)])]


def test_engines_load_without_grpc() -> None:
    """In a fresh interpreter, importing every module of the task packages does not import grpc."""
    modules = [m for package in GRPC_FREE for m in _modules(package)] + list(GRPC_FREE_MODULES)
    assert "attnserve_server.text.continuous" in modules and "attnserve_server.vision.classifier" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'google.protobuf')))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "", f"grpc or protobuf imported by an engine module: {result.stdout}"


def test_hand_written_server_modules_stay_small() -> None:
    sizes = {
        path.relative_to(SERVER_ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in SERVER_ROOT.rglob("*.py")
        if "pb" not in path.relative_to(SERVER_ROOT).parts
    }
    too_long = {name: lines for name, lines in sizes.items() if lines >= MAX_MODULE_LINES}
    assert not too_long, f"split these modules by job (each under {MAX_MODULE_LINES} lines): {too_long}"
