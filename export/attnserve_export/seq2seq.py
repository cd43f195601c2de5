"""The encoder–decoder Transformer of "Attention Is All You Need", written from scratch.

An encoder reads the source with bidirectional self-attention (padding masked out); a
decoder writes the target with causal self-attention and attends to the encoder's output
through cross-attention. Source and target share one embedding table, scaled by √d_model
and tied to the output projection, as in the paper.

The decoder is split the way it is served: :meth:`Seq2Seq.cross_kv` projects the encoder's
output to each layer's cross-attention keys and values once per request, and
:meth:`Seq2Seq.decode` takes those plus a self-attention KV cache, so a decode step never
recomputes anything about the source. Training runs the same code path without a cache.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention_ops import (
    apply_rotary,
    build_attention_mask,
    explicit_attention,
    rotary_cos_sin,
    sinusoidal_embedding,
)
from .gpt import PositionalEncoding

# "post": x = LN(x + sublayer(x)), as in the paper; "pre": x = x + sublayer(LN(x)), which trains deeper stacks stably.
NormPlacement = Literal["post", "pre"]
KV = tuple[torch.Tensor, torch.Tensor]


class Seq2SeqMaps(NamedTuple):
    """Every attention probability of one teacher-forced pass (:meth:`Seq2Seq.attention_maps`)."""

    encoder: list[torch.Tensor]  # per encoder layer (B, nh, S, S)
    decoder: list[torch.Tensor]  # per decoder layer (B, nh, U, U), causal
    cross: list[torch.Tensor]  # per decoder layer (B, nh, U, S)
    logits: torch.Tensor  # (B, U, vocab)


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Hyperparameters of a :class:`Seq2Seq`."""

    vocab_size: int = 37000
    source_context: int = 256
    target_context: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8
    dim: int = 512
    ff_dim: int = 2048
    pos_encoding: PositionalEncoding = "sinusoidal"
    rope_base: float = 10000.0
    norm: NormPlacement = "post"
    dropout: float = 0.1
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_encoding not in ("learned", "sinusoidal", "rotary"):
            raise ValueError(f"unknown pos_encoding {self.pos_encoding!r}")
        if self.pos_encoding == "rotary" and self.head_dim % 2:
            raise ValueError("rotary position encoding needs an even head_dim")
        if self.norm not in ("post", "pre"):
            raise ValueError(f"norm must be 'post' or 'pre', got {self.norm!r}")
        if min(self.encoder_layers, self.decoder_layers, self.ff_dim, self.source_context, self.target_context) < 1:
            raise ValueError("layers, ff_dim and contexts must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def with_(self, **changes: object) -> Seq2SeqConfig:
        """A copy with some fields changed (e.g. the vocab size of a trained tokenizer)."""
        return replace(self, **changes)  # type: ignore[arg-type]


PRESETS: dict[str, Seq2SeqConfig] = {
    # Small enough that a test builds, trains a few steps and exports it in seconds. A head size of 16
    # is the smallest that ONNX Runtime's GroupQueryAttention takes.
    "tiny": Seq2SeqConfig(
        vocab_size=256,
        source_context=32,
        target_context=32,
        encoder_layers=2,
        decoder_layers=2,
        num_heads=2,
        dim=32,
        ff_dim=64,
        dropout=0.0,
    ),
    # The shipped numbers-translator: sized for well under 90 minutes of training on 2 CPU cores (its
    # sources and targets are at most ~20 tokens). Pre-LN: post-LN needs a long warmup to train at all.
    "numbers": Seq2SeqConfig(
        vocab_size=512,
        source_context=64,
        target_context=64,
        encoder_layers=3,
        decoder_layers=3,
        num_heads=4,
        dim=128,
        ff_dim=512,
        norm="pre",
        dropout=0.1,
    ),
    # The paper's Transformer-base (6+6 layers, d_model 512, 8 heads, d_ff 2048), for benchmarks.
    "base": Seq2SeqConfig(),
}


class Attention(nn.Module):
    """Multi-head attention with separate query and key/value inputs (self- or cross-attention)."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.q = nn.Linear(config.dim, config.dim)
        self.kv = nn.Linear(config.dim, 2 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.dropout = config.dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C)`` → ``(B, nh, T, hs)``."""
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> KV:
        """Keys and values of ``x`` ``(B, S, C)``, each ``(B, nh, S, hs)``."""
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def attend(self, q_in: torch.Tensor, kv: KV, mask: torch.Tensor | None, causal: bool = False) -> torch.Tensor:
        """Attend from ``q_in`` ``(B, T, C)`` over ``kv``; ``mask`` ``(B, 1, T|1, S)`` True where allowed."""
        b, t, c = q_in.shape
        q = self.heads(self.q(q_in))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, kv[0], kv[1], attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(b, t, c))
        return out

    def explain_attend(self, q_in: torch.Tensor, kv: KV, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`attend` the explicit way: the output and the probabilities ``(B, nh, T, S)``."""
        b, t, c = q_in.shape
        y, probs = explicit_attention(self.heads(self.q(q_in)), kv[0], kv[1], mask)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(b, t, c)), probs  # (B, T, C), (B, nh, T, S)


class SelfAttention(Attention):
    """Self-attention with optional rotary positions and an optional KV cache (decoder)."""

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        past: KV | None = None,
        causal: bool = False,
    ) -> tuple[torch.Tensor, KV]:
        b, t, c = x.shape
        q, k, v = self.project(x, rope)  # (B, nh, T, hs) each
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, nh, P + T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(b, t, c)), (k, v)

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of ``x`` ``(B, T, C)``, each ``(B, nh, T, hs)``, rotated if the model rotates."""
        q = self.heads(self.q(x))  # (B, nh, T, hs)
        k, v = self.project_kv(x)  # (B, nh, T, hs) each
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return q, k, v

    def explain(
        self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` without a cache, the explicit way: the output and the probabilities ``(B, nh, T, T)``."""
        b, t, c = x.shape
        y, probs = explicit_attention(*self.project(x, rope), mask)  # (B, nh, T, hs), (B, nh, T, T)
        return self.proj(y.transpose(1, 2).reshape(b, t, c)), probs


class FeedForward(nn.Module):
    """The paper's position-wise network: Linear → ReLU → Linear."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.dim, config.ff_dim)
        self.proj = nn.Linear(config.ff_dim, config.dim)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(self.drop(F.relu(self.fc(x))))
        return out


class Residual(nn.Module):
    """One sublayer's residual connection and LayerNorm, post-LN or pre-LN."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.pre = config.norm == "pre"
        self.ln = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.drop = nn.Dropout(config.dropout)

    def normed_input(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.ln(x) if self.pre else x
        return out

    def combine(self, x: torch.Tensor, sublayer_out: torch.Tensor) -> torch.Tensor:
        y = x + self.drop(sublayer_out)
        out: torch.Tensor = y if self.pre else self.ln(y)
        return out


class EncoderLayer(nn.Module):
    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.attn, self.attn_res = SelfAttention(config), Residual(config)
        self.ff, self.ff_res = FeedForward(config), Residual(config)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        out, _ = self.attn(self.attn_res.normed_input(x), mask, rope)
        return self._rest(x, out)

    def explain(
        self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`, and the self-attention's probabilities ``(B, nh, S, S)``."""
        out, probs = self.attn.explain(self.attn_res.normed_input(x), mask, rope)
        return self._rest(x, out), probs

    def _rest(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        x = self.attn_res.combine(x, attn_out)
        return self.ff_res.combine(x, self.ff(self.ff_res.normed_input(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn, self.self_res = SelfAttention(config), Residual(config)
        self.cross_attn, self.cross_res = Attention(config), Residual(config)
        self.ff, self.ff_res = FeedForward(config), Residual(config)

    def forward(
        self,
        x: torch.Tensor,
        *,
        self_mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        past: KV | None,
        cross: KV,
        cross_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, KV]:
        out, present = self.self_attn(self.self_res.normed_input(x), self_mask, rope, past, causal=self_mask is None)
        x = self.self_res.combine(x, out)
        x = self.cross_res.combine(x, self.cross_attn.attend(self.cross_res.normed_input(x), cross, cross_mask))
        return self._feed_forward(x), present

    def explain(
        self,
        x: torch.Tensor,
        *,
        self_mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cross: KV,
        cross_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` without a cache, and the probabilities of both attentions: self ``(B, nh, U, U)``
        and cross ``(B, nh, U, S)``."""
        out, self_probs = self.self_attn.explain(self.self_res.normed_input(x), self_mask, rope)
        x = self.self_res.combine(x, out)
        out, cross_probs = self.cross_attn.explain_attend(self.cross_res.normed_input(x), cross, cross_mask)
        x = self.cross_res.combine(x, out)
        return self._feed_forward(x), self_probs, cross_probs

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff_res.combine(x, self.ff(self.ff_res.normed_input(x)))


class Seq2Seq(nn.Module):
    """Encoder–decoder Transformer with one embedding table shared by source, target and output."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        longest = max(config.source_context, config.target_context)
        self.pos = nn.Embedding(longest, config.dim) if config.pos_encoding == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList([EncoderLayer(config) for _ in range(config.encoder_layers)])
        self.decoder = nn.ModuleList([DecoderLayer(config) for _ in range(config.decoder_layers)])
        # Pre-LN leaves the residual stream un-normalised: each stack ends with its own LayerNorm.
        pre = config.norm == "pre"
        self.encoder_ln = nn.LayerNorm(config.dim, eps=config.ln_eps) if pre else nn.Identity()
        self.decoder_ln = nn.LayerNorm(config.dim, eps=config.ln_eps) if pre else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # Scaled by √d_model on the way in, so entries of ~1/√d_model keep the sum with positions balanced.
        nn.init.normal_(self.embed.weight, mean=0.0, std=config.dim**-0.5)

    def num_parameters(self) -> int:
        """Unique parameters (the shared embedding counts once)."""
        return sum(p.numel() for p in self.parameters())

    def _embed(
        self, ids: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token embeddings × √d_model plus the additive position encoding, and rotary angles if used."""
        x = self.embed(ids) * math.sqrt(self.config.dim)  # (B, T, C)
        positions = positions.clamp(0, max(self.config.source_context, self.config.target_context) - 1)
        if self.pos is not None:
            x = x + self.pos(positions)
        elif self.config.pos_encoding == "sinusoidal":
            x = x + sinusoidal_embedding(positions, self.config.dim)
        rope = (
            rotary_cos_sin(positions, self.config.head_dim, self.config.rope_base)
            if self.config.pos_encoding == "rotary"
            else None
        )
        return self.drop(x), rope

    def encode(self, source_ids: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's output ``(B, S, C)`` for right-padded ``source_ids`` ``(B, S)``.

        ``source_mask`` ``(B, S)`` is 1 for real tokens. Padding keys are masked out of every
        query; a padding query still sees itself, so its row is finite (and never read).
        """
        return self.hidden_states(source_ids, source_mask)[-1]

    def hidden_states(self, source_ids: torch.Tensor, source_mask: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's every layer for padded sources (left or right): ``encoder_layers + 1`` tensors
        ``(B, S, C)``: the embeddings, then each layer's output, the last one after the encoder's final
        norm (what cross-attention reads). Positions are counted over real tokens."""
        x, rope, mask = self._encoder_inputs(source_ids, source_mask)
        states = [x]
        for layer in self.encoder:
            x = layer(x, mask, rope)
            states.append(x)
        states[-1] = self.encoder_ln(x)
        return states

    def _encoder_inputs(
        self, source_ids: torch.Tensor, source_mask: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor]:
        """The source's embeddings, rotary angles and self-attention mask ``(B, 1, S, S)``."""
        positions = (source_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, S): 0.. from the first real token
        x, rope = self._embed(source_ids, positions)
        real_key = (source_mask > 0)[:, None, None, :]  # (B, 1, 1, S)
        eye = torch.eye(source_ids.shape[1], dtype=torch.bool, device=source_ids.device)  # (S, S)
        return x, rope, real_key | eye  # ..., (B, 1, S, S)

    def attention_maps(
        self, source_ids: torch.Tensor, source_mask: torch.Tensor, target_ids: torch.Tensor
    ) -> Seq2SeqMaps:
        """Every attention probability of a teacher-forced pass, with the logits ``(B, U, vocab)``.

        ``source_ids`` ``(B, S)`` padded as :meth:`encode` takes them; ``target_ids`` ``(B, U)``
        without padding (``<s>`` first). The masks are the forward pass's: padding source keys get
        zero, the decoder is causal. Computed the explicit way (the forward pass uses SDPA).
        """
        x, rope, mask = self._encoder_inputs(source_ids, source_mask)
        encoder = []
        for layer in self.encoder:
            assert isinstance(layer, EncoderLayer)
            x, probs = layer.explain(x, mask, rope)
            encoder.append(probs)
        cross = self.cross_kv(self.encoder_ln(x))
        u = target_ids.shape[1]
        positions = torch.arange(u, device=target_ids.device).unsqueeze(0).expand_as(target_ids)  # (B, U)
        y, target_rope = self._embed(target_ids, positions)
        self_mask = build_attention_mask(torch.ones_like(target_ids), u)  # (B, 1, U, U)
        cross_mask = (source_mask > 0)[:, None, None, :]  # (B, 1, 1, S)
        decoder, cross_maps = [], []
        for i, layer in enumerate(self.decoder_layers()):
            y, self_probs, cross_probs = layer.explain(
                y, self_mask=self_mask, rope=target_rope, cross=cross[i], cross_mask=cross_mask
            )
            decoder.append(self_probs)
            cross_maps.append(cross_probs)
        logits = F.linear(self.decoder_ln(y), self.embed.weight)  # (B, U, vocab)
        return Seq2SeqMaps(encoder, decoder, cross_maps, logits)

    def cross_kv(self, memory: torch.Tensor) -> list[KV]:
        """Each decoder layer's cross-attention keys and values, computed once per source."""
        return [layer.cross_attn.project_kv(memory) for layer in self.decoder_layers()]

    def decoder_layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.decoder if isinstance(layer, DecoderLayer)]

    def decode(
        self,
        target_ids: torch.Tensor,
        cross: list[KV],
        source_mask: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past: list[KV] | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """Decoder logits ``(B, T, vocab)`` for new target tokens, and the updated self-attention cache.

        Args:
            target_ids: ``(B, T)`` new target tokens (left-padded when a batch mixes lengths).
            cross: per layer the cross-attention ``(key, value)``, each ``(B, nh, S, hs)``.
            source_mask: ``(B, S)`` 1 for real source tokens.
            attention_mask: ``(B, P + T)`` 1 for real target tokens; None: all real and, without a
                cache, plain causal attention (training).
            position_ids: ``(B, T)`` target positions counted over real tokens; ``P + arange(T)`` if None.
            past: per layer the self-attention ``(key, value)``, each ``(B, nh, P, hs)``.
        """
        b, t = target_ids.shape
        past_len = 0 if past is None else past[0][0].shape[2]
        plain_causal = attention_mask is None and past is None
        if attention_mask is None:
            attention_mask = torch.ones(b, past_len + t, dtype=torch.int64, device=target_ids.device)
        if position_ids is None:
            position_ids = (torch.arange(t, device=target_ids.device) + past_len).unsqueeze(0).expand(b, t)
        x, rope = self._embed(target_ids, position_ids)
        self_mask = None if plain_causal else build_attention_mask(attention_mask, t)  # (B, 1, T, P + T)
        cross_mask = (source_mask > 0)[:, None, None, :]  # (B, 1, 1, S)
        presents: list[KV] = []
        for i, layer in enumerate(self.decoder):
            x, present = layer(
                x,
                self_mask=self_mask,
                rope=rope,
                past=None if past is None else past[i],
                cross=cross[i],
                cross_mask=cross_mask,
            )
            presents.append(present)
        logits = F.linear(self.decoder_ln(x), self.embed.weight)  # tied output projection, (B, T, vocab)
        return logits, presents

    def forward(self, source_ids: torch.Tensor, source_mask: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, vocab)`` for unpadded-on-the-left targets (training)."""
        memory = self.encode(source_ids, source_mask)
        logits, _ = self.decode(target_ids, self.cross_kv(memory), source_mask)
        return logits

    def loss(
        self,
        source_ids: torch.Tensor,
        source_mask: torch.Tensor,
        target_in: torch.Tensor,
        target_out: torch.Tensor,
        *,
        pad_id: int,
        label_smoothing: float = 0.1,
    ) -> torch.Tensor:
        """Label-smoothed cross-entropy over the real target tokens (right padding ignored)."""
        logits = self(source_ids, source_mask, target_in)  # (B, T, vocab)
        loss: torch.Tensor = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target_out.reshape(-1),
            ignore_index=pad_id,
            label_smoothing=label_smoothing,
        )
        return loss
