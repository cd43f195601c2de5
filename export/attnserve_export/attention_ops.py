"""The position encodings and attention masks that the GPT and the encoder–decoder share, as small
typed functions: sin/cos and rotary positions, the causal-plus-padding mask, and attention computed
the explicit way (keeping its probabilities) for the explain path.
"""

from __future__ import annotations

import math

import torch


def sinusoidal_embedding(position_ids: torch.Tensor, dim: int) -> torch.Tensor:
    """The fixed sine/cosine position embedding of "Attention Is All You Need".

    Computed from ``position_ids`` on the fly rather than looked up in a table, so it
    works for any position and exports as a handful of elementwise ops.

    Args:
        position_ids: ``(B, T)`` integer positions.
        dim: embedding width (even).

    Returns:
        ``(B, T, dim)`` float32 embeddings: sines in the first half, cosines in the second.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=position_ids.device) * (-math.log(10000.0) / half))
    angles = position_ids.to(torch.float32).unsqueeze(-1) * freqs  # (B, T, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (B, T, dim)


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines for rotary position embedding (RoPE) at the given positions.

    Returns:
        ``cos, sin``, each ``(B, 1, T, head_dim)`` so that they broadcast over heads.
    """
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(half, dtype=torch.float32, device=position_ids.device) / half))
    angles = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq  # (B, T, half)
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)  # (B, 1, T, hs)
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, nh, T, hs)`` by position, in the "rotate half" layout (GPT-NeoX / Llama)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, nh, T, hs)
    return x * cos + rotated * sin


def build_attention_mask(attention_mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Combine the causal mask with the padding mask into one boolean mask.

    The new ``seq_len`` queries sit at the end of the ``past_len + seq_len`` keys, so
    query ``i`` may see key ``j`` when ``j <= past_len + i`` and key ``j`` is real.
    A query always sees itself, even when it is padding: a left-padding query would
    otherwise see no key at all and its softmax would be NaN, and a NaN can leak into
    real rows through ``0 * NaN`` in later matmuls. Real queries never see padding keys,
    so padding cannot change their output.

    Args:
        attention_mask: ``(B, P + T)`` with 1 for real tokens and 0 for left padding.
        seq_len: ``T``, the number of new tokens.

    Returns:
        ``(B, 1, T, P + T)`` boolean, True where attention is allowed.
    """
    total = attention_mask.shape[1]
    past_len = total - seq_len
    device = attention_mask.device
    query_pos = torch.arange(seq_len, device=device).unsqueeze(1) + past_len  # (T, 1)
    key_pos = torch.arange(total, device=device).unsqueeze(0)  # (1, P + T)
    causal = key_pos <= query_pos  # (T, P + T)
    is_self = key_pos == query_pos  # (T, P + T)
    real_key = (attention_mask > 0).unsqueeze(1).unsqueeze(2)  # (B, 1, 1, P + T)
    return (causal & real_key) | is_self  # (B, 1, T, P + T)


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T / sqrt(hs))`` with a boolean ``mask`` (True: allowed), the way SDPA computes it
    but keeping the probabilities: the explain path's attention.

    Forbidden pairs get ``-inf``, so their probability is exactly 0, as in SDPA; every row must allow
    at least one key (:func:`build_attention_mask` always allows a query itself).

    Args:
        q: ``(B, nh, T, hs)`` queries; k, v: ``(B, nh, S, hs)``.
        mask: broadcastable to ``(B, nh, T, S)``, True where attention is allowed.

    Returns:
        The attended values ``(B, nh, T, hs)`` and the probabilities ``(B, nh, T, S)``.
    """
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, nh, T, S)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # (B, nh, T, S)
    return probs @ v, probs
