"""The eager PyTorch KV-cache generation loop (the benchmarks' baseline)."""

from __future__ import annotations

import pytest
import torch

from attnserve_export.generate import generate, sample_next
from attnserve_export.gpt import GPT, PRESETS


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(PRESETS["tiny"].with_(pos_encoding="rotary")).eval()


def test_greedy_matches_recompute(model: GPT) -> None:
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    result = generate(model, prompts, max_new_tokens=6, temperature=0)
    assert result.decode_steps == 6 and result.new_tokens == 12
    for prompt, new in zip(prompts, result.tokens, strict=True):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(6):
                logits, _ = model(torch.tensor([seq]))
                seq.append(int(logits[0, -1].argmax()))
        assert new == seq[len(prompt) :]


def test_stops_at_eos(model: GPT) -> None:
    first = generate(model, [[5, 6, 7]], max_new_tokens=3, temperature=0).tokens[0][0]
    result = generate(model, [[5, 6, 7]], max_new_tokens=10, temperature=0, eos_token_id=first)
    assert result.tokens == [[first]]
    fixed = generate(model, [[5, 6, 7]], max_new_tokens=10, temperature=0, eos_token_id=first, stop_at_eos=False)
    assert len(fixed.tokens[0]) == 10


def test_sampling_is_seeded_and_filtered(model: GPT) -> None:
    a = generate(model, [[1, 2, 3]], max_new_tokens=8, seed=5)
    b = generate(model, [[1, 2, 3]], max_new_tokens=8, seed=5)
    assert a.tokens == b.tokens
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    picks = {int(sample_next(logits, temperature=1.0, top_k=2, top_p=1.0, generator=None)) for _ in range(50)}
    assert picks <= {1, 2}
    picks = {int(sample_next(logits, temperature=1.0, top_k=0, top_p=0.5, generator=None)) for _ in range(50)}
    assert picks == {1}


def test_context_overflow(model: GPT) -> None:
    with pytest.raises(ValueError):
        generate(model, [[1] * 60], max_new_tokens=10)
