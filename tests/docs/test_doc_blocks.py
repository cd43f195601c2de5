"""The code blocks of README.md and docs/*.md: every shell and Python block says whether it is tested,
and every ``tested`` one runs against a real server.

The fence of a shell (bash, sh, shell, console) or Python block carries a tag after its language:
```` ```bash tested ```` or ```` ```bash not-tested: <reason> ````. Other languages (text, yaml, json,
promql, ...) need none, but every fence names a language, so that a new untagged command cannot hide
in a bare fence.

How a ``tested`` block runs:

- One server (``session_server_launcher`` from tests/conftest.py) serves the shipped ``models/``
  (shakespeare-gpt, numbers-translator, digits-vit, digits-swin) on a free loopback port, with its metrics on a free
  port (``--metrics-port 0``; the port is read from its log).
- Each block is one test, with the id ``FILE:LINE`` of its opening fence, and runs in a fresh
  working directory. That directory holds ``digit.png``, which several blocks classify: the test
  digit ``load_digits().images[8]`` (an 8), made as tests/e2e makes them (values 0-16 to 8-bit grey,
  bicubic 64x64, PNG).
- The docs' ``127.0.0.1:50051`` becomes the server's address, ``9464`` its metrics port, and
  ``.venv/bin/`` and ``.venv-test/bin/`` the directory of ``sys.executable`` (which also comes first
  on ``PATH``). ``ATTNSERVE_TARGET`` is the server's address, so the ``attnserve`` CLI finds it.
- Shell blocks run with ``bash`` after ``set -euo pipefail``; in a ``console`` block only the lines
  that start with ``$ `` (and their ``\\`` continuation lines) are commands, the rest is output.
  Python blocks run in a subprocess of ``sys.executable``.
- A block fails on a non-zero exit status or after BLOCK_TIMEOUT_S, and the failure shows the code
  that ran and its output.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console", "zsh"})
PYTHON_LANGUAGES = frozenset({"python", "py", "python3"})
TAG = re.compile(r"^(tested|not-tested: \S.*)$")
README_LIMIT_BYTES = 12 * 1024
BLOCK_TIMEOUT_S = 90
DOCS_ADDRESS = "127.0.0.1:50051"
DOCS_METRICS_PORT = "9464"
DOCS_BIN_DIRS = (".venv-test/bin/", ".venv/bin/")
METRICS_LOG = re.compile(r"metrics on http://[^:/]+:(\d+)/metrics")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    tag: str  # the rest of the info string
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.language in SHELL_LANGUAGES | PYTHON_LANGUAGES


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (indented fences, as in list items, included)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            line = lines[j]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"{path.relative_to(ROOT)}:{i + 1}: the code block is never closed")
        language, _, tag = opening["info"].strip().partition(" ")
        blocks.append(Block(path, i + 1, language.lower(), tag.strip(), "\n".join(body) + "\n"))
        i = j + 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in parse_blocks(path)]
TESTED = [block for block in ALL_BLOCKS if block.runnable and block.tag == "tested"]


def console_commands(code: str) -> str:
    """The commands of a console block: the ``$ `` lines, with their backslash continuation lines."""
    commands: list[str] = []
    continued = False
    for line in code.splitlines():
        if line.startswith("$ "):
            commands.append(line[2:])
        elif continued:
            commands.append(line)
        else:
            continue
        continued = line.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


# --- every block is tagged ------------------------------------------------------------------------


def test_every_shell_and_python_block_is_tagged() -> None:
    problems: list[str] = []
    for block in ALL_BLOCKS:
        if not block.language:
            problems.append(f"{block.id}: a fence without a language (use ```text for plain text)")
        elif block.runnable and not TAG.match(block.tag):
            problems.append(
                f"{block.id}: ```{block.language} needs `tested` or `not-tested: <reason>` after the language,"
                f" got {block.tag!r}"
            )
        elif not block.runnable and block.tag.startswith(("tested", "not-tested")):
            problems.append(f"{block.id}: only shell and Python blocks are run; ```{block.language} needs no tag")
        elif block.tag == "tested" and block.language == "console" and not console_commands(block.code).strip():
            problems.append(f"{block.id}: a tested console block without a `$ ` command line")
    assert not problems, "\n".join(problems)
    assert TESTED, "no tested blocks found in README.md and docs/"


def test_readme_is_short() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size < README_LIMIT_BYTES, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT_BYTES})"


# --- relative links point at files and headings that exist ----------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The numbered lines (1-based) of a Markdown file outside its code blocks."""
    lines: list[tuple[int, str]] = []
    closing: re.Pattern[str] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if closing is not None:
            if closing.match(line):
                closing = None
        elif (opening := FENCE.match(line)) is not None:
            fence = opening["fence"]
            closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        else:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for _, line in prose_lines(path):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading[1])
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def test_relative_links_resolve() -> None:
    problems: list[str] = []
    for path in DOC_FILES:
        for number, line in prose_lines(path):
            for target in LINK.findall(INLINE_CODE.sub("", line)):
                if re.match(r"^[a-z]+:", target):
                    continue  # https:, mailto:
                file_part, _, anchor = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(ROOT)}:{number}"
                if not linked.exists():
                    problems.append(f"{where}: {target}: no such file")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    problems.append(f"{where}: {target}: no heading with that anchor in {linked.name}")
    assert not problems, "\n".join(problems)


