"""A Swin Transformer (Liu et al. 2021), written from scratch in the timm style.

Patch partition + linear embedding, then stages of Swin blocks that alternate window
attention (W-MSA over M×M windows, with a learned relative position bias) and shifted
window attention (SW-MSA: a cyclic shift by M/2 plus a mask that keeps tokens from
unrelated regions apart), with patch merging between stages and a mean-pooled head.

Export notes: every shape that decides control flow (feature-map size, padding, the
masks) comes from the config, never from tensor values, so ``torch.export`` sees one
static graph in which only the batch dimension is symbolic. The masks and position
indices are precomputed buffers.
"""

# Shape letters (B, H, W, C, M, N) as in the paper and timm: clearer than lowercase here.
# ruff: noqa: N806
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from attnserve_export.swin_windows import (
    attention_mask,
    padded_shift_mask,
    relative_position_index,
    window_partition,
    window_reverse,
)
from attnserve_export.vit import Activation, DropPath, Mlp, image_hw


@dataclass(frozen=True)
class SwinConfig:
    """Hyperparameters of a :class:`Swin`."""

    image_size: int | tuple[int, int] = 224  # one side (square) or (height, width)
    patch_size: int = 4
    in_channels: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    drop_path: float = 0.2
    ln_eps: float = 1e-5  # of the blocks' and the final norm (patch embedding and merging norms keep 1e-5)
    qkv_bias: bool = True
    activation: Activation = "gelu"
    # transformers' SwinLayer order: pad the map to window multiples first, then shift; its mask only
    # separates the shifted regions, so real tokens may attend to padding tokens. Off: shift first,
    # then pad, and padding is masked out (this model's own order).
    pad_before_shift: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.image_size, (list, tuple)):  # a pair from JSON is a list
            object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads need one entry per stage")
        if self.height % self.patch_size or self.width % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"stage {i}: dim {self.embed_dim * 2**i} is not divisible by {heads} heads")

    @property
    def height(self) -> int:
        return image_hw(self.image_size)[0]

    @property
    def width(self) -> int:
        return image_hw(self.image_size)[1]

    @property
    def num_features(self) -> int:
        return int(self.embed_dim * 2 ** (len(self.depths) - 1))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def with_(self, **changes: object) -> SwinConfig:
        for key in ("depths", "num_heads"):
            value = changes.get(key)
            if isinstance(value, list):
                changes[key] = tuple(value)
        return replace(self, **changes)  # type: ignore[arg-type]


