"""Multi-stream MLP-Mixer projector (Med3DVLM's ``mixer`` / ``MixerLowHighHybridMLP``).

Each input stream (e.g. DCFormer stage 3, 4x8x8 tokens of 384, and stage 4, 2x4x4 tokens of 768)
goes through its own stack of :class:`MixerLayer`; each layer changes both the token count and the
width, so there is no residual. The stream outputs are concatenated on the token axis in input
order. Med3DVLM: (256, 384) -> (192, 1792) -> (128, 3584) and (32, 768) -> (64, 1792) -> (128, 3584),
i.e. 256 tokens of 3584 and 47,221,248 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from LaMed.models.projectors.base import Projector, Tokens, grid_tokens, make_mlp, register_variant


@dataclass
class MixerConfig:
    """``out_tokens[s]`` lists the token count after each layer of stream ``s``; the width after
    layer ``i`` of ``L`` is ``out_dim / 2**(L - 1 - i)`` (halving backwards from the LLM width)."""

    in_dims: tuple[int, ...] = (384, 768)
    grid_sizes: tuple[tuple[int, int, int], ...] = ((4, 8, 8), (2, 4, 4))
    out_tokens: tuple[tuple[int, ...], ...] = ((192, 128), (64, 128))
    out_dim: int = 3584
    mlp_depth: int = 2

    def __post_init__(self):
        self.in_dims = tuple(self.in_dims)
        self.grid_sizes = tuple(tuple(g) for g in self.grid_sizes)
        self.out_tokens = tuple(tuple(t) for t in self.out_tokens)
        if not (len(self.in_dims) == len(self.grid_sizes) == len(self.out_tokens)) or not self.in_dims:
            raise ValueError(
                f"MixerConfig.in_dims, .grid_sizes and .out_tokens need one entry per stream, got "
                f"{len(self.in_dims)}, {len(self.grid_sizes)}, {len(self.out_tokens)}"
            )
        for s, sched in enumerate(self.out_tokens):
            if not sched:
                raise ValueError(f"MixerConfig.out_tokens[{s}] is empty; each stream needs at least one layer")
            if self.out_dim % 2 ** (len(sched) - 1):
                raise ValueError(
                    f"MixerConfig.out_dim {self.out_dim} is not divisible by 2**{len(sched) - 1} (stream {s})"
                )

    def widths(self, stream: int) -> tuple[int, ...]:
        depth = len(self.out_tokens[stream])
        return tuple(self.out_dim // 2 ** (depth - 1 - i) for i in range(depth))


class MixerLayer(nn.Module):
    """``(B, n_in, d_in) -> (B, n_out, d_out)``: LN, token MLP (over the token axis), LN, channel MLP."""

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int, mlp_depth: int = 2):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_in)
        self.token_mlp = make_mlp(n_in, n_out, mlp_depth)
        self.ln2 = nn.LayerNorm(d_in)
        self.channel_mlp = make_mlp(d_in, d_out, mlp_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mlp(self.ln1(x).transpose(1, 2)).transpose(1, 2)
        return self.channel_mlp(self.ln2(x))


class MixerProjector(Projector):
    """Parameters: ``streams.{s}.{layer}.{ln1, token_mlp.{0,2}, ln2, channel_mlp.{0,2}}``."""

    def __init__(self, config: MixerConfig):
        super().__init__()
        self.config = config
        self.streams = nn.ModuleList()
        for s, (dim, grid, sched) in enumerate(zip(config.in_dims, config.grid_sizes, config.out_tokens)):
            layers, n, d = [], grid_tokens(grid), dim
            for n_out, d_out in zip(sched, config.widths(s)):
                layers.append(MixerLayer(n, d, n_out, d_out, config.mlp_depth))
                n, d = n_out, d_out
            self.streams.append(nn.Sequential(*layers))
        self.num_streams = len(self.streams)

    @property
    def num_tokens(self) -> int:
        return sum(sched[-1] for sched in self.config.out_tokens)

    def forward(self, x: Tokens) -> torch.Tensor:
        """``[(B, N_s, in_dims[s]) for each stream] -> (B, num_tokens, out_dim)``."""
        expected = [(grid_tokens(g), d) for g, d in zip(self.config.grid_sizes, self.config.in_dims)]
        xs = self._streams(x, expected)
        return torch.cat([stream(t) for stream, t in zip(self.streams, xs)], dim=1)


register_variant(
    "mixer",
    MixerProjector,
    MixerConfig,
    "Med3DVLM dual-stream MLP-Mixer: DCFormer-small stages 3 + 4 on 128x256x256 -> 256 tokens of 3584 (Qwen2.5-7B).",
)
register_variant(
    "mixer_test",
    MixerProjector,
    MixerConfig,
    "Tiny two-stream mixer for tests (dcformer_test stages 3 and 4).",
    in_dims=(16, 32),
    grid_sizes=((2, 4, 4), (1, 2, 2)),
    out_tokens=((8, 4), (6, 4)),
    out_dim=64,
)
