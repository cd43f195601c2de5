"""The optional ``embeddings`` entry of a task section: the extra graph that exposes hidden states.

A version's fast serving graph (``model_file``) returns logits only. Embeddings come from a second
graph in the same version directory that returns one hidden state per *layer*:

- layer 0 is the input embedding (tokens or patches, with positions where the model adds them);
- layer i is the output of transformer block i (GPT, ViT) or of stage i's blocks at the stage's
  own resolution, before patch merging (Swin: layers then differ in width and token count);
- the last layer has the model's final norm applied: what its head reads.

Text graphs take ``input_ids`` and ``attention_mask`` (1 for real tokens, 0 for left padding) and
count positions from the mask themselves; image graphs take the same pixels as the serving graph.
Old versions without the entry keep loading; the Embed RPC tells their clients there is no graph.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from attnserve_server.model_format.metadata import Strict

Pooling = Literal["mean", "last", "cls", "none"]
POOLINGS: tuple[Pooling, ...] = ("mean", "last", "cls", "none")
EMBEDDINGS_FILE = "embeddings.onnx"


class EmbeddingsGraph(Strict):
    """Where a version's hidden states come from (``<section>.embeddings`` in ``metadata.json``)."""

    file: str = EMBEDDINGS_FILE
    # The graph's inputs, in order: (input_ids, attention_mask) for text, (pixels,) for images.
    input_names: tuple[str, ...] = Field(min_length=1, max_length=2)
    # One output per layer, layer 0 first; each (batch, tokens, dim).
    hidden_states: tuple[str, ...] = Field(min_length=1)
    # The width of each layer's vectors.
    dims: tuple[PositiveInt, ...] = Field(min_length=1)
    # Image graphs: the tokens of each layer (fixed by the image size). Text: unset (one per token).
    num_tokens: tuple[PositiveInt, ...] | None = None
    # Token 0 of every layer is a class token (ViT): it enables the ``cls`` pooling.
    class_token: bool = False
    # The pooling that a request without one gets.
    default_pooling: Pooling

    @model_validator(mode="after")
    def _consistent(self) -> EmbeddingsGraph:
        if len(self.dims) != len(self.hidden_states):
            raise ValueError("dims needs one width per hidden_states output")
        if self.num_tokens is not None and len(self.num_tokens) != len(self.hidden_states):
            raise ValueError("num_tokens needs one count per hidden_states output")
        if self.default_pooling not in self.poolings():
            raise ValueError(f"default_pooling must be one of {', '.join(self.poolings())}")
        return self

    @property
    def is_text(self) -> bool:
        return len(self.input_names) == 2

    @property
    def num_layers(self) -> int:
        """Hidden states on offer (layer 0 included)."""
        return len(self.hidden_states)

    def poolings(self) -> tuple[Pooling, ...]:
        """The poolings that make sense for this graph (``none`` always does)."""
        if self.is_text:
            return ("last", "mean", "none")
        return ("cls", "mean", "none") if self.class_token else ("mean", "none")
