from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from attnserve_server.errors import ModelLoadError, ModelNotFoundError, RepositoryError, UnavailableError
from attnserve_server.repository import ModelRepository
from attnserve_server.settings import ServerSettings
from attnserve_server.text.metadata import TextGenerationMetadata
from attnserve_server.vision.batcher import BatchingConfig
from attnserve_server.vision.classifier import ImageClassifier
from attnserve_server.vision.metadata import ImageClassificationMetadata

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
    repository = ModelRepository(root, settings=ServerSettings(model_repository=root, max_new_tokens_limit=limit))
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
    assert model.version().section_as(TextGenerationMetadata).context_length > 0
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
    repository = ModelRepository(repo_copy)
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


def test_corrupt_onnx_fails_closed(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    # A file the external-data check cannot walk is refused, never handed to ONNX Runtime unchecked.
    (repo_copy / NAME / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot be read as an ONNX model") as info:
        load(repo_copy, executor)
    assert str(repo_copy) not in str(info.value)


def test_onnx_runtime_refusal_names_no_server_path(repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    (repo_copy / NAME / "1" / "model.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load") as info:
        load(repo_copy, executor)
    assert str(repo_copy.resolve()) not in info.value.reason and "/tmp" not in info.value.reason


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


IMAGE = "tiny-digits"


@pytest.fixture
def image_repo_copy(image_repository: Path, tmp_path: Path) -> Path:
    root = tmp_path / "image-models"
    root.mkdir()
    shutil.copytree(image_repository / IMAGE, root / IMAGE)
    return root


def edit_image_metadata(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = root / IMAGE / "1" / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_loads_an_image_classification_model(image_repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    model = load(image_repo_copy, executor).get(IMAGE)
    assert model.task == "image-classification"
    version = model.version()
    assert version.section_as(ImageClassificationMetadata).num_classes == 10
    assert version.engine_as(ImageClassifier).spec.labels[0] == "zero"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["image_classification"].update(colour="grey"), "colour: Extra inputs are not permitted"),
        (lambda m: m.pop("image_classification"), "image_classification section is missing"),
        (lambda m: m.update(text_generation={}), "text_generation"),
        (lambda m: m["image_classification"].update(channels=2), "channels"),
        (lambda m: m["image_classification"].update(resample="fancy"), "resample"),
        (lambda m: m["image_classification"].update(resize_policy="resize_center_crop"), "needs crop_ratio"),
        (lambda m: m["image_classification"].update(mean=[0.5, 0.5, 0.5]), "mean needs one value per channel"),
        (lambda m: m["image_classification"].update(std=[0.0]), "std values must be positive"),
        (lambda m: m["image_classification"].update(num_classes=11), "has 10 labels but num_classes is 11"),
        (lambda m: m["image_classification"].update(labels_file="nope.json"), "labels_file 'nope.json' not found"),
        (lambda m: m["image_classification"].update(input_name="image"), "no input 'image'"),
        (lambda m: m["image_classification"].update(output_name="probs"), "no output 'probs'"),
        (lambda m: m["image_classification"].update(height=32), "has shape (batch, 1, 16, 16)"),
        (lambda m: m["image_classification"].update(channels=3, mean=[0, 0, 0], std=[1, 1, 1]), "implies (batch, 3"),
    ],
    ids=[
        "unknown-key",
        "missing-section",
        "other-section",
        "channels",
        "resample",
        "crop-ratio",
        "mean-length",
        "std-zero",
        "num-classes",
        "labels-file",
        "input-name",
        "output-name",
        "height",
        "channels-vs-graph",
    ],
)
def test_bad_image_metadata_fails_loudly(
    image_repo_copy: Path, executor: ThreadPoolExecutor, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    edit_image_metadata(image_repo_copy, change)
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        load(image_repo_copy, executor)


def test_labels_must_be_a_list_of_strings(image_repo_copy: Path, executor: ThreadPoolExecutor) -> None:
    (image_repo_copy / IMAGE / "1" / "labels.json").write_text('{"0": "zero"}')
    with pytest.raises(ModelLoadError, match="JSON list of strings"):
        load(image_repo_copy, executor)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("dynamic_batching:\n  max_batch_size: 4\n", "only applies to image-classification models"),
        ("dynamic_batching:\n  max_batch_sise: 4\n", "dynamic_batching.max_batch_sise: Extra inputs are not permitted"),
        ("dynamic_batching:\n  max_queue_size: 0\n", "dynamic_batching.max_queue_size"),
        ("dynamic_batching:\n  max_queue_delay_ms: -1\n", "dynamic_batching.max_queue_delay_ms"),
    ],
    ids=["text-model", "typo", "zero-queue", "negative-delay"],
)
def test_bad_dynamic_batching_config_fails_the_load(
    repo_copy: Path, executor: ThreadPoolExecutor, config: str, message: str
) -> None:
    (repo_copy / NAME / "config.yaml").write_text(config)
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        load(repo_copy, executor)


def test_dynamic_batching_config_overrides_the_server_defaults(
    image_repository: Path, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    root = tmp_path / "images"
    shutil.copytree(image_repository / "tiny-digits", root / "tiny-digits")
    (root / "tiny-digits" / "config.yaml").write_text("dynamic_batching:\n  max_queue_delay_ms: 7.5\n")
    settings = ServerSettings(model_repository=root, image_max_batch_size=3, image_max_queue_size=9)
    repository = ModelRepository(root, settings=settings)
    model = repository.load_model(root / "tiny-digits", executor)
    assert model.version().engine_as(ImageClassifier).batcher.config == BatchingConfig(
        max_batch_size=3, max_queue_delay_s=0.0075, max_queue_size=9
    )
