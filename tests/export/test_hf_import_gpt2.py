"""Importing small GPT-2 folders written by transformers, checked against transformers itself.

Each folder is a ``GPT2LMHeadModel`` with random weights (``save_pretrained``), in one of the
variants that the import must map: GELU "gelu_new" or exact, LayerNorm epsilons, ``n_inner``,
``tokenizer.json`` or ``vocab.json`` + ``merges.txt``, one safetensors file or shards, with and
without ``generation_config.json`` and a chat template. The CLI imports each with
``--check-with-transformers``, whose figures (a left-padded batch and decode steps, ONNX graph
against ``GPT2LMHeadModel``) must be within 1e-4 relative.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer

from attnserve_export.__main__ import main
from attnserve_export.hf_import import import_checkpoint
from attnserve_export.hf_random import random_gpt2
from attnserve_export.onnx_export import ParityError

transformers = pytest.importorskip("transformers")

SMALL: dict[str, Any] = {"vocab_size": 512, "n_positions": 64, "n_layer": 2}
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
VARIANTS: dict[str, dict[str, Any]] = {
    # head_dim 16: the shared_buffer graph (GroupQueryAttention), the server's default.
    "gelu_new, vocab+merges, shared_buffer": {"n_embd": 64, "n_head": 4},
    # head_dim 12: the concat graph; exact GELU, another epsilon, a hidden width that is not 4x.
    "gelu, eps 1e-6, n_inner, tokenizer.json, concat": {
        "n_embd": 48,
        "n_head": 4,
        "activation_function": "gelu",
        "layer_norm_epsilon": 1e-6,
        "n_inner": 100,
        "tokenizer": "json",
    },
    # Shards with an index, a chat template and sampling defaults.
    "sharded, chat template, do_sample": {"n_embd": 64, "n_head": 4, "shards": True, "template": True},
}


def _make(folder: Path, variant: dict[str, Any]) -> Path:
    variant = dict(variant)
    shards, template = variant.pop("shards", False), variant.pop("template", False)
    tokenizer = variant.pop("tokenizer", "vocab")
    extra = {"chat_template": TEMPLATE} if template else {}
    random_gpt2(folder, tokenizer=tokenizer, tokenizer_config=extra, **SMALL, **variant)
    if shards:  # re-save the same weights as shards
        model = transformers.GPT2LMHeadModel.from_pretrained(str(folder))
        (folder / "model.safetensors").unlink()
        model.save_pretrained(str(folder), max_shard_size="100KB")
        generation = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 20, "eos_token_id": 511}
        (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, int]]:
    """Each variant: its folder, its imported version and the CLI's exit status."""
    root = tmp_path_factory.mktemp("hf-gpt2")
    out = {}
    for i, (name, variant) in enumerate(VARIANTS.items()):
        folder = _make(root / f"src{i}", variant)
        code = main(["import", str(folder), "--name", f"gpt2-{i}", "--repository", str(root / "models"),
                     "--check-with-transformers"])  # fmt: skip
        out[name] = (folder, root / "models" / f"gpt2-{i}" / "1", code)
    return out


def _metadata(version: Path) -> dict[str, Any]:
    metadata: dict[str, Any] = json.loads((version / "metadata.json").read_text())
    return metadata


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_import_matches_transformers_on_a_padded_batch_and_decode_steps(
    variant: str, imported: dict[str, tuple[Path, Path, int]]
) -> None:
    _, version, code = imported[variant]
    assert code == 0
    parity = _metadata(version)["provenance"]["transformers_parity"]
    assert parity["passed"] and parity["max_rel_diff"] <= 1e-4 and parity["argmax_mismatches"] == 0
    names = [case["name"] for case in parity["cases"]]
    assert names[0] == "prefill (transformers: left-padded batch)"
    assert names[1:] == [f"decode step {i}" for i in range(1, 5)]
    layout = "concat" if "concat" in variant else "shared_buffer"
    assert parity["kv_cache_layout"] == layout
    assert _metadata(version)["provenance"]["parity"]["max_rel_diff"] <= 1e-4  # ONNX against attnserve's GPT


