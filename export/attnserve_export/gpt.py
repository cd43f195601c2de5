"""A GPT-style decoder-only transformer, written from scratch in the nanoGPT style.

The model's ``forward`` follows the attnserve ONNX contract for text generation
(see ``docs/model-repository.md``): it takes left-padded ``input_ids``, an
``attention_mask`` over past + current tokens, ``position_ids`` counted over real
tokens only and an optional KV cache, and returns logits plus the updated cache.
The same code path serves training (no cache), prefill and decode, so what is
exported is exactly what was trained.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnserve_export.attention_ops import (
    apply_rotary,
    build_attention_mask,
    explicit_attention,
    rotary_cos_sin,
    sinusoidal_embedding,
)

PositionalEncoding = Literal["learned", "sinusoidal", "rotary"]
# GELU of the MLP: "gelu_tanh" is the tanh approximation (GPT-2's "gelu_new"), "gelu" the exact erf form.
Activation = Literal["gelu_tanh", "gelu"]
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GPTConfig:
    """Hyperparameters of a :class:`GPT`."""

    vocab_size: int = 50257
    context_length: int = 1024
    num_layers: int = 12
    num_heads: int = 12
    dim: int = 768
    mlp_ratio: int = 4
    pos_encoding: PositionalEncoding = "learned"
    rope_base: float = 10000.0
    dropout: float = 0.0
    bias: bool = True
    # Width of the MLP's hidden layer; None: mlp_ratio * dim (GPT-2's n_inner).
    mlp_hidden_dim: int | None = None
    activation: Activation = "gelu_tanh"
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.activation not in ("gelu_tanh", "gelu"):
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.mlp_hidden_dim is not None and self.mlp_hidden_dim <= 0:
            raise ValueError(f"mlp_hidden_dim must be positive, got {self.mlp_hidden_dim}")
        if not self.ln_eps > 0:
            raise ValueError(f"ln_eps must be positive, got {self.ln_eps}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_encoding not in ("learned", "sinusoidal", "rotary"):
            raise ValueError(f"unknown pos_encoding {self.pos_encoding!r}")
        if self.pos_encoding == "rotary" and self.head_dim % 2:
            raise ValueError("rotary position encoding needs an even head_dim")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """Width of the MLP's hidden layer."""
        return self.mlp_hidden_dim or self.mlp_ratio * self.dim

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def with_(self, **changes: object) -> GPTConfig:
        """A copy with some fields changed (e.g. the vocab size of a trained tokenizer)."""
        return replace(self, **changes)  # type: ignore[arg-type]