# --- every tested block runs against a real server ------------------------------------------------


@dataclass(frozen=True)
class DocsServer:
    address: str
    metrics_port: int


@pytest.fixture(scope="module")
def docs_server(session_server_launcher: Callable[..., Any]) -> DocsServer:
    """A real server on the shipped models (the launcher adds ``--metrics-port 0``: a free port)."""
    server = session_server_launcher(MODELS)
    found = METRICS_LOG.search(server.stderr())
    assert found, f"the server did not log its metrics port:\n{server.stderr()}"
    return DocsServer(address=server.address, metrics_port=int(found[1]))


@pytest.fixture(scope="module")
def digit_png() -> bytes:
    """Test digit 8 of scikit-learn's digits, made as a user would (as in tests/e2e)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    grey = np.clip(np.round(load_digits().images[8] * 255 / 16), 0, 255).astype(np.uint8)
    image = Image.fromarray(grey, mode="L").resize((64, 64), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def substitute(code: str, server: DocsServer, bin_dir: str) -> str:
    code = code.replace(DOCS_ADDRESS, server.address).replace(DOCS_METRICS_PORT, str(server.metrics_port))
    for docs_bin in DOCS_BIN_DIRS:
        code = code.replace(docs_bin, bin_dir + os.sep)
    return code


@pytest.mark.timeout(BLOCK_TIMEOUT_S + 30)
@pytest.mark.parametrize("block", TESTED, ids=[block.id for block in TESTED])
def test_tested_block_runs(block: Block, docs_server: DocsServer, digit_png: bytes, tmp_path: Path) -> None:
    (tmp_path / "digit.png").write_bytes(digit_png)
    bin_dir = str(Path(sys.executable).parent)
    code = console_commands(block.code) if block.language == "console" else block.code
    code = substitute(code, docs_server, bin_dir)
    env = {
        **os.environ,
        "ATTNSERVE_TARGET": docs_server.address,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    if block.language in SHELL_LANGUAGES:
        code = "set -euo pipefail\n" + code
        args = ["bash", "-c", code]
    else:
        script = tmp_path / "doc_block.py"
        script.write_text(code, encoding="utf-8")
        args = [sys.executable, str(script)]
    try:
        done = subprocess.run(
            args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(
            f"{block.id}: still running after {BLOCK_TIMEOUT_S} s\n--- code\n{code}\n--- output\n{timeout.output}"
        )
    assert done.returncode == 0, (
        f"{block.id}: exit status {done.returncode}\n--- code\n{code}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
