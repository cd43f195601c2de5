"""One generation's state inside the batch: its sampler, detokenizer, stop strings and stream.

The scheduler feeds each sampled token to :meth:`GenerationSequence.accept`, which turns it into
the chunk the client sees and decides whether the sequence is finished. Everything here is per
sequence, so a request keeps its own settings, seed and stop strings whatever else is batched
with it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from attnserve_server.text.detokenizer import IncrementalDetokenizer
from attnserve_server.text.params import FinishReason, GenerationChunk, GenerationParams, Usage
from attnserve_server.text.sampler import Sampler
from attnserve_server.text.stop import StopMatcher
from attnserve_server.text.tokenizer import TextTokenizer

_ids = itertools.count()

# What a sequence's stream carries: chunks, then at most one error that ends it.
StreamItem = GenerationChunk | BaseException


@dataclass(eq=False)
class GenerationSequence:
    """A request from admission to its last chunk. Owned by one scheduler."""

    prompt_ids: list[int]
    params: GenerationParams
    max_new_tokens: int
    deadline: float | None
    sampler: Sampler
    detokenizer: IncrementalDetokenizer
    stopper: StopMatcher
    eos_token_id: int | None
    stream: asyncio.Queue[StreamItem] = field(default_factory=asyncio.Queue)
    id: int = field(default_factory=lambda: next(_ids))
    prefilled: int = 0  # prompt tokens already in the KV cache
    generated: int = 0
    last_token: int | None = None  # sampled but not yet fed back to the model
    finished: bool = False
    cancelled: bool = False  # the consumer went away: leave at the next step
    submitted_at: float = field(default_factory=time.monotonic)
    admitted_at: float | None = None  # when it left the wait queue for the batch

    @classmethod
    def create(
        cls,
        prompt_ids: list[int],
        params: GenerationParams,
        max_new_tokens: int,
        *,
        deadline: float | None,
        tokenizer: TextTokenizer,
        vocab_size: int,
        eos_token_id: int | None,
        context_ids: list[int] | None = None,
    ) -> GenerationSequence:
        """``context_ids``: what the output continues (default: the prompt), for the detokenizer and penalties."""
        context = prompt_ids if context_ids is None else context_ids
        return cls(
            prompt_ids=list(prompt_ids),
            params=params,
            max_new_tokens=max_new_tokens,
            deadline=deadline,
            sampler=Sampler(
                params.sampling,
                seed=params.seed,
                vocab_size=vocab_size,
                prompt_ids=context,
                logprobs=params.logprobs,
            ),
            detokenizer=IncrementalDetokenizer(tokenizer, context),
            stopper=StopMatcher(params.stop),
            eos_token_id=eos_token_id,
        )

    @property
    def reserved_tokens(self) -> int:
        """KV cache positions this sequence may come to hold: its prompt plus every token it may generate."""
        return len(self.prompt_ids) + self.max_new_tokens

    @property
    def cached_tokens(self) -> int:
        """Positions in the KV cache now: the prefilled prompt and every generated token fed back so far."""
        return self.prefilled + max(0, self.generated - 1)

    @property
    def decoding(self) -> bool:
        """Prompt fully in the cache and a sampled token waiting to be fed."""
        return self.prefilled == len(self.prompt_ids) and self.last_token is not None

    def accept(self, token: int, logprob: float) -> GenerationChunk:
        """Take one sampled token; return its chunk. Sets :attr:`finished` on the last one."""
        self.generated += 1
        self.last_token = token
        finish: FinishReason | None = None
        if self.eos_token_id is not None and token == self.eos_token_id:
            finish = FinishReason.END_OF_TEXT
            text = ""  # the end-of-text token has no text of its own
        else:
            text = self.stopper.push(self.detokenizer.push(token))
            if self.stopper.stopped:
                finish = FinishReason.STOP
            elif self.generated >= self.max_new_tokens:
                finish = FinishReason.LENGTH
        if finish in (FinishReason.END_OF_TEXT, FinishReason.LENGTH):
            text += self.stopper.push(self.detokenizer.flush())
            if not self.stopper.stopped:
                text += self.stopper.flush()
            else:
                finish = FinishReason.STOP
        self.finished = finish is not None
        return GenerationChunk(
            text=text,
            token_ids=(token,),
            logprobs=(logprob,) if self.params.logprobs else (),
            finish_reason=finish,
            usage=Usage(prompt_tokens=len(self.prompt_ids), completion_tokens=self.generated) if finish else None,
        )
