"""The KV-cache generation loop.

One prefill call runs the whole prompt; then each decode step feeds one token per sequence and
the previous step's ``present`` tensors back as ``past``, so the prefix is never recomputed.
ONNX Runtime runs in a thread pool (it releases the GIL) and the event loop only sees one await
per token, which is also where a cancelled client or a passed deadline stops the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import DeadlineExceededError
from attnserve_server.runtime import RuntimeSession
from attnserve_server.text.detokenizer import IncrementalDetokenizer
from attnserve_server.text.params import FinishReason, GenerationChunk, GenerationParams, Usage
from attnserve_server.text.sampler import Sampler
from attnserve_server.text.stop import StopMatcher
from attnserve_server.text.tokenizer import TextTokenizer

Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

# Prompts up to this many characters are tokenized on the event loop (tens of microseconds).
INLINE_TOKENIZE_CHARS = 4096


@dataclass(frozen=True)
class TextModelSpec:
    """What the loop needs to know about a model's ONNX graph (from its metadata)."""

    context_length: int
    vocab_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    input_ids_name: str
    attention_mask_name: str
    position_ids_name: str
    logits_name: str
    past_key_names: tuple[str, ...]
    past_value_names: tuple[str, ...]
    present_key_names: tuple[str, ...]
    present_value_names: tuple[str, ...]
    eos_token_id: int | None
    pad_token_id: int

    @property
    def output_names(self) -> tuple[str, ...]:
        """Logits, then the present key and value of each layer in order."""
        names = [self.logits_name]
        for key, value in zip(self.present_key_names, self.present_value_names, strict=True):
            names += [key, value]
        return tuple(names)


@dataclass
class _StepOutput:
    tokens: list[int]
    logprobs: list[float]
    past: list[FloatArray]  # key, value per layer: (B, nh, past_len, hs)


class TextGenerator:
    """Runs generations for one loaded model version."""

    def __init__(
        self, spec: TextModelSpec, session: RuntimeSession, tokenizer: TextTokenizer, executor: Executor
    ) -> None:
        self.spec = spec
        self.session = session
        self.tokenizer = tokenizer
        self._executor = executor

    async def encode(self, prompt: str) -> list[int]:
        """Tokenize; a long prompt off the event loop, where it cannot stall other streams.

        A short prompt takes microseconds in the Rust tokenizer, far less than the hop to a worker
        thread and back, and that hop would sit on every request's time to first token.
        """
        if len(prompt) <= INLINE_TOKENIZE_CHARS:
            return self.tokenizer.encode(prompt)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.tokenizer.encode, prompt)

    def empty_past(self, batch: int) -> list[FloatArray]:
        """Zero-length KV cache for a prefill call: each ``(B, nh, 0, hs)``."""
        shape = (batch, self.spec.num_heads, 0, self.spec.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.spec.num_layers)]

    def forward(
        self, input_ids: Int64Array, attention_mask: Int64Array, position_ids: Int64Array, past: Sequence[FloatArray]
    ) -> tuple[FloatArray, list[FloatArray]]:
        """One model call. Returns the last position's logits ``(B, vocab)`` and the new cache."""
        spec = self.spec
        feed: dict[str, npt.NDArray[np.generic]] = {
            spec.input_ids_name: input_ids,  # (B, T)
            spec.attention_mask_name: attention_mask,  # (B, past_len + T)
            spec.position_ids_name: position_ids,  # (B, T)
        }
        for layer in range(spec.num_layers):
            feed[spec.past_key_names[layer]] = past[2 * layer]  # (B, nh, past_len, hs)
            feed[spec.past_value_names[layer]] = past[2 * layer + 1]
        logits, *present = self.session.run(spec.output_names, feed)
        return logits[:, -1, :], present  # (B, T, V) -> (B, V)

    def _step(
        self,
        samplers: Sequence[Sampler],
        input_ids: Int64Array,
        attention_mask: Int64Array,
        position_ids: Int64Array,
        past: Sequence[FloatArray],
    ) -> _StepOutput:
        """Forward pass plus sampling; runs in a worker thread."""
        last_logits, present = self.forward(input_ids, attention_mask, position_ids, past)
        picks = [sampler.sample(row) for sampler, row in zip(samplers, last_logits, strict=True)]
        return _StepOutput([t for t, _ in picks], [lp for _, lp in picks], present)

    async def generate(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        max_new_tokens: int,
        *,
        deadline: float | None = None,
    ) -> AsyncIterator[GenerationChunk]:
        """Yield one chunk per generated token; the last one carries the finish reason and usage.

        ``max_new_tokens`` must already fit the context window (see ``params.fit_context``).
        ``deadline`` is a ``time.monotonic()`` instant.
        """
        loop = asyncio.get_running_loop()
        spec = self.spec
        # Batch size 1 for now, but every tensor keeps its batch dim so batching can slot in.
        samplers = [Sampler(params.sampling, seed=params.seed, vocab_size=spec.vocab_size, prompt_ids=prompt_ids)]
        detokenizer = IncrementalDetokenizer(self.tokenizer, prompt_ids)
        stopper = StopMatcher(params.stop)

        input_ids: Int64Array = np.asarray([prompt_ids], dtype=np.int64)  # (1, T)
        position_ids: Int64Array = np.arange(len(prompt_ids), dtype=np.int64)[None, :]  # (1, T)
        attention_mask: Int64Array = np.ones((1, len(prompt_ids)), dtype=np.int64)  # (1, T)
        past = self.empty_past(batch=1)

        generated = 0
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceededError(f"deadline exceeded after {generated} generated tokens")
            out = await loop.run_in_executor(
                self._executor, self._step, samplers, input_ids, attention_mask, position_ids, past
            )
            token, logprob = out.tokens[0], out.logprobs[0]
            generated += 1

            finish: FinishReason | None = None
            if spec.eos_token_id is not None and token == spec.eos_token_id:
                finish = FinishReason.END_OF_TEXT
                text = ""  # the end-of-text token has no text of its own
            else:
                text = stopper.push(detokenizer.push(token))
                if stopper.stopped:
                    finish = FinishReason.STOP
                elif generated >= max_new_tokens:
                    finish = FinishReason.LENGTH
            if finish in (FinishReason.END_OF_TEXT, FinishReason.LENGTH):
                text += stopper.push(detokenizer.flush())
                if not stopper.stopped:
                    text += stopper.flush()
                else:
                    finish = FinishReason.STOP

            yield GenerationChunk(
                text=text,
                token_ids=(token,),
                logprobs=(logprob,) if params.logprobs else (),
                finish_reason=finish,
                usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=generated) if finish else None,
            )
            if finish is not None:
                return

            # Decode step: one new token per sequence, attending to everything so far.
            past_len = attention_mask.shape[1]
            input_ids = np.asarray([[token]], dtype=np.int64)  # (1, 1)
            position_ids = np.asarray([[past_len]], dtype=np.int64)  # (1, 1)
            attention_mask = np.ones((1, past_len + 1), dtype=np.int64)  # (1, past_len + 1)
            past = out.past
