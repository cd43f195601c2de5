"""The Explain RPC's caps of one model: ``config.yaml``'s ``explain`` entry over the defaults."""

from __future__ import annotations

from attnserve_server.explain.engine import ExplainLimits
from attnserve_server.model_format.config import ModelConfig

DEFAULT_MAX_MAPS = 64
# Text: a T x T map per layer and head grows with the square of the text; past this many tokens
# the maps are too many numbers to read (and a config.yaml can still raise it to the context).
DEFAULT_MAX_TOKENS = 256
DEFAULT_MAX_NEW_TOKENS = 32


def explain_limits(config: ModelConfig, *, context_length: int = 0, target_context_length: int = 0) -> ExplainLimits:
    """The caps; a text's tokens never exceed the context length, nor generated tokens the target's."""
    overrides = config.explain
    max_maps = (overrides.max_maps if overrides else None) or DEFAULT_MAX_MAPS
    max_tokens = (overrides.max_tokens if overrides else None) or DEFAULT_MAX_TOKENS
    max_new = (overrides.max_new_tokens if overrides else None) or DEFAULT_MAX_NEW_TOKENS
    return ExplainLimits(
        max_tokens=min(max_tokens, context_length),
        max_maps=max_maps,
        # The decoder reads the start token and every generated token but the last.
        max_new_tokens=min(max_new, target_context_length),
    )