PRESETS: dict[str, SwinConfig] = {
    # Tiny, for tests: 20 px / 2 = 10×10 tokens with 4×4 windows (padding), then 5×5 (padding again).
    "tiny": SwinConfig(
        image_size=20,
        patch_size=2,
        in_channels=1,
        num_classes=10,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(2, 4),
        window_size=4,
        drop_path=0.0,
    ),
    # The shipped digits model: 16×16 grey input (twice the digits' 8×8) → 8×8 tokens in 4×4 windows
    # (W-MSA, SW-MSA), then 4×4 tokens after merging (one window: no shift, as in the paper's last stage).
    "digits": SwinConfig(
        image_size=16,
        patch_size=2,
        in_channels=1,
        num_classes=10,
        embed_dim=48,
        depths=(2, 4),
        num_heads=(3, 6),
        window_size=4,
        mlp_ratio=2.0,
        drop_path=0.1,
    ),
    # Swin-T at 224 px with a 1000-class head: 28.3M parameters.
    "swin-t": SwinConfig(),
}


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each M×M window, with a relative position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int, dropout: float = 0.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.relative_position_index: torch.Tensor
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def position_bias(self) -> torch.Tensor:
        """``(nH, M², M²)``: the table looked up by the relative position of each pair."""
        N = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, nH)
        return bias.view(N, N, self.num_heads).permute(2, 0, 1)  # (nH, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: ``(B * nW, N, C)`` window tokens; ``mask``: ``(nW, N, N)`` additive or None."""
        return self.explain(x, mask)[0]

    def explain(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s output and the probabilities ``(B*nW, nH, N, N)`` it mixed with (computed
        explicitly anyway, so keeping them costs nothing)."""
        Bw, N, C = x.shape
        qkv = self.qkv(x).reshape(Bw, N, 3, self.num_heads, self.head_dim)  # (B*nW, N, 3, nH, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B*nW, nH, N, hd)
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B*nW, nH, N, N)
        attn = attn + self.position_bias().unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(-1, nW, self.num_heads, N, N) + mask[None, :, None]  # (B, nW, nH, N, N)
            attn = attn.view(-1, self.num_heads, N, N)  # (B*nW, nH, N, N)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(Bw, N, C)  # (B*nW, N, C)
        return self.drop(self.proj(out)), attn


class SwinBlock(nn.Module):
    """One Swin block on a fixed ``resolution``: (S)W-MSA then MLP, both pre-LN with residuals."""

    def __init__(  # noqa: PLR0917
        self,
        dim: int,
        resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        shift: bool,
        mlp_ratio: float,
        dropout: float,
        drop_path: float,
        *,
        ln_eps: float = 1e-5,
        qkv_bias: bool = True,
        activation: Activation = "gelu",
        pad_before_shift: bool = False,
    ) -> None:
        super().__init__()
        self.height, self.width = resolution
        # A map no larger than one window: one window covers it and shifting would change nothing.
        if min(resolution) <= window_size:
            window_size, shift = min(resolution), False
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        self.pad_h = (-self.height) % window_size
        self.pad_w = (-self.width) % window_size
        self.pad_before_shift = pad_before_shift
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = WindowAttention(dim, num_heads, window_size, dropout, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout, activation)
        self.attn_mask: torch.Tensor | None
        padded = (self.height + self.pad_h, self.width + self.pad_w)
        if pad_before_shift and self.shift_size:
            mask = padded_shift_mask(*padded, window_size, self.shift_size)
        elif not pad_before_shift and (self.shift_size or self.pad_h or self.pad_w):
            mask = attention_mask(self.height, self.width, window_size, self.shift_size)
        else:
            mask = None
        self.register_buffer("attn_mask", mask, persistent=False)  # (nW, M², M²), or None

    def to_windows(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` → ``(B*nW, M², C)``: steps 1-3 of the block (shift, pad, partition)."""
        M, s = self.window_size, self.shift_size
        C = x.shape[-1]
        pad = (0, 0, 0, self.pad_w, 0, self.pad_h) if self.pad_h or self.pad_w else None
        # 1. cyclic shift: the windows of this block straddle the previous block's window borders.
        # 2. pad to multiples of M (the mask keeps the padding out of every real token's attention).
        # With pad_before_shift, 2 comes before 1 and the padding is shifted along (transformers' order).
        if pad and self.pad_before_shift:
            x = F.pad(x, pad)  # (B, Hp, Wp, C)
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))  # (B, H, W, C) or (B, Hp, Wp, C)
        if pad and not self.pad_before_shift:
            x = F.pad(x, pad)  # (B, Hp, Wp, C)
        # 3. partition into windows.
        return window_partition(x, M).view(-1, M * M, C)  # (B*nW, M², C)

    def from_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """``(B*nW, M², C)`` → ``(B, H, W, C)``: steps 5-6 of the block (merge, unpad, reverse shift)."""
        H, W, M, s = self.height, self.width, self.window_size, self.shift_size
        C = windows.shape[-1]
        Hp, Wp = H + self.pad_h, W + self.pad_w
        # 5. merge the windows back into a map and drop the padding.
        x = window_reverse(windows.view(-1, M, M, C), M, Hp, Wp)  # (B, Hp, Wp, C)
        if not self.pad_before_shift:
            x = x[:, :H, :W, :]  # (B, H, W, C)
        # 6. reverse the cyclic shift.
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))  # (B, H, W, C) or (B, Hp, Wp, C)
        return x[:, :H, :W, :] if self.pad_before_shift else x  # (B, H, W, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, H*W, C)`` tokens in row-major order."""
        return self.explain(x)[0]

    def explain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output ``(B, H*W, C)`` and its raw window probabilities ``(B*nW, nH, M², M²)``,
        windows in the block's own order (after the shift and padding; see :func:`dense_window_attention`)."""
        B, L, C = x.shape
        h = self.norm1(x).view(B, self.height, self.width, C)  # (B, H, W, C)
        # 4. attention inside each window.
        windows, probs = self.attn.explain(self.to_windows(h), self.attn_mask)  # (B*nW, M², C)
        h = self.from_windows(windows).reshape(B, L, C)  # (B, H*W, C)
        x = x + self.drop_path(h)
        out: torch.Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
        return out, probs


def dense_window_attention(block: SwinBlock, probs: torch.Tensor) -> torch.Tensor:
    """One block's raw window probabilities as a dense map over its tokens in their original order.

    The block's own shift, pad and partition steps (:meth:`SwinBlock.to_windows`) carry a map of
    each token's row-major index, so every window slot learns which original token it holds (or that
    it is padding); no coordinate arithmetic of its own.

    Args:
        block: the block that produced ``probs``.
        probs: ``(B*nW, nH, M², M²)`` from :meth:`SwinBlock.explain`.

    Returns:
        ``(B, nH, H*W, H*W)``: row q is query token q's attention over every token of the map, zero
        outside its window (attention that went to padding slots is left out).
    """
    H, W = block.height, block.width
    # +1 so that the zeros of the padding read as -1 afterwards.
    index = torch.arange(1, H * W + 1, dtype=torch.float32).view(1, H, W, 1)  # (1, H, W, 1)
    slots = block.to_windows(index).view(-1).round().long() - 1  # (nW * M²,): original index or -1
    M2 = block.window_size**2
    nW = slots.numel() // M2
    B, nH = probs.shape[0] // nW, probs.shape[1]
    per_window = slots.view(nW, M2)  # (nW, M²)
    real = per_window >= 0  # (nW, M²)
    w, q, k = (real[:, :, None] & real[:, None, :]).nonzero(as_tuple=True)  # each window's real (query, key) pairs
    values = probs.view(B, nW, nH, M2, M2).permute(1, 3, 4, 0, 2)[w, q, k]  # (pairs, B, nH)
    dense = probs.new_zeros(B, nH, H * W, H * W)
    dense[:, :, per_window[w, q], per_window[w, k]] = values.permute(1, 2, 0)  # (B, nH, pairs)
    return dense


