"""Fixtures of the fuzz tiers: two real servers on the test models, and a report printed at the end of the run.

- ``fuzz_servers``: ``{"main": ServerProcess, "explicit": ServerProcess}``. Both serve a repository
  holding ``tiny-gpt`` and ``tiny-digits`` (copies of the session's test models); ``explicit`` runs
  ``--model-control-mode explicit --load-model tiny-gpt`` so that RepositoryModelLoad/Unload act.
- ``fuzz_report``: ``fuzz_report(title, text)`` keeps a summary that the terminal summary prints,
  so the status-code histogram is seen without ``pytest -s``.

Hypothesis's own files go to ``$TMPDIR/attnserve-hypothesis`` (or ``HYPOTHESIS_STORAGE_DIRECTORY``),
never into the checkout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps caches in ./.hypothesis; the fuzz tiers write nothing in the checkout (they also
# run with database=None).
set_hypothesis_home_dir(
    os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or Path(tempfile.gettempdir()) / "attnserve-hypothesis"
)

_REPORTS = pytest.StashKey[list[tuple[str, str]]]()


@pytest.fixture(scope="module")
def fuzz_servers(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_repository: Path,
    image_repository: Path,
    session_server_launcher: Callable[..., Any],
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz-models")
    for repository, name in ((tiny_repository, "tiny-gpt"), (image_repository, "tiny-digits")):
        shutil.copytree(repository / name, root / name, symlinks=False)
    servers = {
        "main": session_server_launcher(root),
        "explicit": session_server_launcher(root, "--model-control-mode", "explicit", "--load-model", "tiny-gpt"),
    }
    yield servers
    # Stopped here rather than at the end of the session; the launcher deletes the logs then.
    failures = []
    for name, server in servers.items():
        running = server.process.poll() is None
        code = server.terminate()
        if running and code != 0:
            failures.append(f"{name} server exited with {code} on SIGTERM, not 0:\n{server.stderr()[-3000:]}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def fuzz_report(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    def report(title: str, text: str) -> None:
        request.config.stash.setdefault(_REPORTS, []).append((title, text))

    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for title, text in config.stash.get(_REPORTS, []):
        terminalreporter.section(title)
        terminalreporter.write_line(text)
