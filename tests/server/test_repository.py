from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from attnserve_server.errors import ModelLoadError, ModelNotFoundError, RepositoryError, UnavailableError
from attnserve_server.repository import ModelRepository

NAME = "tiny-gpt"


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


@pytest.fixture
def repo_copy(tiny_repository: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(tiny_repository, root)
    return root


def edit_metadata(root: Path, change: Callable[[dict[str, Any]], None], version: str = "1") -> None:
    path = root / NAME / version / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def load(root: Path, executor: ThreadPoolExecutor, limit: int = 1024) -> ModelRepository:
    repository = ModelRepository(root, default_max_new_tokens_limit=limit)
    for model_dir in repository.discover():
        repository.load_model(model_dir, executor)
    repository.ready = True
    return repository


def test_loads_the_model_with_its_config(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    repository = load(repo_copy, executor)
    model = repository.get(NAME)
    assert model.task == "text-generation"
    assert model.default_version == "1"
    assert model.max_new_tokens_limit == 48  # from config.yaml
    assert model.version().text_generation.context_length > 0
    assert [m.name for m in repository.models()] == [NAME]


def test_server_default_limit_without_config(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    (repo_copy / NAME / "config.yaml").unlink()
    assert load(repo_copy, executor, limit=33).get(NAME).max_new_tokens_limit == 33


def test_latest_version_is_served(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    shutil.copytree(repo_copy / NAME / "1", repo_copy / NAME / "10")
    shutil.copytree(repo_copy / NAME / "1", repo_copy / NAME / "2")
    (repo_copy / NAME / "notaversion").mkdir()
    model = load(repo_copy, executor).get(NAME)
    assert model.default_version == "10"
    assert model.version("10").version == "10"
    with pytest.raises(ModelNotFoundError, match="version '1'"):
        model.version("1")


def test_unknown_model(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        load(repo_copy, executor).get("nope")


def test_unknown_model_while_loading_is_unavailable(repo_copy: Path) -> None:
    repository = ModelRepository(repo_copy, default_max_new_tokens_limit=10)
    with pytest.raises(UnavailableError, match="loading"):
        repository.get(NAME)


def _unknown_key(meta: dict[str, Any]) -> None:
    meta["text_generation"]["context_lenght"] = 10


def _bad_task(meta: dict[str, Any]) -> None:
    meta["task"] = "translation"


def _missing_section(meta: dict[str, Any]) -> None:
    del meta["text_generation"]


def _wrong_input(meta: dict[str, Any]) -> None:
    meta["text_generation"]["inputs"]["input_ids"] = "tokens"


def _wrong_vocab(meta: dict[str, Any]) -> None:
    meta["text_generation"]["vocab_size"] += 7


def _wrong_heads(meta: dict[str, Any]) -> None:
    meta["text_generation"]["num_heads"] *= 2
    meta["text_generation"]["head_dim"] //= 2


def _bad_template(meta: dict[str, Any]) -> None:
    meta["text_generation"]["past_key_template"] = "past.key"


def _escaping_path(meta: dict[str, Any]) -> None:
    meta["model_file"] = "../../../etc/passwd"


def _bad_default(meta: dict[str, Any]) -> None:
    meta["text_generation"]["defaults"]["top_p"] = 2.0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_unknown_key, "context_lenght"),
        (_bad_task, "task"),
        (_missing_section, "text_generation section is missing"),
        (_wrong_input, "lacks inputs named in metadata.json: tokens"),
        (_wrong_vocab, "vocab_size"),
        (_wrong_heads, "test run of model.onnx failed"),
        (_bad_template, "past_key_template"),
        (_escaping_path, "outside the version directory"),
        (_bad_default, "top_p"),
    ],
)
def test_invalid_metadata_names_model_and_reason(
    repo_copy: Path, executor: ThreadPoolExecutor, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    edit_metadata(repo_copy, change)
    with pytest.raises(ModelLoadError, match=reason) as info:
        load(repo_copy, executor)
    assert info.value.model == NAME
    assert NAME in str(info.value)


def test_unreadable_metadata(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    (repo_copy / NAME / "1" / "metadata.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load(repo_copy, executor)


def test_missing_files(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    (repo_copy / NAME / "1" / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer_file 'tokenizer\.json' not found"):
        load(repo_copy, executor)


def test_corrupt_onnx(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    (repo_copy / NAME / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"):
        load(repo_copy, executor)


def test_bad_config_yaml(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    (repo_copy / NAME / "config.yaml").write_text("max_new_tokens_limt: 5\n")
    with pytest.raises(ModelLoadError, match="max_new_tokens_limt"):
        load(repo_copy, executor)


def test_no_versions(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    shutil.rmtree(repo_copy / NAME / "1")
    with pytest.raises(ModelLoadError, match="no version directories"):
        load(repo_copy, executor)


def test_bad_model_name(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    (repo_copy / "bad name").mkdir()
    with pytest.raises(RepositoryError, match="bad name"):
        load(repo_copy, executor)


def test_missing_repository(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    with pytest.raises(RepositoryError, match="not a directory"):
        load(tmp_path / "absent", executor)
