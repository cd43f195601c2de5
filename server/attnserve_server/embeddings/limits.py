"""The Embed RPC's caps of one model: ``config.yaml``'s ``embeddings`` entry over the defaults."""

from __future__ import annotations

from attnserve_server.embeddings.engine import EmbeddingsLimits
from attnserve_server.model_format.config import ModelConfig

DEFAULT_MAX_INPUTS = 32


def embeddings_limits(config: ModelConfig, *, context_length: int = 0) -> EmbeddingsLimits:
    """The caps; a text model's tokens per text never exceed its context length (its default)."""
    overrides = config.embeddings
    max_inputs = (overrides.max_inputs if overrides else None) or DEFAULT_MAX_INPUTS
    max_tokens = (overrides.max_tokens_per_text if overrides else None) or context_length
    return EmbeddingsLimits(max_inputs=max_inputs, max_tokens_per_text=min(max_tokens, context_length))
