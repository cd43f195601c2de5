"""A GPT-2 at the real ``gpt2`` shape (124M parameters, 50,257 tokens, 1024 positions), random weights.

transformers writes it (``initializer_range`` 0.2, ``save_pretrained``, a synthetic 50,257-token
vocab.json + merges.txt); ``attnserve-export import`` reads it, and a real server serves it:

- the mapping is exact: attnserve's GPT and transformers' model agree to ~1e-13 in float64;
- the ONNX graph against transformers' float32 model: a left-padded batch and decode steps;
- 32 greedy tokens through the server equal ``generate(do_sample=False)`` token for token, wherever
  transformers' top-1/top-2 margin is above 1e-3 x max |logit| (the other positions are exempt:
  float32 may break such a near-tie either way).

Why the logit tolerance here is 1e-3 and not 1e-4: weights of standard deviation 0.2 put a 12-layer
GPT-2 in a chaotic regime where float32 rounding grows along the sequence. transformers' own float32
logits differ from its float64 logits by more than 1e-4 relative on the longer prompts (the test
prints the figure), so no float32 implementation can match it to 1e-4 there. The same shape with
GPT-2's own initializer range (0.02) is held to 1e-4, as are the small models of test_hf_import_gpt2.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from attnserve_client import Client
from attnserve_export.gpt import GPT, GPTConfig, left_pad
from attnserve_export.hf_checkpoint import read_checkpoint
from attnserve_export.hf_import import import_checkpoint
from attnserve_export.hf_random import random_gpt2
from attnserve_export.hf_text import gpt2_state_dict
from attnserve_export.onnx_export import PARITY_PROMPTS

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

NAME = "gpt2-random"
TOLERANCE = 1e-3  # see the module docstring
MARGIN = 1e-3
NEW_TOKENS = 32
PROMPT = "ROMEO.\nBut soft, what light through yonder window breaks?"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The folder and the imported version (with --check-with-transformers); removed afterwards (1 GB)."""
    root = tmp_path_factory.mktemp("gpt2-124m")
    folder = random_gpt2(root / "gpt2", initializer_range=0.2)
    result = import_checkpoint(
        folder, root / "models", NAME, check_with_transformers=True, max_rel_diff=TOLERANCE, command="test"
    )
    yield folder, result.version_dir
    shutil.rmtree(root, ignore_errors=True)