PRESETS: dict[str, GPTConfig] = {
    # Small enough that a test exports and checks it in a second or two.
    "tiny": GPTConfig(vocab_size=512, context_length=64, num_layers=2, num_heads=2, dim=32, pos_encoding="learned"),
    # The shipped default model: sized for ~1 hour of training on 2 CPU cores and < 25 MB as fp32 ONNX.
    # Rotary positions train faster than learned ones at this scale and add no parameters.
    "shakespeare": GPTConfig(
        vocab_size=4096,
        context_length=256,
        num_layers=6,
        num_heads=6,
        dim=192,
        pos_encoding="rotary",
        bias=False,
    ),
    # The 124M-parameter GPT-2 shape, for benchmarks (random weights are fine there).
    "gpt2-small": GPTConfig(
        vocab_size=50257, context_length=1024, num_layers=12, num_heads=12, dim=768, pos_encoding="learned"
    ),
}


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional KV cache."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.rotary = config.pos_encoding == "rotary"
        self.rope_base = config.rope_base
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=config.bias)
        self.proj = nn.Linear(config.dim, config.dim, bias=config.bias)
        self.dropout = config.dropout

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of ``x`` ``(B, T, C)``, each ``(B, nh, T, hs)``, rotated if the model rotates."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)  # 3 x (B, T, C)
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:
            # Keys are cached after rotation, so a cached key never needs its position again.
            q = apply_rotary(q, *rope)
            k = apply_rotary(k, *rope)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, c = x.shape
        q, k, v = self.project(x, rope)  # (B, nh, T, hs) each
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nh, P + T, hs)
            v = torch.cat([past[1], v], dim=2)  # (B, nh, P + T, hs)
        # mask None means "plain causal, no padding, no cache" (training): SDPA's fused causal kernel.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.proj(y), (k, v)

    def explain(
        self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`forward` computes without a cache, the explicit way: the output and the
        attention probabilities ``(B, nh, T, T)`` (zero where ``mask`` forbids)."""
        b, t, c = x.shape
        y, probs = explicit_attention(*self.project(x, rope), mask)  # (B, nh, T, hs), (B, nh, T, T)
        return self.proj(y.transpose(1, 2).reshape(b, t, c)), probs  # (B, T, C)


class MLP(nn.Module):
    """The position-wise feed-forward network: Linear → GELU → Linear."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.dim, config.hidden_dim, bias=config.bias)
        self.proj = nn.Linear(config.hidden_dim, config.dim, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)
        # tanh GELU by default: exports as plain elementwise ops and matches GPT-2.
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))
        return out


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim, eps=config.ln_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.dim, eps=config.ln_eps, bias=config.bias)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn_out, present = self.attn(self.ln_1(x), mask, rope, past)
        return self._rest(x, attn_out), present

    def explain(
        self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` without a cache, with attention's probabilities ``(B, nh, T, T)`` kept."""
        attn_out, probs = self.attn.explain(self.ln_1(x), mask, rope)
        return self._rest(x, attn_out), probs

    def _rest(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The block after attention: the residual, then the MLP's."""
        x = x + self.drop(attn_out)
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    """A GPT decoder with tied input/output embeddings."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.dim)
        self.wpe = nn.Embedding(config.context_length, config.dim) if config.pos_encoding == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.ln_f = nn.LayerNorm(config.dim, eps=config.ln_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        # Tied weights: saves vocab x dim parameters (a big share of a small model) and helps small data.
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's variance flat in depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Unique parameters (the tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Run the decoder on new tokens, attending to an optional cache.

        Args:
            input_ids: ``(B, T)`` int64 token ids (left-padded).
            attention_mask: ``(B, P + T)`` 1 for real tokens, 0 for padding; all ones if None.
            position_ids: ``(B, T)`` positions counted over real tokens; ``P + arange(T)`` if None.
            past_key_values: per layer ``(key, value)``, each ``(B, nh, P, hs)``; None for P = 0.

        Returns:
            ``logits`` ``(B, T, vocab)`` and the per-layer ``(key, value)`` cache, each ``(B, nh, P + T, hs)``.
        """
        b, t = input_ids.shape
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        # Training passes neither mask nor cache: then attention is plain causal and uses the fused kernel.
        plain_causal = attention_mask is None and past_key_values is None
        if attention_mask is None:
            attention_mask = torch.ones(b, past_len + t, dtype=torch.int64, device=input_ids.device)
        if position_ids is None:
            position_ids = (torch.arange(t, device=input_ids.device) + past_len).unsqueeze(0).expand(b, t)
        # Padding positions carry arbitrary ids (the server may send 0 or -1 there), and learned
        # tables must not be indexed out of range: clamp. Real positions are already in range.
        position_ids = position_ids.clamp(0, self.config.context_length - 1)

        # 1. Embed tokens (and positions, for the additive encodings).
        x, rope = self.embed(input_ids, position_ids)  # (B, T, C)

        # 2. One mask for causality and padding, shared by every layer.
        mask = None if plain_causal else build_attention_mask(attention_mask, t)  # (B, 1, T, P + T)

        # 3. Transformer blocks, each extending its own slice of the cache.
        presents: KVCache = []
        for i, block in enumerate(self.blocks):
            past = None if past_key_values is None else past_key_values[i]
            x, present = block(x, mask, rope, past)
            presents.append(present)

        # 4. Final norm and the tied output projection.
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        return logits, presents

    def embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token (plus additive position) embeddings ``(B, T, C)``, and the rotary cos/sin if the model rotates."""
        x = self.wte(input_ids)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        elif self.config.pos_encoding == "sinusoidal":
            x = x + sinusoidal_embedding(position_ids, self.config.dim)
        x = self.drop(x)
        rope = (
            rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_base)
            if self.config.pos_encoding == "rotary"
            else None
        )
        return x, rope

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's hidden state of left-padded ``input_ids`` ``(B, T)``: ``num_layers + 1`` tensors
        ``(B, T, C)``: the embeddings, then each block's output, the last one after the final norm
        (what the head reads). Positions are counted over real tokens, as the serving graph does."""
        x, rope, mask = self._prefill_inputs(input_ids, attention_mask)
        states = [x]
        for block in self.blocks:
            x, _ = block(x, mask, rope, None)
            states.append(x)
        states[-1] = self.ln_f(x)
        return states

    def attention_maps(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`hidden_states`, and every layer's attention probabilities ``(B, nh, T, T)``.

        The probabilities are the ones the forward pass uses (the same causal and padding mask), computed
        the explicit way rather than by SDPA: rows of real tokens are zero on padding and above the
        diagonal; a padding row attends to itself only. The hidden states equal :meth:`hidden_states`'
        up to float rounding.
        """
        x, rope, mask = self._prefill_inputs(input_ids, attention_mask)
        states, maps = [x], []
        for block in self.blocks:
            assert isinstance(block, Block)
            x, probs = block.explain(x, mask, rope)
            states.append(x)
            maps.append(probs)
        states[-1] = self.ln_f(x)
        return states, maps

    def _prefill_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor]:
        """The embeddings, rotary angles and mask ``(B, 1, T, T)`` of left-padded ``input_ids`` without a
        cache, positions counted over real tokens as the serving graph counts them."""
        t = input_ids.shape[1]
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(0, self.config.context_length - 1)  # (B, T)
        x, rope = self.embed(input_ids, position_ids)
        return x, rope, build_attention_mask(attention_mask, t)  # ..., (B, 1, T, T)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of an unpadded batch, for training."""
        logits, _ = self(input_ids)
        loss: torch.Tensor = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))  # (B*T, vocab)
        return loss


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``input_ids``, ``attention_mask`` and ``position_ids`` per the contract.

    Padding positions get position 0; positions of real tokens start at 0 after the padding.
    """
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(sequences), length), dtype=torch.int64)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.int64)
            mask[row, length - len(seq) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
    return ids, mask, positions
