"""pytest for .venv-pb6, which tests/ecosystem/test_protobuf6.py runs as

    ATTNSERVE_EXPORT_PYTHON=.venv-test/bin/python .venv-pb6/bin/python tests/ecosystem/pb6_run.py tests/client ...

.venv-pb6 holds the client and the server on protobuf 6.33.5 and grpcio 1.81.1, and no torch. The
model fixtures of tests/conftest.py export their models with torch (attnserve-export), so this
plugin has that conftest's ``export_model`` and ``export_image_model`` run in a subprocess of
``$ATTNSERVE_EXPORT_PYTHON`` instead: the same functions with the same arguments and seeds, so the
same models. The tests, the client under test and the servers the fixtures start (``sys.executable``)
all stay on .venv-pb6's runtimes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import __version__ as protobuf_version

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
EXPORTERS = ("export_model", "export_image_model")

# Loads tests/conftest.py in the exporting interpreter and calls one exporter; prints the model dir.
EXPORT_SCRIPT = """
import ast, importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("attnserve_tests_conftest", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
exporter, root, name, kwargs = sys.argv[2], Path(sys.argv[3]), sys.argv[4], ast.literal_eval(sys.argv[5])
print(getattr(module, exporter)(root, name, **kwargs))
"""


def export_python() -> str:
    python = os.environ.get("ATTNSERVE_EXPORT_PYTHON")
    if not python:
        raise pytest.UsageError("ATTNSERVE_EXPORT_PYTHON must name an interpreter with attnserve-export (.venv-test)")
    return python


def exporting_in_subprocess(exporter: str) -> Any:
    """A stand-in for tests/conftest.py's ``exporter`` that runs it in ``$ATTNSERVE_EXPORT_PYTHON``."""

    def export(root: Path, name: str, **kwargs: Any) -> Path:
        # Arguments are plain literals (ints, floats, strings, tuples), so repr() carries them.
        args = [export_python(), "-c", EXPORT_SCRIPT, str(CONFTEST), exporter, str(root), name, repr(kwargs)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{exporter}({name!r}, **{kwargs!r}) failed:\n{result.stderr[-4000:]}")
        return Path(result.stdout.strip().splitlines()[-1])

    export.__name__ = exporter
    return export


class ExportWithTorchElsewhere:
    """Replaces the exporters of tests/conftest.py as soon as pytest loads it."""

    def pytest_plugin_registered(self, plugin: object) -> None:
        path = getattr(plugin, "__file__", None)
        if path is None or Path(path).resolve() != CONFTEST:
            return
        for exporter in EXPORTERS:
            if not callable(getattr(plugin, exporter, None)):
                raise pytest.UsageError(f"{CONFTEST} has no {exporter}() any more: update {__file__}")
            setattr(plugin, exporter, exporting_in_subprocess(exporter))

    def pytest_report_header(self) -> str:
        return f"protobuf {protobuf_version}, grpcio {grpc.__version__}; models exported by {export_python()}"


if __name__ == "__main__":
    sys.exit(pytest.main(sys.argv[1:], plugins=[ExportWithTorchElsewhere()]))
