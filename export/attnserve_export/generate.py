"""A PyTorch eager KV-cache generation loop: the baseline that benchmarks compare the server against.

It drives :class:`~attnserve_export.gpt.GPT` exactly as the server drives the ONNX graph:
one left-padded prefill call with ``past_len = 0``, then one token per sequence per
step, feeding the previous step's cache back in. Sampling follows the metadata's
generation defaults (temperature, top-k, top-p, repetition penalty).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from attnserve_export.gpt import GPT, KVCache, left_pad


@dataclass
class GenerationResult:
    """New tokens per prompt (without the prompt, up to and including EOS) and timings."""

    tokens: list[list[int]]
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int
    step_seconds: list[float] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` ``(B, vocab)``; temperature 0 means greedy.

    Returns:
        ``(B,)`` int64 token ids.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, vocab)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already hold top_p of the mass (the first always stays).
        drop_sorted = cumulative - sorted_logits.softmax(-1) > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: shrink the logits of tokens already in the sequence.

    Args:
        logits: ``(B, vocab)``.
        seen: ``(B, vocab)`` bool, True for tokens in the prompt or already generated.
    """
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


@torch.inference_mode()
def generate(
    model: GPT,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 0.95,
    repetition_penalty: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    seed: int | None = None,
    stop_at_eos: bool = True,
) -> GenerationResult:
    """Generate continuations for a batch of token-id prompts with a KV cache.

    Args:
        prompts: token ids per sequence (different lengths are left-padded).
        stop_at_eos: stop a sequence once it samples ``eos_token_id``; benchmarks that
            need a fixed number of steps pass False.

    Returns:
        The new tokens per prompt and the prefill and per-step decode times.
    """
    if not prompts or any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.config.context_length:
        raise ValueError(
            f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the context of "
            f"{model.config.context_length} tokens"
        )
    model.eval()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    batch = len(prompts)
    ids, mask, positions = left_pad(prompts, pad_token_id)
    seen = torch.zeros(batch, model.config.vocab_size, dtype=torch.bool)
    seen.scatter_(1, ids, mask.bool())

    start = time.perf_counter()
    logits, cache = model(ids, mask, positions)
    prefill_seconds = time.perf_counter() - start

    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(batch, dtype=torch.bool)
    step_seconds: list[float] = []
    cache_: KVCache = cache
    for step in range(max_new_tokens):
        step_start = time.perf_counter()
        last = apply_repetition_penalty(logits[:, -1], seen, repetition_penalty)  # (B, vocab)
        next_ids = sample_next(last, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)  # (B,)
        for row, token in enumerate(next_ids.tolist()):
            if not done[row]:
                out[row].append(token)
        seen[torch.arange(batch), next_ids] = True
        if stop_at_eos and eos_token_id is not None:
            done |= next_ids == eos_token_id
            if bool(done.all()):
                step_seconds.append(time.perf_counter() - step_start)
                break
        if step == max_new_tokens - 1:  # the last token needs no forward pass
            step_seconds.append(time.perf_counter() - step_start)
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.int64)], dim=1)  # (B, P + 1)
        positions = positions[:, -1:] + 1  # (B, 1)
        logits, cache_ = model(next_ids.unsqueeze(1), mask, positions, cache_)
        step_seconds.append(time.perf_counter() - step_start)
    return GenerationResult(
        tokens=out,
        prefill_seconds=prefill_seconds,
        decode_seconds=sum(step_seconds),
        decode_steps=len(step_seconds),
        step_seconds=step_seconds,
    )