def test_the_provenance_holds_the_command_and_the_config_hash(imported: dict[str, tuple[Path, Path, int]]) -> None:
    folder, version, _ = imported["gelu_new, vocab+merges, shared_buffer"]
    provenance = _metadata(version)["provenance"]
    assert provenance["import_command"].startswith(f"attnserve-export import {folder} --name gpt2-0 --repository ")
    source = provenance["source"]
    assert source["config_sha256"] == hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    assert source["architecture"] == "GPT2LMHeadModel" and source["tokenizer"] == "vocab.json + merges.txt"
    weights = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert source["weight_files_sha256"] == {"model.safetensors": weights}


def test_the_model_config_carries_the_gpt2_options(imported: dict[str, tuple[Path, Path, int]]) -> None:
    _, version, _ = imported["gelu, eps 1e-6, n_inner, tokenizer.json, concat"]
    config = _metadata(version)["provenance"]["model_config"]
    assert config["activation"] == "gelu" and config["ln_eps"] == 1e-6 and config["mlp_hidden_dim"] == 100
    _, version, _ = imported["gelu_new, vocab+merges, shared_buffer"]
    config = _metadata(version)["provenance"]["model_config"]
    assert config["activation"] == "gelu_tanh" and config["ln_eps"] == 1e-5 and config["mlp_hidden_dim"] is None


def test_generation_defaults_eos_and_chat_template(imported: dict[str, tuple[Path, Path, int]]) -> None:
    _, version, _ = imported["gelu_new, vocab+merges, shared_buffer"]
    section = _metadata(version)["text_generation"]
    # generation_config.json without do_sample: transformers decodes greedily.
    assert section["defaults"]["temperature"] == 0.0
    assert section["eos_token"] == "<|endoftext|>" and section["eos_token_id"] == 511
    assert "chat_template" not in section
    _, version, _ = imported["sharded, chat template, do_sample"]
    section = _metadata(version)["text_generation"]
    assert section["defaults"] == {
        "max_new_tokens": 20,
        "temperature": 0.7,
        "top_k": 50,
        "top_p": 0.9,
        "repetition_penalty": 1.0,
    }
    assert section["chat_template"] == TEMPLATE
    assert len(_metadata(version)["provenance"]["source"]["weight_files_sha256"]) > 1  # it was sharded


def test_without_generation_config_attnserve_defaults_apply(tmp_path: Path) -> None:
    folder = random_gpt2(tmp_path / "src", n_embd=32, n_head=2, **{**SMALL, "n_layer": 1})
    (folder / "generation_config.json").unlink()
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    result = import_checkpoint(folder, tmp_path / "models", "g", kv_cache_layout="concat")
    section = _metadata(result.version_dir)["text_generation"]
    assert section["defaults"]["temperature"] == 0.8 and section["defaults"]["max_new_tokens"] == 32
    assert section["eos_token_id"] == 511  # from config.json
    assert section["chat_template"] == TEMPLATE


TEXTS = ["Hello world", " Hello world", "ROMEO.\nBut soft!", "naïve café — 東京 🙂", "  two  spaces\t", ""]


@pytest.mark.parametrize("variant", list(VARIANTS)[:2])
def test_the_tokenizer_encodes_like_transformers(variant: str, imported: dict[str, tuple[Path, Path, int]]) -> None:
    folder, version, _ = imported[variant]
    ours = Tokenizer.from_file(str(version / "tokenizer.json"))
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ids == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ids) == text
    assert ours.token_to_id("<|endoftext|>") == 511


def test_a_graph_that_disagrees_with_transformers_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """attnserve's GPT and its graph agree with each other but not with the folder: only the
    transformers check can see it, and then nothing is written."""
    from attnserve_export import hf_import, hf_text

    folder = random_gpt2(tmp_path / "src", n_embd=32, n_head=2, **{**SMALL, "n_layer": 1})
    real = hf_text.gpt2_state_dict

    def off_by_a_little(weights: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
        state = real(weights, cfg)
        state["ln_f.bias"] = state["ln_f.bias"] + 0.05
        return state

    monkeypatch.setattr(hf_import, "gpt2_state_dict", off_by_a_little)
    with pytest.raises(ParityError, match="disagrees with transformers"):
        import_checkpoint(folder, tmp_path / "models", "g", check_with_transformers=True)
    assert list((tmp_path / "models").iterdir()) == []
