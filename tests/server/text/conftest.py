"""Fixtures of the text engine tests."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from attnserve_server.model_format.config import ModelConfig
from attnserve_server.repository import ModelRepository
from attnserve_server.text.engine import TextEngine


@pytest.fixture(scope="module")
def load_text_engine(executor: ThreadPoolExecutor) -> Callable[[Path], TextEngine]:
    """``load_text_engine(model_dir)``: version 1 of an exported model, loaded as the server loads it,
    with the test module's ``executor``."""

    def load(model_dir: Path) -> TextEngine:
        repository = ModelRepository(model_dir.parent)
        version = repository.load_version(model_dir.name, model_dir / "1", ModelConfig(), executor)
        return version.engine_as(TextEngine)

    return load
