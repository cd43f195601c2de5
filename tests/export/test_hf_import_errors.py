"""`attnserve-export import` refuses bad folders with a clear message and writes nothing.

Each case starts from a valid folder written by transformers (a tiny random GPT-2 or ViT) and
breaks one thing. The repository must hold nothing afterwards: no model folder, and no hidden
staging folder left behind.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attnserve_export.__main__ import main
from attnserve_export.hf_random import random_gpt2, random_image_classifier

GPT2_SHAPE: dict[str, Any] = {"vocab_size": 300, "n_positions": 32, "n_embd": 32, "n_layer": 1, "n_head": 2}
VIT_SHAPE: dict[str, Any] = {
    "image_size": 16,
    "patch_size": 8,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 24,
}


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_gpt2(tmp_path_factory.mktemp("hf") / "gpt2", **GPT2_SHAPE)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "vit"
    return random_image_classifier(folder, "vit", processor={"size": {"height": 16, "width": 16}}, **VIT_SHAPE)


def _import(folder: Path, repository: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["import", str(folder), "--name", "m", "--repository", str(repository), *extra])
    return code, capsys.readouterr().err


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _assert_nothing_written(repository: Path) -> None:
    assert not repository.exists() or list(repository.iterdir()) == []


def _pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    # A pickle that would run code if it were ever loaded: the import must never open it.
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))


def _unsupported(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    config["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(config))


def _wrong_shape(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["n_embd"] = 48  # the weights are 32 wide
    config["n_head"] = 2
    (folder / "config.json").write_text(json.dumps(config))


def _extra_layer(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 2  # the weights have one block
    (folder / "config.json").write_text(json.dumps(config))


def _no_tokenizer(folder: Path) -> None:
    (folder / "vocab.json").unlink()


def _truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


GPT2_CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "pickle-only": (_pickle_only, ("pickle format (pytorch_model.bin)", "never unpickles", "safetensors")),
    "unsupported architecture": (
        _unsupported,
        ("BertForMaskedLM", "not supported", "GPT2LMHeadModel", "ViTForImageClassification", "SwinForImage"),
    ),
    "config disagrees with the weights' shapes": (_wrong_shape, ("disagrees with the weights", "[300, 32]", "48")),
    "config has more layers than the weights": (_extra_layer, ("no tensor h.1.",)),
    "missing tokenizer": (_no_tokenizer, ("no tokenizer", "tokenizer.json", "vocab.json", "merges.txt")),
    "truncated safetensors": (_truncated, ("model.safetensors is not a readable safetensors file", "truncated")),
}


@pytest.mark.parametrize("case", sorted(GPT2_CASES))
def test_a_broken_gpt2_folder_is_refused_and_nothing_is_written(
    case: str, gpt2_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    breaks, says = GPT2_CASES[case]
    folder = _copy(gpt2_folder, tmp_path)
    breaks(folder)
    repository = tmp_path / "models"
    code, err = _import(folder, repository, capsys)
    assert code == 2, err
    for words in says:
        assert words in err, f"{words!r} not in {err!r}"
    assert "Traceback" not in err
    _assert_nothing_written(repository)


class _Tripwire:
    """Unpickling this touches ``path``: proof that something loaded the pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


def test_the_pickle_is_never_loaded(gpt2_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _copy(gpt2_folder, tmp_path)
    (folder / "model.safetensors").unlink()
    tripwire = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Tripwire(tripwire)))
    code, err = _import(folder, tmp_path / "models", capsys)
    assert code == 2 and "pytorch_model.bin" in err
    assert not tripwire.exists()


def test_a_vit_without_its_preprocessor_file_is_refused(
    vit_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(vit_folder, tmp_path)
    (folder / "preprocessor_config.json").unlink()
    code, err = _import(folder, tmp_path / "models", capsys)
    assert code == 2
    assert "preprocessor_config.json (the image preprocessing) is missing" in err
    _assert_nothing_written(tmp_path / "models")


def test_an_unserved_preprocessing_is_refused(
    vit_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(vit_folder, tmp_path)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps(config | {"resample": 4}))  # BOX
    code, err = _import(folder, tmp_path / "models", capsys)
    assert code == 2 and "resample 4 is not supported" in err
    _assert_nothing_written(tmp_path / "models")


def test_a_shard_index_naming_a_file_outside_the_folder_is_refused(
    gpt2_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(gpt2_folder, tmp_path)
    (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    index = {"metadata": {}, "weight_map": {"transformer.wte.weight": "../elsewhere.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    code, err = _import(folder, tmp_path / "models", capsys)
    assert code == 2 and "is not a file name inside" in err


def test_an_existing_version_is_not_overwritten(
    gpt2_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "models"
    (repository / "m" / "3").mkdir(parents=True)
    (repository / "m" / "3" / "keep").write_text("mine")
    code, err = _import(gpt2_folder, repository, capsys, "--version", "3")
    assert code == 2 and "already exists" in err
    assert (repository / "m" / "3" / "keep").read_text() == "mine"
    assert sorted(p.name for p in repository.iterdir()) == ["m"]


def test_the_import_does_not_need_transformers(
    gpt2_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With transformers unimportable, an import works; only --check-with-transformers asks for it."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    code, err = _import(gpt2_folder, tmp_path / "models", capsys, "--kv-cache-layout", "concat")
    assert code == 0, err
    assert (tmp_path / "models" / "m" / "1" / "model.onnx").exists()
    code, err = _import(gpt2_folder, tmp_path / "other", capsys, "--check-with-transformers")
    assert code == 2 and "--check-with-transformers needs the transformers package" in err
    _assert_nothing_written(tmp_path / "other")