def test_at_gpt2s_own_initializer_range_the_graph_matches_transformers_to_1e_4(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("gpt2-124m-std")
    try:
        folder = random_gpt2(root / "gpt2", initializer_range=0.02, seed=1)
        result = import_checkpoint(folder, root / "models", NAME, check_with_transformers=True, command="test")
    finally:
        shutil.rmtree(root)  # 1 GB that pytest would otherwise keep for three sessions
    assert result.transformers is not None
    parity = result.transformers
    assert parity["passed"] and parity["max_rel_diff"] <= 1e-4 and parity["argmax_mismatches"] == 0
    print(f"\ninitializer_range 0.02: ONNX against transformers, max rel diff {parity['max_rel_diff']:.3g}")


@pytest.fixture(scope="module")
def server_address(gpt2: tuple[Path, Path], session_server_launcher: Callable[..., Any]) -> Iterator[str]:
    """A real server for the imported version, stopped before the module's files are removed."""
    server = session_server_launcher(gpt2[1].parent.parent)
    yield server.address
    assert server.terminate() == 0


@pytest.fixture(scope="module")
def reference(gpt2: tuple[Path, Path]) -> Any:
    return transformers.GPT2LMHeadModel.from_pretrained(str(gpt2[0]), dtype=torch.float32).eval()


def _metadata(version: Path) -> dict[str, Any]:
    metadata: dict[str, Any] = json.loads((version / "metadata.json").read_text())
    return metadata


def test_it_is_the_real_gpt2_shape(gpt2: tuple[Path, Path]) -> None:
    metadata = _metadata(gpt2[1])
    section = metadata["text_generation"]
    assert (section["vocab_size"], section["context_length"], section["num_layers"]) == (50257, 1024, 12)
    assert (section["num_heads"], section["head_dim"], section["kv_cache_layout"]) == (12, 64, "shared_buffer")
    assert metadata["provenance"]["num_parameters"] == 124_439_808
    assert section["eos_token"] == "<|endoftext|>" and section["eos_token_id"] == 50256


def test_the_mapping_is_exact_in_float64(gpt2: tuple[Path, Path], reference: Any) -> None:
    """attnserve's GPT with the imported weights computes transformers' function: what is left in
    float32 is rounding. Also prints transformers' own float32 error, which bounds any parity."""
    folder, version = gpt2
    config = GPTConfig(**_metadata(version)["provenance"]["model_config"])
    state = gpt2_state_dict(read_checkpoint(folder).weights, config)
    ours = GPT(config).double()
    ours.load_state_dict({k: v.double() for k, v in state.items()})
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(folder), dtype=torch.float64).eval()
    tokenizer = Tokenizer.from_file(str(version / "tokenizer.json"))
    ids, mask, positions = left_pad([tokenizer.encode(p).ids for p in PARITY_PROMPTS], 50256)
    with torch.inference_mode():
        exact = theirs(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours.eval()(ids, mask, positions)[0]
        single = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits.double()
    real = mask.bool()
    scale = exact[real].abs().max()
    assert float((mine[real] - exact[real]).abs().max() / scale) < 1e-10
    own_error = float((single[real] - exact[real]).abs().max() / scale)
    print(f"\ntransformers float32 against float64, same inputs: max rel diff {own_error:.3g}")


def test_the_graph_matches_transformers_on_a_padded_batch_and_decode_steps(gpt2: tuple[Path, Path]) -> None:
    parity = _metadata(gpt2[1])["provenance"]["transformers_parity"]
    assert parity["passed"] and parity["max_rel_diff"] <= TOLERANCE and parity["argmax_mismatches"] == 0
    assert [c["name"] for c in parity["cases"]][:2] == ["prefill (transformers: left-padded batch)", "decode step 1"]
    figures = ", ".join(f"{c['name']}: {c['rel_diff']:.3g}" for c in parity["cases"])
    print(f"\nONNX against transformers (max |Δlogit| / max |logit|): {figures}")


def compare_greedy(expected: list[int], logits: np.ndarray, got: list[int]) -> dict[str, Any]:
    """Token-by-token comparison with the margin rule.

    Position i is exempt when the reference's top-1/top-2 logit margin is <= MARGIN x max |logit|
    there. The outputs must agree up to the first difference, which must be at an exempt position;
    after it the two continue from different prefixes and are not compared.
    """
    top2 = np.sort(logits, axis=-1)[:, -2:]
    exempt = (top2[:, 1] - top2[:, 0]) <= MARGIN * np.abs(logits).max(axis=-1)
    for i, (want, have) in enumerate(zip(expected, got, strict=False)):
        if want != have:
            assert exempt[i], f"token {i}: server {have}, transformers {want}, margin above the exemption"
            return {"compared": i + 1, "exempt": int(exempt[: i + 1].sum()), "diverged_at": i}
    assert len(got) == len(expected), f"server gave {len(got)} tokens, transformers {len(expected)}"
    return {"compared": len(expected), "exempt": int(exempt[: len(expected)].sum()), "diverged_at": None}


def test_greedy_generation_through_the_server_equals_transformers(
    gpt2: tuple[Path, Path], reference: Any, server_address: str
) -> None:
    folder, version = gpt2
    prompt_ids = transformers.AutoTokenizer.from_pretrained(str(folder))(PROMPT)["input_ids"]
    assert Tokenizer.from_file(str(version / "tokenizer.json")).encode(PROMPT).ids == prompt_ids
    with torch.inference_mode():
        out = reference.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.int64),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=50256,
        )
    expected = out.sequences[0, len(prompt_ids) :].tolist()
    logits = torch.cat(out.logits).numpy()  # (steps, vocab)
    with Client(server_address) as client:
        generation = client.generate(PROMPT, model=NAME, max_new_tokens=NEW_TOKENS, temperature=0.0)
    outcome = compare_greedy(expected, logits, list(generation.token_ids))
    print(f"\ngreedy, {NEW_TOKENS} tokens: {outcome} ({len(set(expected))} distinct tokens)")
    assert outcome["compared"] == NEW_TOKENS or outcome["diverged_at"] is not None


def test_the_margin_rule() -> None:
    logits = np.array([[3.0, 1.0, 0.0], [2.0, 1.9999, 0.0], [5.0, 0.0, 1.0]])
    assert compare_greedy([0, 0, 0], logits, [0, 0, 0]) == {"compared": 3, "exempt": 1, "diverged_at": None}
    assert compare_greedy([0, 0, 0], logits, [0, 1, 2])["diverged_at"] == 1  # a near-tie: exempt
    with pytest.raises(AssertionError, match="token 0"):
        compare_greedy([0, 0, 0], logits, [1, 0, 0])
