"""Spatial-pooling projector (M3D "spp"; also R1Seg-3D's and HSENet's pooling baseline).

``(B, d*h*w, in_dim)`` tokens (depth-major grid, no CLS) are laid back on their ``grid_size``,
average-pooled with ``pool_size`` (kernel = stride), flattened depth-major and passed through an
MLP: ``(B, (d/pd)*(h/ph)*(w/pw), out_dim)``. M3D: grid 8x16x16 of 768 -> 4x8x8 = 256 tokens, then
Linear(768, H), GELU, Linear(H, H); its keys are ``projector.{0,2}.*`` as here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from LaMed.models.projectors.base import Projector, Tokens, grid_tokens, make_mlp, register_variant

POOL_MODES = ("spatial", "sequence")


@dataclass
class SpatialPoolConfig:
    """``pool_mode="spatial"`` pools 3D windows of ``pool_size``; ``"sequence"`` (an M3D option)
    averages runs of ``prod(pool_size)`` consecutive tokens instead, giving the same count."""

    in_dim: int = 768
    out_dim: int = 3072
    grid_size: tuple = (8, 16, 16)
    pool_size: tuple = (2, 2, 2)
    pool_mode: str = "spatial"
    num_layers: int = 2
    act: str = "gelu"

    def __post_init__(self):
        self.grid_size, self.pool_size = tuple(self.grid_size), tuple(self.pool_size)
        if len(self.grid_size) != 3 or len(self.pool_size) != 3:
            raise ValueError(
                f"SpatialPoolConfig.grid_size and .pool_size must be (d, h, w), got {self.grid_size}, {self.pool_size}"
            )
        if any(g % p for g, p in zip(self.grid_size, self.pool_size)):
            raise ValueError(
                f"SpatialPoolConfig.grid_size {self.grid_size} is not divisible by pool_size {self.pool_size}"
            )
        if self.pool_mode not in POOL_MODES:
            raise ValueError(f"SpatialPoolConfig.pool_mode must be one of {POOL_MODES}, got {self.pool_mode!r}")

    @property
    def pooled_grid(self) -> tuple:
        return tuple(g // p for g, p in zip(self.grid_size, self.pool_size))


class SpatialPoolProjector(Projector):
    """Average-pool the token grid, then an MLP. ``num_tokens = prod(grid_size / pool_size)``."""

    def __init__(self, config: SpatialPoolConfig):
        super().__init__()
        self.config = config
        self.projector = make_mlp(config.in_dim, config.out_dim, config.num_layers, config.act)

    @property
    def num_tokens(self) -> int:
        return grid_tokens(self.config.pooled_grid)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d*h*w, C) -> (B, num_tokens, C)`` (averages, no parameters)."""
        c = self.config
        b, n, ch = x.shape
        if c.pool_mode == "sequence":
            k = grid_tokens(c.pool_size)
            return x.reshape(b, n // k, k, ch).mean(2)
        grid = x.transpose(1, 2).reshape(b, ch, *c.grid_size)
        if grid.device.type == "cpu" and grid.dtype in (torch.bfloat16, torch.float16):
            # torch's CPU avg_pool3d has no bf16 / fp16 kernel: average in fp32 (exact enough), cast back
            return F.avg_pool3d(grid.float(), c.pool_size, c.pool_size).to(grid.dtype).flatten(2).transpose(1, 2)
        return F.avg_pool3d(grid, c.pool_size, c.pool_size).flatten(2).transpose(1, 2)

    def forward(self, x: Tokens) -> torch.Tensor:
        (x,) = self._streams(x, [(grid_tokens(self.config.grid_size), self.config.in_dim)])
        return self.projector(self.pool(x))


register_variant(
    "spp",
    SpatialPoolProjector,
    SpatialPoolConfig,
    "M3D-LaMed spatial pooling: 8x16x16x768 -> 2x2x2 avg pool -> 256 tokens -> MLP to the LLM width "
    "(3072 Phi-3; pass out_dim=4096 for Llama-2).",
)
register_variant(
    "r1seg_pool_mlp",
    SpatialPoolProjector,
    SpatialPoolConfig,
    "R1Seg-3D: the SegVol ViT's 2048 tokens (no CLS) -> 2x2x2 avg pool -> 256 tokens -> MLP "
    "(3072 Phi-3-mini; out_dim=4096 for Llama-3.1-8B).",
)
register_variant(
    "hsenet_pool_mlp",
    SpatialPoolProjector,
    SpatialPoolConfig,
    "HSENet's pooling baseline: 1x4x4 avg pool (2048 -> 128 tokens) then MLP to Phi-4-mini's 3072.",
    pool_size=(1, 4, 4),
)
register_variant(
    "spp_test",
    SpatialPoolProjector,
    SpatialPoolConfig,
    "Tiny spatial-pooling projector for tests.",
    in_dim=32,
    out_dim=64,
    grid_size=(2, 4, 4),
)
