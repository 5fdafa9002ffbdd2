"""Spatial packer (HSENet's "centroid-based compression", ``VisualPacker_3d_phi_v3``).

Per stream: the token grid ``(d, h, w)`` is cut into windows of ``window`` voxels; each window's
mean (its centroid, i.e. ``avg_pool3d(window)``) attends, single-head, to the window's own members;
``norm(q + dropout(out(attention)))`` with ``q = Wq(centroid)`` is then mapped by an MLP to the LLM
width. HSENet: grid 8x16x16 of 768, window 1x4x4 -> 128 tokens per stream; two streams (3D ViT and
2E3 ViT) concatenated -> 256 tokens of 3072 (Phi-4-mini).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from LaMed.models.projectors.base import Projector, Tokens, grid_tokens, make_mlp, register_variant


@dataclass
class PackerConfig:
    in_dim: int = 768
    out_dim: int = 3072
    grid_size: tuple = (8, 16, 16)
    window: tuple = (1, 4, 4)
    num_streams: int = 1
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    num_layers: int = 2

    def __post_init__(self):
        self.grid_size, self.window = tuple(self.grid_size), tuple(self.window)
        if len(self.grid_size) != 3 or len(self.window) != 3:
            raise ValueError(
                f"PackerConfig.grid_size and .window must be (d, h, w), got {self.grid_size}, {self.window}"
            )
        if any(g % k for g, k in zip(self.grid_size, self.window)):
            raise ValueError(f"PackerConfig.grid_size {self.grid_size} is not divisible by window {self.window}")
        if self.num_streams < 1:
            raise ValueError(f"PackerConfig.num_streams must be >= 1, got {self.num_streams}")


def window_members(x: torch.Tensor, grid, window) -> torch.Tensor:
    """``(B, d*h*w, C) -> (B, G, K, C)``: the ``K = prod(window)`` members of each of the
    ``G = prod(grid / window)`` windows, windows in depth-major order (as ``avg_pool3d`` outputs)."""
    b, _, c = x.shape
    (d, h, w), (kd, kh, kw) = grid, window
    x = x.reshape(b, d // kd, kd, h // kh, kh, w // kw, kw, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, -1, kd * kh * kw, c)


class WindowAttention(nn.Module):
    """Centroid-to-members attention ``(B, G, K, C) -> (B, G, C)``, one head, logits / sqrt(C)."""

    def __init__(self, dim: int, attn_dropout: float = 0.1, proj_dropout: float = 0.1):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.norm = nn.LayerNorm(dim)
        self.attn_dropout = attn_dropout
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, members: torch.Tensor) -> torch.Tensor:
        q = self.q(members.mean(2, keepdim=True))  # (B, G, 1, C): the window centroid's query
        drop = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, self.k(members), self.v(members), dropout_p=drop)
        return self.norm(q + self.proj_drop(self.out(y))).squeeze(2)


class PackerStream(nn.Module):
    """One stream: :class:`WindowAttention` (``attn``) then the MLP (``projector``)."""

    def __init__(self, c: PackerConfig):
        super().__init__()
        self.attn = WindowAttention(c.in_dim, c.attn_dropout, c.proj_dropout)
        self.projector = make_mlp(c.in_dim, c.out_dim, c.num_layers)

    def forward(self, members: torch.Tensor) -> torch.Tensor:
        return self.projector(self.attn(members))


class SpatialPackerProjector(Projector):
    """``num_streams`` x ``(B, d*h*w, in_dim)`` -> ``(B, num_streams * G, out_dim)``, G = windows per stream.

    Parameters: ``streams.{s}.attn.{q,k,v,out,norm}.*`` and ``streams.{s}.projector.{0,2}.*``.
    """

    def __init__(self, config: PackerConfig):
        super().__init__()
        self.config = config
        self.streams = nn.ModuleList(PackerStream(config) for _ in range(config.num_streams))
        self.num_streams = config.num_streams

    @property
    def tokens_per_stream(self) -> int:
        return grid_tokens(tuple(g // k for g, k in zip(self.config.grid_size, self.config.window)))

    @property
    def num_tokens(self) -> int:
        return self.num_streams * self.tokens_per_stream

    def forward(self, x: Tokens) -> torch.Tensor:
        c = self.config
        xs = self._streams(x, [(grid_tokens(c.grid_size), c.in_dim)] * self.num_streams)
        return torch.cat([s(window_members(t, c.grid_size, c.window)) for s, t in zip(self.streams, xs)], dim=1)


register_variant(
    "packer",
    SpatialPackerProjector,
    PackerConfig,
    "HSENet spatial packer, one stream: 8x16x16x768 -> 1x4x4 windows -> 128 tokens of 3072.",
)
register_variant(
    "hsenet_packer",
    SpatialPackerProjector,
    PackerConfig,
    "HSENet's two parallel packers (3D ViT stream, then 2E3 stream) -> 256 tokens of 3072 (Phi-4-mini).",
    num_streams=2,
)
register_variant(
    "packer_test",
    SpatialPackerProjector,
    PackerConfig,
    "Tiny two-stream packer for tests.",
    in_dim=32,
    out_dim=64,
    grid_size=(2, 4, 4),
    window=(1, 2, 2),
    num_streams=2,
)
