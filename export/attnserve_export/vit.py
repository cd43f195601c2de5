"""A Vision Transformer (ViT, Dosovitskiy et al. 2021), written from scratch in the timm style.

Non-overlapping P×P patches are embedded linearly (a stride-P convolution), a learnable
class token is prepended, position embeddings (learned or fixed 2-D sin/cos) are added,
a pre-LN encoder mixes the tokens, and the head reads the class token.
"""

# Shape letters (B, N, D) as in the paper and timm: clearer than lowercase here.
# ruff: noqa: N806
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from torch import nn

PositionEmbedding = Literal["learned", "sincos"]
# GELU of the MLP: "gelu" is the exact erf form (ViT, Swin), "gelu_tanh" the tanh approximation.
Activation = Literal["gelu", "gelu_tanh"]


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of an ``image_size`` that is one side (square) or a pair."""
    return (image_size, image_size) if isinstance(image_size, int) else (image_size[0], image_size[1])


@dataclass(frozen=True)
class ViTConfig:
    """Hyperparameters of a :class:`ViT`."""

    image_size: int | tuple[int, int] = 224  # one side (square) or (height, width)
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    pos_embedding: PositionEmbedding = "learned"
    dropout: float = 0.0
    drop_path: float = 0.0
    # Width of the MLP's hidden layer; None: int(dim * mlp_ratio).
    mlp_hidden_dim: int | None = None
    ln_eps: float = 1e-6
    qkv_bias: bool = True
    activation: Activation = "gelu"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, (list, tuple)):  # a pair from JSON is a list
            object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        if self.height % self.patch_size or self.width % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_embedding not in ("learned", "sincos"):
            raise ValueError(f"unknown pos_embedding {self.pos_embedding!r}")
        if self.pos_embedding == "sincos" and self.height != self.width:
            raise ValueError("the sin/cos position embedding needs a square image_size")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"unknown activation {self.activation!r}")

    @property
    def height(self) -> int:
        return image_hw(self.image_size)[0]

    @property
    def width(self) -> int:
        return image_hw(self.image_size)[1]

    @property
    def grid_size(self) -> int:
        """Patches per row (the side of the patch grid of a square image)."""
        return self.width // self.patch_size

    @property
    def num_patches(self) -> int:
        return (self.height // self.patch_size) * (self.width // self.patch_size)

    @property
    def hidden_dim(self) -> int:
        return self.mlp_hidden_dim or int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def with_(self, **changes: object) -> ViTConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


PRESETS: dict[str, ViTConfig] = {
    # Small enough that a test trains, exports and checks it in seconds.
    "tiny": ViTConfig(image_size=16, patch_size=4, in_channels=1, num_classes=10, dim=32, depth=2, num_heads=2),
    # The shipped digits model: 16×16 grey input (twice the digits' 8×8), 4×4 patches: 16 tokens + class token.
    "digits": ViTConfig(
        image_size=16,
        patch_size=4,
        in_channels=1,
        num_classes=10,
        dim=64,
        depth=6,
        num_heads=4,
        mlp_ratio=2.0,
        pos_embedding="learned",
        dropout=0.0,
        drop_path=0.1,
    ),
    # ViT-B/16 at 224 px with a 1000-class head: 86.6M parameters.
    "vit-b16": ViTConfig(),
    # DeiT-Ti (Touvron et al. 2021): ViT-B/16's shape at width 192 with 3 heads, 5.7M parameters.
    "deit-ti": ViTConfig(dim=192, depth=12, num_heads=3),
}


def sincos_position_embedding(grid_size: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin/cos embedding (MoCo v3 / "simple ViT" style): ``(grid_size², dim)``.

    A quarter of the channels each for sin(y), cos(y), sin(x), cos(x).
    """
    if dim % 4:
        raise ValueError(f"sin/cos position embedding needs dim divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")  # (G, G) each
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))  # (D/4,)
    y = ys.reshape(-1, 1).float() * omega  # (G², D/4)
    x = xs.reshape(-1, 1).float() * omega  # (G², D/4)
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)  # (G², D)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, activation: Activation = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return out


class PatchEmbed(nn.Module):
    """Non-overlapping P×P patches → ``dim`` vectors (a stride-P convolution is a per-patch linear map)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    """Global multi-head self-attention over all tokens."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.explain(x)[0]

    def explain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output ``(B, N, D)`` and the probabilities ``(B, nH, N, N)`` it was mixed with (this
        attention is computed explicitly anyway, so keeping them costs nothing)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, nH, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, nH, N, hd)
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, nH, N, N)
        attn = attn.softmax(dim=-1)
        mixed = (attn @ v).transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.drop(self.proj(mixed)), attn


class Block(nn.Module):
    """Pre-LN encoder block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, cfg: ViTConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg.dim, cfg.num_heads, cfg.dropout, qkv_bias=cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.dim, cfg.hidden_dim, cfg.dropout, cfg.activation)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.explain(x)[0]

    def explain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output and its attention probabilities ``(B, nH, N, N)``."""
        mixed, probs = self.attn.explain(self.norm1(x))
        x = x + self.drop_path(mixed)
        return x + self.drop_path(self.mlp(self.norm2(x))), probs


class ViT(nn.Module):
    """Images ``(B, C, H, W)`` → logits ``(B, num_classes)``."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        pos_shape = (1, cfg.num_patches + 1, cfg.dim)
        self.pos_embed: torch.Tensor
        if cfg.pos_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.randn(pos_shape) * 0.02)
        else:
            # The class token's position is all zeros; fixed, so a buffer (saved, not trained).
            table = torch.cat([torch.zeros(1, cfg.dim), sincos_position_embedding(cfg.grid_size, cfg.dim)])
            self.register_buffer("pos_embed", table.unsqueeze(0), persistent=False)  # (1, N + 1, D)
        self.pos_drop = nn.Dropout(cfg.dropout)
        rates = [cfg.drop_path * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.apply(_init_weights)
        nn.init.normal_(self.cls_token, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: ``(B, 1 + N, D)``, the class token first."""
        B = x.shape[0]
        x = self.patch_embed(x)  # (B, N, D)
        cls = self.cls_token.expand(B, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + N, D)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.norm(x)
        return out

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's tokens ``(B, 1 + N, D)`` (class token first): ``depth + 1`` tensors, the patch
        embedding first, then each block's output, the last one after the final norm."""
        return self.attention_maps(x)[0]

    def attention_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`hidden_states`, and every block's attention probabilities ``(B, nH, 1 + N, 1 + N)``
        (token 0 is the class token; the patches follow in row-major order)."""
        B = x.shape[0]
        x = self.patch_embed(x)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.pos_embed  # (B, 1 + N, D)
        states, maps = [x], []
        for block in self.blocks:
            assert isinstance(block, Block)
            x, probs = block.explain(x)
            states.append(x)
            maps.append(probs)
        states[-1] = self.norm(x)
        return states, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.forward_features(x)[:, 0])  # (B, num_classes): the class token only
        return logits


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