class PatchMerging(nn.Module):
    """2×2 neighbouring tokens → one: ``(B, H*W, C)`` → ``(B, ⌈H/2⌉*⌈W/2⌉, 2C)`` (odd sizes are padded)."""

    def __init__(self, dim: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.height, self.width = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    @property
    def out_resolution(self) -> tuple[int, int]:
        return (self.height + 1) // 2, (self.width + 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, self.height, self.width, C)  # (B, H, W, C)
        if self.height % 2 or self.width % 2:
            x = F.pad(x, (0, 0, 0, self.width % 2, 0, self.height % 2))  # (B, H', W', C), even
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = x.reshape(B, -1, 4 * C)  # (B, H/2 * W/2, 4C)
        out: torch.Tensor = self.reduction(self.norm(x))  # (B, H/2 * W/2, 2C)
        return out


class SwinStage(nn.Module):
    """``depth`` blocks alternating W-MSA and SW-MSA, then (except the last stage) patch merging."""

    def __init__(
        self, cfg: SwinConfig, index: int, resolution: tuple[int, int], drop_paths: list[float], merge: bool
    ) -> None:
        super().__init__()
        dim = cfg.embed_dim * 2**index
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                resolution,
                cfg.num_heads[index],
                cfg.window_size,
                shift=i % 2 == 1,
                mlp_ratio=cfg.mlp_ratio,
                dropout=cfg.dropout,
                drop_path=drop_paths[i],
                ln_eps=cfg.ln_eps,
                qkv_bias=cfg.qkv_bias,
                activation=cfg.activation,
                pad_before_shift=cfg.pad_before_shift,
            )
            for i in range(cfg.depths[index])
        )
        self.downsample = PatchMerging(dim, resolution) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class Swin(nn.Module):
    """Images ``(B, C, H, W)`` → logits ``(B, num_classes)``."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.patch_norm = nn.LayerNorm(cfg.embed_dim)
        self.pos_drop = nn.Dropout(cfg.dropout)
        total = sum(cfg.depths)
        rates = [cfg.drop_path * i / max(1, total - 1) for i in range(total)]
        resolution = (cfg.height // cfg.patch_size, cfg.width // cfg.patch_size)
        stages = []
        for i, depth in enumerate(cfg.depths):
            first = sum(cfg.depths[:i])
            merge = i < len(cfg.depths) - 1
            stage = SwinStage(cfg, i, resolution, rates[first : first + depth], merge)
            stages.append(stage)
            if stage.downsample is not None:
                resolution = stage.downsample.out_resolution
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(cfg.num_features, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.num_features, cfg.num_classes)
        self.apply(_init_weights)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One hidden state per stage: ``1 + len(depths)`` tensors ``(B, N_i, D_i)``. The patch embedding
        first, then each stage's blocks' output at the stage's own resolution (before patch merging),
        the last one after the final norm (what the mean-pooled head reads)."""
        return self.attention_maps(x)[0]

    def swin_blocks(self) -> list[SwinBlock]:
        """Every block, stages in order."""
        return [
            b for stage in self.stages if isinstance(stage, SwinStage) for b in stage.blocks if isinstance(b, SwinBlock)
        ]

    def attention_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`hidden_states`, and every block's raw window probabilities ``(B*nW, nH, M², M²)``
        (stages in order; windows in the block's order after its shift and padding, see
        :func:`dense_window_attention`)."""
        x = self.patch_norm(self.patch_embed(x).flatten(2).transpose(1, 2))  # (B, N, D)
        states, maps = [x], []
        for stage in self.stages:
            assert isinstance(stage, SwinStage)
            for block in stage.blocks:
                assert isinstance(block, SwinBlock)
                x, probs = block.explain(x)
                maps.append(probs)
            states.append(x)  # (B, N_i, D_i)
            if stage.downsample is not None:
                x = stage.downsample(x)  # (B, N_i / 4, 2 D_i)
        states[-1] = self.norm(x)
        return states, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, D, H/P, W/P): patch partition + linear embedding
        x = self.patch_norm(x.flatten(2).transpose(1, 2))  # (B, N, D)
        x = self.pos_drop(x)
        for stage in self.stages:
            x = stage(x)
        x = self.norm(x).mean(dim=1)  # (B, D_last): average pool over tokens
        logits: torch.Tensor = self.head(x)  # (B, num_classes)
        return logits


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
